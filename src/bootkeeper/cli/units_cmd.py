"""``bootkeeper install-units``: the systemd units for boot-time extension activation."""

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
@click.option(
    "--enable/--no-enable", default=True, show_default=True, help="Link the service into sysinit.target.wants."
)
@json_option
def install_units(root: Path, config_files: tuple[Path, ...], exe: str | None, enable: bool, as_json: bool) -> None:
    """Write bootkeeper-sysext.service and the systemd-sysext.service drop-in under ROOT/etc/systemd/system."""
    from bootkeeper import units

    cfg = load_config(config_files, root)
    if exe is not None:
        argv = exe.split()
    elif (found := shutil.which("bootkeeper")) is not None:
        argv = [str(Path(found).resolve())]
    else:
        argv = [sys.executable, "-m", "bootkeeper"]
    written = units.install(root, units.render(cfg.sysext, argv), enable)
    if as_json:
        print_json({"written": written, "command": argv})
        return
    for w in written:
        click.echo(f"wrote {w}")
    click.echo("run 'systemctl daemon-reload' (on a running system) for systemd to see them")
