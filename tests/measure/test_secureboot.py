"""measure/secureboot.py against the real sbsigntool: UKI-like images (trixie's systemd-stub 257 with
sections added by binutils' objcopy) signed by the real ``sbsign`` with keys and certificates made by
the real ``openssl``, judged by ``verify_uki`` and by the real ``sbverify --cert`` (a differential table:
the two must agree, and both with the expected verdict); revocation through ``dbx`` lists written by the
real ``sbsiglist`` and read by node/trust.py ``uki_anchors``; hostile images, each a one-line refusal."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import struct
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

import trixie
from bootkeeper import config
from bootkeeper.errors import RefusedError
from bootkeeper.measure import authenticode
from bootkeeper.measure.banks import BANKS
from bootkeeper.measure.secureboot import Revoked, SbVerdict, verify_uki
from bootkeeper.node.trust import require_signed_uki, uki_anchors
from bootkeeper.sysext import trust

pytestmark = [pytest.mark.integration]
STUB = trixie.ROOT / "usr/lib/systemd/boot/efi/linuxx64.efi.stub"
OWNER = uuid.UUID("605dab50-e046-4300-abb6-3dd810dd8b23")
ATTRS = struct.pack("<I", 0x27)  # NV | BS | RT | time-based authenticated write, as firmware sets db/dbx
CNF = """
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3ca]
basicConstraints = critical,CA:TRUE
keyUsage = keyCertSign, digitalSignature
subjectKeyIdentifier = hash
[v3leaf]
basicConstraints = CA:FALSE
keyUsage = digitalSignature
extendedKeyUsage = codeSigning
[ca]
default_ca = here
[here]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = any
unique_subject = no
[any]
commonName = supplied
"""


def run(w: Path, *cmd: str) -> None:
    """Run a command in ``w``; one string is split as the shell would (no file name has a space)."""
    args = shlex.split(cmd[0]) if len(cmd) == 1 else list(cmd)
    p = subprocess.run(args, cwd=w, capture_output=True, text=True, check=False)
    assert p.returncode == 0, f"{args}: {p.stderr}"


NEW_KEY = "-newkey rsa:2048 -nodes -config cnf"


def self_signed(w: Path, name: str, cn: str) -> None:
    run(w, f"openssl req -x509 {NEW_KEY} -keyout {name}.key -out {name}.crt -extensions v3ca -subj '/CN={cn}' -days 30")


def issued(w: Path, name: str, cn: str, by: str, serial: int, ext: str = "v3leaf") -> None:
    run(w, f"openssl req -new {NEW_KEY} -keyout {name}.key -out {name}.csr -subj '/CN={cn}'")
    run(
        w,
        f"openssl x509 -req -in {name}.csr -CA {by}.crt -CAkey {by}.key -set_serial {serial} -days 30 "
        f"-extfile cnf -extensions {ext} -out {name}.crt",
    )


def sign(w: Path, src: str, out: str, key: str, *extra: str) -> None:
    run(w, "sbsign", "--key", f"{key}.key", "--cert", f"{key}.crt", *extra, "--output", out, src)


def make_uki(w: Path, out: str = "uki.efi", cmdline: str = "console=ttyS0") -> None:
    """A UKI's shape: systemd-stub with .osrel, .cmdline, .linux and .initrd, placed after the stub's
    own sections (their addresses relative to the stub's ImageBase), as ukify places them."""
    raw = STUB.read_bytes()
    pe = struct.unpack_from("<I", raw, 0x3C)[0]
    base = struct.unpack_from("<Q", raw, pe + 24 + 24)[0]
    rnd = hashlib.shake_256(b"secureboot test").digest(400_000)
    (w / "osrel").write_text("ID=debian\nVERSION_ID=13\nIMAGE_VERSION=2\n")
    (w / "cmdline").write_text(cmdline)
    (w / "linux").write_bytes(rnd[:300_000])
    (w / "initrd").write_bytes(rnd[300_000:])
    args = []
    for i, name in enumerate(("osrel", "cmdline", "linux", "initrd")):
        args += ["--add-section", f".{name}={name}", "--change-section-vma", f".{name}={base + 0x100000 * (i + 1):#x}"]
    run(w, "objcopy", *args, str(STUB), out)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ("sbsign", "sbverify", "sbsiglist", "openssl", "objcopy"):
        assert shutil.which(tool), f"{tool} missing: scripts/setup-test-deps.sh installs it"
    assert STUB.exists(), f"no {STUB}: scripts/setup-trixie.sh makes the trixie tree"
    w = tmp_path_factory.mktemp("secureboot")
    (w / "cnf").write_text(CNF)
    (w / "index.txt").write_text("")
    (w / "serial").write_text("01\n")
    make_uki(w)
    make_uki(w, "uki2.efi", "console=ttyS1")
    self_signed(w, "A", "key A")
    self_signed(w, "B", "key B")
    self_signed(w, "ca", "test CA")
    issued(w, "leaf", "leaf of test CA", "ca", 9)
    issued(w, "mid", "not a CA", "ca", 7)
    issued(w, "leaf2", "leaf under not a CA", "mid", 8)
    # an expired signer: openssl 3.0's req/x509 cannot back-date, its ca can
    run(w, f"openssl req -new {NEW_KEY} -keyout old.key -out old.csr -subj '/CN=expired key'")
    run(
        w,
        "openssl ca -batch -config cnf -selfsign -keyfile old.key -in old.csr -startdate 20200101000000Z "
        "-enddate 20200201000000Z -extensions v3ca -out old.crt",
    )
    sign(w, "uki.efi", "a.efi", "A")
    sign(w, "uki2.efi", "a2.efi", "A")
    sign(w, "a.efi", "ab.efi", "B")
    sign(w, "uki.efi", "b.efi", "B")
    sign(w, "b.efi", "ba.efi", "A")
    sign(w, "uki.efi", "leaf.efi", "leaf")
    sign(w, "uki.efi", "leaf2.efi", "leaf2", "--addcert", "mid.crt")
    sign(w, "uki.efi", "old.efi", "old")
    run(
        w,
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -config cnf -keyout E.key -out E.crt "
        "-extensions v3ca -subj '/CN=EC key' -days 30",
    )
    sign(w, "uki.efi", "e.efi", "E")
    (w / "odd.efi").write_bytes((w / "uki.efi").read_bytes() + b"abc")  # sbsign pads it to 8 bytes
    sign(w, "odd.efi", "aodd.efi", "A")
    data = bytearray((w / "a.efi").read_bytes())
    data[len(data) // 3] ^= 0x01  # inside .linux: hashed, signed over
    (w / "changed.efi").write_bytes(bytes(data))
    return w


def cert(w: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((w / f"{name}.crt").read_bytes())


def sbverify(w: Path, image: str, anchor: str) -> int:
    return subprocess.run(
        ["sbverify", "--cert", f"{anchor}.crt", image], cwd=w, capture_output=True, check=False
    ).returncode


# (case, image, the certificate given to both, the verdict expected of both)
TABLE = [
    ("signed by the anchor", "a.efi", "A", True),
    ("signed by another key", "a.efi", "B", False),
    ("unsigned", "uki.efi", "A", False),
    ("a byte changed after signing", "changed.efi", "A", False),
    ("signed twice, first by an unknown key, then by the anchor", "ba.efi", "A", True),
    ("signed twice, first by the anchor", "ab.efi", "A", True),
    ("signed twice, the second signer as anchor", "ab.efi", "B", True),
    ("a leaf of the anchor CA signs", "leaf.efi", "ca", True),
    ("the leaf itself as anchor", "leaf.efi", "leaf", True),
    ("the leaf's CA is not the anchor", "leaf.efi", "A", False),
    ("through an intermediate that is not a CA", "leaf2.efi", "ca", False),
    ("an expired signer (the firmware checks no dates)", "old.efi", "old", True),
    ("an ECDSA P-256 signer", "e.efi", "E", True),
    ("an image of a size not a multiple of 8, padded by sbsign", "aodd.efi", "A", True),
    ("the padded image, another key", "aodd.efi", "B", False),
]


@pytest.mark.parametrize(("case", "image", "anchor", "expected"), TABLE, ids=[t[0] for t in TABLE])
def test_same_verdict_as_sbverify(work: Path, case: str, image: str, anchor: str, expected: bool) -> None:
    theirs = sbverify(work, image, anchor) == 0
    ours = verify_uki(work / image, [cert(work, anchor)])
    assert "\n" not in ours.reason
    assert (theirs, ours.ok) == (expected, expected), f"{case}: sbverify {theirs}, ours {ours}"
    if ours.ok:
        assert ours.signer is not None


def test_reasons_name_what_failed(work: Path) -> None:
    a = cert(work, "A")
    assert verify_uki(work / "uki.efi", [a]).reason.startswith("not signed")
    assert "changed after signing" in verify_uki(work / "changed.efi", [a]).reason
    other = verify_uki(work / "a.efi", [cert(work, "B")])
    assert other.reason == "signature 1: CN=key A does not chain to a trusted certificate (1 anchors)"
    ok = verify_uki(work / "leaf.efi", [cert(work, "ca")])
    assert (ok.signer, ok.reason) == ("CN=leaf of test CA", "signed by CN=leaf of test CA, trusted through CN=test CA")
    with pytest.raises(RefusedError, match=r"^new\.efi: Secure Boot signature: not signed"):
        verify_uki(work / "uki.efi", [a]).require("new.efi")
    verify_uki(work / "a.efi", [a]).require("new.efi")


def test_the_hash_is_the_firmware_one_not_systemds_padded(work: Path) -> None:
    """The image sbsign signed is what the signature's digest names: the PE hash without pesign's
    padding (a signed image's table ends it, so the two differ only for an unsigned odd-sized one)."""
    with (work / "a.efi").open("rb") as f:
        img = authenticode.Image(f, "a.efi", os.fstat(f.fileno()).st_size)
        ours = authenticode.digests(img, [BANKS["sha256"]])["sha256"]
    out = subprocess.run(["sbverify", "--list", "a.efi"], cwd=work, capture_output=True, text=True, check=True)
    assert "signature 1" in out.stdout
    assert verify_uki(work / "a.efi", [cert(work, "A")], Revoked(image_hashes=frozenset({ours}))).reason == (
        f"its Authenticode SHA-256 {ours.hex()} is in dbx"
    )


# --- dbx, through node/trust.py uki_anchors and lists the real sbsiglist writes -------------------


@dataclass
class Node:
    root: Path
    efivars: Path
    cfg: config.Config
    said: list[str]


def esl(w: Path, kind: str, data: bytes) -> bytes:
    src = w / f"sig-{hashlib.sha256(data).hexdigest()[:12]}"
    src.write_bytes(data)
    run(w, "sbsiglist", "--owner", str(OWNER), "--type", kind, "--output", f"{src.name}.esl", src.name)
    return (w / f"{src.name}.esl").read_bytes()


def der(c: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return c.public_bytes(Encoding.DER)


def node(tmp: Path, work: Path, db: list[str], dbx: bytes | None, yaml: str = "") -> Node:
    ev = tmp / "efivars"
    ev.mkdir(parents=True)
    if db:
        lists = b"".join(esl(work, "x509", der(cert(work, n))) for n in db)
        (ev / f"db-{trust.IMAGE_SECURITY_DATABASE}").write_bytes(ATTRS + lists)
    if dbx is not None:
        (ev / f"dbx-{trust.IMAGE_SECURITY_DATABASE}").write_bytes(ATTRS + dbx)
    (tmp / "oem").mkdir(exist_ok=True)
    (tmp / "oem/90.yaml").write_text("sysext:\n  verity_dirs: []\n" + yaml)
    said: list[str] = []
    return Node(tmp, ev, config.load([tmp / "oem/90.yaml"]), said)


def judge(n: Node, work: Path, image: str) -> SbVerdict:
    anchors, revoked = uki_anchors(n.cfg, n.root, n.efivars, n.said.append)
    return verify_uki(work / image, anchors, revoked)


def image_hash(work: Path, image: str) -> bytes:
    with (work / image).open("rb") as f:
        img = authenticode.Image(f, image, os.fstat(f.fileno()).st_size)
        return authenticode.digests(img, [BANKS["sha256"]])["sha256"]


def test_db_admits_and_dbx_refuses(tmp_path: Path, work: Path) -> None:
    assert judge(node(tmp_path / "1", work, ["A", "ca"], None), work, "leaf.efi").ok
    # the image's hash in dbx: refused, though its signer is in db
    n = node(tmp_path / "2", work, ["A"], esl(work, "sha256", image_hash(work, "a.efi")))
    v = judge(n, work, "a.efi")
    assert not v.ok and "is in dbx" in v.reason
    # the hash leaves the certificate table out: every signed copy of that image is revoked with it
    assert "is in dbx" in judge(n, work, "ab.efi").reason
    assert judge(n, work, "a2.efi").ok  # another image signed by the same key is not
    # the signer's certificate in dbx: db's anchor is gone, and the signature is refused
    n = node(tmp_path / "3", work, ["A", "B"], esl(work, "x509", der(cert(work, "A"))))
    v = judge(n, work, "ab.efi")
    assert (v.ok, v.reason) == (False, "signature 1: CN=key A chains to CN=key A, which dbx revokes")
    assert any("CN=key A" in s and "not trusted for UKIs" in s for s in n.said)
    assert judge(n, work, "b.efi").ok
    assert require_signed_uki(n.cfg, n.root, n.efivars, work / "b.efi", "v2/b.efi", n.said.append) == "CN=key B"
    with pytest.raises(RefusedError) as e:
        require_signed_uki(n.cfg, n.root, n.efivars, work / "ab.efi", "v2/uki.efi", n.said.append)
    assert (
        str(e.value) == "v2/uki.efi: Secure Boot signature: signature 1: CN=key A chains to CN=key A, which dbx revokes"
    )
    # the CA above the signer in dbx, the CA still in db (dbx wins)
    n = node(tmp_path / "4", work, ["ca"], esl(work, "x509", der(cert(work, "ca"))))
    assert "which dbx revokes" in judge(n, work, "leaf.efi").reason


def test_a_revoked_tbs_hash_in_the_chain(work: Path) -> None:
    tbs = hashlib.sha256(cert(work, "leaf").tbs_certificate_bytes).digest()
    v = verify_uki(work / "leaf.efi", [cert(work, "ca")], Revoked(tbs_hashes=frozenset({tbs})))
    assert (v.ok, v.reason) == (False, "signature 1: dbx revokes CN=leaf of test CA (SHA-256 of its TBS part)")


def test_configured_certificates_count_and_unreadable_trust_makes_fewer(tmp_path: Path, work: Path) -> None:
    (tmp_path / "1").mkdir()
    shutil.copy(work / "B.crt", tmp_path / "1/b.crt")
    n = node(tmp_path / "1", work, [], None, "  certificates: [/b.crt]\n")
    assert judge(n, work, "b.efi").ok and not judge(n, work, "a.efi").ok
    # an unreadable dbx trusts nothing, configured certificates included, and says so
    (tmp_path / "2").mkdir()
    shutil.copy(work / "B.crt", tmp_path / "2/b.crt")
    n = node(tmp_path / "2", work, ["A"], b"\x01\x02garbage", "  certificates: [/b.crt]\n")
    anchors, _ = uki_anchors(n.cfg, n.root, n.efivars, n.said.append)
    assert anchors == []
    assert any("revocation cannot be checked" in s for s in n.said)
    assert "0 anchors" in judge(n, work, "b.efi").reason
    # a db that does not parse is left out; the configured certificate still counts
    (tmp_path / "3").mkdir()
    shutil.copy(work / "B.crt", tmp_path / "3/b.crt")
    n = node(tmp_path / "3", work, [], None, "  certificates: [/b.crt, /missing.crt]\n")
    (n.efivars / f"db-{trust.IMAGE_SECURITY_DATABASE}").write_bytes(ATTRS + b"\xff" * 40)
    anchors, _ = uki_anchors(n.cfg, n.root, n.efivars, n.said.append)
    assert [c.subject.rfc4514_string() for c in anchors] == ["CN=key B"]
    assert any("missing.crt" in s for s in n.said) and any("firmware db" in s for s in n.said)


# --- hostile images: each one line, never a traceback ------------------------------------------------


def cert_dir(data: bytes) -> int:
    """Where data directory 4 (the certificate table's address and size) is in a PE32+ image."""
    pe: int = struct.unpack_from("<I", data, 0x3C)[0]
    return pe + 24 + 112 + 8 * 4


def with_table(signed: bytes, table: bytes, size: int | None = None) -> bytes:
    """``signed`` with its certificate table replaced by ``table`` (data directory pointing at it)."""
    at = cert_dir(signed)
    addr = struct.unpack_from("<I", signed, at)[0]
    out = bytearray(signed[:addr] + table)
    struct.pack_into("<II", out, at, addr, len(table) if size is None else size)
    return bytes(out)


def entry(blob: bytes, revision: int = 0x0200, kind: int = 2, length: int | None = None) -> bytes:
    n = 8 + len(blob) if length is None else length
    return (struct.pack("<IHH", n, revision, kind) + blob).ljust((8 + len(blob) + 7) & ~7, b"\0")


def nested(depth: int) -> bytes:
    inner = b""
    for _ in range(depth):
        n = len(inner)
        inner = b"\x30" + (bytes([n]) if n < 128 else b"\x83" + n.to_bytes(3, "big")) + inner
    return inner


def hostile(signed: bytes) -> dict[str, tuple[bytes, str]]:
    addr = struct.unpack_from("<I", signed, cert_dir(signed))[0]
    pkcs7 = signed[addr + 8 : addr + struct.unpack_from("<I", signed, addr)[0]]
    return {
        "truncated table": (signed[:-100], "certificate table of 1512 bytes does not fit"),
        "table not at the end": (signed + bytes(8), "does not end the image"),
        "entry length lies": (with_table(signed, entry(pkcs7, length=1 << 30)), "not within the"),
        "entry length zero": (with_table(signed, entry(pkcs7, length=0)), "has dwLength 0"),
        "a 10 MB entry": (with_table(signed, entry(bytes(10 << 20))), "more than the 1048576 allowed"),
        "table size lies": (with_table(signed, entry(pkcs7), size=1 << 31), "bytes does not fit after"),
        "garbage DER": (with_table(signed, entry(hashlib.shake_256(b"x").digest(1500))), "does not parse"),
        "DER nested 60000 deep": (with_table(signed, entry(nested(60_000))), "does not parse"),
        "PKCS#7 cut short": (with_table(signed, entry(pkcs7[:-40])), "does not parse"),
        "another revision only": (with_table(signed, entry(pkcs7, revision=0x0100)), "not signed"),
        "17 signatures": (with_table(signed, entry(pkcs7) * 17), "more than 16 signatures"),
        "not a PE": (b"MZ" + bytes(200), "no PE signature"),
        "empty": (b"", "too small for a DOS header"),
    }


def test_hostile_images_are_one_line_refusals(tmp_path: Path, work: Path) -> None:
    a = cert(work, "A")
    for name, (data, words) in hostile((work / "a.efi").read_bytes()).items():
        p = tmp_path / "x.efi"
        p.write_bytes(data)
        v = verify_uki(p, [a])
        assert not v.ok, name
        assert "\n" not in v.reason and len(v.reason) < 400, f"{name}: {v.reason!r}"
        assert words in v.reason, f"{name}: {v.reason}"


def test_mutated_signatures_never_raise(tmp_path: Path, work: Path) -> None:
    """Bytes of a real signature (sbsign's, with a CA chain) changed at random: a verdict every time,
    one line, and a refusal. (A few bytes could change and keep it valid, e.g. the signature algorithm's
    OID, which OpenSSL's PKCS7_verify does not read either; none of these 300 changes is one.)"""
    import random

    signed = (work / "leaf.efi").read_bytes()
    addr = struct.unpack_from("<I", signed, cert_dir(signed))[0]
    length = struct.unpack_from("<I", signed, addr)[0]
    rng = random.Random(29)
    anchors = [cert(work, "ca")]
    p = tmp_path / "m.efi"
    for _ in range(300):
        data = bytearray(signed)
        for _ in range(rng.choice((1, 1, 2, 8))):
            data[addr + 8 + rng.randrange(length - 8)] = rng.randrange(256)
        if bytes(data) == signed:
            continue
        p.write_bytes(bytes(data))
        v = verify_uki(p, anchors)
        assert "\n" not in v.reason and len(v.reason) < 600, v.reason
        assert not v.ok, f"a changed signature admitted: {v.reason}"
