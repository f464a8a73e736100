"""``bootkeeper status``: node/status.py's join of the boot half, the extension half and the menu,
shown as text (cli/render.py) or JSON. Boot path: no rich unless on a terminal, no cryptography,
PyYAML only when there is a config to read."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import click

from bootkeeper.cli.common import (
    config_option,
    efivars_dir,
    efivars_option,
    esp_option,
    find_esp,
    json_option,
    load_config,
    options,
    print_json,
    root_option,
    version_option,
)
from bootkeeper.shown import echo


@click.command()
@options(esp_option, efivars_option, version_option, root_option, config_option, json_option)
def status(
    esp: Path | None, efivars: Path | None, sdboot_version: str | None, root: Path, config_files: tuple[Path, ...],
    as_json: bool,
) -> None:  # fmt: skip
    """Which entry booted and why, whether this boot is blessed yet, tries left on every entry, each
    entry's OS and extensions, after a fallback the upgrade that failed, the enrolled services' results,
    the extensions, and what boots next."""
    from bootkeeper.cli.render import status_lines
    from bootkeeper.node import status as joined

    efivars = efivars_dir(efivars, root)
    config = partial(load_config, config_files, root)
    shown = joined.with_menu(root, find_esp(esp), efivars, sdboot_version, config_files, config)
    if as_json:
        print_json(shown.as_json())
    else:
        for line in status_lines(shown):
            echo(line)
