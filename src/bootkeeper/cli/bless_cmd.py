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
    load_config,
    options,
    print_json,
    root_option,
)
from bootkeeper.cli.history_cmd import boot_id_option
from bootkeeper.shown import echo


@click.command()
@click.argument("action", type=click.Choice(["good", "bad", "indeterminate", "status"]))
@options(esp_option, efivars_option)
@click.option(
    "--entry",
    "entry",
    default=None,
    help="The booted entry relative to the ESP (e.g. loader/entries/active+2-1.conf) instead of LoaderBootCountPath.",
)
@options(config_option, root_option, boot_id_option, json_option)
def bless(
    action: str, esp: Path | None, efivars: Path | None, entry: str | None, config_files: tuple[Path, ...],
    root: Path, boot_id: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Mark the booted entry as systemd-bless-boot does, on a read-only ESP too.

    status prints good, bad, indeterminate or clean (not booted with boot counting).
    """
    efivars = efivars_dir(efivars, root)
    from bootkeeper.assess import bless as bless_mod
    from bootkeeper.errors import NotApplicableError
    from bootkeeper.esp.store import EspStore
    from bootkeeper.node import bless as joined

    counted = joined.counted_path(efivars, entry)
    esp_root = find_esp(esp)
    if counted is None and action == "status":
        _say({"state": "clean", "booted": None}, "clean", as_json)
        return
    if counted is None:
        problem = joined.restore_uncounted(esp_root)
        if problem is not None:
            click.echo(f"bootkeeper: warning: {problem}", err=True)
        raise NotApplicableError(
            "not booted with boot counting in effect (LoaderBootCountPath is not set)",
            hint="pass --entry PATH to name the entry",
        )
    booted = bless_mod.parse_entry_path(*counted)
    store = EspStore(esp_root)
    if action == "status":
        state = bless_mod.status(store, booted)
        _say({"state": state, "booted": booted.path}, state, as_json)
        return
    cfg = load_config(config_files, root).boot_assessment
    result, problem = joined.bless_recorded(store, booted, bless_mod.Verdict(action), cfg, root, boot_id)
    if problem is not None:
        echo(f"warning: {problem}", err=True)
    if as_json:
        print_json(result.as_json())
        return
    for a in [*result.actions, *([result.note] if result.note else [])]:
        echo(a)
    # the last line says what happened (it is what bootkeeper-bless.service leaves in the journal)
    if result.withheld:
        echo(f"{booted.path}: not marked {action}; left as it is")
    elif any(a.startswith("renamed ") for a in result.actions):
        echo(f"marked {booted.path} as {action}")
    if result.handback is not None:
        echo(result.handback.text)


def _say(doc: dict[str, str | None], text: str, as_json: bool) -> None:
    if as_json:
        print_json(doc)
    else:
        echo(text)
