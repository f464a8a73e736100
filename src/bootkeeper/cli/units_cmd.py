"""``bootkeeper install-units``: the systemd units, the generator, and the services enrolled by config."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from bootkeeper.cli.common import config_option, json_option, load_config, print_json, root_option


@click.command(name="install-units")
@root_option
@config_option
@click.option(
    "--exe",
    default=None,
    help="The bootkeeper command the units run (default: bootkeeper on PATH, else this Python with -m bootkeeper).",
)
@click.option("--python", "python", default=None, help="The Python that runs the generator (default: this one).")
@click.option(
    "--enable/--no-enable", default=True, show_default=True, help="Link the services into their targets' .wants."
)
@json_option
def install_units(
    root: Path, config_files: tuple[Path, ...], exe: str | None, python: str | None, enable: bool, as_json: bool
) -> None:
    """Write bootkeeper's units, the systemd-sysext drop-in and bootkeeper-generator under ROOT/etc,
    mask systemd-bless-boot.service, and enrol the services in boot_assessment.services."""
    from bootkeeper import units
    from bootkeeper.assess import services

    cfg = load_config(config_files, root)
    if exe is not None:
        argv = exe.split()
    elif (found := shutil.which("bootkeeper")) is not None:
        argv = [str(Path(found).resolve())]
    else:
        argv = [sys.executable, "-m", "bootkeeper"]
    written = units.install(root, units.render(cfg, argv, python or sys.executable), enable)
    enrolled = (
        services.enroll(root, list(cfg.boot_assessment.services), cfg.boot_assessment.tries)
        if cfg.boot_assessment.services
        else []
    )
    if as_json:
        print_json({"written": written, "command": argv, "services": enrolled})
        return
    for w in written:
        click.echo(f"wrote {w}")
    for a in enrolled:
        click.echo(a)
    click.echo("run 'systemctl daemon-reload' (on a running system) for systemd to see them")
