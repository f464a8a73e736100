"""``bootkeeper entries``: a read-only view of the ESP, which ``status`` (cli/status_cmd.py) shows too
(boot path: no rich unless on a terminal, no cryptography)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from bootkeeper.shown import echo

if TYPE_CHECKING:
    from bootkeeper.assess.menu import Menu


def _view(esp: Path, efivars: Path, sdboot_version: str | None, snap: Any = None) -> Menu:
    from bootkeeper.assess import menu
    from bootkeeper.assess.status import stale_temporaries
    from bootkeeper.esp.efivars import LoaderVars
    from bootkeeper.esp.store import EspStore

    if snap is None:
        snap = EspStore(esp).snapshot(sdboot_version, loader_info=efivars_loader_info(efivars))
    return menu.build(esp, snap, LoaderVars.read(efivars), stale_temporaries(esp))


def _print_human(view: Menu) -> None:
    from bootkeeper.cli.status_cmd import next_line, pin_lines

    echo(f"ESP {view.esp}  (systemd-boot {view.sdboot_value}, {view.sdboot_source})")
    table(
        ["#", "entry", "role", "state", "left", "done", "sort-key", "id"],
        [
            [i + 1, r.path, r.role, r.state, r.tries_left, r.tries_done, r.sort_key, r.id]
            for i, r in enumerate(view.entries)
        ],
    )
    for u in view.unlisted:
        echo(f"not listed by systemd-boot: {u.path}: {u.why}")
    for line in pin_lines(dict(view.pin) if view.pin is not None else None):
        echo(line)
    echo(next_line(view.next))
    for p in view.problems:
        echo(f"warning: {p}", err=True)


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
        print_json(view.as_json())
    else:
        _print_human(view)
