"""``lint``'s joins: a file's bytes to assess/lint.py's findings, and the ESP (assess/lint.py) with
the node's systemd-sysext setup (sysext/conf.py) under one config."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bootkeeper.config import Config
    from bootkeeper.findings import Finding


def lint_bytes(raw: bytes, name: str) -> list[Finding]:
    """A cloud-config or unit file's findings; one that is not UTF-8 is finding BK100."""
    from bootkeeper.assess import lint as lint_mod
    from bootkeeper.findings import Finding, Severity

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [Finding("BK100", Severity.ERROR, name, None, f"not UTF-8 ({exc.reason})", "save as UTF-8")]
    return lint_mod.lint_text(text, name)


def lint_esp(cfg: Config, esp: Path, efivars: Path, sdboot_version: str | None) -> list[Finding]:
    """The ESP's boot-loop hazards: the entries, loader.conf, the EFI default, stale temporaries."""
    from bootkeeper.assess import lint as lint_mod
    from bootkeeper.assess.status import stale_temporaries
    from bootkeeper.esp.efivars import LoaderVars, loader_info
    from bootkeeper.esp.store import EspStore

    snap = EspStore(esp).snapshot(sdboot_version, loader_info=loader_info(efivars))
    entry_default = LoaderVars.read(efivars).entry_default
    return lint_mod.lint_esp(snap, str(esp), cfg.boot_assessment, entry_default, stale_temporaries(esp))


def lint_root(cfg: Config, root: Path) -> list[Finding]:
    """The node's systemd-sysext setup and extension folders (BK301 to BK304)."""
    from bootkeeper.sysext import conf as sysextconf
    from bootkeeper.systemd_version import resolve

    return sysextconf.lint_node(root, cfg.sysext, resolve(root, cfg.sysext.systemd_version))


def lint(
    files: tuple[Path, ...], esp: Path | None, efivars: Path, sdboot_version: str | None, root: Path | None,
    config: Callable[[Path], Config],
) -> list[Finding]:  # fmt: skip
    """``lint``: FILES, the ESP and the node under ``root`` (each when given) under the config ``config``
    reads for a root. With neither FILES nor an ESP: ROOT's /oem/*.yaml and the node, and with no
    ``root`` either, the ESP found and the node at /."""
    from bootkeeper.node.store import find_esp

    if not files and esp is None:
        if root is None:
            root = Path("/")
            esp = find_esp(None)
        files = tuple(sorted((root / "oem").glob("*.yaml")))
    findings = [f for path in files for f in lint_bytes(_read(path), _name(path))]
    cfg = config(root or Path("/")) if esp is not None or root is not None else None
    if esp is not None and cfg is not None:
        findings += lint_esp(cfg, esp, efivars, sdboot_version)
    if root is not None and cfg is not None:
        findings += lint_root(cfg, root)
    return findings


def _name(path: Path) -> str:
    return "<stdin>" if str(path) == "-" else str(path)  # '-': a cloud-config on standard input


def _read(path: Path) -> bytes:
    from bootkeeper.errors import UnreadableError

    try:
        return sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        raise UnreadableError(f"{_name(path)}: cannot read ({exc.strerror})") from exc
