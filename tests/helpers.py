"""Small builders shared by the tests."""

from __future__ import annotations

import dataclasses
import os
import shutil
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pytest

from bootkeeper.esp import counter
from bootkeeper.esp.efivars import LOADER_GUID, encode_string
from bootkeeper.esp.entries import Entry, EntryKind


def bk(
    *args: str | Path,
    env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
    cwd: Path | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """The CLI run as a user runs it (``python -m bootkeeper`` in a fresh interpreter), output captured as
    text; ``env`` adds to the environment, ``prefix`` goes before the interpreter (``unshare``, ``setpriv``)."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "bootkeeper", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


def esp_with(root: Path, entries: dict[str, str], loader_conf: str = "timeout 0\n") -> Path:
    """A scratch ESP with the given loader/entries/*.conf bodies; every entry's kernel exists."""
    (root / "loader" / "entries").mkdir(parents=True, exist_ok=True)
    (root / "EFI" / "kairos").mkdir(parents=True, exist_ok=True)
    (root / "EFI" / "kairos" / "vmlinuz").write_bytes(b"k")
    (root / "loader" / "loader.conf").write_text(loader_conf)
    for name, body in entries.items():
        (root / "loader" / "entries" / name).write_text(body)
    return root


def type2_esp(root: Path, files: dict[str, bytes], loader_conf: str = "timeout 0\n") -> Path:
    """A scratch ESP of Type #2 entries: ``files`` (UKIs by file name) in EFI/Linux and a loader.conf."""
    (root / "EFI" / "Linux").mkdir(parents=True)
    (root / "loader").mkdir()
    (root / "loader" / "loader.conf").write_text(loader_conf)
    for name, data in files.items():
        (root / "EFI" / "Linux" / name).write_bytes(data)
    return root


def entry_body(role: str, sort_key: bool = True) -> str:
    sk = f"sort-key {['active', 'passive', 'recovery', 'statereset'].index(role) + 1}-{role}\n" if sort_key else ""
    return f"title {role}\n{sk}linux /EFI/kairos/vmlinuz\noptions entry={role}\n"


def names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "loader" / "entries").iterdir())


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fake_efivars(d: Path, **values: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for k, v in values.items():
        (d / f"{k}-{LOADER_GUID}").write_bytes(encode_string(v))
    return d


def openssl_cms_verify(work: Path, der: bytes, root_hash_hex: str, cert_pem: bytes) -> tuple[int, str]:
    """The real openssl checking a detached PKCS#7 over the hex root hash against one CA file."""
    import subprocess

    (work / "sig.der").write_bytes(der)
    (work / "roothash").write_bytes(root_hash_hex.encode())
    (work / "ca.pem").write_bytes(cert_pem)
    p = subprocess.run(
        [
            "openssl",
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(work / "sig.der"),
            "-content",
            str(work / "roothash"),
            "-CAfile",
            str(work / "ca.pem"),
            "-out",
            "/dev/null",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return p.returncode, p.stderr


def one_line_error(p: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """A verb's failure as bootkeeper promises it: exit ``code``, one ``bootkeeper: error:`` line
    (``hint:`` lines aside) containing every word, no traceback."""
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = [x for x in p.stderr.splitlines() if not x.startswith("hint:")]
    assert len(lines) == 1 and lines[0].startswith("bootkeeper: error: "), p.stderr
    assert "Traceback" not in p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def uki(osrel: str, *, linux: bool = True, tag: str = "") -> bytes:
    """A stand-in UKI (a PE with ``.osrel`` and, unless told, ``.linux``): what upgrade's gate and the
    model read; ``tag`` makes two UKIs with the same ``.osrel`` differ in their bytes."""
    from bootkeeper.esp import scratch

    sections = [(b".osrel", osrel.encode())]
    if linux:
        sections.insert(0, (b".linux", f"kernel {tag}".encode()))
    return scratch.stand_in_uki(tuple(sections))


def signed_extension(out: Path, key: object, cert: object, os_release: dict[str, str] | None = None) -> Path:
    """A real signed sysext (erofs, verity, PKCS#7) named ``out``; ``os_release`` decides its
    extension-release (ID, VERSION_ID), None gives ``ID=_any``."""
    from bootkeeper.sysext import image

    out.parent.mkdir(parents=True, exist_ok=True)
    t = out.parent / f"{out.name}.tree"
    (t / "usr/bin").mkdir(parents=True, exist_ok=True)
    (t / "usr/bin" / out.name.split(".")[0]).write_bytes(out.name.encode() * 100)
    return image.build(t, out, key, cert, os_release=os_release)  # type: ignore[arg-type]


def extra_sets(root: Path, folder: str) -> dict[str, dict[str, bytes]]:
    """Every ``*.extra.d`` folder under ``folder`` with its images' bytes."""
    d = root / folder
    return {
        x.name: {p.name: p.read_bytes() for p in sorted(x.iterdir()) if p.name.endswith(".raw")}
        for x in sorted(d.iterdir())
        if x.is_dir() and x.name.endswith(".extra.d")
    }


def install_units(root: Path, cfg: str) -> Path:
    """``bootkeeper install-units --root ROOT`` with ``cfg`` as its only /oem file; the unit folder."""
    (root / "oem").mkdir(parents=True, exist_ok=True)
    (root / "oem/90.yaml").write_text(cfg)
    r = subprocess.run(
        [sys.executable, "-m", "bootkeeper", "install-units", "--root", str(root),
         "--exe", f"{sys.executable} -m bootkeeper", "--python", sys.executable],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return root / "etc/systemd/system"


def systemd_verify(unit_dir: Path, *names: str) -> subprocess.CompletedProcess[str]:
    """The host's ``systemd-analyze verify`` of NAMES, found in ``unit_dir`` before the system's units."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing; scripts/setup-test-deps.sh installs systemd")
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:", "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run([tool, "verify", "--man=no", *names], capture_output=True, text=True, env=env, check=False)


def build_esl(entries: Iterable[tuple[uuid.UUID, uuid.UUID, bytes]]) -> bytes:
    """EFI_SIGNATURE_LISTs, one per entry, as firmware stores db/dbx/MokListRT (UEFI 2.10, 32.4.1:
    SignatureType, SignatureListSize, SignatureHeaderSize 0, SignatureSize, then SignatureOwner and the
    data): written here, apart from :func:`bootkeeper.sysext.trust.parse_esl`, which they test (no verb
    writes firmware variables)."""
    out = b""
    for typ, owner, data in entries:
        size = 16 + len(data)
        out += typ.bytes_le + struct.pack("<III", 28 + size, 0, size) + owner.bytes_le + data
    return out


def renamed(e: Entry, new_name: str) -> Entry:
    """``e`` as systemd-boot would list it after renaming its file to ``new_name`` (a boot counter
    change): same folder, the name parsed again."""
    suffix = ".conf" if e.kind is EntryKind.TYPE1 else ".efi"
    return dataclasses.replace(e, path=f"{e.directory}/{new_name}", name=counter.parse(new_name, suffix))
