"""Trust anchors: config PEMs and paths, verity.d folders, the firmware db in efivarfs format, dbx."""

from __future__ import annotations

import hashlib
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from bootkeeper import config
from bootkeeper.errors import MalformedError, UnreadableError
from bootkeeper.sysext import trust
from bootkeeper.sysext.signature import self_signed
from helpers import build_esl

OWNER = uuid.UUID("11111111-2222-3333-4444-555555555555")
ATTRS = struct.pack("<I", 0x27)  # NV | BS | RT | time-based authenticated write


def _cert(cn: str) -> Any:
    return self_signed("ec", cn)[1]


def _der(c: Any) -> bytes:
    return bytes(c.public_bytes(Encoding.DER))


def _efivar(d: Path, name: str, esl: bytes) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{name}-{trust.VARIABLE_GUID[name]}"
    p.write_bytes(ATTRS + esl)
    return p


def _cfg(tmp_path: Path, body: str = "") -> config.Sysext:
    p = tmp_path / "c.yaml"
    p.write_text("sysext:\n  verity_dirs: []\n" + body)
    return config.load([p]).sysext


def test_esl_round_trip_matches_the_uefi_layout() -> None:
    c = _cert("a")
    raw = build_esl([(trust.EFI_CERT_X509, OWNER, _der(c))])
    # header: GUID in mixed-endian, ListSize = 28 + 16 + len(der), HeaderSize 0, SignatureSize 16 + len(der)
    assert raw[:16] == bytes.fromhex("a159c0a5e494a74a87b5ab155c2bf072")
    assert struct.unpack_from("<III", raw, 16) == (28 + 16 + len(_der(c)), 0, 16 + len(_der(c)))
    (e,) = trust.parse_esl(raw, "t")
    assert (e.type, e.owner, e.data) == (trust.EFI_CERT_X509, OWNER, _der(c))


def test_db_certificates_trusted_minus_dbx(tmp_path: Path) -> None:
    keep, by_hash, by_tbs, by_cert = _cert("keep"), _cert("by-hash"), _cert("by-tbs"), _cert("by-cert")
    image_hash = hashlib.sha256(b"some EFI binary").digest()
    db = build_esl(
        [(trust.EFI_CERT_X509, OWNER, _der(c)) for c in (keep, by_hash, by_tbs, by_cert)]
        + [(trust.EFI_CERT_SHA256, OWNER, image_hash)]
    )
    dbx = build_esl(
        [
            (trust.EFI_CERT_SHA256, OWNER, hashlib.sha256(_der(by_hash)).digest()),
            (trust.EFI_CERT_X509_SHA256, OWNER, hashlib.sha256(by_tbs.tbs_certificate_bytes).digest() + bytes(16)),
            (trust.EFI_CERT_X509, OWNER, _der(by_cert)),
        ]
    )
    ev = tmp_path / "efivars"
    _efivar(ev, "db", db)
    _efivar(ev, "dbx", dbx)
    store = trust.load(_cfg(tmp_path), tmp_path, ev)
    assert [a.cert for a in store.anchors] == [keep]
    assert store.anchors[0].source == "firmware db #0"
    revoked = {a.cert.subject.rfc4514_string(): why for a, why in store.revoked}
    assert revoked == {
        "CN=by-hash": "dbx #0 (SHA-256 of the certificate)",
        "CN=by-tbs": "dbx #1 (SHA-256 of the certificate's TBS part)",
        "CN=by-cert": "dbx #2 (the certificate itself)",
    }


def test_kek_and_pk_only_when_configured(tmp_path: Path) -> None:
    kek = _cert("kek")
    ev = tmp_path / "efivars"
    _efivar(ev, "KEK", build_esl([(trust.EFI_CERT_X509, OWNER, _der(kek))]))
    assert trust.load(_cfg(tmp_path), tmp_path, ev).anchors == []
    store = trust.load(_cfg(tmp_path, "  firmware: [db, KEK]\n"), tmp_path, ev)
    assert [a.source for a in store.anchors] == ["firmware KEK #0"]


@pytest.mark.parametrize(
    ("cut", "expect"),
    [
        (10, "truncated (10 bytes left)"),
        (-5, "does not fit"),
    ],
)
def test_truncated_db_is_a_clear_error(tmp_path: Path, cut: int, expect: str) -> None:
    db = build_esl([(trust.EFI_CERT_X509, OWNER, _der(_cert("a")))])
    ev = tmp_path / "efivars"
    p = _efivar(ev, "db", db[:cut])
    with pytest.raises(MalformedError) as ei:
        trust.load(_cfg(tmp_path), tmp_path, ev)
    assert expect in str(ei.value) and str(p) in str(ei.value)
    lenient = trust.load(_cfg(tmp_path), tmp_path, ev, strict=False)
    assert lenient.anchors == [] and expect in lenient.problems[0]


def test_entry_size_not_a_multiple(tmp_path: Path) -> None:
    raw = bytearray(build_esl([(trust.EFI_CERT_SHA256, OWNER, bytes(32))]))
    struct.pack_into("<I", raw, 24, 40)  # SignatureSize 40 for a 48-byte body
    with pytest.raises(MalformedError, match="not a multiple of the entry size 40"):
        trust.parse_esl(bytes(raw), "db")


def test_config_pem_text_and_paths_and_verity_dirs(tmp_path: Path) -> None:
    a, b, c = _cert("inline"), _cert("file"), _cert("dir")
    (tmp_path / "etc" / "certs").mkdir(parents=True)
    (tmp_path / "etc" / "certs" / "b.pem").write_bytes(b.public_bytes(Encoding.PEM))
    vd = tmp_path / "run" / "verity.d"
    vd.mkdir(parents=True)
    (vd / "c.crt").write_bytes(_der(c))  # DER is accepted too
    (vd / "notes.txt").write_text("not a certificate")
    pem = a.public_bytes(Encoding.PEM).decode().replace("\n", "\n      ")
    cfgf = tmp_path / "c.yaml"
    cfgf.write_text(f"sysext:\n  firmware: []\n  certificates:\n    - |\n      {pem}\n    - /etc/certs/b.pem\n")
    store = trust.load(config.load([cfgf]).sysext, tmp_path)
    assert [x.cert for x in store.anchors] == [a, b, c]
    assert store.anchors[0].source == f"{cfgf}: sysext.certificates[0]"
    assert store.anchors[2].source == str(vd / "c.crt")


def test_bad_config_certificate_names_the_key(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "  certificates: [/nope.pem]\n")
    with pytest.raises(MalformedError, match=r"sysext.certificates\[0\]: /nope.pem: cannot read"):
        trust.load(cfg, tmp_path, tmp_path / "ev")


def test_export_writes_pem_and_removes_stale(tmp_path: Path) -> None:
    a = _cert("a")
    ev = tmp_path / "efivars"
    _efivar(ev, "db", build_esl([(trust.EFI_CERT_X509, OWNER, _der(a))]))
    dest = tmp_path / "run" / "verity.d"
    dest.mkdir(parents=True)
    (dest / "bootkeeper-0000000000000000.crt").write_text("stale")
    (dest / "admin.crt").write_bytes(_cert("admin").public_bytes(Encoding.PEM))
    cfg = _cfg(tmp_path, "")
    written, removed = trust.export(trust.load(cfg, tmp_path, ev), dest)
    assert removed == ["bootkeeper-0000000000000000.crt"]
    assert len(written) == 1
    assert (dest / written[0]).read_bytes() == a.public_bytes(Encoding.PEM)
    assert sorted(p.name for p in dest.iterdir()) == sorted(["admin.crt", written[0]])
    # a second export changes nothing; reading verity.d back does not count our copies twice
    assert trust.export(trust.load(cfg, tmp_path, ev), dest) == ([], [])
    (tmp_path / "d.yaml").write_text("sysext: {}\n")  # default verity_dirs, under tmp_path
    cfg2 = config.load([tmp_path / "d.yaml"]).sysext
    assert [x.subject for x in trust.load(cfg2, tmp_path, ev).anchors] == ["CN=admin", "CN=a"]


def test_keys_list_and_export_cli(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    a, bad = _cert("from-db"), _cert("revoked")
    ev = tmp_path / "sys/firmware/efi/efivars"
    _efivar(ev, "db", build_esl([(trust.EFI_CERT_X509, OWNER, _der(c)) for c in (a, bad)]))
    _efivar(ev, "dbx", build_esl([(trust.EFI_CERT_SHA256, OWNER, hashlib.sha256(_der(bad)).digest())]))
    (tmp_path / "oem").mkdir()
    (tmp_path / "oem" / "90.yaml").write_text("sysext:\n  mode: enforced\n")

    def bk(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "bootkeeper", *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=False)

    r = bk("keys", "list", "--root", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert [t["subject"] for t in j["trusted"]] == ["CN=from-db"]
    assert [(t["subject"], t["revoked_by"]) for t in j["revoked"]] == [
        ("CN=revoked", "dbx #0 (SHA-256 of the certificate)")
    ]
    r = bk("keys", "export", "--root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    crts = list((tmp_path / "run/verity.d").glob("*.crt"))
    assert len(crts) == 1 and crts[0].read_bytes() == a.public_bytes(Encoding.PEM)
    # a truncated db: one line naming the variable, exit 4, nothing written
    _efivar(ev, "db", build_esl([(trust.EFI_CERT_X509, OWNER, _der(a))])[:-1])
    crts[0].unlink()
    r = bk("keys", "export", "--root", str(tmp_path))
    assert r.returncode == 4
    assert r.stderr.count("\n") == 1 and "firmware db" in r.stderr and "does not fit" in r.stderr
    assert list((tmp_path / "run/verity.d").iterdir()) == []


def _malformed_certs() -> dict[str, bytes]:
    """DER certificates cryptography refuses at load (InvalidVersion) or only when their subject is
    read (lazily decoded: ValueError, TypeError)."""
    der = _der(_cert("abc"))
    v = der.index(b"\xa0\x03\x02\x01\x02")
    cn = der.rindex(b"\x0c\x03abc")  # the subject's CN (the issuer's comes first)
    return {
        "version 6": der[:v] + b"\xa0\x03\x02\x01\x05" + der[v + 5 :],
        "subject: bad TeletexString": der[:cn] + b"\x14\x03\xff\xfe\xfd" + der[cn + 5 :],
        "subject: CN as a BIT STRING": der[:cn] + b"\x03\x03\x00ab" + der[cn + 5 :],
    }


def test_one_malformed_db_certificate_drops_only_itself(tmp_path: Path) -> None:
    first, last = _cert("first"), _cert("last")
    bad = _malformed_certs()
    entries = [_der(first), *bad.values(), _der(last)]
    ev = tmp_path / "efivars"
    p = _efivar(ev, "db", build_esl([(trust.EFI_CERT_X509, OWNER, d) for d in entries]))
    store = trust.load(_cfg(tmp_path), tmp_path, ev, strict=False)
    assert [a.subject for a in store.anchors] == ["CN=first", "CN=last"]
    assert [a.source for a in store.anchors] == ["firmware db #0", f"firmware db #{len(entries) - 1}"]
    assert len(store.problems) == len(bad)
    for i, why in enumerate(store.problems, start=1):
        assert why.startswith(f"firmware db ({p}): entry {i} is not a usable X.509 certificate (")
        assert "\n" not in why
    assert "InvalidVersion" in store.problems[0] or "version" in store.problems[0]
    assert "TypeError" in store.problems[2]
    for a in store.anchors:  # what activate reports of each anchor can be read
        assert a.as_json()["subject"]
    with pytest.raises(MalformedError, match=r"entry 1 is not a usable X\.509 certificate"):
        trust.load(_cfg(tmp_path), tmp_path, ev)  # keys verbs: still an error


def test_one_malformed_verity_d_certificate_drops_only_itself(tmp_path: Path) -> None:
    good, in_bundle = _cert("good"), _cert("in-bundle")
    vd = tmp_path / "etc/verity.d"
    vd.mkdir(parents=True)
    (vd / "a-good.crt").write_bytes(_der(good))
    for i, raw in enumerate(_malformed_certs().values()):
        (vd / f"b-bad{i}.crt").write_bytes(raw)
    broken_pem = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    (vd / "c-bundle.pem").write_bytes(in_bundle.public_bytes(Encoding.PEM) + broken_pem)
    cfg = config.load([_write(tmp_path, "sysext:\n  firmware: []\n  verity_dirs: [/etc/verity.d]\n")]).sysext
    store = trust.load(cfg, tmp_path, strict=False)
    assert [a.subject for a in store.anchors] == ["CN=good", "CN=in-bundle"]
    assert [w.split(":")[0] for w in store.problems] == [
        str(vd / "b-bad0.crt"),
        str(vd / "b-bad1.crt"),
        str(vd / "b-bad2.crt"),
        str(vd / "c-bundle.pem"),
    ]
    assert store.problems[3].startswith(f"{vd / 'c-bundle.pem'}: certificate 1: not a usable")


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "w.yaml"
    p.write_text(text)
    return p


DBX_GUID = trust.VARIABLE_GUID["dbx"]


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        (ATTRS + b"\x00\x01\x02\x03", "truncated (4 bytes left)"),
        (ATTRS + struct.pack("<16sIII", trust.EFI_CERT_SHA256.bytes_le, 28, 0, 16), "signature size 16 is too small"),
        (ATTRS + build_esl([(trust.EFI_CERT_SHA256, OWNER, bytes(32))])[:-3], "does not fit"),
        (b"\x07\x00", "shorter than the 4-byte attribute header"),
        (None, "cannot read (Is a directory)"),  # unreadable: EIO/EACCES/EISDIR all end there
    ],
    ids=["four-stray-bytes", "empty-list-size-16", "truncated", "no-attributes", "unreadable"],
)
def test_unparsable_dbx_fails_closed(tmp_path: Path, raw: bytes | None, expect: str) -> None:
    """Revocation that cannot be read revokes every anchor, from every source (issue 12, item 2)."""
    fw, vd_cert = _cert("from-db"), _cert("from-verity-d")
    ev = tmp_path / "efivars"
    _efivar(ev, "db", build_esl([(trust.EFI_CERT_X509, OWNER, _der(fw))]))
    dbx = ev / f"dbx-{DBX_GUID}"
    if raw is None:
        dbx.mkdir()
    else:
        dbx.write_bytes(raw)
    vd = tmp_path / "etc/verity.d"
    vd.mkdir(parents=True)
    (vd / "v.crt").write_bytes(_der(vd_cert))
    cfg = config.load([_write(tmp_path, "sysext:\n  verity_dirs: [/etc/verity.d]\n")]).sysext
    store = trust.load(cfg, tmp_path, ev, strict=False)
    assert store.anchors == []
    assert sorted(a.subject for a, _ in store.revoked) == ["CN=from-db", "CN=from-verity-d"]
    (problem,) = store.problems
    assert str(dbx) in problem and expect in problem, problem
    assert problem.endswith("revocation cannot be checked: every trust anchor is treated as revoked")
    assert all("revocation cannot be checked" in why for _, why in store.revoked)
    with pytest.raises(
        UnreadableError if raw is None else MalformedError, match=expect.replace("(", r"\(").replace(")", r"\)")
    ):
        trust.load(cfg, tmp_path, ev)  # keys verbs: an error, as before
    # an absent dbx revokes nothing; an empty one (attributes only) neither
    for absent in (True, False):
        if dbx.is_dir():
            dbx.rmdir()
        else:
            dbx.unlink(missing_ok=True)
        if not absent:
            dbx.write_bytes(ATTRS)
        store = trust.load(cfg, tmp_path, ev, strict=False)
        assert [a.subject for a in store.anchors] == ["CN=from-verity-d", "CN=from-db"] and not store.problems


def test_validity_dates_checked_only_when_required(tmp_path: Path) -> None:
    import datetime

    c = _cert("dated")  # valid from now for ten years
    ev = tmp_path / "efivars"
    _efivar(ev, "db", build_esl([(trust.EFI_CERT_X509, OWNER, _der(c))]))
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=20 * 365)
    earlier = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
    default = _cfg(tmp_path)
    assert default.require_valid_dates is False
    for now in (later, earlier):  # as systemd (PKCS7_NOVERIFY): the dates are not checked
        assert [a.cert for a in trust.load(default, tmp_path, ev, strict=False, now=now).anchors] == [c]
    required = _cfg(tmp_path, "  require_valid_dates: true\n")
    assert [a.cert for a in trust.load(required, tmp_path, ev, strict=False).anchors] == [c]
    for now, why in ((later, "expired "), (earlier, "not valid before ")):
        store = trust.load(required, tmp_path, ev, strict=False, now=now)
        assert store.anchors == []
        ((_, reason),) = store.revoked
        assert reason.startswith(why) and reason.endswith("(sysext.require_valid_dates)")
        assert store.problems == [f"firmware db #0: CN=dated: {reason}"]
        # keys list (strict) lists it as not trusted rather than failing
        assert trust.load(required, tmp_path, ev, now=now).revoked[0][1] == reason


def test_keys_export_that_cannot_write_is_an_io_error(tmp_path: Path) -> None:
    """issue 15, item 2 (one of its paths): a folder that cannot be made or written is exit 6 (I/O), not
    exit 4 (malformed input), in one line naming it."""
    import subprocess
    import sys

    from helpers import one_line_error

    (tmp_path / "a-file").write_text("")
    p = subprocess.run(
        [sys.executable, "-m", "bootkeeper", "keys", "export", "--dest", str(tmp_path / "a-file/verity.d"),
         "--root", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    one_line_error(p, 6, f"{tmp_path}/a-file/verity.d: cannot create (Not a directory)")


@pytest.mark.parametrize("kind", ["version 6", "subject: bad TeletexString", "subject: CN as a BIT STRING", "pem"])
def test_cert_options_load_certificates_as_trust_anchors_do(tmp_path: Path, kind: str) -> None:
    """``--cert`` of ``sysext validate`` (and ``build``) goes through trust.load_certificates, the one
    loader of certificates: a certificate cryptography refuses at load or when it is read is one line
    naming the file (it was a traceback: InvalidVersion is no ValueError, and nothing was probed)."""
    import subprocess
    import sys

    bad = _malformed_certs()
    cert = tmp_path / "c.pem"
    if kind == "pem":  # a PEM file whose second block is the bad one
        import base64

        block = base64.encodebytes(bad["version 6"]).decode()
        cert.write_text(
            _cert("ok").public_bytes(Encoding.PEM).decode()
            + f"-----BEGIN CERTIFICATE-----\n{block}-----END CERTIFICATE-----\n"
        )
    else:
        cert.write_bytes(bad[kind])
    img = tmp_path / "x.raw"
    img.write_bytes(b"\0" * 4096)
    r = subprocess.run(
        [sys.executable, "-m", "bootkeeper", "sysext", "validate", str(img), "--cert", str(cert)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 4, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{cert}" in r.stderr and "not a usable PEM or DER X.509 certificate" in r.stderr
