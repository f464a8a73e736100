"""``bootkeeper bless good|bad|indeterminate|status`` (boot path: imports stay light)."""

from __future__ import annotations

from pathlib import Path

import click

from bootkeeper.cli.common import (
    config_option,
    efivars_dir,
    efivars_option,
    esp_option,
    find_esp,
    json_option,
    print_json,
    root_option,
)
from bootkeeper.cli.history_cmd import boot_id_option
from bootkeeper.shown import echo


@click.command()
@click.argument("action", type=click.Choice(["good", "bad", "indeterminate", "status"]))
@esp_option
@efivars_option
@click.option(
    "--entry",
    "entry",
    default=None,
    help="The booted entry relative to the ESP (e.g. loader/entries/active+2-1.conf) instead of LoaderBootCountPath.",
)
@config_option
@root_option
@boot_id_option
@json_option
def bless(
    action: str,
    esp: Path | None,
    efivars: Path | None,
    entry: str | None,
    config_files: tuple[Path, ...],
    root: Path,
    boot_id: str | None,
    as_json: bool,
) -> None:
    """Mark the booted entry as systemd-bless-boot does, on a read-only ESP too.

    status prints good, bad, indeterminate or clean (not booted with boot counting).
    """
    efivars = efivars_dir(efivars, root)
    from bootkeeper.assess import bless as bless_mod
    from bootkeeper.errors import BootkeeperError, NotApplicableError
    from bootkeeper.esp.efivars import read_string
    from bootkeeper.esp.store import EspStore

    source = "--entry"
    value = entry
    if value is None:
        source = "LoaderBootCountPath"
        value = read_string(efivars, "LoaderBootCountPath") if efivars.is_dir() else None
    esp_root = find_esp(esp)
    if value is None:
        if action == "status":
            if as_json:
                print_json({"state": "clean", "booted": None})
            else:
                echo("clean")
            return
        # bless on a node without boot counting: still a run that puts /efi back to ro where fstab says
        # so; a failure to do that is said, and the answer stays this one
        try:
            EspStore(esp_root).restore_read_only()
        except BootkeeperError as exc:
            click.echo(f"bootkeeper: warning: {exc}", err=True)
        raise NotApplicableError(
            "not booted with boot counting in effect (LoaderBootCountPath is not set)",
            hint="pass --entry PATH to name the entry",
        )
    booted = bless_mod.parse_entry_path(value, source)
    store = EspStore(esp_root)
    if action == "status":
        state = bless_mod.status(store, booted)
        if as_json:
            print_json({"state": state, "booted": booted.path})
        else:
            echo(state)
        return
    from bootkeeper.cli.common import load_config

    cfg = load_config(config_files, root).boot_assessment
    result = bless_mod.bless(store, booted, bless_mod.Verdict(action), cfg)
    from bootkeeper.node.history import record_verdict

    problem = record_verdict(root, boot_id, "withheld" if result.withheld else action, result.handback)
    if problem is not None:
        echo(f"warning: {problem}", err=True)
    if as_json:
        print_json(result.as_json())
        return
    for a in result.actions:
        echo(a)
    if result.note:
        echo(result.note)
    # the last line says what happened (it is what bootkeeper-bless.service leaves in the journal)
    if result.withheld:
        echo(f"{booted.path}: not marked {action}; left as it is")
    elif any(a.startswith("renamed ") for a in result.actions):
        echo(f"marked {booted.path} as {action}")
    if result.handback is not None:
        echo(result.handback.text)
