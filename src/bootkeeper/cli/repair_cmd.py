"""``bootkeeper repair``: from recovery or statereset, active and passive rebuilt from a release, then a reboot
into active. The steps are :mod:`bootkeeper.node.repair`'s; this verb parses, renders and reboots last."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bootkeeper.cli.common import (
    config_option,
    esp_option,
    json_option,
    load_config,
    options,
    print_json,
    root_option,
    say,
)
from bootkeeper.shown import echo

if TYPE_CHECKING:
    from bootkeeper.node.repair import RepairOutcome


def _progress() -> Callable[[int, int | None], None]:
    """A line per tenth of each file fetched (a repair runs in a unit's journal as often as on a TTY)."""
    shown: dict[int | None, int] = {}

    def tick(done: int, total: int | None) -> None:
        if not total:
            return
        tenth = done * 10 // total
        if shown.get(total, -1) < tenth:
            shown[total] = tenth
            say(f"bootkeeper: fetched {done * 100 // total}% of {total} bytes")

    return tick


@click.command()
@click.option("--source", default=None, help="oci:, ocifile:, dir: or file: (default: update.source, then media).")
@click.option("--no-reboot", is_flag=True, help="Do not reboot afterwards (the unit reboots: into active, or to "
              "use recovery's next try).")  # fmt: skip
@click.option("--force", is_flag=True, help="Repair from a boot that is not recovery or statereset (logged).")
@click.option(
    "--needed",
    is_flag=True,
    help="Only say whether this boot should repair: exit 0 if so, 1 if not (the unit's ExecCondition=).",
)
@options(root_option, esp_option, config_option, json_option)
def repair(
    source: str | None, no_reboot: bool, force: bool, needed: bool, root: Path, esp: Path | None,
    config_files: tuple[Path, ...], as_json: bool,
) -> None:  # fmt: skip
    """Rebuild active and passive from a release and reboot into active (on recovery and statereset boots).

    The release comes from --source, else update.source (with update.channel), else the first removable
    medium holding one. Every attempt is recorded in the boot history. A repair that fails exits non-zero
    and, on recovery, reboots: recovery is never blessed, so it costs one of its tries, then statereset."""
    from bootkeeper.node import repair as node
    from bootkeeper.node.history import current_boot_id
    from bootkeeper.node.store import esp_under

    if needed:
        yes, why = node.needed(root, esp_under(esp, root))
        echo(f"{'repair' if yes else 'no repair'}: {why}")
        if not yes:
            sys.exit(1)
        return
    cfg = load_config(config_files, root)
    opts = node.RepairOptions(force=force, progress=None if as_json else _progress())
    out = node.repair(cfg, root, esp, source, say, lambda: current_boot_id(None), not no_reboot, opts)
    _report(out, as_json)
    if out.error is not None:
        from bootkeeper.cli.common import say_error

        # said before the reboot is queued: its SIGTERM may end this process first
        say_error(out.error.message, out.error.hint)
    if out.reboots:
        say("bootkeeper: rebooting" + (" into active" if out.error is None else " (recovery's next try)"))
        sys.stderr.flush()
        node.reboot(say)
    if out.error is not None:
        sys.exit(out.error.exit_code)


def _report(out: RepairOutcome, as_json: bool) -> None:
    if as_json:
        print_json(out.as_json())
        return
    for t in out.tried:
        echo(f"tried: {t}")
    if out.result == "not-needed":
        echo(f"nothing to repair: {out.reason}")
    elif out.result == "repaired":
        echo(f"repaired: active and passive rebuilt from {out.source} ({out.version or 'an unknown version'})")
    else:
        echo(f"repair failed on {out.role or 'an unknown role'}" + (f" ({out.source})" if out.source else ""))
    sys.stdout.flush()
