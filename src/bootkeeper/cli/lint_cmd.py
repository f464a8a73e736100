"""``bootkeeper lint``: boot-loop hazards in cloud-config, unit files and on the ESP, and the node's
systemd-sysext setup (:mod:`bootkeeper.sysext.conf`)."""

from __future__ import annotations

from pathlib import Path

import click

from bootkeeper.cli.common import (
    config_option,
    efivars_dir,
    efivars_option,
    esp_option,
    json_option,
    load_config,
    options,
    print_json,
    version_option,
)
from bootkeeper.shown import echo


@click.command()
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@options(esp_option, efivars_option, version_option, config_option)
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Also check the node tree at DIR: its sysext.conf and systemd-sysext-sysroot.service (default: / "
    "when neither FILES nor --esp are given).",
)
@json_option
def lint(
    files: tuple[Path, ...], esp: Path | None, efivars: Path | None, sdboot_version: str | None,
    config_files: tuple[Path, ...], root: Path | None, as_json: bool,
) -> None:  # fmt: skip
    """Check FILES (cloud-config YAML, unit files, drop-ins), with --esp the ESP, and with --root the
    node's systemd-sysext setup and extension folders (BK301 to BK304).

    With none of them, the ESP found at /efi, /boot/efi or /boot, /oem/*.yaml and the node at / are
    checked; with --root alone, ROOT/oem/*.yaml and the node.
    Exit status 1 when there is an error finding, 0 with warnings only.
    """
    efivars = efivars_dir(efivars, root or Path("/"))
    from bootkeeper.findings import Severity
    from bootkeeper.node import lint as joined

    findings = joined.lint(files, esp, efivars, sdboot_version, root, lambda r: load_config(config_files, r))
    errors = sum(f.severity is Severity.ERROR for f in findings)
    if as_json:
        print_json({"findings": [f.as_json() for f in findings], "errors": errors})
    else:
        for f in findings:
            click.echo(str(f))  # two lines, each escaped (findings.Finding.__str__)
        echo(f"{len(findings)} finding(s), {errors} error(s)")
    if errors:
        raise SystemExit(1)
