"""What systemd-boot boots next, and what it renames before booting it — a pure model.

Follows systemd-boot's ``config_select_default_entry()`` and ``boot_entry_bump_counters()``:

1. ``LoaderEntryOneShot`` (EFI variable) if it matches an entry id, else
2. ``LoaderEntryDefault`` (or ``LoaderEntryLastBooted`` when it says ``@saved``), else
3. loader.conf ``default`` (or ``@saved``), else
4. the first entry in menu order.

Patterns match *any* entry, including one with no tries left: a pattern that matches a bad entry
boots it again and again (``+0-3`` → ``+0-4``). Whether a counted entry's id contains its counter
depends on the boot loader's version (see :mod:`bootkeeper.esp.entries`). Entries using the
``efi`` key are never renamed. The rename happens before the kernel starts, and its new path is
exported as ``LoaderBootCountPath``. Checked against the real systemd-boot 252 and 257 in QEMU
(tests/test_vm_bootcount.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bootkeeper.esp import entries as entries_mod
from bootkeeper.esp.efivars import LoaderVars
from bootkeeper.esp.entries import Entry
from bootkeeper.esp.fnmatch import efi_fnmatch
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

    @property
    def pins_bad(self) -> bool:
        return self.entry.state is entries_mod.EntryState.BAD

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


def _find(order: list[Entry], pattern: str | None, version: int) -> Entry | None:
    if not pattern:
        return None
    pat = pattern.lower()
    for e in order:
        if efi_fnmatch(pat, e.entry_id(version)):
            return e
    return None


def choose(snap: Snapshot, efivars: LoaderVars | None = None) -> BootChoice | None:
    """The entry systemd-boot boots next without user input, or None if it finds none."""
    v = snap.sdboot_version
    ev = efivars or LoaderVars()
    order = entries_mod.menu_order(list(snap.entries), v)
    if not order:
        return None

    def pick() -> tuple[Entry, str]:
        hit = _find(order, ev.entry_oneshot, v)
        if hit:
            return hit, f"EFI variable LoaderEntryOneShot '{ev.entry_oneshot}' matches it"
        efivar_default = ev.entry_default
        if efivar_default and efivar_default.lower() == "@saved":
            hit = _find(order, ev.entry_last_booted, v)
            if hit:
                return (
                    hit,
                    f"LoaderEntryDefault is @saved and LoaderEntryLastBooted '{ev.entry_last_booted}' matches it",
                )
        else:
            hit = _find(order, efivar_default, v)
            if hit:
                return hit, f"EFI variable LoaderEntryDefault '{efivar_default}' matches it"
        pattern = snap.loader_conf.default_pattern if snap.loader_conf else None
        if pattern == "@saved":
            if not (efivar_default and efivar_default.lower() == "@saved"):
                hit = _find(order, ev.entry_last_booted, v)
                if hit:
                    return hit, f"loader.conf default @saved: LoaderEntryLastBooted '{ev.entry_last_booted}'"
        else:
            hit = _find(order, pattern, v)
            if hit:
                return hit, f"loader.conf default '{pattern}' matches its id '{hit.entry_id(v)}'"
        first = order[0]
        why = "first entry in menu order"
        if pattern and pattern != "@saved":
            why += f" (loader.conf default '{pattern}' matches no id)"
        return first, why

    entry, reason = pick()
    new_name = entry.next_name()
    count_path = None
    if new_name is not None:
        count_path = "\\" + entry.directory.replace("/", "\\") + "\\" + new_name
    if entry.state is entries_mod.EntryState.BAD:
        reason += "; it has no tries left but is booted anyway"
    return BootChoice(entry, entry.entry_id(v), reason, new_name, count_path)


def after_boot(snap: Snapshot, choice: BootChoice) -> Snapshot:
    """The ESP as the boot loader leaves it after booting ``choice``."""
    if choice.rename_to is None:
        return snap
    renamed = tuple(e.with_name(choice.rename_to) if e.path == choice.entry.path else e for e in snap.entries)
    return replace(snap, entries=renamed)
