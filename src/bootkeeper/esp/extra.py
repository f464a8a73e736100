"""Which boot entries run a UKI, and the folder systemd-stub hands to the initrd for each: the UKI's
``<uki>.efi.extra.d/`` (the boot counter is not part of the folder's name: ``active+2-1.efi`` reads
``active.efi.extra.d``). Pure over a snapshot and the ESP's listings; sysext/deploy.py installs into
these folders, assess/status.py shows what they hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bootkeeper import fsutil
from bootkeeper.esp.entries import EntryKind, LoaderType, Role, extra_dir
from bootkeeper.esp.store import EspStore, Snapshot

__all__ = ["Installed", "Target", "installed", "targets"]


@dataclass(frozen=True)
class Target:
    """A boot entry that runs a UKI, and the folder systemd-stub reads extensions from for it."""

    entry: str  # the entry's name without counter: "active"
    uki: str  # ESP-relative path of the UKI
    extra_dir: str  # ESP-relative path of <uki>.extra.d
    via: str  # the entry file that names the UKI
    options: str | None = None  # Type #1: the command line systemd-boot passes to the UKI
    profile: int = 0  # the UKI profile the entry boots (Type #2 profiles, 257+)

    @property
    def role(self) -> Role | None:
        return Role.from_stem(self.entry)


def targets(snap: Snapshot, store: EspStore, vendor: str | None = None) -> list[Target]:
    """Every entry that boots a UKI (Type #1 with ``efi``/``uki``, or a Type #2 file)."""
    out: list[Target] = []
    for e in snap.entries:
        if e.kind is EntryKind.TYPE2:
            uki = e.path
        elif e.loader_type in (LoaderType.EFI, LoaderType.UKI) and e.loader:
            found = store.find_ci(e.loader)
            if found is None:
                continue  # systemd-boot does not list it either
            uki = found.relative_to(store.root).as_posix()
        else:
            continue  # a linux/initrd entry has no stub to read .extra.d
        folder = uki.rpartition("/")[0]
        if vendor is not None and e.kind is EntryKind.TYPE1 and folder.lower() != f"efi/{vendor}".lower():
            continue
        options = e.options if e.kind is EntryKind.TYPE1 else None
        out.append(Target(e.name.stem, uki, extra_dir(uki), e.path, options, e.profile))
    return sorted(out, key=lambda t: (t.role.rank if t.role else 99, t.entry, t.extra_dir))


@dataclass(frozen=True)
class Installed:
    target: Target
    name: str
    size: int
    path: Path


def installed(store: EspStore, available: list[Target]) -> list[Installed]:
    out = []
    for t in available:
        d = store.path(t.extra_dir)
        if d.is_symlink() or not d.is_dir():
            continue
        for n in sorted(os.listdir(d)):
            p = d / n
            if n.endswith(".raw") and not fsutil.is_temporary(n) and p.is_file() and not p.is_symlink():
                out.append(Installed(t, n, p.stat().st_size, p))
    return out
