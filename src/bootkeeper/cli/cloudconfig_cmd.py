"""``bootkeeper cloud-config render``: service enrolment as yip cloud-config."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import click

from bootkeeper.cli.common import config_option, load_config, options, root_option
from bootkeeper.cli.service_cmd import reboot_option


@click.group(name="cloud-config")
def cloud_config() -> None:
    """The boot assessment enrolment as Kairos/yip cloud-config."""


@cloud_config.command()
@click.argument("names", nargs=-1)
@options(reboot_option, root_option, config_option)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Write here (default: stdout).")
def render(
    names: tuple[str, ...], reboot_on_failure: str, root: Path, config_files: tuple[Path, ...], output: Path | None
) -> None:
    """Print a cloud-config that enrols NAMES (default: boot_assessment.services from the config)."""
    from bootkeeper import fsutil
    from bootkeeper.assess import cloudconfig
    from bootkeeper.node.units import enrolment

    chosen = enrolment(names, reboot_on_failure, partial(load_config, config_files, root))
    for w in chosen.warnings:
        click.echo(f"bootkeeper: warning: {w}", err=True)
    text = cloudconfig.render(chosen.specs, chosen.tries)
    if output is None:
        click.echo(text, nl=False)
    else:
        fsutil.write_atomic(output, text.encode())
