"""``select``'s writes: plan a pin (assess/pin.py, pure), make it on the ESP and in the EFI variables
under the ESP lock, and read back what is in effect and what boots next."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bootkeeper.assess import pin
from bootkeeper.esp.efivars import loader_info

if TYPE_CHECKING:
    from bootkeeper.assess.bootloader import BootChoice
    from bootkeeper.esp.efivars import LoaderVars
    from bootkeeper.esp.store import EspStore, Snapshot


@dataclass(frozen=True)
class Selection:
    """What ``select`` did: the changes it made (``done``), its own pin as read back (None: not in
    place), every pin found, the next boot, and what the operator should know (``warnings``)."""

    mode: pin.Mode
    entry: str | None
    done: tuple[pin.Change, ...]
    own: pin.Pin | None
    found: tuple[pin.Pin, ...]
    choice: BootChoice | None
    warnings: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "mode": self.mode.value,
            "entry": self.entry,
            "written": [c.as_json() for c in self.done],
            "pin": self.own.as_json() if self.own else None,
            "pins": [p.as_json() for p in self.found],
            "next": self.choice.as_json() if self.choice else None,
            "warnings": list(self.warnings),
        }


def esp_relative(root: Path, target: str) -> str:
    """An absolute path inside the ESP as the ESP-relative path the entries carry."""
    from bootkeeper.errors import UsageError

    if not target.startswith("/"):
        return target
    try:
        return Path(os.path.abspath(target)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        raise UsageError(f"{target[:80]}: not a file on the ESP {root}") from None


def chosen_mode(target: str | None, once: bool, persistent: bool, clear: bool) -> pin.Mode:
    """The one mode ``select``'s flags ask for, with a target when it needs one."""
    from bootkeeper.errors import UsageError

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
    return mode


def select(store: EspStore, efivars: Path, mode: pin.Mode, target: str | None, sdboot_version: str | None) -> Selection:
    """Pin ``target`` (a role or an entry; None with :attr:`Mode.CLEAR`) or clear the pins."""
    from bootkeeper.assess import bootloader
    from bootkeeper.esp.efivars import LoaderVars

    warnings: list[str] = []
    with store.locked():
        snap = store.snapshot(sdboot_version, loader_info=loader_info(efivars))
        ev, oneshot_problem = _read_vars(efivars, mode)
        plan = _plan(store, snap, ev, efivars, mode, target)
        if oneshot_problem:
            warnings.append(f"{'replaced' if mode is pin.Mode.ONCE else 'removed'} a {oneshot_problem}")
        if any(c.on_esp for c in plan.changes):
            with store.writable():
                store.clear_temporaries()
                done = _apply(store, efivars, plan.changes)
        else:
            done = _apply(store, efivars, plan.changes)
        after = store.snapshot(sdboot_version, loader_info=loader_info(efivars))
    ev_after = LoaderVars.read(efivars)
    found = pin.pins(after, ev_after)
    own = pin.own_pin(plan, found)
    warnings += [*plan.notes, *_pin_warnings(plan, own, found)]
    entry = plan.entry.path if plan.entry else None
    return Selection(mode, entry, tuple(done), own, found, bootloader.choose(after, ev_after), tuple(warnings))


def _plan(
    store: EspStore, snap: Snapshot, ev: LoaderVars, efivars: Path, mode: pin.Mode, target: str | None
) -> pin.PinPlan:
    from bootkeeper.esp.efivars import var_path

    if mode is pin.Mode.CLEAR:
        return pin.plan_clear(snap, ev, os.path.lexists(var_path(efivars, pin.ONESHOT)))
    assert target is not None
    entry = pin.resolve(snap, esp_relative(store.root, target), str(store.root))
    if mode is pin.Mode.ONCE:
        return pin.plan_once(snap, entry, ev.entry_oneshot)
    return pin.plan_persistent(snap, ev, entry)


def _pin_warnings(plan: pin.PinPlan, own: pin.Pin | None, found: tuple[pin.Pin, ...]) -> list[str]:
    """Why the pin just written may not decide the next boot."""
    if plan.entry is None:
        return []
    out = []
    if own is None:
        out.append(f"no pin on {plan.entry.path} is in place after writing: systemd-boot will not see it")
    elif not own.in_effect:
        out.append(f"the pin is not in effect: {own.why_not}")
    if own is not None and found and found[0] is not own and found[0].kind is pin.Kind.ONCE:
        out.append(f"{found[0].source} decides the next boot first")
    return out


def _read_vars(efivars: Path, mode: pin.Mode) -> tuple[LoaderVars, str | None]:
    """The loader variables; a LoaderEntryOneShot that does not decode is read as absent when this
    run replaces it (--once) or removes it (--clear), and returned as the second value."""
    from bootkeeper.errors import InputError
    from bootkeeper.esp.efivars import LoaderVars, read_string

    try:
        return LoaderVars.read(efivars), None
    except InputError as exc:
        try:
            read_string(efivars, pin.ONESHOT)
        except InputError as bad:
            if mode is pin.Mode.PERSISTENT:
                raise type(bad)(str(bad), hint="bootkeeper select --clear removes it") from bad
            return LoaderVars.read(efivars, skip=frozenset({pin.ONESHOT})), str(bad)
        raise exc from None


def _apply(store: EspStore, efivars: Path, changes: tuple[pin.Change, ...]) -> list[pin.Change]:
    """Make the changes (loader.conf and entries through the store, crash-safe; then the EFI
    variables); return those that changed something."""
    from bootkeeper.esp import edit
    from bootkeeper.esp import efivars as efivars_mod
    from bootkeeper.esp import loader as loader_mod
    from bootkeeper.esp.store import LOADER_CONF

    done = []
    for c in changes:
        if c.kind is pin.ChangeKind.LOADER_CONF:
            text = store.read_text(LOADER_CONF) if store.path(LOADER_CONF).is_file() else ""
            new = loader_mod.set_key(text, "preferred", c.new)
            if new != text:
                store.makedirs("loader")
                store.write_atomic(LOADER_CONF, new.encode())
                done.append(c)
        elif c.kind is pin.ChangeKind.SORT_KEY:
            assert c.new is not None  # a sort key is never removed (pin.Change)
            text = store.read_text(c.path)
            new = edit.set_key(text, "sort-key", c.new)
            if new != text:
                store.write_atomic(c.path, new.encode())
                done.append(c)
    for c in changes:
        if c.kind is pin.ChangeKind.EFI_VARIABLE:
            changed = (
                efivars_mod.delete_variable(efivars, c.path)
                if c.new is None
                else efivars_mod.write_string(efivars, c.path, c.new)
            )
            if changed:
                done.append(c)
    return done
