"""measure/authenticode.py against systemd-pcrlock 257's ``lock-pe`` (trixie tree): the signed Debian
kernel (a certificate table), a UKI made by ukify, systemd-boot 257, and images with data after their
sections; plus hostile images, each a one-line MalformedError."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from pathlib import Path

import pytest

import trixie
from bootkeeper.errors import MalformedError
from bootkeeper.measure import authenticode
from bootkeeper.measure.banks import BANKS

pytestmark = [pytest.mark.integration, pytest.mark.root]
ALL = tuple(BANKS[n] for n in ("sha1", "sha256", "sha384", "sha512"))
CACHE = Path(os.environ.get("NODE_CACHE", Path(__file__).resolve().parents[2] / ".cache" / "node"))
VM = Path(os.environ.get("VM_CACHE", Path(__file__).resolve().parents[2] / ".cache" / "vm"))
PCRLOCK = "/usr/lib/systemd/systemd-pcrlock"


def kernel() -> Path:
    found = sorted((CACHE / "guest" / "boot").glob("vmlinuz-*"))
    assert found, f"no kernel under {CACHE}/guest/boot: scripts/setup-test-deps.sh (make test) fetches it"
    return found[-1]


def ours(path: Path, systemd_padding: bool = False) -> dict[str, str]:
    with path.open("rb") as f:
        img = authenticode.Image(f, str(path), os.fstat(f.fileno()).st_size)
        return {k: v.hex() for k, v in authenticode.digests(img, ALL, systemd_padding).items()}


def lock_pe(work: Path, names: list[str]) -> dict[str, dict[str, str]]:
    """``systemd-pcrlock lock-pe`` of each file in ``work``: its one PCR 4 record's digests."""
    cmd = " && ".join(f"{PCRLOCK} lock-pe {n} --pcrlock={n}.pcrlock" for n in names)
    p = trixie.run(cmd, work)
    assert p.returncode == 0, p.stderr
    out = {}
    for n in names:
        recs = json.loads((work / f"{n}.pcrlock").read_text())["records"]
        assert [r["pcr"] for r in recs] == [4]
        out[n] = {d["hashAlg"]: d["digest"] for d in recs[0]["digests"]}
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (trixie.ROOT / PCRLOCK.lstrip("/")).exists():
        pytest.fail(f"no systemd-pcrlock in {trixie.ROOT}: scripts/setup-trixie.sh makes it (make test runs it)")
    w = tmp_path_factory.mktemp("authenticode")
    shutil.copy(kernel(), w / "vmlinuz")
    shutil.copy(VM / "sdboot-257" / "systemd-bootx64.efi", w / "sdboot.efi")
    (w / "initrd").write_bytes(random.Random(16).randbytes(300_000))
    (w / "osrel").write_text("ID=debian\nVERSION_ID=13\n")
    p = trixie.run("ukify build --linux=vmlinuz --initrd=initrd --os-release=@osrel --output=uki.efi >/dev/null", w)
    assert p.returncode == 0, p.stderr
    uki = (w / "uki.efi").read_bytes()
    # data after the last section: a size that is a multiple of 8, and one that is not
    (w / "tail8.efi").write_bytes(uki + b"tail-8!!")
    (w / "tail3.efi").write_bytes(uki + b"abc")
    return w


def test_same_hash_as_lock_pe(work: Path) -> None:
    names = ["vmlinuz", "sdboot.efi", "uki.efi", "tail8.efi"]
    theirs = lock_pe(work, names)
    for n in names:
        assert ours(work / n) == theirs[n], n
    # the signed kernel's certificate table is left out: the hash is not of the whole file
    with (work / "vmlinuz").open("rb") as f:
        img = authenticode.Image(f, "vmlinuz", (work / "vmlinuz").stat().st_size)
        runs, _ = authenticode.hashed_ranges(img)
    assert sum(n for _, n in runs) < img.size


def test_odd_tail_is_padded_by_pcrlock_not_by_the_firmware(work: Path) -> None:
    """systemd's pe_hash() pads the hash to 8 bytes of file size; EDK2 does not. With the padding we
    equal lock-pe; without it (the firmware's value) we differ from it, on this image only."""
    theirs = lock_pe(work, ["tail3.efi"])["tail3.efi"]
    assert ours(work / "tail3.efi", systemd_padding=True) == theirs
    assert ours(work / "tail3.efi") != theirs
    assert ours(work / "tail8.efi", systemd_padding=True) == ours(work / "tail8.efi")


def test_embedded_image_with_zero_tail(tmp_path: Path, work: Path) -> None:
    """An image read from inside another file, its last bytes zeros not in the file (a .linux section
    whose VirtualSize exceeds its raw data): the same hash as the whole image on its own."""
    k = (work / "vmlinuz").read_bytes()
    body = k.rstrip(b"\0")
    blob = tmp_path / "blob"
    blob.write_bytes(b"X" * 1000 + body + b"Y" * 77)
    with blob.open("rb") as f:
        img = authenticode.Image(f, "blob", len(k), 1000, len(body))
        got = {b: v.hex() for b, v in authenticode.digests(img, ALL).items()}
    assert got == ours(work / "vmlinuz")


def _patched(data: bytes, at: int, fmt: str, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, at, value)
    return bytes(b)


def _hostile(work: Path) -> list[tuple[str, bytes, str]]:
    good = (work / "uki.efi").read_bytes()
    pe = struct.unpack_from("<I", good, 0x3C)[0]
    opt = pe + 24
    opt_size = struct.unpack_from("<H", good, pe + 20)[0]
    table = opt + opt_size
    return [
        ("empty", b"", "too small"),
        ("no-mz", b"ZM" + good[2:], "no MZ"),
        ("lfanew", _patched(good, 0x3C, "<I", len(good)), "e_lfanew"),
        ("no-pe", _patched(good, pe, "<I", 0), "no PE signature"),
        ("sections", _patched(good, pe + 6, "<H", 500), "NumberOfSections"),
        ("opt-size", good[: opt + 100], "SizeOfOptionalHeader"),
        ("opt-short", _patched(good, pe + 20, "<H", 40), "too short"),
        ("magic", _patched(good, opt, "<H", 0x30B), "magic"),
        ("rva", _patched(good, opt + 108, "<I", 1000), "NumberOfRvaAndSizes"),
        ("headers", _patched(good, opt + 60, "<I", 10), "SizeOfHeaders"),
        ("headers-big", _patched(good, opt + 60, "<I", len(good) + 1), "SizeOfHeaders"),
        ("raw", _patched(good, table + 20, "<I", len(good)), "PointerToRawData"),
        ("cert", _patched(good + b"tail", opt + 112 + 32 + 4, "<I", 10_000), "certificate table"),
        ("truncated", _patched(good, opt + 60, "<I", table + 10)[: table + 20], "section table"),
        ("cut", good[: len(good) // 2], "past the end"),
    ]


def test_hostile_images_are_one_line_errors(tmp_path: Path, work: Path) -> None:
    for name, data, words in _hostile(work):
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(MalformedError) as ei:
            ours(p)
        msg = str(ei.value)
        assert "\n" not in msg and msg.startswith(str(p)) and words in msg, (name, msg)


def test_random_damage_never_escapes_as_another_exception(tmp_path: Path, work: Path) -> None:
    good = (work / "sdboot.efi").read_bytes()
    rnd = random.Random(36076)
    p = tmp_path / "damaged.efi"
    for _ in range(300):
        b = bytearray(good[: rnd.randrange(len(good) + 1)])
        for _ in range(rnd.randrange(1, 8)):
            if b:
                b[rnd.randrange(min(len(b), 1024))] = rnd.randrange(256)
        p.write_bytes(bytes(b))
        try:
            ours(p)
        except MalformedError as exc:
            assert "\n" not in str(exc)
