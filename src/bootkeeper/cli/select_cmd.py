"""``bootkeeper select ROLE|ENTRY --once|--persistent``, ``bootkeeper select --clear``: a pin that
respects boot assessment (planned by :mod:`bootkeeper.assess.pin`, written by :mod:`bootkeeper.node.select`)."""

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
from bootkeeper.shown import echo


@click.command()
@click.argument("target", required=False, metavar="ROLE|ENTRY")
@click.option("--once", is_flag=True, help="Boot it next time only (EFI variable LoaderEntryOneShot).")
@click.option(
    "--persistent",
    is_flag=True,
    help="Boot it until --clear, while it has tries left (loader.conf preferred from systemd-boot 260; a sort key "
    "before).",
)
@click.option("--clear", is_flag=True, help="Remove the one-shot, loader.conf preferred and sort-key pins.")
@options(esp_option, efivars_option, version_option, json_option)
def select(
    target: str | None, once: bool, persistent: bool, clear: bool, esp: Path | None, efivars: Path | None,
    sdboot_version: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Pin ROLE (active, passive, recovery, statereset) or ENTRY (file name, path or id on the ESP).

    A persistent pin skips the entry once it has no tries left, so boot assessment still rolls back.
    """
    efivars = efivars_dir(efivars)
    from bootkeeper.assess.pin import Mode
    from bootkeeper.cli.render import next_line
    from bootkeeper.esp.store import EspStore
    from bootkeeper.node.select import chosen_mode
    from bootkeeper.node.select import select as pin_entry

    mode = chosen_mode(target, once, persistent, clear)
    done = pin_entry(EspStore(find_esp(esp)), efivars, mode, target, sdboot_version)
    if as_json:
        print_json(done.as_json())
        return
    for c in done.done:
        echo(c.text())
    if not done.done:
        echo("no pin: nothing to clear" if mode is Mode.CLEAR else "already pinned: nothing to change")
    if done.own is not None:
        echo(f"pin: {done.own.text()}")
    elif mode is Mode.CLEAR:
        for p in done.found:
            echo(f"pin left: {p.text()}")
    echo(next_line(done.choice))
    for w in done.warnings:
        echo(f"bootkeeper: warning: {w}", err=True)
