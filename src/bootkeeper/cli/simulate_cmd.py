"""``bootkeeper simulate``: boots with injected faults, on a copy of an ESP or a scratch one."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

from bootkeeper.cli.common import (
    config_option,
    json_option,
    load_config,
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
@version_option
@config_option
@root_option
@json_option
def simulate(
    esp: Path | None,
    fails: tuple[str, ...],
    boots: int,
    reboot_on_failure: str | None,
    default: str | None,
    sdboot_version: str | None,
    config_files: tuple[Path, ...],
    root: Path,
    as_json: bool,
) -> None:
    """Run BOOTS boots and print what systemd-boot chose, renamed, and how each boot was judged."""
    from bootkeeper.assess.simulate import parse_fault
    from bootkeeper.assess.simulate import simulate as run_sim
    from bootkeeper.config import RebootOnFailure
    from bootkeeper.esp import scratch
    from bootkeeper.esp.store import EspStore

    faults = [parse_fault(f) for f in fails]
    cfg = load_config(config_files, root).boot_assessment
    if reboot_on_failure is None:
        policies = [s.reboot_on_failure.value for s in cfg.services] or ["active"]
        reboot_on_failure = max(policies, key=["never", "active", "always"].index)
    warning = None
    if reboot_on_failure == "always":
        warning = (
            "lint BK103: FailureAction=reboot on every entry: a service that fails everywhere reboots "
            "passive and recovery too (boot loop); use reboot_on_failure: active"
        )
        echo(f"warning: {warning}", err=True)
    with tempfile.TemporaryDirectory(prefix="bootkeeper-sim-") as tmp:
        work = Path(tmp) / "esp"
        if esp is not None:
            shutil.copytree(esp, work, symlinks=False)
        else:
            scratch.make(work, tries=cfg.tries, recovery_tries=cfg.recovery_tries, default=default)
        records = run_sim(
            EspStore(work),
            cfg,
            faults,
            boots,
            reboot_on_failure=RebootOnFailure(reboot_on_failure),
            sdboot_version=sdboot_version,
        )
        # Type #1 entries and Type #2 UKIs (EFI/Linux/*.efi), each with the name the boot left it
        final = sorted(
            str(p.relative_to(work))
            for d, pattern in (("loader/entries", "*.conf"), ("EFI/Linux", "*.efi"))
            for p in (work / d).glob(pattern)
        )
    if as_json:
        print_json({"boots": [r.as_json() for r in records], "entries_after": final, "warning": warning})
        return
    from bootkeeper.cli.render import print_timeline

    print_timeline(records)
    echo("entries after: " + " ".join(Path(f).name for f in final))
