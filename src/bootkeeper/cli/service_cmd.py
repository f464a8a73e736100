"""``bootkeeper service enroll|remove|list``: services that must start before a boot is good."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import click

from bootkeeper.cli.common import F, config_option, json_option, load_config, options, print_json, root_option, table
from bootkeeper.shown import echo


def reboot_option(f: F) -> F:
    return click.option(
        "--reboot-on-failure",
        type=click.Choice(["never", "active", "always"]),
        default="never",
        show_default=True,
        help="For NAMES: FailureAction=reboot never, on the active entry only (bootkeeper-generator), "
        "or on every entry.",
    )(f)


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
    from bootkeeper.node.units import enrolment

    chosen = enrolment(names, reboot_on_failure, partial(load_config, config_files, root))
    for w in chosen.warnings:
        echo(f"bootkeeper: warning: {w}", err=True)
    actions = services.enroll(root, chosen.specs, chosen.tries)
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
