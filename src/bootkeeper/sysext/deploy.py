"""Extensions on the ESP, per boot entry: ``EFI/<vendor>/<uki>.efi.extra.d/<name>.raw``.

systemd-stub hands the ``*.raw`` files of the folder beside the UKI it runs to the initrd as
``/.extra/sysext/``; the boot counter in the UKI's file name is not part of the folder's name
(``active+2-1.efi`` reads ``active.efi.extra.d``). There is no folder shared by all entries, so an
image is copied once per entry that should load it.

Which entries: ``--entry`` when given; else every entry with a ``sysext.entries`` rule that matches
the image name in full; else active and passive. Recovery and statereset only when named.

Writes happen in two phases inside the ESP's lock and read-write remount: first every copy to a
temporary name (``.bootkeeper-*.tmp``, which systemd-stub does not load) with fsync; only when all
copies are complete are they renamed into place. A failure in the first phase removes the temporary
files and leaves the ESP as it was.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootkeeper import fsutil
from bootkeeper.errors import StoreIOError, UsageError
from bootkeeper.esp import counter as counter_mod
from bootkeeper.esp.entries import EntryKind, LoaderType, Role
from bootkeeper.esp.store import EspStore, Snapshot

EXTRA_SUFFIX = ".extra.d"
DEFAULT_ROLES = (Role.ACTIVE.value, Role.PASSIVE.value)
SPACE_MARGIN = 1 << 20  # keep 1 MiB free on the ESP for the boot loader's renames and random seed
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+~-]*\.raw")


def check_name(name: str) -> str:
    """An image's file name on the ESP: a plain name ending in ``.raw`` (not ``.confext.raw``)."""
    if "/" in name or "\\" in name or name in (".", "..") or ".." in name or "\0" in name:
        raise UsageError(f"image name {name!r}: must be a plain file name (no '/', '\\', '..')")
    if len(name) > 200 or not _NAME.fullmatch(name):
        raise UsageError(
            f"image name {name!r}: must start with a letter, digit or '_', use only letters, digits and "
            "'_.+~-', and end in .raw (e.g. k3s-v1.30.sysext.raw)"
        )
    if name.endswith(".confext.raw"):
        raise UsageError(f"image name {name!r}: a .confext.raw is a configuration extension, not a sysext")
    return name


def image_stem(name: str) -> str:
    """The name that ``sysext.entries`` rules match: without ``.raw`` and ``.sysext``."""
    stem = name[: -len(".raw")] if name.endswith(".raw") else name
    return stem[: -len(".sysext")] if stem.endswith(".sysext") else stem


@dataclass(frozen=True)
class Target:
    """A boot entry that runs a UKI, and the folder systemd-stub reads extensions from for it."""

    entry: str  # the entry's name without counter: "active"
    uki: str  # ESP-relative path of the UKI
    extra_dir: str  # ESP-relative path of <uki>.extra.d
    via: str  # the entry file that names the UKI

    @property
    def role(self) -> Role | None:
        return Role.from_stem(self.entry)


def _uncounted(file_name: str) -> str:
    return counter_mod.parse(file_name, ".efi").base


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
        folder, _, file_name = uki.rpartition("/")
        if vendor is not None and e.kind is EntryKind.TYPE1 and folder.lower() != f"efi/{vendor}".lower():
            continue
        extra = f"{folder}/{_uncounted(file_name)}{EXTRA_SUFFIX}" if folder else _uncounted(file_name) + EXTRA_SUFFIX
        out.append(Target(e.name.stem, uki, extra, e.path))
    return sorted(out, key=lambda t: (t.role.rank if t.role else 99, t.entry, t.extra_dir))


def select(
    name: str, available: list[Target], rules: tuple[tuple[str, tuple[str, ...]], ...], wanted: tuple[str, ...]
) -> tuple[list[Target], str]:
    """The targets an image goes to, and why (for the log and --json)."""
    names = {t.entry for t in available}
    if wanted:
        missing = [w for w in wanted if w not in names]
        if missing:
            raise UsageError(
                f"no UKI entry named {', '.join(missing)} on the ESP (entries: {', '.join(sorted(names)) or 'none'})"
            )
        return [t for t in available if t.entry in wanted], "--entry"
    stem = image_stem(name)
    matched = [entry for entry, pats in rules if any(re.fullmatch(p, stem) for p in pats)]
    if matched:
        why = f"sysext.entries rules for {', '.join(matched)}"
        return [t for t in available if t.entry in matched], why
    return [t for t in available if t.entry in DEFAULT_ROLES], "no rule names it: active and passive"


def _sha256(path: Path) -> str:
    import hashlib  # not at import time: status imports this module on the boot path

    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Plan:
    name: str
    size: int
    why: str
    write: list[Target] = field(default_factory=list)
    same: list[Target] = field(default_factory=list)  # already there with the same bytes

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "why": self.why,
            "written": [f"{t.extra_dir}/{self.name}" for t in self.write],
            "unchanged": [f"{t.extra_dir}/{self.name}" for t in self.same],
        }


def plan(store: EspStore, src: Path, name: str, chosen: list[Target], why: str) -> Plan:
    size = src.stat().st_size
    p = Plan(name, size, why)
    digest: str | None = None
    for t in chosen:
        dest = store.path(f"{t.extra_dir}/{name}")
        if dest.is_file() and not dest.is_symlink() and dest.stat().st_size == size:
            digest = digest or _sha256(src)
            if _sha256(dest) == digest:
                p.same.append(t)
                continue
        p.write.append(t)
    return p


def check_space(store: EspStore, p: Plan) -> None:
    """ESPs are small: refuse, with the numbers, before writing anything."""
    free = store.free_bytes()
    need = p.size * len(p.write) + SPACE_MARGIN
    if p.write and free < need:
        raise StoreIOError(
            f"{store.root}: not enough room for {p.name}: {len(p.write)} cop{'y' if len(p.write) == 1 else 'ies'} "
            f"of {p.size} bytes need {need} bytes with a 1 MiB margin, {free} are free; nothing was changed"
        )


def _refuse_links(store: EspStore, t: Target) -> None:
    d = store.path(t.extra_dir)
    if d.is_symlink():
        raise StoreIOError(f"{d}: is a symbolic link; refusing to write through it")


def install(store: EspStore, src: Path, p: Plan, progress: Callable[[int, int], None] | None = None) -> None:
    """Copy ``src`` to every target of ``p`` in two phases (see the module's text)."""
    if not p.write:
        return
    for t in p.write:
        _refuse_links(store, t)
    check_space(store, p)
    try:
        sfd = os.open(src, os.O_RDONLY)
    except OSError as exc:
        raise StoreIOError(f"{src}: cannot read ({exc.strerror})") from exc
    try:
        with store.transaction(), contextlib.ExitStack() as temps:
            staged = []
            for t in p.write:
                store.makedirs(t.extra_dir)
                dest = store.path(f"{t.extra_dir}/{p.name}")
                fd, tmp = temps.enter_context(fsutil.temp_file(dest, store.step))
                fsutil.copy_into(sfd, fd, p.size, progress)
                store.step(f"fsync:{dest.name}")
                os.fsync(fd)
                staged.append((tmp, dest))
            for tmp, dest in staged:
                store.step(f"rename:{tmp.name}->{dest.name}")
                os.rename(tmp, dest)
                fsutil.fsync_renamed(dest, store.step)
                fsutil.fsync_dir(dest.parent, store.step)
    except OSError as exc:
        raise StoreIOError(
            f"{store.root}: installing {p.name} failed ({exc.strerror or exc}); temporary copies removed"
        ) from exc
    finally:
        os.close(sfd)


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


def remove(store: EspStore, name: str, chosen: list[Target]) -> list[str]:
    """Remove ``name`` from the chosen targets; returns the ESP paths removed."""
    check_name(name)
    gone = []
    with store.transaction():
        for t in chosen:
            rel = f"{t.extra_dir}/{name}"
            if store.path(rel).is_file():
                store.unlink(rel)
                gone.append(rel)
    return gone
