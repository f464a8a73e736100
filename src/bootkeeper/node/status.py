"""What ``status``, ``motd`` and ``metrics`` read: the boot half (assess/status.py), the extension half
(sysext/status.py) and the menu with what boots next (assess/menu.py), joined. Boot path: no
cryptography, and the extension half imported only when gathered."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bootkeeper.assess import status as node_status
from bootkeeper.assess.status import NodeStatus, ServiceReader

if TYPE_CHECKING:
    from bootkeeper.assess.menu import Menu
    from bootkeeper.config import Config
    from bootkeeper.esp.store import Snapshot
    from bootkeeper.sysext.status import Extensions


@dataclass(frozen=True)
class Status:
    """What ``status`` shows. ``menu``: the ``entries`` view (None for motd, which shows no next boot);
    ``problems``: the extension sources that could not be read."""

    node: NodeStatus
    extensions: Extensions
    problems: tuple[str, ...] = ()
    menu: Menu | None = None

    def as_json(self) -> dict[str, Any]:  # the status --json document, read back by key
        node = self.node.as_json()
        return {
            **(self.menu.as_json() if self.menu is not None else {}),
            **{k: node[k] for k in ("booted", "failed_upgrade", "handback", "roles", "services")},
            "extensions": self.extensions.as_json(),
            "history": node["history"],
            "upgrades": node["upgrades"],
            "repairs": node["repairs"],
            "warnings": [*self.node.problems, *self.problems],
        }


def gather(
    root: Path,
    esp: Path,
    efivars: Path,
    sdboot_version: str | int | None,
    *,
    snap: Snapshot | None = None,
    store_dir: Path | None = None,
    read_services: ServiceReader | None = node_status.systemctl_states,
    handbacks: int | None = None,
) -> Status:
    """Both halves (no menu). ``store_dir``: the persistent extension store, when the config has one;
    ``read_services``: how to ask for the services' states (None: do not ask)."""
    from bootkeeper.sysext import status as ext_status

    links = ext_status.store_links(store_dir) if store_dir is not None else None
    node = node_status.gather(
        root,
        esp,
        efivars,
        sdboot_version,
        read_services,
        snap=snap,
        linked=links.folders if links else None,
        linked_warnings=links.problems if links else (),
        **({"handbacks": handbacks} if handbacks is not None else {}),
    )
    ext, problems = ext_status.gather(root, node.on_esp, links)
    return Status(node, ext, problems)


def with_menu(
    root: Path, esp: Path, efivars: Path, sdboot_version: str | None, config_files: tuple[Path, ...],
    config: Callable[[], Config],
) -> Status:  # fmt: skip
    """``status``: both halves and the menu, from one snapshot of the ESP; the store and the hand-back
    budget from the config (``config``) when there is one."""
    import dataclasses

    from bootkeeper.esp.efivars import loader_info
    from bootkeeper.esp.store import EspStore

    snap = EspStore(esp).snapshot(sdboot_version, loader_info=loader_info(efivars))  # once for both views
    shown = gather(
        root, esp, efivars, sdboot_version, snap=snap, store_dir=store_dir(root, config_files, config),
        handbacks=handback_budget(root, config_files, config),
    )  # fmt: skip
    return dataclasses.replace(shown, menu=menu(esp, efivars, sdboot_version, snap))


def menu(esp: Path, efivars: Path, sdboot_version: str | None, snap: Snapshot | None = None) -> Menu:
    """The ``entries`` view: systemd-boot's menu, its counters and what boots next (``snap``: the ESP
    read once already, for status)."""
    from bootkeeper.assess import menu as menu_mod
    from bootkeeper.assess.status import stale_temporaries
    from bootkeeper.esp.efivars import LoaderVars, loader_info
    from bootkeeper.esp.store import EspStore

    if snap is None:
        snap = EspStore(esp).snapshot(sdboot_version, loader_info=loader_info(efivars))
    return menu_mod.build(esp, snap, LoaderVars.read(efivars), stale_temporaries(esp))


def write_motd(root: Path, lines: list[str]) -> Path:
    """The status lines as the login message (ROOT/run/motd.d/bootkeeper), written crash-safe."""
    from bootkeeper import fsutil
    from bootkeeper.errors import WriteError

    text = "bootkeeper\n" + "".join(f"  {ln}\n" for ln in lines)
    p = root / node_status.MOTD
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_atomic(p, text.encode())
    except OSError as exc:
        raise WriteError(f"{p}: cannot write ({exc.strerror})") from exc
    return p


def store_dir(root: Path, config_files: tuple[Path, ...], config: Callable[[], Config]) -> Path | None:
    """The persistent extension store's folder, when the config says ``sysext.store: persistent``."""
    if not config_files and not any((root / "oem").glob("*.yaml")):
        return None  # the defaults: extensions on the ESP (and no config import on this path)
    from bootkeeper import fsutil
    from bootkeeper.config import SysextStore

    cfg = config()
    return fsutil.under(root, cfg.sysext.store_dir) if cfg.sysext.store is SysextStore.PERSISTENT else None


def handback_budget(root: Path, config_files: tuple[Path, ...], config: Callable[[], Config]) -> int | None:
    """``boot_assessment.handbacks`` when a config is there (None: the default, and no YAML import)."""
    if not config_files and not any((root / "oem").glob("*.yaml")):
        return None
    return int(config().boot_assessment.handbacks)
