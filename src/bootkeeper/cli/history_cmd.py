"""``bootkeeper history record|show`` (boot path: light imports)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bootkeeper.cli.common import (
    efivars_dir,
    efivars_option,
    esp_option,
    find_esp,
    json_option,
    options,
    print_json,
    root_option,
    say,
    version_option,
)
from bootkeeper.shown import echo

if TYPE_CHECKING:
    from bootkeeper.assess.history import RoleOs, Upgrade


def boot_id_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option("--boot-id", default=None, help="This boot's id (default: /proc/sys/kernel/random/boot_id).")(f)


@click.group()
def history() -> None:
    """The boot history in /var/lib/bootkeeper/boots.jsonl."""


@history.command()
@options(esp_option, efivars_option, version_option, root_option, boot_id_option)
def record(esp: Path | None, efivars: Path | None, sdboot_version: str | None, root: Path, boot_id: str | None) -> None:
    """Append this boot (booted entry, its counter, every entry's state) once per boot id."""
    from bootkeeper.node.history import record_boot

    bid, rec = record_boot(root, lambda: find_esp(esp), efivars_dir(efivars, root), sdboot_version, boot_id, say)
    echo(
        f"boot {bid} is already recorded" if rec is None else f"recorded boot {bid}: {rec['entry'] or 'unknown entry'}"
    )


@history.command()
@options(root_option, json_option)
def show(root: Path, as_json: bool) -> None:
    """The recorded boots, upgrades and repair attempts, oldest first."""
    from bootkeeper.assess import history as history_mod
    from bootkeeper.cli.common import table

    recorded = history_mod.read_all(root)
    boots, warnings = recorded.boots, recorded.warnings
    if as_json:
        print_json(
            {
                "boots": [b.as_json() for b in boots],
                "upgrades": [u.as_json() for u in recorded.upgrades],
                "repairs": [r.as_json() for r in recorded.repairs],
                "warnings": warnings,
            }
        )
        return
    table(
        ["time (UTC)", "entry", "left", "done", "verdict"],
        [
            [
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(b.time)),
                b.entry,
                b.left,
                b.done,
                (b.verdict or _no_verdict(b.not_good)) + (f"; {b.handback.text}" if b.handback else ""),
            ]
            for b in boots
        ],
    )
    for u in recorded.upgrades:
        echo(upgrade_line(u))
    for rp in recorded.repairs:
        echo(rp.text)
    for w in warnings:
        echo(f"warning: {w}", err=True)


def _no_verdict(not_good: list[str]) -> str:
    """A boot without bless's verdict: what failed it, when a unit said (a not-good record)."""
    return "not good: " + "; ".join(not_good) if not_good else "none (boot-complete not reached)"


def upgrade_line(u: Upgrade) -> str:
    """``2026-12-01 15:20:00 upgrade of active: 1 → 2; extensions a.raw → a.raw, b.raw``."""
    from bootkeeper.assess.history import os_version

    def names(side: RoleOs) -> str:
        more = f" and {side.left_off} more" if side.left_off else ""
        return (", ".join(x.name for x in side.extensions) or "none") + more

    forced = " (forced)" if u.forced else ""
    return (
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(u.time))} upgrade of {u.role.value}: "
        f"{os_version(u.before.os)} → {os_version(u.after.os)}; extensions {names(u.before)} → {names(u.after)}{forced}"
    )
