"""``systemd-sysext refresh`` after an activation (``sysext activate --refresh``), with the
submount steps around it that systemd-sysext older than v257 needs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bootkeeper import submounts
from bootkeeper.config import Sysext, SysextMode
from bootkeeper.errors import BootkeeperError
from bootkeeper.sysext.activation.outcome import Refresh

if TYPE_CHECKING:
    from bootkeeper.systemd_version import NodeSystemd


def refresh(root: Path, cfg: Sysext, mode: SysextMode, systemd: NodeSystemd | None = None) -> Refresh:
    """``systemd-sysext refresh``: with the configured policy in enforced mode (in the other modes a
    failing image was placed on purpose, and a policy would make systemd-sysext refuse them all), and
    only when the node's systemd-sysext takes ``--image-policy`` (v254+; 252/253 exit 1 on it and merge
    nothing). ``systemd`` is the node's systemd (default: :func:`systemd_version.resolve` under ``root``
    and ``sysext.systemd_version``).

    The result says ``ok: false`` with the tool's one-line error when it exits nonzero or is missing;
    the caller makes that an error. systemd-sysext 252–255 exit 0 even when the merge itself failed
    (252–254 ``return r != 123``; 256 exits 1, commit baaa1679268a), so ``ok`` can only mean "it ran"."""
    from bootkeeper.run import run
    from bootkeeper.systemd_version import resolve

    node = systemd or resolve(root, cfg.systemd_version)
    argv = ["systemd-sysext", "refresh"]
    if str(root) != "/":
        argv.append(f"--root={root}")
    if mode is SysextMode.ENFORCED and node.takes_image_policy:
        argv.append(f"--image-policy={cfg.policy}")
    env = {"SYSTEMD_SYSEXT_HIERARCHIES": ":".join(cfg.hierarchies)} if cfg.hierarchies else None
    out = Refresh(argv=argv, env=env, systemd=node.describe(), ok=True, error=None)
    step = not submounts.preserves_submounts(node.major)
    if step:
        out["submounts"] = _submounts("keep", root, env)
    try:
        run(argv, env=env)
    except BootkeeperError as exc:
        out["ok"], out["error"] = False, str(exc)
    if step:
        out["submounts"] += _submounts("restore", root, env)
    return out


def _submounts(verb: str, root: Path, env: dict[str, str] | None) -> list[str]:
    """The drop-in's step (:mod:`bootkeeper.submounts`, the same script text) around a refresh by
    systemd-sysext older than v257, which mounts its overlay on top of the mounts below a hierarchy.
    Its messages, or its failure as one line: a failure never stops the refresh."""
    from bootkeeper.run import run

    # the text travels in the environment: an error line then names the verb, not the whole script
    argv = ["/bin/sh", "-c", 'eval "$BOOTKEEPER_SUBMOUNTS"', "sysext-submounts", verb]
    more = {"BOOTKEEPER_ROOT": str(root), "BOOTKEEPER_SUBMOUNTS": submounts.SCRIPT_TEXT}
    try:
        r = run(argv, env={**(env or {}), **more})
    except BootkeeperError as exc:
        return [str(exc).splitlines()[0]]
    return [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
