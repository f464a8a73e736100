"""``bootkeeper arm`` and ``bootkeeper rotate``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from bootkeeper.cli.common import (
    config_option,
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

if TYPE_CHECKING:
    from bootkeeper.assess.chain import ChainResult


def _report(res: ChainResult, as_json: bool) -> None:
    if as_json:
        print_json(res.as_json())
        return
    for a in res.actions or ["nothing to change"]:
        echo(a)
    for w in res.warnings:
        echo(f"warning: {w}", err=True)


@click.command()
@click.argument("roles", nargs=-1, type=click.Choice(["active", "passive", "recovery", "statereset"]))
@options(esp_option, version_option, config_option, root_option, json_option)
def arm(
    roles: tuple[str, ...], esp: Path | None, sdboot_version: str | None, config_files: tuple[Path, ...], root: Path,
    as_json: bool,
) -> None:  # fmt: skip
    """Give ROLES (default: all) fresh counters, fallback sort keys, and drop a pinning default.

    The loader key of an entry that boots a UKI becomes the one the ESP's systemd-boot counts
    ('efi' before 258, 'uki' from 258), and a read-only attribute on an entry is cleared."""
    from bootkeeper.assess import chain
    from bootkeeper.esp.entries import Role
    from bootkeeper.esp.store import EspStore

    cfg = load_config(config_files, root).boot_assessment
    res = chain.arm(EspStore(find_esp(esp)), cfg, [Role(r) for r in roles] or None, sdboot_version=sdboot_version)
    _report(res, as_json)


@click.command()
@click.argument("new_entry", type=click.Path(path_type=Path))
@options(esp_option, version_option, config_option, root_option, json_option)
def rotate(
    new_entry: Path, esp: Path | None, sdboot_version: str | None, config_files: tuple[Path, ...], root: Path,
    as_json: bool,
) -> None:  # fmt: skip
    """Install NEW_ENTRY (.conf or UKI .efi) as active; the old active becomes passive, fresh counter.

    To install a whole new OS (UKI and its extensions, the old one kept as the fallback), use 'upgrade'."""
    from bootkeeper.assess import chain
    from bootkeeper.esp.store import EspStore

    cfg = load_config(config_files, root).boot_assessment
    _report(chain.rotate(EspStore(find_esp(esp)), cfg, new_entry, sdboot_version=sdboot_version), as_json)
