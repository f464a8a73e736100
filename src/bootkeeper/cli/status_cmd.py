"""``bootkeeper status``: the boot half (assess/status.py), the extension half (sysext/status.py) and
the menu with what boots next (the ``entries`` view), put together and shown as text or JSON. The text
of ``motd`` (cli/motd_cmd.py) is the same, without the next boot. Boot path: no rich unless on a
terminal, no cryptography, PyYAML only when there is a config to read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bootkeeper.assess import status as node_status
from bootkeeper.assess.status import Booted, NodeStatus, ServiceReader, Unavailable
from bootkeeper.cli.common import (
    config_option,
    efivars_dir,
    efivars_option,
    esp_option,
    find_esp,
    json_option,
    load_config,
    print_json,
    root_option,
    version_option,
)
from bootkeeper.shown import echo

if TYPE_CHECKING:
    from bootkeeper.assess.bootloader import BootChoice
    from bootkeeper.assess.menu import Menu
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

    def as_json(self) -> dict[str, Any]:
        node = self.node.as_json()
        return {
            **(self.menu.as_json() if self.menu is not None else {}),
            **{k: node[k] for k in ("booted", "failed_upgrade", "handback", "roles", "services")},
            "extensions": self.extensions.as_json(),
            "history": node["history"],
            "upgrades": node["upgrades"],
            "warnings": [*node["warnings"], *self.problems],
        }

    def lines(self) -> list[str]:
        from bootkeeper.assess import history
        from bootkeeper.shown import shown_line

        node, ext = self.node, self.extensions
        lines = [booted_line(node.booted)]
        if node.booted.why:
            lines.append(f"why: {node.booted.why.text}")
        if node.failed_upgrade:
            lines.append(node.failed_upgrade.text)
        if node.handback:
            lines.append(f"hand-back: {node.handback.text}")
        lines.append("entries:")
        for e in node.entries:
            tries = "not counted" if e.tries_left is None else f"{e.tries_left} tries left, {e.tries_done} used"
            lines.append(f"  {e.path:<40} {e.state:<13} {tries}")
        lines.extend(pin_lines(dict(node.pin) if node.pin is not None else None))
        if node.roles:
            lines.append("OS per entry (its UKI's .osrel):")
            lines.extend(f"  {r.entry:<12} {history.os_text(r.os)}" for r in node.roles)
        if node.services:
            lines.append("services that decide a boot:")
            for s in node.services:
                lines.append(f"  {s.name:<30} {s.result:<20} reboot_on_failure: {s.reboot_on_failure}")
        for entry, names in ext.installed.items():
            lines.append(f"extensions installed for {entry}: {', '.join(names)}")
        act = ext.activation
        if act is not None and act.images:
            lines.append(f"extensions active ({act.mode}): {', '.join(str(n) for n in act.placed) or 'none'}")
            refused = [f"{i.name} ({i.verdict})" for i in act.images if not i.placed]
            if refused:
                lines.append(f"extensions refused: {', '.join(refused)}")
        if act is not None and act.required is not None and act.required.names:
            req = act.required
            lines.append(f"extensions required: {req.text()}{'' if req.ok else ': this boot is NOT good'}")
        # the booted entry's own problem is on its line already
        lines.extend(f"warning: {w}" for w in (*node.warnings, *self.problems))
        if self.menu is not None:
            lines.append(next_line(self.menu.next))
        # each line escaped as the one line it is (bootkeeper.shown): an extension's file name, an
        # .osrel field, an efivar cannot add a line to status or the MOTD, nor move the cursor
        return [shown_line(line) for line in lines]


def pin_lines(pin: dict[str, Any] | None) -> list[str]:
    """The ``pin`` view (assess/pin.py) as text: the pin consulted first, then the others."""
    if not pin:
        return []
    return [f"pin: {pin['text']}"] + [f"  also: {o['text']}" for o in pin.get("others", [])]


def next_line(nxt: BootChoice | None) -> str:
    """The next boot (assess/bootloader.py's choice) as text."""
    if nxt is None:
        return "next boot: nothing — systemd-boot finds no entry"
    after = f" (renamed to {nxt.path_after})" if nxt.path_after != nxt.entry.path else ""
    return f"next boot: {nxt.entry.path}{after}: {nxt.reason}"


def booted_line(b: Booted) -> str:
    if isinstance(b.blessed, Unavailable):
        what = f"{b.entry} (role {b.role.value if b.role else 'none'})" if b.entry else "unknown"
        return f"booted: {what}; its state is unknown: {b.blessed.reason}"
    if b.entry:
        return f"booted: {b.entry} (role {b.role.value if b.role else 'none'}); {blessed_text(b.blessed)}"
    return "booted: unknown (no systemd-boot variables)"


def blessed_text(state: str | None) -> str:
    return {
        "good": "blessed: this boot is good",
        "indeterminate": "NOT blessed yet: boot-complete.target not reached (or bless did not run)",
        "bad": "marked BAD",
        "not counted": "not counted (entry has no boot counter)",
    }.get(str(state), f"blessed: {state}")


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


def _store_dir(config_files: tuple[Path, ...], root: Path) -> Path | None:
    """The persistent extension store's folder, when the config says ``sysext.store: persistent``."""
    if not config_files and not any((root / "oem").glob("*.yaml")):
        return None  # the defaults: extensions on the ESP (and no config import on this path)
    from bootkeeper import fsutil
    from bootkeeper.config import SysextStore

    cfg = load_config(config_files, root)
    return fsutil.under(root, cfg.sysext.store_dir) if cfg.sysext.store is SysextStore.PERSISTENT else None


def handback_budget(config_files: tuple[Path, ...], root: Path) -> int | None:
    """``boot_assessment.handbacks`` when a config is there (None: the default, and no YAML import)."""
    if not config_files and not any((root / "oem").glob("*.yaml")):
        return None
    return int(load_config(config_files, root).boot_assessment.handbacks)


@click.command()
@esp_option
@efivars_option
@version_option
@root_option
@config_option
@json_option
def status(
    esp: Path | None,
    efivars: Path | None,
    sdboot_version: str | None,
    root: Path,
    config_files: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Which entry booted and why, whether this boot is blessed yet, tries left on every entry, each
    entry's OS and extensions, after a fallback the upgrade that failed, the enrolled services' results,
    the extensions, and what boots next."""
    import dataclasses

    from bootkeeper.cli.entries_cmd import _view
    from bootkeeper.esp.efivars import loader_info
    from bootkeeper.esp.store import EspStore

    efivars = efivars_dir(efivars, root)
    esp_root = find_esp(esp)
    snap = EspStore(esp_root).snapshot(sdboot_version, loader_info=loader_info(efivars))  # once for both views
    shown = gather(
        root,
        esp_root,
        efivars,
        sdboot_version,
        snap=snap,
        store_dir=_store_dir(config_files, root),
        handbacks=handback_budget(config_files, root),
    )
    shown = dataclasses.replace(shown, menu=_view(esp_root, efivars, sdboot_version, snap))
    if as_json:
        print_json(shown.as_json())
    else:
        for line in shown.lines():
            echo(line)
