"""What systemd-boot boots next, and what it renames before booting it — a pure model.

Follows systemd-boot's ``config_select_default_entry()`` and ``boot_entry_bump_counters()``
(src/boot/boot.c; src/boot/efi/boot.c up to 256). The first source that matches an entry id wins:

1. ``LoaderEntryOneShot`` (EFI variable; removed as soon as it is read);
2. from 260 (450e0dce02): ``LoaderEntryPreferred`` (or ``@saved``), then loader.conf
   ``preferred`` — both skip entries with no tries left;
3. ``LoaderEntryDefault`` (or ``@saved``: ``LoaderEntryLastBooted``), then loader.conf ``default``
   (or ``@saved``);
4. the first entry in menu order (entries with no tries left sort last); from 261 (a93fa2c6b4, in
   258.8, 259.6, 260.2) the first with profile 0.

Multi-profile UKIs (257+) are one menu entry per profile (``Snapshot.profiles``), ids
``file.efi@N``; patterns match the whole id, so ``active.efi`` is profile 0 only and ``active*@*``
the others. Booting any profile renames the file, i.e. every entry of that file.

``LoaderEntrySysFail`` (258) is checked before the one-shot in the source, but is set only after the
choice is made, so it never changes it (see sdboot.py). One-shot and default patterns match *any*
entry, including one with no tries left: such a pattern boots a bad entry again and again
(``+0-3`` → ``+0-4``). Whether an id keeps its counter, which loader keys are counted, and the
read-only attribute are per version (:mod:`bootkeeper.esp.sdboot`). The rename happens before the
kernel starts, and its new path is exported as ``LoaderBootCountPath``. Checked against the real
systemd-boot 252.39, 257.13 and 262.1 in QEMU (tests/vm/test_vm_bootcount.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from bootkeeper.esp import entries as entries_mod
from bootkeeper.esp.efiglob import efi_fnmatch
from bootkeeper.esp.efivars import LoaderVars
from bootkeeper.esp.entries import Entry
from bootkeeper.esp.sdboot import SdBoot
from bootkeeper.esp.store import Snapshot


@dataclass(frozen=True)
class BootChoice:
    entry: Entry
    entry_id: str
    reason: str
    rename_to: str | None  # new file name (same directory), None when nothing is renamed
    boot_count_path: str | None  # as systemd-boot exports it: \loader\entries\active+2-1.conf

    @property
    def path_after(self) -> str:
        return f"{self.entry.directory}/{self.rename_to}" if self.rename_to else self.entry.path

    def as_json(self) -> dict[str, object]:
        return {
            "path": self.entry.path,
            "id": self.entry_id,
            "role": self.entry.role.value if self.entry.role else None,
            "state": self.entry.state.value,
            "reason": self.reason,
            "next_after_boot": self.path_after,
            "boot_count_path": self.boot_count_path,
        }


def find(order: list[Entry], pattern: str | None, version: SdBoot, skip_bad: bool = False) -> Entry | None:
    """The first entry in menu order whose id matches ``pattern`` (lower-cased, as systemd-boot
    does; ids are compared as they are, so a counted id that keeps upper case is never matched)."""
    if not pattern:
        return None
    pat = pattern.lower()
    for e in order:
        if skip_bad and e.state is entries_mod.EntryState.BAD:
            continue
        if efi_fnmatch(pat, e.entry_id(version)):
            return e
    return None


def _pattern_source(
    order: list[Entry],
    v: SdBoot,
    ev: LoaderVars,
    name: str,
    efivar: str | None,
    conf_pattern: str | None,
    skip_bad: bool,
) -> tuple[Entry, str] | None:
    """One pair of sources: the EFI variable (``@saved`` → LoaderEntryLastBooted) before loader.conf."""
    conf_key = name.lower()
    if efivar and efivar.lower() == "@saved":
        hit = find(order, ev.entry_last_booted, v, skip_bad)
        if hit:
            return hit, f"LoaderEntry{name} is @saved and LoaderEntryLastBooted '{ev.entry_last_booted}' matches it"
    else:
        hit = find(order, efivar, v, skip_bad)
        if hit:
            return hit, f"EFI variable LoaderEntry{name} '{efivar}' matches it"
    if conf_pattern == "@saved":
        if not (efivar and efivar.lower() == "@saved"):
            hit = find(order, ev.entry_last_booted, v, skip_bad)
            if hit:
                return hit, f"loader.conf {conf_key} @saved: LoaderEntryLastBooted '{ev.entry_last_booted}'"
    else:
        hit = find(order, conf_pattern, v, skip_bad)
        if hit:
            return hit, f"loader.conf {conf_key} '{conf_pattern}' matches its id '{hit.entry_id(v)}'"
    return None


def choose(snap: Snapshot, efivars: LoaderVars | None = None) -> BootChoice | None:
    """The entry systemd-boot boots next without user input, or None if it finds none."""
    v = snap.sdboot
    ev = efivars or LoaderVars()
    order = entries_mod.menu_order(list(snap.menu_entries), v)
    if not order:
        return None
    fallback = entries_mod.first_auto_boot(order, v)
    conf = snap.loader_conf

    def pick() -> tuple[Entry, str] | None:
        hit = find(order, ev.entry_oneshot, v)
        if hit:
            return hit, f"EFI variable LoaderEntryOneShot '{ev.entry_oneshot}' matches it"
        notes: list[str] = []
        if v.has_preferred:
            found = _pattern_source(
                order, v, ev, "Preferred", ev.entry_preferred, conf.preferred_pattern if conf else None, True
            )
            if found:
                return found
            if ev.entry_preferred or (conf and conf.preferred_pattern):
                notes.append("preferred matches no entry with tries left")
        found = _pattern_source(
            order, v, ev, "Default", ev.entry_default, conf.default_pattern if conf else None, False
        )
        if found:
            entry, why = found
            return entry, "; ".join([why, *notes])
        pattern = conf.default_pattern if conf else None
        if pattern and pattern != "@saved":
            notes.append(f"loader.conf default '{pattern}' matches no id")
        if fallback is None:
            return None
        skipped = " that may auto-boot (never a profile > 0)" if fallback is not order[0] else ""
        return fallback, f"first entry in menu order{skipped}" + (f" ({'; '.join(notes)})" if notes else "")

    picked = pick()
    if picked is None:  # only UKI profiles > 0: systemd-boot shows the menu and waits
        return None
    entry, reason = picked
    new_name = entry.next_name(v)
    count_path = None
    if new_name is not None:
        count_path = "\\" + entry.directory.replace("/", "\\") + "\\" + new_name
    if entry.state is entries_mod.EntryState.BAD:
        reason += "; it has no tries left but is booted anyway"
    elif entry.counted and new_name is None:
        reason += "; its counter is not counted down (" + (
            "FAT read-only attribute)" if entry.read_only else f"systemd-boot {v} does not count '{entry.loader_type}')"
        )
    return BootChoice(entry, entry.entry_id(v), reason, new_name, count_path)
