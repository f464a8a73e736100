"""shim's Machine Owner Keys as a trust source (issue 26 item 6, seed 003: "the MOK keys are not
available in the kernel keyring ... we need to manually extract them and put them under
/run/verity.d"): ``sysext.firmware: [db, MokListRT]``, through the real CLI on a scratch efivarfs.

An image signed by a MOK passes, is placed in /run/extensions and its certificate is exported to
/run/verity.d (where systemd-sysext checks the signature) when ``MokListRT`` lists the certificate;
it is refused when ``MokListXRT`` revokes it. The variables are read as the kernel reads them
(load_uefi.c: the MOKvar table copy in /sys/firmware/efi/mok-variables first, else efivarfs), plus
shim's numbered continuations; hostile ones fail closed with one line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from bootkeeper.sysext import signature, trust
from helpers import build_esl
from test_attack_activate import TRUSTED, _build

OWNER = uuid.UUID("605dab50-e046-4300-abb6-3dd810dd8b23")
SHIM_ATTRS = 0x6  # BOOTSERVICE|RUNTIME: what shim's mirror_one_mok_variable() creates
OTHER = signature.self_signed("ec", "someone-else")[1]
NAME = "mok-signed.sysext.raw"


def _der(c: Any) -> bytes:
    return bytes(c.public_bytes(Encoding.DER))


def _esl(*certs: Any) -> bytes:
    return build_esl([(trust.EFI_CERT_X509, OWNER, _der(c)) for c in certs])


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("mok"), NAME)


def _root(tmp: Path, img: Path, firmware: str = "[db, MokListRT]") -> Path:
    root = tmp / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=kairos\nVERSION_ID=1\n")
    (root / "oem").mkdir()
    (root / "oem/90_sysext.yaml").write_text(
        "sysext:\n  mode: enforced\n  policy: root=signed+absent:usr=signed+absent\n"
        f"  verity_dirs: []\n  firmware: {firmware}\n"
    )
    (root / ".extra/sysext").mkdir(parents=True)
    shutil.copyfile(img, root / ".extra/sysext" / NAME)
    (root / "sys/firmware/efi/efivars").mkdir(parents=True)
    return root


def _var(root: Path, name: str, data: bytes, attrs: int = SHIM_ATTRS) -> Path:
    p = root / "sys/firmware/efi/efivars" / f"{name}-{OWNER}"
    p.write_bytes(struct.pack("<I", attrs) + data)
    return p


def _table(root: Path, name: str, data: bytes) -> Path:
    """The kernel's copy of shim's MOKvar configuration table entry: the data alone."""
    d = root / "sys/firmware/efi/mok-variables"
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)
    return d / name


def _activate(root: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    r = subprocess.run(
        [sys.executable, "-m", "bootkeeper", "sysext", "activate", "--root", str(root), "--no-refresh"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    report = json.loads((root / "run/bootkeeper/sysext.json").read_text())
    (img,) = report["images"]
    return img, report["trust"], r.stderr


def _placed(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "run/extensions").iterdir())


def _exported(root: Path) -> list[bytes]:
    d = root / "run/verity.d"
    return sorted(p.read_bytes() for p in d.iterdir()) if d.is_dir() else []


def test_a_mok_signed_image_passes_when_moklistrt_lists_its_certificate(tmp_path: Path, signed: Path) -> None:
    root = _root(tmp_path, signed)
    _var(root, "MokListRT", _esl(OTHER, TRUSTED[1]))
    img, tr, _ = _activate(root)
    assert (img["verdict"], img["placed"]) == ("passed", True), img
    assert _placed(root) == [NAME] and (root / "run/extensions" / NAME).read_bytes() == signed.read_bytes()
    assert [t["source"] for t in tr["trusted"]] == ["firmware MokListRT #0", "firmware MokListRT #1"]
    # exported where systemd-sysext checks the signature in userspace: what seed 003 did by hand
    assert TRUSTED[1].public_bytes(Encoding.PEM) in _exported(root)


def test_without_moklistrt_in_the_config_the_mok_is_not_trusted(tmp_path: Path, signed: Path) -> None:
    root = _root(tmp_path, signed, firmware="[db]")
    _var(root, "MokListRT", _esl(TRUSTED[1]))
    img, tr, _ = _activate(root)
    assert (img["verdict"], img["placed"]) == ("refused", False), img
    assert tr["trusted"] == [] and _placed(root) == []


@pytest.mark.parametrize(
    "entry",
    [
        (trust.EFI_CERT_X509, "the certificate itself"),
        (trust.EFI_CERT_SHA256, "SHA-256 of the certificate"),
        (trust.EFI_CERT_X509_SHA256, "SHA-256 of the certificate's TBS part"),
    ],
    ids=["x509", "sha256", "x509-sha256"],
)
def test_moklistxrt_revokes_the_mok(tmp_path: Path, signed: Path, entry: tuple[uuid.UUID, str]) -> None:
    typ, how = entry
    cert = TRUSTED[1]
    data = {
        trust.EFI_CERT_X509: _der(cert),
        trust.EFI_CERT_SHA256: hashlib.sha256(_der(cert)).digest(),
        trust.EFI_CERT_X509_SHA256: hashlib.sha256(cert.tbs_certificate_bytes).digest() + b"\0" * 16,
    }[typ]
    root = _root(tmp_path, signed)
    _var(root, "MokListRT", _esl(cert))
    _var(root, "MokListXRT", build_esl([(typ, OWNER, data)]))
    img, tr, _ = _activate(root)
    assert (img["verdict"], img["placed"]) == ("refused", False), img
    assert _placed(root) == [] and _exported(root) == []
    revoked = [(t["source"], t["revoked_by"]) for t in tr["revoked"]]
    assert revoked == [("firmware MokListRT #0", f"MokListXRT #0 ({how})")]


def test_moklistxrt_revokes_whichever_source_trusts_the_certificate(tmp_path: Path, signed: Path) -> None:
    """As dbx: the kernel's blacklist keyring takes MokListXRT whatever trusts the key (here db)."""
    root = _root(tmp_path, signed, firmware="[db]")
    (root / "sys/firmware/efi/efivars" / f"db-{trust.VARIABLE_GUID['db']}").write_bytes(
        struct.pack("<I", 0x27) + _esl(TRUSTED[1])
    )
    _var(root, "MokListXRT", _esl(TRUSTED[1]))
    img, tr, _ = _activate(root)
    assert (img["verdict"], img["placed"]) == ("refused", False), img
    assert [t["revoked_by"] for t in tr["revoked"]] == ["MokListXRT #0 (the certificate itself)"]


def test_the_kernels_mokvar_table_copy_comes_first(tmp_path: Path, signed: Path) -> None:
    """load_moklist_certs(): the MOKvar table entry when there is one, the efivarfs variable otherwise."""
    root = _root(tmp_path, signed)
    _var(root, "MokListRT", _esl(OTHER))  # the efivarfs mirror lacks it: the table is what counts
    _table(root, "MokListRT", _esl(OTHER, TRUSTED[1]))
    img, tr, _ = _activate(root)
    assert (img["verdict"], img["placed"]) == ("passed", True), img
    assert all("mok-variables/MokListRT" not in p for p in tr["problems"])
    _table(root, "MokListXRT", _esl(TRUSTED[1]))  # and revocation from the table too
    img, tr, _ = _activate(root)
    assert (img["verdict"], img["placed"]) == ("refused", False), img


def test_shims_numbered_continuations_are_read_up_to_the_first_absent(tmp_path: Path, signed: Path) -> None:
    """shim mok.c mirror_mok_db(): a list too large for one variable goes on in MokListRT1, MokListRT2..."""
    root = _root(tmp_path, signed)
    _var(root, "MokListRT", _esl(OTHER))
    _var(root, "MokListRT1", _esl(signature.self_signed("ec", "third")[1]))
    _var(root, "MokListRT2", _esl(TRUSTED[1]))
    img, tr, _ = _activate(root)
    assert (img["verdict"], img["placed"]) == ("passed", True), img
    assert [t["source"] for t in tr["trusted"]][-1] == "firmware MokListRT #2"
    # a gap ends the list: MokListRT2 without MokListRT1 is not shim's and is not read
    (root / "sys/firmware/efi/efivars" / f"MokListRT1-{OWNER}").unlink()
    img, _, _ = _activate(root)
    assert (img["verdict"], img["placed"]) == ("refused", False), img


@pytest.mark.parametrize(
    ("where", "data", "attrs", "words"),
    [
        ("MokListRT", b"\x01\x02", SHIM_ATTRS, "shorter than the 4-byte attribute header"),
        ("MokListRT", b"truncated list", SHIM_ATTRS, "truncated"),
        ("MokListRT", None, 0x7, "include NON_VOLATILE: not shim's mirror"),
        ("MokListRT1", b"\x00" * 30, SHIM_ATTRS, "MokListRT1-"),
        ("table", b"\x00" * 20, 0, "mok-variables/MokListRT"),
    ],
    ids=["header-short", "list-truncated", "non-volatile", "continuation-truncated", "table-truncated"],
)
def test_hostile_moklistrt_trusts_nothing_from_it(
    tmp_path: Path, signed: Path, where: str, data: bytes | None, attrs: int, words: str
) -> None:
    root = _root(tmp_path, signed)
    good = _esl(TRUSTED[1])
    if where == "table":
        _table(root, "MokListRT", data or b"")
        _var(root, "MokListRT", good)  # the efivarfs copy would trust it: the broken table wins, closed
    elif where == "MokListRT1":
        _var(root, "MokListRT", good)
        _var(root, "MokListRT1", data or b"")
    elif data is not None and len(data) < 4:
        (root / "sys/firmware/efi/efivars" / f"MokListRT-{OWNER}").write_bytes(data)
    else:
        _var(root, "MokListRT", data if data is not None else good, attrs)
    img, tr, err = _activate(root)
    assert (img["verdict"], img["placed"]) == ("refused", False), img
    assert tr["trusted"] == [] and _placed(root) == []
    (problem,) = tr["problems"]
    assert words in problem and "\n" not in problem, problem
    assert "Traceback" not in err


@pytest.mark.parametrize("data", [b"\x00\x01\x02\x03", b"\x01"], ids=["four-stray-bytes", "short-header"])
def test_unreadable_moklistxrt_revokes_every_anchor(tmp_path: Path, signed: Path, data: bytes) -> None:
    """Revocation fails closed, as for dbx: a MokListXRT that cannot be read trusts nothing."""
    root = _root(tmp_path, signed)
    _var(root, "MokListRT", _esl(TRUSTED[1]))
    if len(data) < 4:
        (root / "sys/firmware/efi/efivars" / f"MokListXRT-{OWNER}").write_bytes(data)
    else:
        _var(root, "MokListXRT", data)
    img, tr, _ = _activate(root)
    assert (img["verdict"], img["placed"]) == ("refused", False), img
    assert tr["trusted"] == [] and _placed(root) == []
    (problem,) = tr["problems"]
    assert f"MokListXRT-{OWNER}" in problem and "every trust anchor is treated as revoked" in problem
    assert "\n" not in problem
