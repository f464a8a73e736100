"""Pins: an entry chosen by hand (``bootkeeper select``), and whether systemd-boot will boot it.

The kinds, in the order systemd-boot consults them (:func:`bootkeeper.assess.bootloader.choose`):

1. ``once``: the EFI variable ``LoaderEntryOneShot``, read and removed by the next boot. It
   matches any entry, one with no tries left too (that one is booted anyway, once).
2. from 260 (450e0dce02): the EFI variable ``LoaderEntryPreferred``, then loader.conf ``preferred``.
   Both skip entries with no tries left, so a pinned entry that goes bad stops being chosen and the
   fallback chain takes over: the pin respects boot assessment.
3. ``sort-key``: a Type #1 role entry with the sort key ``0-<role>``, which bootkeeper writes on
   boot loaders without ``preferred``: sort keys compare with strcmp, so it sorts before every
   other role's ``N-<role>``; an entry with no tries left still sorts last.

bootkeeper never writes a ``default`` (or ``LoaderEntryDefault``): a default that matches a bad
entry boots it forever. A pin is *in effect* when the entry choose() picks is the pinned one; a
persistent pin is judged as it stands once a pending one-shot has been used.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from bootkeeper.assess.bootloader import BootChoice, choose
from bootkeeper.assess.bootloader import find as find_entry  # the one matching rule (pattern vs id)
from bootkeeper.errors import NotApplicableError, UsageError
from bootkeeper.esp import entries as entries_mod
from bootkeeper.esp.efivars import LoaderVars
from bootkeeper.esp.entries import Entry, EntryKind, EntryState, Role
from bootkeeper.esp.store import LOADER_CONF, Snapshot

ONESHOT = "LoaderEntryOneShot"
PREFERRED_VAR = "LoaderEntryPreferred"


def pin_sort_key(role: Role) -> str:
    """The sort key of a pinned role entry: ``0-passive`` sorts before ``1-active``."""
    return f"0-{role.value}"


def _is_sort_key_pin(e: Entry) -> bool:
    return e.kind is EntryKind.TYPE1 and e.role is not None and e.sort_key == pin_sort_key(e.role)


def label(e: Entry | None) -> str:
    if e is None:
        return "nothing (systemd-boot finds no entry)"
    return f"{e.role.value} ({e.path})" if e.role else e.path


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


class Kind(StrEnum):
    ONCE = "once"
    PREFERRED_VARIABLE = "LoaderEntryPreferred"
    PREFERRED = "preferred"
    SORT_KEY = "sort-key"

    @property
    def persistent(self) -> bool:
        return self is not Kind.ONCE


@dataclass(frozen=True)
class Pin:
    kind: Kind
    target: str  # the pattern as written (variable, loader.conf), or the sort key
    entry: Entry | None  # what it names (the first match in menu order, with tries left if any)
    in_effect: bool
    why_not: str | None
    boots: Entry | None  # what choose() picks where this pin is judged
    note: str | None = None

    @property
    def source(self) -> str:
        return {
            Kind.ONCE: f"EFI variable {ONESHOT} '{self.target}' (next boot only)",
            Kind.PREFERRED_VARIABLE: f"EFI variable {PREFERRED_VAR} '{self.target}'",
            Kind.PREFERRED: f"{LOADER_CONF} preferred '{self.target}'",
            Kind.SORT_KEY: f"sort-key {self.target}",
        }[self.kind]

    def text(self) -> str:
        where = f" → {self.entry.path}" if self.entry else ""
        state = "in effect" if self.in_effect else f"NOT in effect: {self.why_not}"
        return f"{self.source}{where}: {state}" + (f" ({self.note})" if self.note else "")

    def as_json(self) -> dict[str, object]:
        return {
            "kind": self.kind.value,
            "persistent": self.kind.persistent,
            "target": self.target,
            "entry": self.entry.path if self.entry else None,
            "role": self.entry.role.value if self.entry and self.entry.role else None,
            "in_effect": self.in_effect,
            "why_not": self.why_not,
            "boots": self.boots.path if self.boots else None,
            "note": self.note,
            "text": self.text(),
        }


def _instead(choice: BootChoice | None) -> str:
    if choice is None:
        return "systemd-boot finds no entry"
    return f"{choice.reason}: {label(choice.entry)} boots instead"


def _pattern_pin(snap: Snapshot, ev: LoaderVars, kind: Kind, value: str) -> Pin:
    v = snap.sdboot
    order = entries_mod.menu_order(list(snap.entries), v)
    pattern = ev.entry_last_booted if value.lower() == "@saved" else value
    later = replace(ev, entry_oneshot=None)
    choice = choose(snap, later)
    boots = choice.entry if choice else None
    good = find_entry(order, pattern, v, skip_bad=True)
    anyhit = find_entry(order, pattern, v)
    entry = good or anyhit
    if not v.has_preferred:
        why = f"systemd-boot {v} does not read {'it' if kind is Kind.PREFERRED_VARIABLE else 'preferred'} (260+)"
        return Pin(kind, value, entry, False, why, boots)
    if good is not None and boots is not None and boots.path == good.path:
        return Pin(kind, value, good, True, None, boots)
    if anyhit is None:
        why = f"it matches no entry id: {label(boots)} boots next"
    elif good is None:
        why = f"{label(anyhit)} has no tries left: {label(boots)} boots next"
    else:
        why = _instead(choice)
    return Pin(kind, value, entry, False, why, boots)


def _sort_key_pin(snap: Snapshot, ev: LoaderVars, e: Entry) -> Pin:
    choice = choose(snap, replace(ev, entry_oneshot=None))
    boots = choice.entry if choice else None
    assert e.sort_key is not None
    if boots is not None and boots.path == e.path:
        return Pin(Kind.SORT_KEY, e.sort_key, e, True, None, boots)
    if not e.listed:
        why = f"systemd-boot does not list it ({e.why_unlisted})"
    elif e.state is EntryState.BAD:
        why = f"{label(e)} has no tries left: {label(boots)} boots next"
    else:
        why = _instead(choice)
        conf = snap.loader_conf
        if ev.entry_default or (conf is not None and conf.default is not None):
            why += "; `bootkeeper arm` removes a pinning default"
    return Pin(Kind.SORT_KEY, e.sort_key, e, False, why, boots)


def pins(snap: Snapshot, ev: LoaderVars) -> tuple[Pin, ...]:
    """Every pin in place, in the order systemd-boot consults them."""
    out: list[Pin] = []
    v = snap.sdboot
    if ev.entry_oneshot:
        order = entries_mod.menu_order(list(snap.entries), v)
        choice = choose(snap, ev)
        boots = choice.entry if choice else None
        hit = find_entry(order, ev.entry_oneshot, v)
        if hit is not None and boots is not None and boots.path == hit.path:
            note = "it has no tries left and boots anyway, once" if hit.state is EntryState.BAD else None
            out.append(Pin(Kind.ONCE, ev.entry_oneshot, hit, True, None, boots, note))
        else:
            why = f"it matches no entry id: {label(boots)} boots next"
            out.append(Pin(Kind.ONCE, ev.entry_oneshot, None, False, why, boots))
    if ev.entry_preferred:
        out.append(_pattern_pin(snap, ev, Kind.PREFERRED_VARIABLE, ev.entry_preferred))
    conf = snap.loader_conf
    if conf is not None and conf.preferred is not None:
        out.append(_pattern_pin(snap, ev, Kind.PREFERRED, conf.preferred))
    for e in entries_mod.menu_order(list(snap.entries), v) + [x for x in snap.entries if not x.listed]:
        if _is_sort_key_pin(e):
            out.append(_sort_key_pin(snap, ev, e))
    return tuple(out)


def view(found: tuple[Pin, ...]) -> dict[str, object] | None:
    """The ``pin`` key of ``entries``/``status --json``: the pin consulted first, and the others."""
    if not found:
        return None
    return {**found[0].as_json(), "others": [p.as_json() for p in found[1:]]}


# -- choosing an entry --------------------------------------------------------------------------


def resolve(snap: Snapshot, target: str, where: str) -> Entry:
    """The one listed entry ``target`` names: a role, or an entry's path (relative to the ESP),
    file name, name without counter, or id. ``where`` names the ESP in messages."""
    t = target.strip().replace("\\", "/").strip("/")
    low = t.lower()
    shown = repr(_short(target))
    if low in {r.value for r in Role}:
        role = Role(low)
        found = [e for e in snap.entries if e.listed and e.role is role]
        if not found:
            raise NotApplicableError(f"{where}: no {role.value} entry that systemd-boot lists")
        if len(found) > 1:
            raise UsageError(
                f"{shown}: {len(found)} {role.value} entries: {', '.join(e.path for e in found)}",
                hint="name one of them: bootkeeper select " + found[0].path,
            )
        return found[0]
    v = snap.sdboot

    def names(e: Entry) -> set[str]:
        return {
            e.path.lower(),
            e.file_name.lower(),
            e.name.entry_key,
            f"{e.directory}/{e.name.base}".lower(),
            e.entry_id(v).lower(),
        }

    found = [e for e in snap.entries if low in names(e)]
    listed = [e for e in found if e.listed]
    if not found:
        raise NotApplicableError(
            f"{shown}: not a role (active, passive, recovery, statereset) and no entry in {where} "
            "has that file name, path or id"
        )
    if not listed:
        raise NotApplicableError(f"{found[0].path}: systemd-boot does not list it ({found[0].why_unlisted})")
    if len(listed) > 1:
        raise UsageError(
            f"{shown} matches {len(listed)} entries: {', '.join(e.path for e in listed)}",
            hint="name one by its path: bootkeeper select " + listed[0].path,
        )
    return listed[0]


def _escape(entry_id: str) -> str:
    """An id as a pattern that matches only itself (efi_fnmatch: ``\\x`` is a literal)."""
    return "".join("\\" + c if c in "*?[\\" else c for c in entry_id)


def pattern_for(snap: Snapshot, e: Entry) -> str:
    """The value to write for ``e`` (LoaderEntryOneShot, preferred): its id as this systemd-boot
    computes it (252 keeps the counter, 257.10+/259+ drop it), checked to pick ``e`` first."""
    v = snap.sdboot
    entry_id = e.entry_id(v)
    try:
        entry_id.encode("utf-8")
    except UnicodeEncodeError:  # a byte of the file name that is not UTF-8 (os.listdir's surrogateescape)
        from bootkeeper.shown import shown

        raise NotApplicableError(
            f"{e.path}: its id '{shown(entry_id)}' is not UTF-8, and an EFI variable or loader.conf line "
            "holds text, so none can name it",
            hint="rename the file",
        ) from None
    pattern = _escape(entry_id)
    first = find_entry(entries_mod.menu_order(list(snap.entries), v), pattern, v)
    if first is None:
        raise NotApplicableError(
            f"{e.path}: its id '{entry_id}' has upper case, and systemd-boot {v} lower-cases what it "
            "matches ids against, so no EFI variable or loader.conf line can name it",
            hint="rename the file in lower case",
        )
    if first.path != e.path:
        raise NotApplicableError(f"{e.path}: its id '{entry_id}' is also the id of {first.path}, which comes first")
    return pattern


class Mode(StrEnum):
    ONCE = "once"
    PERSISTENT = "persistent"
    CLEAR = "clear"


class ChangeKind(StrEnum):
    EFI_VARIABLE = "efi-variable"
    LOADER_CONF = "loader.conf"
    SORT_KEY = "sort-key"


@dataclass(frozen=True)
class Change:
    """One write of ``select``: an EFI variable, a loader.conf key or an entry's sort key; ``new``
    None removes it (a sort key is never removed: it goes back to the role's standard one)."""

    kind: ChangeKind
    path: str  # the variable's name, loader/loader.conf, or the entry file
    old: str | None
    new: str | None

    @property
    def on_esp(self) -> bool:
        return self.kind is not ChangeKind.EFI_VARIABLE

    def text(self) -> str:
        was = f" (was '{self.old}')" if self.old is not None else ""
        if self.kind is ChangeKind.EFI_VARIABLE:
            if self.new is None:
                return f"removed EFI variable {self.path}" + (f" '{self.old}'" if self.old is not None else "")
            return f"EFI variable {self.path} = '{self.new}'{was}"
        if self.kind is ChangeKind.LOADER_CONF:
            if self.new is None:
                return f"{self.path}: removed 'preferred {self.old}'"
            return f"{self.path}: preferred {self.new}{was}"
        return f"{self.path}: sort-key {self.new}{was}"

    def as_json(self) -> dict[str, object]:
        key = {ChangeKind.LOADER_CONF: "preferred", ChangeKind.SORT_KEY: "sort-key"}.get(self.kind)
        return {"kind": self.kind.value, "path": self.path, "key": key, "old": self.old, "new": self.new}


@dataclass(frozen=True)
class PinPlan:
    """A pin, once or persistent, or its clearing: the entry it is for and every change, planned before any write."""

    mode: Mode
    entry: Entry | None
    changes: tuple[Change, ...]
    notes: tuple[str, ...] = ()


def _restore_sort_keys(snap: Snapshot, keep: Entry | None = None) -> list[Change]:
    """Role entries pinned by sort key (other than ``keep``) back to their standard key."""
    out = []
    for e in sorted(snap.entries, key=lambda x: x.path):
        if _is_sort_key_pin(e) and (keep is None or e.path != keep.path):
            assert e.role is not None
            out.append(Change(ChangeKind.SORT_KEY, e.path, e.sort_key, e.role.sort_key))
    return out


def plan_once(snap: Snapshot, e: Entry, current: str | None) -> PinPlan:
    notes = []
    if e.state is EntryState.BAD:
        notes.append(f"{label(e)} has no tries left: the one-shot boots it anyway, once; then the fallback chain")
    return PinPlan(
        Mode.ONCE, e, (Change(ChangeKind.EFI_VARIABLE, ONESHOT, current, pattern_for(snap, e)),), tuple(notes)
    )


def plan_persistent(snap: Snapshot, ev: LoaderVars, e: Entry) -> PinPlan:
    """``preferred <id>`` from 260; before, ``sort-key 0-<role>``. The other way's pin goes, so
    there is one persistent pin."""
    v = snap.sdboot
    conf = snap.loader_conf
    changes: list[Change] = []
    notes: list[str] = []
    if v.has_preferred:
        pattern = pattern_for(snap, e)
        if conf is None or conf.preferred != pattern:
            changes.append(Change(ChangeKind.LOADER_CONF, LOADER_CONF, conf.preferred if conf else None, pattern))
        changes.extend(_restore_sort_keys(snap))
        if ev.entry_preferred and find_entry([e], ev.entry_preferred, v) is None:
            notes.append(
                f"EFI variable {PREFERRED_VAR} '{_short(ev.entry_preferred)}' is set (not by bootkeeper): it comes "
                f"before {LOADER_CONF} preferred whenever it matches an entry with tries left"
            )
    else:
        if e.kind is EntryKind.TYPE2:
            raise NotApplicableError(
                f"{e.path}: a Type #2 UKI takes its sort key from its .osrel section, which bootkeeper cannot "
                f"rewrite, and systemd-boot {v} has no loader.conf preferred (260+)",
                hint="bootkeeper select --once pins it for the next boot",
            )
        if e.role is None:
            raise NotApplicableError(
                f"{e.path}: not a role entry; before systemd-boot 260 only a role entry (active, passive, "
                "recovery, statereset) can be pinned, by its sort key",
                hint="bootkeeper select --once pins it for the next boot",
            )
        key = pin_sort_key(e.role)
        if e.sort_key != key:
            changes.append(Change(ChangeKind.SORT_KEY, e.path, e.sort_key, key))
        changes.extend(_restore_sort_keys(snap, keep=e))
        if conf is not None and conf.preferred is not None:
            changes.append(Change(ChangeKind.LOADER_CONF, LOADER_CONF, conf.preferred, None))
    if conf is not None and conf.default is not None:
        notes.append(
            f"{LOADER_CONF} has 'default {_short(conf.default)}': "
            + (
                "it decides when no preferred entry has tries left, and a default that matches a bad entry boots "
                "it anyway"
                if v.has_preferred
                else "it comes before the sort order: while it matches an entry, that entry boots, even with no "
                "tries left"
            )
            + "; `bootkeeper arm` removes a pinning default"
        )
    if ev.entry_default:
        notes.append(
            f"EFI variable LoaderEntryDefault '{_short(ev.entry_default)}' is set: "
            + ("it decides when no preferred entry has tries left" if v.has_preferred else "it beats the sort order")
        )
    return PinPlan(Mode.PERSISTENT, e, tuple(changes), tuple(notes))


def plan_clear(snap: Snapshot, ev: LoaderVars, oneshot_present: bool) -> PinPlan:
    """Remove what ``select`` writes: the one-shot, loader.conf preferred, sort-key pins."""
    changes: list[Change] = []
    notes: list[str] = []
    if oneshot_present:
        changes.append(Change(ChangeKind.EFI_VARIABLE, ONESHOT, ev.entry_oneshot, None))
    conf = snap.loader_conf
    if conf is not None and conf.preferred is not None:
        changes.append(Change(ChangeKind.LOADER_CONF, LOADER_CONF, conf.preferred, None))
    changes.extend(_restore_sort_keys(snap))
    if ev.entry_preferred:
        notes.append(
            f"EFI variable {PREFERRED_VAR} '{_short(ev.entry_preferred)}' is left as it is: bootkeeper does not "
            "write it (bootctl set-preferred does)"
        )
    return PinPlan(Mode.CLEAR, None, tuple(changes), tuple(notes))


def own_pin(plan: PinPlan, found: tuple[Pin, ...]) -> Pin | None:
    """The pin ``plan`` made, as it stands after the write."""
    if plan.entry is None:
        return None
    kinds = {Mode.ONCE: (Kind.ONCE,), Mode.PERSISTENT: (Kind.PREFERRED, Kind.SORT_KEY)}.get(plan.mode, ())
    for p in found:
        if p.kind not in kinds:
            continue
        if p.kind is not Kind.SORT_KEY or (p.entry is not None and p.entry.path == plan.entry.path):
            return p
    return None
