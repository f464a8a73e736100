"""The menu view: systemd-boot's entries in menu order with their counters, what it does not list
and why, the pins, and which entry boots next — what ``entries`` shows and ``status`` includes.

Pure: built from a :class:`~bootkeeper.esp.store.Snapshot` and the loader variables; the CLI reads
the disk and prints. Each view is a frozen dataclass whose ``as_json()`` is the JSON schema
bootkeeper(8)'s JSON and docs/upgrades.md, "The verbs", document for ``entries --json`` (and the menu
half of ``status --json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bootkeeper.assess import bootloader, pin
from bootkeeper.assess.status import Temporary
from bootkeeper.esp import entries as entries_mod

if TYPE_CHECKING:
    from pathlib import Path

    from bootkeeper.esp.efivars import LoaderVars
    from bootkeeper.esp.store import Snapshot

TEMPORARY_WHY = "a temporary left by an interrupted bootkeeper run: any bootkeeper write verb removes it"


@dataclass(frozen=True)
class MenuRow:
    """One menu entry (a UKI profile is one row of its own, 257+)."""

    path: str
    id: str
    role: str | None
    state: str
    tries_left: int | None
    tries_done: int | None
    sort_key: str | None
    version: str | None
    title: str | None
    type: str
    loader: str
    profile: int | None

    def as_json(self) -> dict[str, object]:
        return dict(vars(self))


@dataclass(frozen=True)
class Unlisted:
    """A file on the ESP systemd-boot does not list, and why."""

    path: str
    why: str | None
    size: int | None = None  # a stale temporary's size

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"path": self.path, "why": self.why}
        if self.size is not None:
            out["size"] = self.size
        return out


@dataclass(frozen=True)
class Menu:
    esp: str
    sdboot_value: int  # the major version
    sdboot_version: str  # as modelled
    sdboot_source: str  # where it was read
    default: str | None  # loader.conf's
    variables: tuple[tuple[str, str | None], ...]  # the loader's EFI variables, by name
    next: bootloader.BootChoice | None
    pin: Mapping[str, Any] | None  # assess/pin.py's view
    entries: tuple[MenuRow, ...]
    unlisted: tuple[Unlisted, ...]
    problems: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "esp": self.esp,
            "systemd_boot_version": {
                "value": self.sdboot_value,
                "version": self.sdboot_version,
                "source": self.sdboot_source,
            },
            "default": self.default,
            "efi_variables": dict(self.variables),
            "next": self.next.as_json() if self.next else None,
            "pin": dict(self.pin) if self.pin is not None else None,
            "entries": [r.as_json() for r in self.entries],
            "unlisted": [u.as_json() for u in self.unlisted],
            "problems": list(self.problems),
        }


def build(esp: Path, snap: Snapshot, ev: LoaderVars, temporaries: tuple[Temporary, ...] = ()) -> Menu:
    v = snap.sdboot
    rows = tuple(
        MenuRow(
            path=e.path,
            id=e.entry_id(v),
            role=e.role.value if e.role else None,
            state=e.state.value,
            tries_left=e.name.tries_left,
            tries_done=e.name.tries_done,
            sort_key=e.sort_key,
            version=e.version,
            title=e.title,
            type=e.kind.value,
            loader=e.loader_type.value,
            profile=e.profile,
        )
        for e in entries_mod.menu_order(list(snap.menu_entries), v)
    )
    unlisted = tuple(Unlisted(e.path, e.why_unlisted) for e in snap.entries if not e.listed) + tuple(
        Unlisted(t.path, f"{TEMPORARY_WHY} ({t.size} bytes)", t.size) for t in temporaries
    )
    return Menu(
        esp=str(esp),
        sdboot_value=snap.sdboot_version,
        sdboot_version=str(v),
        sdboot_source=snap.sdboot_version_source,
        default=snap.loader_conf.default if snap.loader_conf else None,
        variables=(
            ("LoaderEntryDefault", ev.entry_default),
            ("LoaderEntryOneShot", ev.entry_oneshot),
            ("LoaderEntrySelected", ev.entry_selected),
            ("LoaderBootCountPath", ev.boot_count_path),
        ),
        next=bootloader.choose(snap, ev),
        pin=pin.view(pin.pins(snap, ev)),
        entries=rows,
        unlisted=unlisted,
        problems=tuple(snap.problems),
    )
