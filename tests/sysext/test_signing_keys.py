"""The operator guide's choice of signing keys (docs/operator-guide.md, "Signing keys for system extensions";
issue 26, item 7), end to end through ``activate`` on a scratch root: a key of its own is rotated by
listing the new certificate beside the old one and then dropping the old one, after which the old images
are refused at the next activation and their copies and the old certificate leave /run (so systemd-sysext's
own check does not trust them either); the firmware's db key is revoked through dbx."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from bootkeeper import config
from bootkeeper.config import SysextMode
from bootkeeper.sysext import activate as act
from bootkeeper.sysext import signature, trust
from helpers import build_esl, signed_extension

OLD = signature.self_signed("ec", "sysext key 2025")
NEW = signature.self_signed("ec", "sysext key 2026")
DB = signature.self_signed("rsa", "secure boot db")
OWNER = uuid.UUID("77fa9abd-0359-4d32-bd60-28f4e78f784b")


def _root(tmp_path: Path, images: dict[str, tuple[object, object]]) -> Path:
    root = tmp_path / "root"
    (root / ".extra/sysext").mkdir(parents=True)
    (root / "etc/bootkeeper").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=kairos\nVERSION_ID=1\n")
    for name, (key, cert) in images.items():
        built = signed_extension(tmp_path / "img" / name, key, cert)
        (root / ".extra/sysext" / name).write_bytes(built.read_bytes())
    for label, (_, cert) in (("old", OLD), ("new", NEW)):
        (root / "etc/bootkeeper" / f"{label}.pem").write_bytes(cert.public_bytes(Encoding.PEM))
    return root


def _activate(root: Path, cfg_text: str, efivars: Path | None = None) -> dict[str, str]:
    f = root / "cfg.yaml"
    f.write_text(cfg_text)
    report = act.activate(root, config.load([f]).sysext, SysextMode.ENFORCED, efivars=efivars)
    return {o.name: o.verdict for o in report.images if o.verdict != "skipped"}


def _placed(root: Path) -> list[str]:
    return sorted(p.name for p in (root / act.DEST_DIR).iterdir() if not p.name.startswith("."))


def _exported(root: Path) -> set[str]:
    d = root / trust.EXPORT_DIR
    return {trust.load_certificates(p.read_bytes(), str(p))[0].subject.rfc4514_string() for p in d.iterdir()}


def test_rotating_a_key_of_its_own(tmp_path: Path) -> None:
    root = _root(tmp_path, {"k3s-old.raw": OLD, "k3s-new.raw": NEW})
    certs = "[/etc/bootkeeper/old.pem, /etc/bootkeeper/new.pem]"
    both = f"sysext:\n  firmware: []\n  verity_dirs: []\n  certificates: {certs}\n"
    # the overlap: both certificates listed, images signed with either key load
    assert _activate(root, both) == {"k3s-new.raw": "passed", "k3s-old.raw": "passed"}
    assert _placed(root) == ["k3s-new.raw", "k3s-old.raw"]
    assert _exported(root) == {"CN=sysext key 2025", "CN=sysext key 2026"}
    # the old key retired: its images are refused at the next activation, their copies removed from
    # /run/extensions, and its certificate leaves /run/verity.d, where systemd-sysext itself looks
    new_only = "sysext:\n  firmware: []\n  verity_dirs: []\n  certificates: [/etc/bootkeeper/new.pem]\n"
    assert _activate(root, new_only) == {"k3s-new.raw": "passed", "k3s-old.raw": "refused"}
    assert _placed(root) == ["k3s-new.raw"]
    assert _exported(root) == {"CN=sysext key 2026"}


def _efivar(d: Path, name: str, data: bytes) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}-{trust.VARIABLE_GUID[name]}").write_bytes(b"\x07\x00\x00\x00" + data)


def test_the_db_key_and_its_revocation_through_dbx(tmp_path: Path) -> None:
    root = _root(tmp_path, {"k3s.raw": DB})
    ev = tmp_path / "efivars"
    der = DB[1].public_bytes(Encoding.DER)
    _efivar(ev, "db", build_esl([(trust.EFI_CERT_X509, OWNER, der)]))
    cfg = "sysext:\n  firmware: [db]\n  verity_dirs: []\n"
    assert _activate(root, cfg, ev) == {"k3s.raw": "passed"}  # the key that signs the UKIs signs the extensions
    _efivar(ev, "dbx", build_esl([(trust.EFI_CERT_SHA256, OWNER, hashlib.sha256(der).digest())]))
    assert _activate(root, cfg, ev) == {"k3s.raw": "refused"}
    assert _placed(root) == [] and not _exported(root)
