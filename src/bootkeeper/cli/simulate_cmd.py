"""``bootkeeper simulate``: boots with injected faults (node/simulate.py), on a copy of an ESP or a scratch one."""

from __future__ import annotations

from pathlib import Path

import click

from bootkeeper.cli.common import (
    config_option,
    json_option,
    load_config,
    options,
    print_json,
    root_option,
    version_option,
)
from bootkeeper.shown import echo


@click.command()
@click.option(
    "--esp",
    "esp",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="Simulate on a copy of this ESP (it is never changed). Default: a scratch ESP.",
)
@click.option(
    "--fail",
    "fails",
    multiple=True,
    metavar="ROLE=always|N[:panic|service]",
    help="Inject a fault: the first N boots (or all) of ROLE fail; panic resets, service fails a "
    "unit that decides the boot. Repeatable.",
)
@click.option("--boots", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option(
    "--reboot-on-failure",
    type=click.Choice(["never", "active", "always"]),
    default=None,
    help="Where a failed service reboots the node (FailureAction=reboot). Default: the widest "
    "reboot_on_failure in boot_assessment.services, else active.",
)
@click.option("--default", "default", default=None, help="Scratch ESP only: a loader.conf default pattern.")
@options(version_option, config_option, root_option, json_option)
def simulate(
    esp: Path | None, fails: tuple[str, ...], boots: int, reboot_on_failure: str | None, default: str | None,
    sdboot_version: str | None, config_files: tuple[Path, ...], root: Path, as_json: bool,
) -> None:  # fmt: skip
    """Run BOOTS boots and print what systemd-boot chose, renamed, and how each boot was judged."""
    from bootkeeper.assess.simulate import parse_fault
    from bootkeeper.config import RebootOnFailure
    from bootkeeper.node import simulate as sim

    faults = [parse_fault(f) for f in fails]
    cfg = load_config(config_files, root).boot_assessment
    policy = sim.reboot_policy(cfg, reboot_on_failure)
    warning = sim.BOOT_LOOP if policy is RebootOnFailure.ALWAYS else None
    if warning:
        echo(f"warning: {warning}", err=True)
    done = sim.run(esp, cfg, faults, boots, policy, default=default, sdboot_version=sdboot_version)
    if as_json:
        print_json(
            {"boots": [r.as_json() for r in done.boots], "entries_after": list(done.entries_after), "warning": warning}
        )
        return
    from bootkeeper.cli.render import print_timeline

    print_timeline(done.boots)
    echo("entries after: " + " ".join(Path(f).name for f in done.entries_after))
