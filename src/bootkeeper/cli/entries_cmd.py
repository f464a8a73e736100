"""``bootkeeper entries``: a read-only view of the ESP, which ``status`` (cli/status_cmd.py) shows too
(boot path: no rich unless on a terminal, no cryptography)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bootkeeper.cli.common import (
    efivars_dir,
    efivars_option,
    esp_option,
    find_esp,
    json_option,
    print_json,
    table,
    version_option,
)
from bootkeeper.esp.efivars import loader_info as efivars_loader_info

TEMPORARY_WHY = "a temporary left by an interrupted bootkeeper run: any bootkeeper write verb removes it"


def _view(esp: Path, efivars: Path, sdboot_version: str | None, snap: Any = None) -> dict[str, Any]:
    from bootkeeper.assess import bootloader, pin
    from bootkeeper.assess.status import stale_temporaries
    from bootkeeper.esp import entries as entries_mod
    from bootkeeper.esp.efivars import LoaderVars
    from bootkeeper.esp.store import EspStore

    if snap is None:
        snap = EspStore(esp).snapshot(sdboot_version, loader_info=efivars_loader_info(efivars))
    ev = LoaderVars.read(efivars)
    order = entries_mod.menu_order(list(snap.menu_entries), snap.sdboot)
    choice = bootloader.choose(snap, ev)
    rows = []
    for e in order:
        rows.append(
            {
                "path": e.path,
                "id": e.entry_id(snap.sdboot),
                "role": e.role.value if e.role else None,
                "state": e.state.value,
                "tries_left": e.name.tries_left,
                "tries_done": e.name.tries_done,
                "sort_key": e.sort_key,
                "version": e.version,
                "title": e.title,
                "type": e.kind.value,
                "loader": e.loader_type.value,
                "profile": e.profile,  # a UKI profile (257+): more menu entries of the same file
            }
        )
    return {
        "esp": str(esp),
        "systemd_boot_version": {
            "value": snap.sdboot_version,
            "version": str(snap.sdboot),
            "source": snap.sdboot_version_source,
        },
        "default": snap.loader_conf.default if snap.loader_conf else None,
        "efi_variables": {
            "LoaderEntryDefault": ev.entry_default,
            "LoaderEntryOneShot": ev.entry_oneshot,
            "LoaderEntrySelected": ev.entry_selected,
            "LoaderBootCountPath": ev.boot_count_path,
        },
        "next": choice.as_json() if choice else None,
        "pin": pin.view(pin.pins(snap, ev)),
        "entries": rows,
        "unlisted": [{"path": e.path, "why": e.why_unlisted} for e in snap.entries if not e.listed]
        + [
            {"path": t.path, "why": f"{TEMPORARY_WHY} ({t.size} bytes)", "size": t.size} for t in stale_temporaries(esp)
        ],
        "problems": list(snap.problems),
    }


def _print_human(view: dict[str, Any]) -> None:
    from bootkeeper.cli.status_cmd import next_line, pin_lines

    v = view["systemd_boot_version"]
    click.echo(f"ESP {view['esp']}  (systemd-boot {v['value']}, {v['source']})")
    table(
        ["#", "entry", "role", "state", "left", "done", "sort-key", "id"],
        [
            [i + 1, r["path"], r["role"], r["state"], r["tries_left"], r["tries_done"], r["sort_key"], r["id"]]
            for i, r in enumerate(view["entries"])
        ],
    )
    for u in view["unlisted"]:
        click.echo(f"not listed by systemd-boot: {u['path']}: {u['why']}")
    for line in pin_lines(view["pin"]):
        click.echo(line)
    click.echo(next_line(view["next"]))
    for p in view["problems"]:
        click.echo(f"warning: {p}", err=True)


@click.command()
@esp_option
@efivars_option
@version_option
@json_option
def entries(esp: Path | None, efivars: Path | None, sdboot_version: str | None, as_json: bool) -> None:
    """Boot entries in systemd-boot's menu order, their counters, and which one boots next."""
    efivars = efivars_dir(efivars)
    view = _view(find_esp(esp), efivars, sdboot_version)
    if as_json:
        print_json(view)
    else:
        _print_human(view)
