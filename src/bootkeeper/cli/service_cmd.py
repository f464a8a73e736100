"""``bootkeeper service enroll|remove|list``: services that must start before a boot is good."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from bootkeeper.cli.common import F, config_option, json_option, load_config, options, print_json, root_option, table
from bootkeeper.shown import echo

if TYPE_CHECKING:
    from bootkeeper.config import ServiceSpec


def reboot_option(f: F) -> F:
    return click.option(
        "--reboot-on-failure",
        type=click.Choice(["never", "active", "always"]),
        default="never",
        show_default=True,
        help="For NAMES: FailureAction=reboot never, on the active entry only (bootkeeper-generator), "
        "or on every entry.",
    )(f)


def service_specs(
    names: tuple[str, ...], reboot_on_failure: str, config_files: tuple[Path, ...], root: Path
) -> list[ServiceSpec]:
    """NAMES with one policy, or boot_assessment.services from the config when no name is given."""
    from bootkeeper.config import RebootOnFailure, ServiceSpec
    from bootkeeper.errors import UsageError

    if names:
        return [ServiceSpec(n, RebootOnFailure(reboot_on_failure)) for n in names]
    specs = list(load_config(config_files, root).boot_assessment.services)
    if not specs:
        raise UsageError("no service named and none in boot_assessment.services")
    return specs


@click.group()
def service() -> None:
    """Services that decide whether a boot is good (boot-complete.target)."""


@service.command()
@click.argument("names", nargs=-1)
@options(reboot_option, root_option, config_option, json_option)
def enroll(
    names: tuple[str, ...], reboot_on_failure: str, root: Path, config_files: tuple[Path, ...], as_json: bool
) -> None:
    """Enrol NAMES (default: boot_assessment.services from the config) under ROOT/etc."""
    from bootkeeper.assess import services

    # the tries arm gives active, recorded for the generator's reboot rule
    tries = load_config(config_files, root).boot_assessment.tries
    specs = service_specs(names, reboot_on_failure, config_files, root)
    for w in services.loop_warnings(specs):
        echo(f"bootkeeper: warning: {w}", err=True)
    actions = services.enroll(root, specs, tries)
    if as_json:
        print_json({"actions": actions})
    else:
        for a in actions:
            echo(a)


@service.command()
@click.argument("names", nargs=-1, required=True)
@options(root_option, json_option)
def remove(names: tuple[str, ...], root: Path, as_json: bool) -> None:
    """Stop NAMES from deciding whether a boot is good."""
    from bootkeeper.assess import services

    actions = services.remove(root, list(names))
    if as_json:
        print_json({"actions": actions})
    else:
        for a in actions or ["nothing to remove"]:
            echo(a)


@service.command(name="list")
@options(root_option, json_option)
def list_(root: Path, as_json: bool) -> None:
    """Enrolled services, their reboot policy, and whether drop-in, link and unit file are in place."""
    from bootkeeper.assess import services

    rows = services.listing(root)
    if as_json:
        print_json({"services": [r.as_json() for r in rows]})
        return
    if not rows:
        echo("no service enrolled")
        return
    table(
        ["service", "reboot_on_failure", "drop-in", "requires link", "unit file"],
        [
            [
                r.name,
                r.policy.value if r.policy else "(no record: run enroll again)",
                "yes" if r.dropin else "MISSING",
                "yes" if r.linked else "MISSING",
                r.unit_file or "not installed",
            ]
            for r in rows
        ],
    )
