"""UKIs the real signer accepts, for the update and repair tests: trixie's systemd-stub with ``.osrel``,
``.cmdline`` and ``.linux`` added by binutils' objcopy after the stub's own sections (their addresses
relative to the stub's ImageBase, as ukify places them), signed by the real ``sbsign``."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import trixie

STUB = trixie.ROOT / "usr/lib/systemd/boot/efi/linuxx64.efi.stub"


def run(cwd: Path, *args: str) -> None:
    p = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    assert p.returncode == 0, f"{args}: {p.stderr}"


def need_tools() -> None:
    for tool in ("objcopy", "sbsign", "openssl"):
        assert shutil.which(tool), f"{tool} missing: scripts/setup-test-deps.sh installs it"
    assert STUB.exists(), f"{STUB}: scripts/setup-trixie.sh"


def make_uki(w: Path, out: Path, osrel: str, payload: bytes) -> Path:
    raw = STUB.read_bytes()
    pe = struct.unpack_from("<I", raw, 0x3C)[0]
    base = struct.unpack_from("<Q", raw, pe + 24 + 24)[0]
    w.mkdir(parents=True, exist_ok=True)
    (w / "osrel").write_text(osrel)
    (w / "cmdline").write_text("console=ttyS0")
    (w / "linux").write_bytes(payload)
    args = []
    for i, name in enumerate(("osrel", "cmdline", "linux")):
        args += ["--add-section", f".{name}={name}", "--change-section-vma", f".{name}={base + 0x100000 * (i + 1):#x}"]
    run(w, "objcopy", *args, str(STUB), str(out))
    return out


def key_pair(w: Path, name: str, cn: str) -> tuple[Path, Path]:
    run(w, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
        f"{name}.crt", "-subj", f"/CN={cn}", "-days", "30")  # fmt: skip
    return w / f"{name}.key", w / f"{name}.crt"


def sign(src: Path, out: Path, key: Path, crt: Path) -> Path:
    run(src.parent, "sbsign", "--key", str(key), "--cert", str(crt), "--output", str(out), str(src))
    return out
