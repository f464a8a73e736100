"""``bootkeeper install-units``: the systemd units, the generator, and the services enrolled by config."""

from __future__ import annotations

from pathlib import Path

import click

from bootkeeper.cli.common import config_option, json_option, load_config, options, print_json, root_option, say
from bootkeeper.shown import echo
from bootkeeper.systemd_version import HIGHEST, LOWEST


@click.command(name="install-units")
@options(root_option, config_option)
@click.option(
    "--exe",
    default=None,
    help="The bootkeeper command the units run (default: bootkeeper on PATH, else this Python with -m bootkeeper; "
    "under --root: the node's /usr/bin/bootkeeper or /usr/local/bin/bootkeeper).",
)
@click.option(
    "--python",
    "python",
    default=None,
    help="The Python that runs the generator (default: this one; under --root: the node's /usr/bin/python3).",
)
@click.option(
    "--enable/--no-enable", default=True, show_default=True, help="Link the services into their targets' .wants."
)
@click.option(
    "--systemd-version",
    "systemd_version",
    type=click.IntRange(LOWEST, HIGHEST),
    default=None,
    help="The node's systemd major version (default: sysext.systemd_version, else read under ROOT).",
)
@json_option
def install_units(
    root: Path, config_files: tuple[Path, ...], exe: str | None, python: str | None, enable: bool,
    systemd_version: int | None, as_json: bool,
) -> None:  # fmt: skip
    """Write bootkeeper's units, the systemd-sysext drop-in and bootkeeper-generator under ROOT/etc,
    mask systemd-bless-boot.service and systemd-boot-random-seed.service, and enrol the services in
    boot_assessment.services."""
    from bootkeeper.node import units
    from bootkeeper.node.metrics import TPM_VERIFY
    from bootkeeper.sysext.report import REPORT

    cfg = load_config(config_files, root)
    watch = (f"/{REPORT}", f"/{TPM_VERIFY}")
    done = units.install(cfg, root, exe, python, enable, systemd_version, watch, say)
    if as_json:
        print_json(done.as_json())
        return
    for w in done.written:
        echo(f"wrote {w}")
    for a in done.services:
        echo(a)
    echo("run 'systemctl daemon-reload' (on a running system) for systemd to see them")
