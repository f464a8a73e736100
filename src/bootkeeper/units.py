"""The systemd units bootkeeper ships, rendered for this config and this installation.

* ``bootkeeper-sysext.service``: after the local (persistent) mounts, before ``systemd-sysext.service``:
  validates ``/.extra/sysext`` and places what passes in ``/run/extensions``.
* ``systemd-sysext.service.d/10-bootkeeper.conf``: systemd-sysext with the configured image policy
  (enforced mode only: in the other modes a failing image is placed on purpose, and a policy would make
  systemd-sysext refuse every image) and ``SYSTEMD_SYSEXT_HIERARCHIES`` when configured.
"""

from __future__ import annotations

import os
from pathlib import Path

from bootkeeper import fsutil
from bootkeeper.config import Sysext, SysextMode
from bootkeeper.errors import StoreIOError

UNIT_DIR = "etc/systemd/system"
SYSEXT_UNIT = "bootkeeper-sysext.service"
SYSEXT_DROPIN = "systemd-sysext.service.d/10-bootkeeper.conf"
WANTED_BY = "sysinit.target"


def _quote(s: str) -> str:
    """A value for a unit file's Exec/Environment line (systemd's quoting: C-style in double quotes)."""
    if s and all(c.isalnum() or c in "/._-:+=,@" for c in s):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(cfg: Sysext, exe: list[str]) -> dict[str, str]:
    """``{path under /etc/systemd/system: text}``; ``exe`` runs bootkeeper (``[/usr/bin/bootkeeper]``
    or ``[/usr/bin/python3, -m, bootkeeper]``), its first word an absolute path."""
    if not exe or not os.path.isabs(exe[0]):
        raise StoreIOError(f"{exe[0] if exe else '(empty)'}: the bootkeeper command must start with an absolute path")
    service = f"""# Installed by 'bootkeeper install-units'; re-run it after changing the sysext config.
[Unit]
Description=Validate system extensions one by one and place them in /run/extensions
Documentation=man:systemd-sysext(8)
DefaultDependencies=no
After=local-fs.target
Before=systemd-sysext.service sysinit.target systemd-tmpfiles-setup.service
Conflicts=shutdown.target initrd-switch-root.target
Before=shutdown.target initrd-switch-root.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={" ".join(_quote(w) for w in exe)} sysext activate --no-refresh

[Install]
WantedBy={WANTED_BY}
"""
    refresh = "systemd-sysext refresh"
    if cfg.mode is SysextMode.ENFORCED:
        refresh += f" --image-policy={_quote(cfg.policy)}"
    env = ""
    if cfg.hierarchies:
        env = f"Environment={_quote('SYSTEMD_SYSEXT_HIERARCHIES=' + ':'.join(cfg.hierarchies))}\n"
    dropin = f"""# Installed by 'bootkeeper install-units' (sysext.mode {cfg.mode.value}).
[Unit]
After={SYSEXT_UNIT}

[Service]
{env}ExecStart=
ExecStart={refresh}
ExecReload=
ExecReload={refresh}
"""
    return {SYSEXT_UNIT: service, SYSEXT_DROPIN: dropin}


def install(root: Path, units: dict[str, str], enable: bool = True) -> list[str]:
    """Write the units under ``root/etc/systemd/system`` (crash-safe) and enable the service the way
    ``systemctl enable`` does (a symlink in ``<target>.wants``). Returns the paths written."""
    base = root / UNIT_DIR
    written = []
    try:
        for rel, text in units.items():
            p = base / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if not p.is_file() or p.read_text() != text:
                fsutil.write_atomic(p, text.encode())
            written.append(str(p))
        if enable:
            link = base / f"{WANTED_BY}.wants" / SYSEXT_UNIT
            link.parent.mkdir(parents=True, exist_ok=True)
            target = f"/{UNIT_DIR}/{SYSEXT_UNIT}"
            if not link.is_symlink() or os.readlink(link) != target:
                tmp = fsutil.temp_path(link.parent)
                os.symlink(target, tmp)
                os.rename(tmp, link)
            written.append(str(link))
    except OSError as exc:
        raise StoreIOError(f"{base}: cannot install units ({exc.strerror or exc})") from exc
    return written
