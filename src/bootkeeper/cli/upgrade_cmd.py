"""``bootkeeper upgrade NEW.efi``: a new OS as one transaction over role sets, gated before the first write.
The gate and the transaction are :mod:`bootkeeper.node.upgrade`'s; this verb parses and renders."""

from __future__ import annotations

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
    version_option,
)
from bootkeeper.cli.tpm_gate import luks_option
from bootkeeper.shown import echo

if TYPE_CHECKING:
    from bootkeeper.node.upgrade import Outcome


@click.command()
@click.argument("new_uki", metavar="NEW.efi", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--extension",
    "extensions",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="An extension image for the new OS; repeatable. Replaces a carried one of the same extension name.",
)
@click.option("--recovery", is_flag=True, help="Replace the recovery set instead; active and passive stay.")
@click.option(
    "--rebuild",
    is_flag=True,
    help="Repair: NEW.efi replaces an active that is not blessed, passive is rebuilt from it unless fit to stay, "
    "every role gets fresh tries.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan and the gate; write nothing.")
@click.option("--force", is_flag=True, help="Go on although extensions or the menu order fail the gate (logged).")
@options(luks_option("whose signed-policy TPM2 token the new UKI must open"), esp_option, config_option, version_option)
@options(root_option, json_option)
def upgrade(
    new_uki: Path, extensions: tuple[Path, ...], recovery: bool, rebuild: bool, dry_run: bool, force: bool,
    luks: tuple[Path, ...],
    esp: Path | None, config_files: tuple[Path, ...], sdboot_version: str | None, root: Path, as_json: bool,
) -> None:  # fmt: skip
    """Install NEW.efi as active: the old active's set (UKI, extensions) becomes passive, the old passive goes.

    Refused (exit 1, nothing changed) unless NEW.efi is a UKI, every extension it will load validates and
    matches its .osrel, and (Type #2) the menu order stays active, passive, recovery, statereset."""
    from bootkeeper.node import upgrade as node
    from bootkeeper.node.history import current_boot_id

    cfg = load_config(config_files, root)
    opts = node.UpgradeOptions(recovery, dry_run, force, sdboot_version, luks, rebuild=rebuild)
    out = node.upgrade(cfg, root, esp, new_uki, extensions, opts, say, lambda: current_boot_id(None))
    if out.result == "unchanged" and not as_json:
        tidy = "; finished tidying the extension store" if out.plan.ops else ": nothing to do"
        echo(f"{out.gate.uki_path} is the active UKI already{tidy}")
    if out.refusal is not None:
        if as_json or dry_run:
            _report(out, as_json)
        raise out.refusal
    _report(out, as_json)


def _report(out: Outcome, as_json: bool) -> None:
    """The plan, the gate and the result: as JSON, or a line each."""
    gate = out.gate
    if as_json:
        print_json(out.as_json())
        return
    echo(f"gate: {gate.uki_path}: a UKI ({', '.join(f'{k}={v}' for k, v in gate.uki.osrel.items())})")
    for v in gate.verdicts:
        where = "carried" if v.carried else "--extension"
        state = f"ok, signed by {v.signer}" if v.ok else f"refused: {'; '.join(v.reasons)}"
        echo(f"gate: {v.name} ({where}): {state}")
    if gate.order.order:
        echo(f"gate: menu order after the upgrade: {' → '.join(gate.order.order)}")
    for g in gate.tpm:
        echo(f"gate: {g.device}: {'unlocks with the new UKI' if g.ok else g.reason()}")
    for line in out.actions:
        echo(("would " if out.result == "dry-run" else "") + line)
    echo(f"result: {out.result}")
