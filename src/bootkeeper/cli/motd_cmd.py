"""``bootkeeper motd``: the text of ``status`` without the next boot, for the login message
(``bootkeeper-boot.service`` runs it at every boot: light imports, no config read)."""

from __future__ import annotations

from pathlib import Path

import click

from bootkeeper.cli.common import (
    efivars_dir,
    efivars_option,
    esp_option,
    find_esp,
    options,
    root_option,
    version_option,
)
from bootkeeper.shown import echo


@click.command()
@options(esp_option, efivars_option, version_option, root_option)
def motd(esp: Path | None, efivars: Path | None, sdboot_version: str | None, root: Path) -> None:
    """Write the status to ROOT/run/motd.d/bootkeeper (shown at login)."""
    efivars = efivars_dir(efivars, root)
    from bootkeeper.cli.render import status_lines
    from bootkeeper.node.status import gather, write_motd

    echo(f"wrote {write_motd(root, status_lines(gather(root, find_esp(esp), efivars, sdboot_version)))}")
