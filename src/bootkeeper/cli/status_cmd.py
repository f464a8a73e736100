"""``bootkeeper status``: node/status.py's join of the boot half, the extension half and the menu,
shown as text (cli/render.py) or JSON. Boot path: no rich unless on a terminal, no cryptography,
PyYAML only when there is a config to read."""

from __future__ import annotations

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


def store_dir(config_files: tuple[Path, ...], root: Path) -> Path | None:
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
@options(esp_option, efivars_option, version_option, root_option, config_option, json_option)
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

    from bootkeeper.cli.render import status_lines
    from bootkeeper.esp.efivars import loader_info
    from bootkeeper.esp.store import EspStore
    from bootkeeper.node import status as joined

    efivars = efivars_dir(efivars, root)
    esp_root = find_esp(esp)
    snap = EspStore(esp_root).snapshot(sdboot_version, loader_info=loader_info(efivars))  # once for both views
    shown = joined.gather(
        root,
        esp_root,
        efivars,
        sdboot_version,
        snap=snap,
        store_dir=store_dir(config_files, root),
        handbacks=handback_budget(config_files, root),
    )
    shown = dataclasses.replace(shown, menu=joined.menu(esp_root, efivars, sdboot_version, snap))
    if as_json:
        print_json(shown.as_json())
    else:
        for line in status_lines(shown):
            echo(line)
