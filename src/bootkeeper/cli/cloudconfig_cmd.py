"""``bootkeeper cloud-config render``: service enrolment as yip cloud-config."""

from __future__ import annotations

from pathlib import Path

import click

from bootkeeper.cli.common import config_option, load_config, root_option


@click.group(name="cloud-config")
def cloud_config() -> None:
    """The boot assessment enrolment as Kairos/yip cloud-config."""


@cloud_config.command()
@click.argument("names", nargs=-1)
@click.option(
    "--reboot-on-failure",
    type=click.Choice(["never", "active", "always"]),
    default="never",
    show_default=True,
    help="For NAMES given here: never, on the active entry only, or on every entry.",
)
@root_option
@config_option
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Write here (default: stdout).")
def render(
    names: tuple[str, ...], reboot_on_failure: str, root: Path, config_files: tuple[Path, ...], output: Path | None
) -> None:
    """Print a cloud-config that enrols NAMES (default: boot_assessment.services from the config)."""
    from bootkeeper import fsutil
    from bootkeeper.assess import cloudconfig
    from bootkeeper.config import RebootOnFailure, ServiceSpec
    from bootkeeper.errors import UsageError

    if names:
        specs = [ServiceSpec(n, RebootOnFailure(reboot_on_failure)) for n in names]
    else:
        specs = list(load_config(config_files, root).boot_assessment.services)
        if not specs:
            raise UsageError("no service named and none in boot_assessment.services")
    text = cloudconfig.render(specs)
    if output is None:
        click.echo(text, nl=False)
    else:
        fsutil.write_atomic(output, text.encode())
