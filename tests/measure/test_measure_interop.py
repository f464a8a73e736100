"""``tpm predict`` and ``tpm sign-policy`` against systemd 257's own tools (the trixie tree):
UKIs built by the real ukify, which runs the real ``systemd-measure calculate`` (``--measure``) and
``systemd-measure sign`` (``.pcrsig``). PCR 11 after every phase and every bank must be what
systemd-measure printed, and the signed policy must be the ``.pcrsig`` ukify embedded, byte for byte
(read back with binutils' objcopy, not with bootkeeper's PE reader)."""

from __future__ import annotations

import base64
import json
import re
import shlex
import struct
import subprocess
from pathlib import Path

import pytest

import trixie
from helpers import bk

pytestmark = [pytest.mark.integration, pytest.mark.root]
PHASES = ("enter-initrd", "leave-initrd", "sysinit", "ready")


def _bmp() -> bytes:
    """A 2x1 24-bit BMP (ukify checks the splash is one)."""
    pixels = b"\x00\x00\xff\x00\xff\x00" + b"\x00\x00"  # two pixels, row padded to 4 bytes
    header = b"BM" + struct.pack("<IHHI", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, 2, 1, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return header + info + pixels


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (trixie.ROOT / "usr/bin/ukify").exists() or not (trixie.ROOT / "usr/lib/systemd/systemd-measure").exists():
        pytest.fail(
            f"no ukify/systemd-measure in {trixie.ROOT}: scripts/setup-trixie.sh makes them (make test runs it)"
        )
    w = tmp_path_factory.mktemp("measure")
    rng = __import__("random").Random(16)
    (w / "linux").write_bytes(rng.randbytes(1_500_003))  # odd size: VirtualSize < SizeOfRawData
    (w / "initrd").write_bytes(rng.randbytes(300_001))
    (w / "ucode").write_bytes(rng.randbytes(4097))
    (w / "osrel").write_text("ID=kairos\nVERSION_ID=3.4\nIMAGE_ID=active\n")
    (w / "splash.bmp").write_bytes(_bmp())
    for k in ("key", "other"):
        subprocess.run(["openssl", "genrsa", "-out", str(w / f"{k}.pem"), "2048"], check=True, capture_output=True)
        subprocess.run(
            ["openssl", "rsa", "-in", str(w / f"{k}.pem"), "-pubout", "-out", str(w / f"{k}.pub.pem")],
            check=True,
            capture_output=True,
        )
    return w


def ukify(w: Path, out: str, *extra: str) -> dict[str, list[str]]:
    """Build ``out`` with ukify --measure; systemd-measure's PCR 11 lines, per bank, in phase order."""
    cmd = (
        "ukify build --linux=linux --uname=6.1.0-bk --initrd=initrd --os-release=@osrel "
        f"--cmdline='console=ttyS0 quiet' --measure --output={shlex.quote(out)} " + " ".join(extra)
    )
    p = trixie.run(cmd, w)
    assert p.returncode == 0, p.stderr[-2000:]
    values: dict[str, list[str]] = {}
    for bank, value in re.findall(r"^11:(\w+)=([0-9a-f]+)$", p.stdout, re.M):
        values.setdefault(bank, []).append(value)
    assert values, p.stdout
    return values


VARIANTS: dict[str, tuple[str, ...]] = {
    "plain": (),
    "pcrpkey": ("--pcrpkey=key.pub.pem",),
    "ucode+splash": ("--microcode=ucode", "--splash=splash.bmp"),
    "two banks": ("--pcr-banks=sha1,sha256",),
    "sha384": ("--pcr-banks=sha384",),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pcr11_after_every_phase_is_what_systemd_measure_calculates(work: Path, variant: str) -> None:
    out = f"uki-{variant.replace(' ', '-').replace('+', '-')}.efi"
    expected = ukify(work, out, *VARIANTS[variant])
    esp = work / f"esp-{out}"
    (esp / "EFI/Linux").mkdir(parents=True)
    (esp / "EFI/Linux/active+3.efi").write_bytes((work / out).read_bytes())
    banks = [a for b in expected for a in ("--bank", b)]
    p = bk("tpm", "predict", "--esp", esp, *banks, "--json")
    assert p.returncode == 0, p.stderr
    (entry,) = json.loads(p.stdout)["entries"]
    assert entry["role"] == "active" and entry["uki"] == "EFI/Linux/active+3.efi"
    assert entry["extra_dir"] == "EFI/Linux/active.efi.extra.d"
    for b, values in expected.items():
        assert [entry["pcr11_phases"][b][ph] for ph in PHASES] == values, b
        assert entry["pcrs"][b]["13"] == "0" * len(values[0])  # no extensions: PCR 13 untouched
        assert entry["pcrs"][b]["12"] == "0" * len(values[0])  # no credentials, no passed command line
    names = [e["description"] for e in entry["events"] if e["pcr"] == 11]
    sections = [n for n in names[::2]]
    assert names[::2] == names[1::2]  # the name event, then the data event, for each
    assert sections[0] == ".linux" and ".pcrsig" not in sections
    if variant == "ucode+splash":
        assert sections.index(".ucode") == sections.index(".initrd") + 1 and ".splash" in sections


def _pcrsig(uki: Path) -> bytes:
    dump = uki.with_suffix(".pcrsig")
    subprocess.run(["objcopy", "--dump-section", f".pcrsig={dump}", str(uki), str(uki.with_suffix(".tmp"))], check=True)
    return dump.read_bytes()


@pytest.mark.parametrize("variant", ["plain", "pcrpkey", "two banks"])
def test_sign_policy_is_ukifys_pcrsig_byte_for_byte(work: Path, variant: str) -> None:
    out = f"signed-{variant.replace(' ', '-')}.efi"
    ukify(work, out, "--pcr-private-key=key.pem", "--pcr-public-key=key.pub.pem", *VARIANTS[variant])
    embedded = _pcrsig(work / out)
    banks = [a for b in (["sha1", "sha256"] if variant == "two banks" else []) for a in ("--bank", b)]
    p = bk("tpm", "sign-policy", "--uki", work / out, "--key", work / "key.pem", *banks, "-o", work / f"{out}.bk")
    assert p.returncode == 0, p.stderr
    assert (work / f"{out}.bk").read_bytes() == embedded
    # and from the ESP, by role
    esp = work / f"esp-{out}"
    (esp / "EFI/Linux").mkdir(parents=True)
    (esp / "EFI/Linux/active.efi").write_bytes((work / out).read_bytes())
    p = bk("tpm", "sign-policy", "--esp", esp, "--entry", "active", "--key", work / "key.pem", *banks)
    assert p.returncode == 0, p.stderr
    assert p.stdout.rstrip("\n").encode() == embedded


def join(work: Path, uki: str, dest: str) -> subprocess.CompletedProcess[str]:
    sigs, pub = work / "sigs.json", work / "key.pub.pem"
    return bk("tpm", "sign-policy", "--uki", work / uki, "--signatures", sigs, "--public-key", pub, "-o", work / dest)


def test_the_hsm_form_signed_by_openssl_joins_to_the_same_pcrsig(work: Path) -> None:
    """Step 1 prints the digests; openssl (standing in for an HSM) signs each; step 2 joins them."""
    out = "hsm.efi"
    ukify(work, out, "--pcr-private-key=key.pem", "--pcr-public-key=key.pub.pem")
    p = bk("tpm", "sign-policy", "--uki", work / out, "--print-digests")
    assert p.returncode == 0, p.stderr
    todo = json.loads(p.stdout)
    assert len(todo) == 16 and {t["bank"] for t in todo} == {"sha1", "sha256", "sha384", "sha512"}
    sigs = []
    for t in todo:
        (work / "pol.bin").write_bytes(bytes.fromhex(t["pol"]))
        s = subprocess.run(
            ["openssl", "dgst", f"-{t['bank']}", "-sign", str(work / "key.pem"), str(work / "pol.bin")],
            check=True,
            capture_output=True,
        ).stdout
        sigs.append(base64.b64encode(s).decode())
    (work / "sigs.json").write_text(json.dumps(sigs))
    p = join(work, out, "joined")
    assert p.returncode == 0, p.stderr
    assert (work / "joined").read_bytes() == _pcrsig(work / out)
    # a signature by another key is refused, nothing written
    (work / "pol.bin").write_bytes(bytes.fromhex(todo[0]["pol"]))
    bad = subprocess.run(
        ["openssl", "dgst", "-sha1", "-sign", str(work / "other.pem"), str(work / "pol.bin")],
        check=True,
        capture_output=True,
    ).stdout
    (work / "sigs.json").write_text(json.dumps([base64.b64encode(bad).decode(), *sigs[1:]]))
    p = join(work, out, "joined2")
    assert p.returncode == 4 and "signature 1 (sha1" in p.stderr and not (work / "joined2").exists()


def test_the_pcrsig_ukify_embeds_authorizes_the_pcr11_it_produces_only_for_its_key(work: Path) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from bootkeeper.measure import banks, policy

    out = "auth.efi"
    expected = ukify(work, out, "--pcr-private-key=key.pem", "--pcr-public-key=key.pub.pem")
    sigs = policy.parse_pcrsig(_pcrsig(work / out), out)
    key = load_pem_public_key((work / "key.pub.pem").read_bytes())
    other = load_pem_public_key((work / "other.pub.pem").read_bytes())
    for b, values in expected.items():
        for v in values:
            assert policy.authorized(sigs, key, banks.bank(b), bytes.fromhex(v))
            assert not policy.authorized(sigs, other, banks.bank(b), bytes.fromhex(v))
        assert not policy.authorized(sigs, key, banks.bank(b), bytes(len(bytes.fromhex(values[0]))))


def test_each_profile_of_a_multi_profile_uki_is_its_own_entry_with_systemd_measures_pcr11(work: Path) -> None:
    """ukify --join-profile measures each profile (base + its sections); systemd-boot 257 lists each
    as an entry, passes ``@1`` (measured in PCR 12 by the boot loader) and the stub measures the profile
    number (an EV_EVENT_TAG)."""
    p = trixie.run("ukify build --profile='ID=debug' --cmdline='debug console=ttyS0' --output=p1.efi", work)
    assert p.returncode == 0, p.stderr
    values = ukify(work, "multi.efi", "--join-profile=p1.efi", "--pcr-banks=sha256")["sha256"]
    assert len(values) == 8  # four phases for profile 0, four for profile 1
    esp = work / "esp-multi"
    (esp / "EFI/Linux").mkdir(parents=True)
    (esp / "EFI/BOOT").mkdir(parents=True)
    import vmboot

    (esp / "EFI/BOOT/BOOTX64.EFI").write_bytes(vmboot.sdboot(257).read_bytes())
    (esp / "EFI/Linux/active.efi").write_bytes((work / "multi.efi").read_bytes())
    p2 = bk("tpm", "predict", "--esp", esp, "--json")
    assert p2.returncode == 0, p2.stderr
    entries = json.loads(p2.stdout)["entries"]
    assert [e["entry"] for e in entries] == ["active", "active@debug"]
    assert [entries[0]["pcr11_phases"]["sha256"][ph] for ph in PHASES] == values[:4]
    assert [entries[1]["pcr11_phases"]["sha256"][ph] for ph in PHASES] == values[4:]
    assert [(e["source"], e["type"], e["description"]) for e in entries[1]["events"] if e["pcr"] == 12] == [
        ("systemd-boot", "EV_IPL", "@1"),
        ("systemd-stub", "EV_EVENT_TAG", "1"),
    ]
    assert [e for e in entries[0]["events"] if e["pcr"] == 12] == []


def test_addons_command_lines_join_global_then_the_ukis_own(work: Path) -> None:
    """Addons built by ukify with the real addon stub: the global ones (loader/addons) first, then
    the UKI's .extra.d, each sorted, joined into one load-options event in PCR 12; an addon that
    carries a kernel is skipped, as the stub does."""
    for name, cmdline in (("b.addon.efi", "two"), ("a.addon.efi", "one"), ("mine.addon.efi", "three")):
        p = trixie.run(
            f"ukify build --stub=/usr/lib/systemd/boot/efi/addonx64.efi.stub --cmdline='{cmdline}' --output={name}",
            work,
        )
        assert p.returncode == 0, p.stderr
    ukify(work, "for-addons.efi")
    esp = work / "esp-addons"
    (esp / "EFI/Linux/active.efi.extra.d").mkdir(parents=True)
    (esp / "loader/addons").mkdir(parents=True)
    (esp / "EFI/Linux/active+2.efi").write_bytes((work / "for-addons.efi").read_bytes())
    for n in ("b.addon.efi", "a.addon.efi"):
        (esp / "loader/addons" / n).write_bytes((work / n).read_bytes())
    (esp / "EFI/Linux/active.efi.extra.d/mine.addon.efi").write_bytes((work / "mine.addon.efi").read_bytes())
    (esp / "EFI/Linux/active.efi.extra.d/kernel.addon.efi").write_bytes((work / "for-addons.efi").read_bytes())
    p = bk("tpm", "predict", "--esp", esp, "--json")
    assert p.returncode == 0, p.stderr
    (entry,) = json.loads(p.stdout)["entries"]
    pcr12 = [e for e in entry["events"] if e["pcr"] == 12]
    assert [(e["source"], e["description"]) for e in pcr12] == [("systemd-stub", "one two three")]
    import hashlib

    assert pcr12[0]["digests"]["sha256"] == hashlib.sha256("one two three\0".encode("utf-16-le")).hexdigest()
    assert entry["pcrs"]["sha256"]["13"] == "0" * 64  # an addon is not an extension
