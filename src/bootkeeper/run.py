"""The one wrapper for every external command (mount, mkfs, systemd tools).

A fixed minimal environment, stdin from /dev/null, the command logged under --debug, and a
failure reported with its exit status or signal as a :class:`CommandError`.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence

from bootkeeper.errors import CommandError

log = logging.getLogger("bootkeeper.run")

_BASE_ENV = {
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
}


def check_tool(name: str, reason: str) -> str:
    """Return the tool's path or fail before any work starts, saying why it is needed."""
    path = shutil.which(name, path=_BASE_ENV["PATH"] + ":" + os.environ.get("PATH", ""))
    if path is None:
        raise CommandError(f"required tool '{name}' not found ({reason})")
    return path


def run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 120.0,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    full_env = dict(_BASE_ENV)
    if env:
        full_env.update(env)
    log.debug("+ %s", shlex.join(cmd))
    try:
        proc = subprocess.run(
            list(cmd),
            stdin=subprocess.DEVNULL,
            capture_output=capture,
            text=True,
            encoding="utf-8",
            errors="replace",  # a tool's output may carry bytes from an image: never a UnicodeDecodeError
            env=full_env,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(f"{cmd[0]}: command not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"{shlex.join(cmd)}: timed out after {timeout} s") from exc
    if proc.returncode != 0:
        if proc.returncode < 0:
            what = f"killed by signal {signal.Signals(-proc.returncode).name}"
        else:
            what = f"exit status {proc.returncode}"
        detail = (proc.stderr or "").strip().splitlines()
        tail = f": {detail[-1]}" if detail else ""
        raise CommandError(f"{shlex.join(cmd)} failed with {what}{tail}")
    return proc
