"""Run a command inside the trixie tree (systemd 257 tools) with a host folder at /work."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

ROOT = Path(os.environ.get("TRIXIE_ROOT", Path(__file__).resolve().parent.parent / ".cache" / "trixie"))


def available() -> bool:
    return (ROOT / "usr/bin/systemd-dissect").exists() and (ROOT / "usr/bin/systemd-repart").exists()


def run(cmd: str, work: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    script = f"""
set -e
R={shlex.quote(str(ROOT))}
mount --bind "$R" "$R"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
mkdir -p "$R/run" "$R/tmp" "$R/work"
mount -t tmpfs tmpfs "$R/run"
mount --bind {shlex.quote(str(work))} "$R/work"
exec chroot "$R" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_LOG_COLOR=0 \
  /bin/sh -c {shlex.quote("cd /work && " + cmd)}
"""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "/bin/bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
