"""``bootkeeper select ROLE|ENTRY --once|--persistent``, ``bootkeeper select --clear``: a pin that
respects boot assessment (the pure part is :mod:`bootkeeper.assess.pin`; this is the edge that writes)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from bootkeeper.cli.common import (
    efivars_dir,
    efivars_option,
    esp_option,
    find_esp,
    json_option,
    print_json,
    version_option,
)
from bootkeeper.esp.efivars import loader_info as efivars_loader_info
from bootkeeper.shown import echo


def _esp_relative(root: Path, target: str) -> str:
    """An absolute path inside the ESP as the ESP-relative path the entries carry."""
    from bootkeeper.errors import UsageError

    if not target.startswith("/"):
        return target
    try:
        return Path(os.path.abspath(target)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        raise UsageError(f"{target[:80]}: not a file on the ESP {root}") from None


def _read_vars(efivars: Path, mode: Any) -> tuple[Any, str | None]:
    """The loader variables; a LoaderEntryOneShot that does not decode is read as absent when this
    run replaces it (--once) or removes it (--clear), and returned as the second value."""
    from bootkeeper.assess.pin import ONESHOT, Mode
    from bootkeeper.errors import InputError
    from bootkeeper.esp.efivars import LoaderVars, read_string

    try:
        return LoaderVars.read(efivars), None
    except InputError as exc:
        try:
            read_string(efivars, ONESHOT)
        except InputError as bad:
            if mode is Mode.PERSISTENT:
                raise type(bad)(str(bad), hint="bootkeeper select --clear removes it") from bad
            return LoaderVars.read(efivars, skip=frozenset({ONESHOT})), str(bad)
        raise exc from None


def _apply(store: Any, efivars: Path, changes: tuple[Any, ...]) -> list[Any]:
    """Make the changes (loader.conf and entries through the store, crash-safe); return those that
    changed something."""
    from bootkeeper.assess.pin import ChangeKind
    from bootkeeper.esp import edit
    from bootkeeper.esp import efivars as efivars_mod
    from bootkeeper.esp import loader as loader_mod
    from bootkeeper.esp.store import LOADER_CONF

    done = []
    for c in changes:
        if c.kind is ChangeKind.LOADER_CONF:
            text = store.read_text(LOADER_CONF) if store.path(LOADER_CONF).is_file() else ""
            new = loader_mod.set_key(text, "preferred", c.new)
            if new != text:
                store.makedirs("loader")
                store.write_atomic(LOADER_CONF, new.encode())
                done.append(c)
        elif c.kind is ChangeKind.SORT_KEY:
            text = store.read_text(c.path)
            new = edit.set_key(text, "sort-key", c.new)
            if new != text:
                store.write_atomic(c.path, new.encode())
                done.append(c)
    for c in changes:
        if c.kind is ChangeKind.EFI_VARIABLE:
            if c.new is None:
                changed = efivars_mod.delete_variable(efivars, c.path)
            else:
                changed = efivars_mod.write_string(efivars, c.path, c.new)
            if changed:
                done.append(c)
    return done


@click.command()
@click.argument("target", required=False, metavar="ROLE|ENTRY")
@click.option("--once", is_flag=True, help="Boot it next time only (EFI variable LoaderEntryOneShot).")
@click.option(
    "--persistent",
    is_flag=True,
    help="Boot it until --clear, while it has tries left (loader.conf preferred from systemd-boot 260; a sort key "
    "before).",
)
@click.option("--clear", is_flag=True, help="Remove the one-shot, loader.conf preferred and sort-key pins.")
@esp_option
@efivars_option
@version_option
@json_option
def select(
    target: str | None,
    once: bool,
    persistent: bool,
    clear: bool,
    esp: Path | None,
    efivars: Path | None,
    sdboot_version: str | None,
    as_json: bool,
) -> None:
    """Pin ROLE (active, passive, recovery, statereset) or ENTRY (file name, path or id on the ESP).

    A persistent pin skips the entry once it has no tries left, so boot assessment still rolls back.
    """
    efivars = efivars_dir(efivars)
    from bootkeeper.assess import bootloader, pin
    from bootkeeper.errors import UsageError
    from bootkeeper.esp.efivars import LoaderVars, var_path
    from bootkeeper.esp.store import EspStore

    modes = [m for m, on in ((pin.Mode.ONCE, once), (pin.Mode.PERSISTENT, persistent), (pin.Mode.CLEAR, clear)) if on]
    if len(modes) != 1:
        raise UsageError(
            "select needs exactly one of --once (the next boot), --persistent (until --clear) or --clear"
            + (f", not {' and '.join('--' + m.value for m in modes)}" if modes else "")
        )
    mode = modes[0]
    if mode is pin.Mode.CLEAR and target is not None:
        raise UsageError(f"--clear removes every pin bootkeeper made; it takes no ROLE|ENTRY (got {target[:80]!r})")
    if mode is not pin.Mode.CLEAR and not target:
        raise UsageError(f"--{mode.value} needs a ROLE (active, passive, recovery, statereset) or an ENTRY")
    root = find_esp(esp)
    store = EspStore(root)
    warnings: list[str] = []
    with store.locked():
        snap = store.snapshot(sdboot_version, loader_info=efivars_loader_info(efivars))
        ev, oneshot_problem = _read_vars(efivars, mode)
        if mode is pin.Mode.CLEAR:
            plan = pin.plan_clear(snap, ev, os.path.lexists(var_path(efivars, pin.ONESHOT)))
        else:
            assert target is not None
            entry = pin.resolve(snap, _esp_relative(root, target), str(root))
            if mode is pin.Mode.ONCE:
                plan = pin.plan_once(snap, entry, ev.entry_oneshot)
            else:
                plan = pin.plan_persistent(snap, ev, entry)
        if oneshot_problem:
            warnings.append(f"{'replaced' if mode is pin.Mode.ONCE else 'removed'} a {oneshot_problem}")
        if any(c.on_esp for c in plan.changes):
            with store.writable():
                store.clear_temporaries()
                done = _apply(store, efivars, plan.changes)
        else:
            done = _apply(store, efivars, plan.changes)
        after = store.snapshot(sdboot_version, loader_info=efivars_loader_info(efivars))
    ev_after = LoaderVars.read(efivars)
    found = pin.pins(after, ev_after)
    choice = bootloader.choose(after, ev_after)
    own = pin.own_pin(plan, found)
    warnings.extend(plan.notes)
    if plan.entry is not None:
        if own is None:
            warnings.append(f"no pin on {plan.entry.path} is in place after writing: systemd-boot will not see it")
        elif not own.in_effect:
            warnings.append(f"the pin is not in effect: {own.why_not}")
        if own is not None and found and found[0] is not own and found[0].kind is pin.Kind.ONCE:
            warnings.append(f"{found[0].source} decides the next boot first")
    if as_json:
        print_json(
            {
                "mode": mode.value,
                "entry": plan.entry.path if plan.entry else None,
                "written": [c.as_json() for c in done],
                "pin": own.as_json() if own else None,
                "pins": [p.as_json() for p in found],
                "next": choice.as_json() if choice else None,
                "warnings": warnings,
            }
        )
        return
    for c in done:
        echo(c.text())
    if not done:
        echo("no pin: nothing to clear" if mode is pin.Mode.CLEAR else "already pinned: nothing to change")
    if own is not None:
        echo(f"pin: {own.text()}")
    elif mode is pin.Mode.CLEAR:
        for p in found:
            echo(f"pin left: {p.text()}")
    if choice:
        renamed = f" (renamed to {choice.path_after})" if choice.path_after != choice.entry.path else ""
        echo(f"next boot: {choice.entry.path}{renamed}: {choice.reason}")
    else:
        echo("next boot: nothing — systemd-boot finds no entry")
    for w in warnings:
        echo(f"bootkeeper: warning: {w}", err=True)
