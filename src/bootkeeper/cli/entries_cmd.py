"""``bootkeeper entries``: a read-only view of the ESP, which ``status`` shows too (boot path: no rich
unless on a terminal, no cryptography)."""

from __future__ import annotations

from pathlib import Path

import click

from bootkeeper.cli.common import (
    efivars_dir,
    efivars_option,
    esp_option,
    find_esp,
    json_option,
    options,
    print_json,
    version_option,
)


@click.command()
@options(esp_option, efivars_option, version_option, json_option)
def entries(esp: Path | None, efivars: Path | None, sdboot_version: str | None, as_json: bool) -> None:
    """Boot entries in systemd-boot's menu order, their counters, and which one boots next."""
    from bootkeeper.cli.render import print_menu
    from bootkeeper.node.status import menu

    efivars = efivars_dir(efivars)
    view = menu(find_esp(esp), efivars, sdboot_version)
    if as_json:
        print_json(view.as_json())
    else:
        print_menu(view)
