"""Issue 27 items 6 and 7: hostile input to the ``tpm`` verbs is one line and a documented exit code, never
an internal error, and a tiny UKI cannot make them hash gigabytes.

LUKS2 volumes from the real cryptsetup (luksFormat on a file, the hostile tokens put in by ``cryptsetup
token import``, which checks only a token's type and keyslots without systemd's plugin), keys from the
real openssl; the verbs run as the operator runs them, in a subprocess."""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from bootkeeper.esp import scratch
from helpers import one_line_error, uki

pytestmark = pytest.mark.integration
OSREL = "ID=kairos\nIMAGE_ID=kairos\nVERSION_ID={v}\nIMAGE_VERSION={v}\n"
GUARD = 60  # s: a guard against the gigabytes of zeros, not a measure of speed
DEEP = b"[" * 200_000  # far deeper than the interpreter's recursion limit, 200 KB


def bk(*args: str | Path, guard: float = GUARD) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bootkeeper", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=guard,
        env={**os.environ, "COLUMNS": "200"},
    )


def openssl(*args: str) -> bytes:
    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


def volume(tmp_path: Path, token: dict[str, object]) -> Path:
    """A LUKS2 volume by the real cryptsetup holding ``token`` as token 0."""
    vol = tmp_path / "hostile.luks"
    with vol.open("wb") as f:
        f.truncate(32 << 20)
    key = tmp_path / "passphrase"
    key.write_text("bootkeeper-test")
    fmt = ["luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
    subprocess.run(["cryptsetup", *fmt, "--key-file", str(key), str(vol)], check=True, capture_output=True)
    tok = tmp_path / "token.json"
    tok.write_text(json.dumps(token))
    subprocess.run(
        ["cryptsetup", "token", "import", "--disable-external-tokens", "--json-file", str(tok), str(vol)],
        check=True,
        capture_output=True,
    )
    return vol


def signed_token(pubkey_pem: bytes) -> dict[str, object]:
    """What systemd-cryptenroll --tpm2-public-key=... --tpm2-public-key-pcrs=11 --tpm2-pcrs= writes
    (the blob and policy hash are never looked at by bootkeeper)."""
    return {
        "type": "systemd-tpm2",
        "keyslots": [],
        "tpm2-blob": "AA==",
        "tpm2-pcrs": [],
        "tpm2-pcr-bank": "sha256",
        "tpm2-policy-hash": "00",
        "tpm2_pubkey": base64.b64encode(pubkey_pem).decode(),
        "tpm2_pubkey_pcrs": [11],
    }


@pytest.fixture(scope="module")
def rsa_pub(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    d = tmp_path_factory.mktemp("keys")
    openssl("genrsa", "-out", str(d / "k.pem"), "2048")
    return openssl("rsa", "-in", str(d / "k.pem"), "-pubout")


def esp_with(root: Path, **ukis: bytes) -> Path:
    e = root / "esp"
    (e / "EFI" / "Linux").mkdir(parents=True)
    (e / "loader").mkdir()
    (e / "loader" / "loader.conf").write_text("timeout 0\n")
    for role, data in ukis.items():
        (e / "EFI" / "Linux" / f"{role}+3.efi").write_bytes(data)
    return e


def deep_pcrsig_uki(rsa_pub: bytes) -> bytes:
    return scratch.stand_in_uki(
        ((b".linux", b"kernel"), (b".osrel", OSREL.format(v=2).encode()), (b".pcrpkey", rsa_pub), (b".pcrsig", DEEP))
    )


# --- item 6: .pcrsig, LUKS2 tokens --------------------------------------------------------------


def test_audit_a_pcrsig_of_deeply_nested_json(tmp_path: Path, rsa_pub: bytes) -> None:
    vol = volume(tmp_path, signed_token(rsa_pub))
    e = esp_with(tmp_path, active=deep_pcrsig_uki(rsa_pub))
    one_line_error(bk("tpm", "audit", vol, "--esp", e), 4, "EFI/Linux/active+3.efi", ".pcrsig", "nested deeper")


def test_upgrade_luks_a_pcrsig_of_deeply_nested_json(tmp_path: Path, rsa_pub: bytes) -> None:
    vol = volume(tmp_path, signed_token(rsa_pub))
    e = esp_with(tmp_path, active=uki(OSREL.format(v=1), tag="v1"), passive=uki(OSREL.format(v=0), tag="v0"))
    before = {p: p.read_bytes() for p in e.rglob("*") if p.is_file()}
    new = tmp_path / "new.efi"
    new.write_bytes(deep_pcrsig_uki(rsa_pub))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sysext:\n  firmware: []\n  verity_dirs: []\n")
    p = bk("upgrade", new, "--esp", e, "--config", cfg, "--root", tmp_path, "--luks", vol)
    one_line_error(p, 4, str(new), ".pcrsig", "nested deeper")
    assert {p: p.read_bytes() for p in e.rglob("*") if p.is_file()} == before


UNKNOWN_SPKI = bytes.fromhex("300b300506032a030403020001")  # SubjectPublicKeyInfo, algorithm OID 1.2.3.4


def _pem(der: bytes) -> bytes:
    return b"-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(der) + b"-----END PUBLIC KEY-----\n"


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("unknown-pem", ["a public key of a type OpenSSL does not know", "expected RSA or EC"]),
        ("unknown-der", ["a public key of a type OpenSSL does not know", "expected RSA or EC"]),
        ("ed25519", ["a Ed25519 key", "RSA or EC"]),
        ("ed448", ["a Ed448 key", "RSA or EC"]),
    ],
)
def test_audit_a_token_key_of_a_type_the_policy_cannot_use(
    tmp_path: Path, rsa_pub: bytes, kind: str, words: list[str]
) -> None:
    if kind.startswith("unknown"):
        key = _pem(UNKNOWN_SPKI) if kind == "unknown-pem" else UNKNOWN_SPKI
    else:
        openssl("genpkey", "-algorithm", kind, "-out", str(tmp_path / "k.pem"))
        key = openssl("pkey", "-in", str(tmp_path / "k.pem"), "-pubout")
    vol = volume(tmp_path, signed_token(key))
    e = esp_with(tmp_path, active=uki(OSREL.format(v=1)))
    one_line_error(bk("tpm", "audit", vol, "--esp", e), 4, str(vol), "token 0", "tpm2_pubkey", *words)
    # the same token where upgrade reads it
    new = tmp_path / "new.efi"
    new.write_bytes(uki(OSREL.format(v=2), tag="new"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sysext:\n  firmware: []\n  verity_dirs: []\n")
    p = bk("upgrade", new, "--esp", e, "--config", cfg, "--root", tmp_path, "--luks", vol)
    one_line_error(p, 4, str(vol), "token 0", "tpm2_pubkey", *words)


def test_a_pcrpkey_of_an_unknown_type_is_no_match_not_a_crash(tmp_path: Path, rsa_pub: bytes) -> None:
    """A UKI's .pcrpkey is only compared with the token's key: one that does not load does not match."""
    vol = volume(tmp_path, signed_token(rsa_pub))
    data = scratch.stand_in_uki(
        ((b".linux", b"kernel"), (b".osrel", OSREL.format(v=2).encode()), (b".pcrpkey", _pem(UNKNOWN_SPKI)))
    )
    e = esp_with(tmp_path, active=data)
    p = bk("tpm", "audit", vol, "--esp", e, "--json")
    assert p.returncode == 1 and p.stderr == "", p.stderr
    (tok,) = json.loads(p.stdout)["tokens"]
    assert [u["pcrpkey_matches"] for u in tok["ukis"]] == [False]


@pytest.mark.parametrize(
    ("option", "data", "words"),
    [
        ("--signatures", DEEP, ["not a JSON list of base64 signatures", "nested deeper"]),
        ("--public-key", _pem(UNKNOWN_SPKI), ["a public key of a type OpenSSL does not know"]),
    ],
)
def test_sign_policy_operator_files(tmp_path: Path, rsa_pub: bytes, option: str, data: bytes, words: list[str]) -> None:
    u = tmp_path / "u.efi"
    u.write_bytes(uki(OSREL.format(v=1)))
    sigs, pub = tmp_path / "sigs.json", tmp_path / "pub.pem"
    sigs.write_text('["AA=="]')
    pub.write_bytes(rsa_pub)
    (sigs if option == "--signatures" else pub).write_bytes(data)
    p = bk("tpm", "sign-policy", "--uki", u, "--signatures", sigs, "--public-key", pub, "--bank", "sha256")
    one_line_error(p, 4, str(sigs if option == "--signatures" else pub), *words)


def test_sign_policy_an_ed25519_private_key(tmp_path: Path) -> None:
    u = tmp_path / "u.efi"
    u.write_bytes(uki(OSREL.format(v=1)))
    key = tmp_path / "ed.pem"
    openssl("genpkey", "-algorithm", "ed25519", "-out", str(key))
    one_line_error(bk("tpm", "sign-policy", "--uki", u, "--key", key), 4, str(key), "Ed25519", "RSA or EC")


def test_verify_expect_of_deeply_nested_json(tmp_path: Path) -> None:
    from bootkeeper.errors import MalformedError
    from bootkeeper.measure.untrusted import load_json

    with pytest.raises(MalformedError) as e:
        load_json(DEEP, "x.json", 1 << 20, "the output of tpm predict --json")
    assert str(e.value) == "x.json: not the output of tpm predict --json: nested deeper than 64 levels"
    # deep but within the interpreter's stack: refused all the same (later walks and repr() would not be)
    with pytest.raises(MalformedError, match="nested deeper"):
        load_json(b"[" * 300 + b"]" * 300, "x.json", 1 << 20)


# --- item 7: what a section may claim ------------------------------------------------------------


def claiming(vsize: int) -> bytes:
    """A stand-in UKI of a few KiB whose every section claims ``vsize`` bytes of VirtualSize."""
    data = bytearray(
        scratch.stand_in_uki(
            ((b".linux", b"kernel" * 100), (b".osrel", OSREL.format(v=2).encode()), (b".cmdline", b"quiet"))
        )
    )
    pe_off = struct.unpack_from("<I", data, 0x3C)[0]
    n = struct.unpack_from("<H", data, pe_off + 6)[0]
    opt = struct.unpack_from("<H", data, pe_off + 20)[0]
    for i in range(n):
        struct.pack_into("<I", data, pe_off + 24 + opt + 40 * i + 8, vsize)
    return bytes(data)


def test_a_tiny_uki_claiming_4_gib_a_section_is_refused_by_every_verb(tmp_path: Path) -> None:
    data = claiming(0xFFFFF000)
    assert len(data) < 8192
    e = esp_with(tmp_path, active=data)
    efi = e / "EFI" / "Linux" / "active+3.efi"
    words = ["active+3.efi", "section .linux claims VirtualSize 4294963200 with 600 bytes in the file", "more than"]
    one_line_error(bk("tpm", "predict", "--esp", e), 4, *words)
    one_line_error(bk("tpm", "pcrlock", "--esp", e, "--dest", tmp_path / "pcrlock.d"), 4, *words)
    one_line_error(bk("tpm", "sign-policy", "--esp", e, "--entry", "active", "--print-digests"), 4, *words)
    one_line_error(bk("tpm", "sign-policy", "--uki", efi, "--print-digests"), 4, *words)
    assert not (tmp_path / "pcrlock.d").exists()


def test_the_bound_counts_every_measured_section(tmp_path: Path) -> None:
    """Each section under the bound, together over it: the one that crosses it is named."""
    from bootkeeper.measure.uki import MAX_ZERO_FILL

    data = claiming(MAX_ZERO_FILL // 2 + 4096)
    e = esp_with(tmp_path, active=data)
    one_line_error(bk("tpm", "predict", "--esp", e), 4, "active+3.efi", "section .osrel claims VirtualSize")


def test_a_zero_filled_linux_as_ukify_writes_it_still_predicts(tmp_path: Path) -> None:
    """ukify sets .linux's VirtualSize to the kernel's SizeOfImage: some MiB of zeros are a real UKI's."""
    data = bytearray(claiming(0))
    pe_off = struct.unpack_from("<I", data, 0x3C)[0]
    opt = struct.unpack_from("<H", data, pe_off + 20)[0]
    struct.pack_into("<I", data, pe_off + 24 + opt + 8, 8 << 20)  # .linux: 8 MiB, 600 bytes of them in the file
    for i in (1, 2):
        struct.pack_into("<I", data, pe_off + 24 + opt + 40 * i + 8, 16)
    e = esp_with(tmp_path, active=bytes(data))
    p = bk("tpm", "predict", "--esp", e, "--json")
    assert p.returncode == 0, p.stderr
    (entry,) = json.loads(p.stdout)["entries"]
    assert any("(8388608 bytes)" in ev["what"] for ev in entry["events"] if ev["pcr"] == 11)


def profiled(sections: list[tuple[bytes, bytes]], linux_vsize: int) -> bytes:
    """A stand-in UKI of ``sections`` (``.profile`` ones included) whose every ``.linux`` claims
    ``linux_vsize`` bytes of VirtualSize."""
    data = bytearray(scratch.stand_in_uki(tuple(sections)))
    pe_off = struct.unpack_from("<I", data, 0x3C)[0]
    n = struct.unpack_from("<H", data, pe_off + 6)[0]
    opt = struct.unpack_from("<H", data, pe_off + 20)[0]
    for i in range(n):
        at = pe_off + 24 + opt + 40 * i
        if data[at : at + 8].rstrip(b"\0") == b".linux":
            struct.pack_into("<I", data, at + 8, linux_vsize)
    return bytes(data)


def test_the_bound_is_the_files_across_its_profiles(tmp_path: Path) -> None:
    """Three .linux sections (the base one and two profiles' own), each under the bound and each
    profile's set under it, together over it: the firmware loads them all, so the file is refused
    by every verb, whichever profile it is asked about (it was bounded per profile)."""
    from bootkeeper.measure.uki import MAX_ZERO_FILL

    osrel = OSREL.format(v=2).encode()
    secs = [(b".linux", b"kernel"), (b".osrel", osrel)]
    for i in (1, 2):
        secs += [(b".profile", f"ID=p{i}\nTITLE=p{i}\n".encode()), (b".linux", b"kernel%d" % i)]
    data = profiled(secs, MAX_ZERO_FILL // 2 + 4096)
    assert len(data) < 8192
    e = esp_with(tmp_path, active=data)
    words = ["active+3.efi", "section .linux claims VirtualSize", "(all profiles)", f"more than the {MAX_ZERO_FILL}"]
    one_line_error(bk("tpm", "predict", "--esp", e), 4, *words)
    one_line_error(bk("tpm", "pcrlock", "--esp", e, "--dest", tmp_path / "pcrlock.d"), 4, *words)
    one_line_error(bk("tpm", "sign-policy", "--esp", e, "--entry", "active", "--print-digests"), 4, *words)
    assert not (tmp_path / "pcrlock.d").exists()


def test_profiles_sharing_a_zero_filled_linux_hash_it_once(tmp_path: Path) -> None:
    """The reviewer's 53 KiB UKI: a base .linux of 250 MiB (under the bound) and 94 profiles that all
    use it. Every profile's prediction has that section's digest, but it is hashed once: the verb
    runs under a CPU-time limit that 94 x 250 MiB of SHA-256 (about 24 s of CPU) would cross."""
    import hashlib

    vsize = 250 << 20
    secs = [(b".linux", b"kernel"), (b".osrel", OSREL.format(v=2).encode())]
    secs += [(b".profile", f"ID=p{i}\nTITLE=p{i}\n".encode()) for i in range(94)]
    data = profiled(secs, vsize)
    assert len(data) < 64 << 10
    e = esp_with(tmp_path, active=data)
    linux = hashlib.sha256(b"kernel" + bytes(vsize - 6)).hexdigest()  # the stub's view: the bytes, then zeros
    p = subprocess.run(
        ["prlimit", "--cpu=8", sys.executable, "-m", "bootkeeper", "tpm", "predict", "--esp", e, "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=GUARD,
    )
    assert p.returncode == 0, (p.returncode, p.stderr[-500:])
    entries = json.loads(p.stdout)["entries"]
    assert len(entries) == 94  # profile 0 is the entry itself, then @p1 .. @p93
    for entry in entries:
        (ev,) = [ev for ev in entry["events"] if ev["pcr"] == 11 and f"({vsize} bytes)" in ev["what"]]
        assert ev["digests"]["sha256"] == linux, entry["entry"]


# --- item 7: a FIFO (or other non-regular file) where the verbs read a file ------------------------

FIFO_GUARD = 30  # s: a FIFO nobody writes to blocks a blocking open() forever


def bk_fifo(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return bk(*args, guard=FIFO_GUARD)


@pytest.mark.parametrize("name", ["c.raw", "c.confext.raw", "c.cred", "c.addon.efi"])
def test_a_fifo_in_extra_d_is_refused_not_waited_on(tmp_path: Path, name: str) -> None:
    """Every file the stub would pack (or load, an addon) from .extra.d is opened without blocking and
    refused unless regular: predict and pcrlock say so in one line (it used to hang on open())."""
    e = esp_with(tmp_path, active=uki(OSREL.format(v=1)))
    extra = e / "EFI" / "Linux" / "active.efi.extra.d"  # the counter is not part of it
    extra.mkdir()
    (extra / "a.raw").write_bytes(b"a regular extension")
    os.mkfifo(extra / name)
    words = [f"EFI/Linux/active.efi.extra.d/{name}", "not a regular file (a FIFO); not read"]
    one_line_error(bk_fifo("tpm", "predict", "--esp", e), 7, *words)
    one_line_error(bk_fifo("tpm", "pcrlock", "--esp", e, "--dest", tmp_path / "pcrlock.d"), 7, *words)
    assert not (tmp_path / "pcrlock.d").exists()


def test_a_fifo_for_a_global_addon_or_credential_is_refused(tmp_path: Path) -> None:
    e = esp_with(tmp_path, active=uki(OSREL.format(v=1)))
    for folder, name in (("loader/addons", "x.addon.efi"), ("loader/credentials", "x.cred")):
        (e / folder).mkdir(parents=True)
        os.mkfifo(e / folder / name)
        one_line_error(bk_fifo("tpm", "predict", "--esp", e), 7, f"{folder}/{name}", "not a regular file (a FIFO)")
        (e / folder / name).unlink()
    assert bk_fifo("tpm", "predict", "--esp", e).returncode == 0


# --- whole-file reads: bounded before anything is held -----------------------------------------

AS_LIMIT = "--as=1500000000"  # bytes of address space: a whole read of a 2 GiB file cannot fit


def sparse(path: Path, size: int = 2 << 30) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def limited(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["prlimit", AS_LIMIT, sys.executable, *map(str, argv)],
        capture_output=True,
        text=True,
        check=False,
        timeout=GUARD,
    )


@pytest.mark.parametrize("option", ["--signatures", "--public-key"])
def test_sign_policy_an_operator_file_of_2_gib_is_refused_unread(tmp_path: Path, rsa_pub: bytes, option: str) -> None:
    """fsutil.read_input, every file an operator names (keys, --signatures, --expect, certificates):
    at most its limit + 1 bytes are read (it read the file whole: MemoryError, exit 70)."""
    from bootkeeper.fsutil import INPUT_LIMIT

    u = tmp_path / "u.efi"
    u.write_bytes(uki(OSREL.format(v=1)))
    sigs, pub = tmp_path / "sigs.json", tmp_path / "pub.pem"
    sigs.write_text('["AA=="]')
    pub.write_bytes(rsa_pub)
    big = sparse(sigs if option == "--signatures" else pub)
    p = limited("-m", "bootkeeper", "tpm", "sign-policy", "--uki", u, "--signatures", sigs, "--public-key", pub)
    one_line_error(p, 7, f"{big}: {2 << 30} bytes, more than the {INPUT_LIMIT} bytes")


def test_a_pcrlock_policy_of_2_gib_gates_as_pcrlocks_default(tmp_path: Path) -> None:
    """The node's pcrlock.json (read by the extension gate) is bounded before it is read: one of
    2 GiB is "cannot be read", which gates on pcrlock's default PCRs (it was read whole)."""
    from bootkeeper.measure.luks import MAX_METADATA, PCRLOCK_POLICY

    root = tmp_path / "root"
    policy = root / PCRLOCK_POLICY
    policy.parent.mkdir(parents=True)
    sparse(policy)
    code = (
        "import pathlib; from bootkeeper.measure import luks; "
        f"print(luks.pcrlock_policy(pathlib.Path({str(root)!r})).source)"
    )
    p = limited("-c", code)
    assert p.returncode == 0, (p.returncode, p.stderr[-800:])
    assert p.stdout.startswith(f"systemd-pcrlock's default PCRs ({policy} cannot be read: "), p.stdout
    assert f"{2 << 30} bytes, more than the {MAX_METADATA} bytes" in p.stdout, p.stdout


def test_a_fifo_named_as_the_luks_volume_is_refused(tmp_path: Path) -> None:
    """A LUKS volume (tpm audit DEVICE: a block device or an image file) is opened without blocking
    too: a FIFO gets one line (it hung in open())."""
    fifo = tmp_path / "volume"
    os.mkfifo(fifo)
    e = esp_with(tmp_path, active=uki(OSREL.format(v=1)))
    one_line_error(bk_fifo("tpm", "audit", fifo, "--esp", e), 7, str(fifo), "neither a block device nor a file")


def test_a_link_the_operator_names_is_still_followed(tmp_path: Path) -> None:
    """read_input bounds and refuses FIFOs, but a link the operator names (/etc/os-release is one to
    ../usr/lib/os-release) is followed, as before; a link to a FIFO is refused all the same."""
    from bootkeeper import fsutil
    from bootkeeper.errors import UnreadableError

    (tmp_path / "os-release.real").write_text("ID=kairos\n")
    (tmp_path / "os-release").symlink_to("os-release.real")
    assert fsutil.read_input_text(tmp_path / "os-release", "the os-release") == "ID=kairos\n"
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "to-fifo").symlink_to("fifo")
    with pytest.raises(UnreadableError, match="not a regular file"):
        fsutil.read_input(tmp_path / "to-fifo")
