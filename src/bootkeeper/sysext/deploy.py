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
files and leaves the ESP as it was; temporaries a killed run left are removed by the next write verb
(``EspStore.transaction``), before the free space is measured.

What is validated is what lands: the source is opened once, copied to the first temporary, and that
copy is validated (under the image's final name); the other copies are made from it. A source swapped
or rewritten after it was opened never reaches the ESP (activate works the same way at boot).

Each target's OS: systemd-sysext judges an extension at boot against the os-release of the OS that
booted, which is the ``.osrel`` of the UKI the entry runs. The staged copy's extension-release is
checked against it with :func:`release.check` (the same rule activate and validate use); a UKI
without a readable ``.osrel`` (an ``efi`` entry naming a plain EFI-stub kernel) is checked against
the node's os-release under ROOT, as activate does; with neither, only what needs no OS is checked.
Entries with ``linux`` lines are no targets at all (no stub reads ``.extra.d`` for them). An image
that does not fit one target's OS is refused for all (nothing is written, the ESP is as it was):
``--entry`` then installs it where it fits.

With ``sysext.store: persistent`` (esp/linkstore.py) the image goes to the store instead and is linked
from the chosen folders (:func:`install_persistent`): the same staged-copy check, the same OS check
against the UKIs of the entries that will load it (:func:`folder_targets`).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bootkeeper import fsutil
from bootkeeper.errors import InputError, UnreadableError, UsageError, WriteError
from bootkeeper.esp import pe
from bootkeeper.esp.checked import put_checked, require_room
from bootkeeper.esp.entries import Role
from bootkeeper.esp.extra import Target
from bootkeeper.esp.store import EspStore
from bootkeeper.sysext.release import image_stem as image_stem  # re-exported: the rules match this name

if TYPE_CHECKING:
    from bootkeeper.esp.linkstore import Link, LinkStore
    from bootkeeper.sysext.release import Release

DEFAULT_ROLES = (Role.ACTIVE.value, Role.PASSIVE.value)
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


# A version begins where a '-' or '_' is followed by a digit, or by 'v'/'V' and a digit: the names
# systemd-sysupdate's patterns make (``k3s_@v.raw``, sysupdate.d(5)) and Kairos users give
# (``k3s-v1.30.2+k3s1.sysext.raw``). docs/upgrades.md, "Versioned extensions".
_VERSION = re.compile(r"[-_][vV]?[0-9]")


def unversioned(name: str) -> str:
    """An image's name without its version: :func:`image_stem`, cut before the first ``-`` or ``_`` that
    a digit (or ``v`` and a digit) follows (``k3s-v1.30.sysext.raw``, ``k3s_1.30.raw``, ``k3s-1.30.raw`` →
    ``k3s``; ``k3s.raw`` → ``k3s``; ``linux-firmware-20240101.raw`` → ``linux-firmware``). The name's
    first character never starts a version, so the result is never empty."""
    stem = image_stem(name)
    m = _VERSION.search(stem, 1)
    return stem[: m.start()] if m else stem


def resolve_name(name: str, installed: list[str]) -> list[str]:
    """The installed image names ``name`` means: itself when it is a file name (``k3s.sysext.raw``), or
    every installed one whose short name (:func:`image_stem`) it is (``k3s``)."""
    if name.endswith(".raw"):
        return [check_name(name)]
    check_name(f"{name}.raw")  # the same characters
    return sorted({n for n in installed if image_stem(n) == name})


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


def stays_with(name: str, rules: tuple[tuple[str, tuple[str, ...]], ...], entry: str) -> bool:
    """Whether an image of ``entry``'s set goes with it to its new OS (``upgrade``): yes, unless
    ``sysext.entries`` rules match the image and none of them is ``entry``'s."""
    stem = image_stem(name)
    matched = [e for e, pats in rules if any(re.fullmatch(p, stem) for p in pats)]
    return not matched or entry in matched


@dataclass(frozen=True)
class TargetOs:
    """The OS a target boots, as systemd-sysext sees it there: ``fields`` of its os-release (None:
    unknown), read from ``source`` (``EFI/kairos/active.efi .osrel``, ``ROOT/etc/os-release``)."""

    target: Target
    fields: dict[str, str] | None
    source: str
    from_uki: bool

    def describe(self) -> str:
        """``kairos VERSION_ID=2``: the fields an extension is judged by."""
        f = self.fields or {}
        out = f.get("ID") or "an OS without ID"
        if f.get("ID_LIKE"):
            out += f" (like {f['ID_LIKE']})"
        for k in ("VERSION_ID", "SYSEXT_LEVEL"):
            if f.get(k):
                out += f" {k}={f[k]}"
        return out

    def as_json(self) -> dict[str, object]:
        return {"entry": self.target.entry, "source": self.source or None, "os_release": self.fields}


def target_os(store: EspStore, t: Target, node: tuple[str, dict[str, str]] | None) -> TargetOs:
    """Read the ``.osrel`` of ``t``'s UKI; without one, the node's os-release ``node`` (its path and
    fields) stands in."""
    from bootkeeper.sysext.release import parse_release

    try:
        raw = pe.read_osrel(store.path(t.uki))
    except (OSError, InputError):
        raw = None  # not a PE (a plain kernel named by 'efi' is one; a broken file is not loaded either)
    if raw is not None:
        return TargetOs(t, parse_release(raw.decode("utf-8", "replace")), f"{t.uki} .osrel", True)
    if node is not None:
        return TargetOs(t, node[1], node[0], False)
    return TargetOs(t, None, "", False)


@dataclass(frozen=True)
class Misfit:
    """An image whose extension-release the OS of ``os.target`` refuses, and the line that says so."""

    os: TargetOs
    reason: str  # release.check's, e.g. "VERSION_ID=1, the host has 2"
    line: str

    def as_json(self) -> dict[str, object]:
        return {"entry": self.os.target.entry, "via": self.os.target.via, "reason": self.reason, "message": self.line}


_FIELD = re.compile(r"(?:ID|VERSION_ID|SYSEXT_LEVEL)=[^,]*")


def misfits(name: str, releases: list[Release], oses: list[TargetOs], arch: str) -> list[Misfit]:
    """Per target, whether systemd-sysext on the OS it boots would merge an image with these
    extension-releases. What fails whatever the OS (scope, architecture, no ID, an OS image) is
    validation's to report, once, and not repeated here."""
    from bootkeeper.sysext import release

    out: list[Misfit] = []
    for o in oses:
        if o.fields is None:
            continue
        for rel in releases:
            if release.check(rel, None, arch) is not None:
                continue
            why = release.check(rel, o.fields, arch)
            if why is None:
                continue
            boots = f"{o.target.via} boots {o.describe()}"
            if not o.from_uki:
                boots = f"{o.target.via} boots {o.target.uki}, which has no .osrel; {o.source} is {o.describe()}"
            m = _FIELD.match(why)
            line = f"{name}: built for {m.group(0)}, {boots}" if m else f"{name}: {why}; {boots}"
            out.append(Misfit(o, why, line))
    return out


@dataclass
class InstallPlan:
    """Where ``sysext install`` copies one image on the ESP, and where the same bytes are already."""

    name: str
    size: int
    why: str
    write: list[Target] = field(default_factory=list)
    same: list[Target] = field(default_factory=list)  # already there with the same bytes
    digest: str | None = None  # of the source, when a copy already there was compared with it

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "size": self.size,
            "why": self.why,
            "written": [f"{t.extra_dir}/{self.name}" for t in self.write],
            "unchanged": [f"{t.extra_dir}/{self.name}" for t in self.same],
        }


def plan(store: EspStore, src_fd: int, name: str, chosen: list[Target], why: str) -> InstallPlan:
    """Which targets need a copy of the open source ``src_fd``, and which have it already."""
    size = os.fstat(src_fd).st_size
    p = InstallPlan(name, size, why)
    for t in chosen:
        dest = store.path(f"{t.extra_dir}/{name}")
        if dest.is_file() and not dest.is_symlink() and dest.stat().st_size == size:
            p.digest = p.digest or fsutil.sha256_fd(src_fd, size)
            if fsutil.sha256_file(dest) == p.digest:
                p.same.append(t)
                continue
        p.write.append(t)
    return p


def check_space(store: EspStore, p: InstallPlan) -> None:
    """ESPs are small: refuse, with the numbers, before writing anything."""
    if not p.write:
        return
    copies = f"{len(p.write)} cop{'y' if len(p.write) == 1 else 'ies'}"
    require_room(
        store,
        p.size * len(p.write),
        lambda need, free: (
            f"{store.root}: not enough room for {p.name}: {copies} of {p.size} bytes need {need} "
            f"bytes with a 1 MiB margin, {free} are free; nothing was changed"
        ),
    )


def _refuse_links(store: EspStore, t: Target) -> None:
    d = store.path(t.extra_dir)
    if d.is_symlink():
        raise WriteError(f"{d}: is a symbolic link; refusing to write through it")


V = TypeVar("V")


@contextlib.contextmanager
def _removed_unless_done(store: EspStore, made: list[Path]) -> Iterator[None]:
    """A refused or failed install leaves the ESP as it was: the empty folders it made go too
    (after the temporaries, which the inner ExitStack removes first). Best effort: a folder that
    cannot be removed is empty, and systemd-stub reads nothing from it."""
    try:
        yield
    except BaseException:
        for d in reversed(made):
            with contextlib.suppress(OSError):
                store.step(f"rmdir:{d.name}")
                os.rmdir(d)
                fsutil.fsync_dir(d.parent, store.step)
        raise


def open_source(src: Path) -> int:
    """The image to install, opened once: every later read (plan, copy) goes through this
    descriptor, never through the path again."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise UnreadableError(f"{src}: cannot read ({exc.strerror})") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnreadableError(f"{src}: not a regular file")  # the input's fault: exit 7, not a failed write
    return fd


def install(
    store: EspStore,
    src: Path,
    name: str,
    chosen: list[Target],
    why: str,
    check: Callable[[Path], V],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[InstallPlan, V]:
    """Copy ``src`` as ``name`` to every chosen target in two phases (see the module's text).

    ``check(path)`` judges the bytes that will be installed: the first staged copy, or, when every
    target has the image already, the copy at its final name; it raises to refuse (the temporaries
    are removed) and its result is returned with the plan."""
    for t in chosen:
        _refuse_links(store, t)
    sfd = open_source(src)
    where = f"{store.root}: installing {name}"
    made: list[Path] = []  # the .extra.d folders this run creates: removed again when it fails

    def make_folder(dest: Path) -> None:
        if not dest.parent.exists():
            made.append(dest.parent)
        store.makedirs(dest.parent.relative_to(store.root).as_posix())

    def doing(what: str) -> None:
        nonlocal where
        where = what

    try:
        with store.transaction(), _removed_unless_done(store, made):
            p = plan(store, sfd, name, chosen, why)
            check_space(store, p)
            if not p.write:
                return p, check(store.path(f"{p.same[0].extra_dir}/{name}"))
            changed = (
                f"{src}: changed while being installed (the copies already on the ESP differ from what was "
                "validated); nothing was changed"
            )
            dests = [store.path(f"{t.extra_dir}/{name}") for t in p.write]
            verdict = put_checked(
                store,
                sfd,
                dests,
                check,
                size=p.size,
                digest=p.digest,
                changed=changed,
                progress=progress,
                before=make_folder,
                doing=doing,
            )
    except OSError as exc:
        raise WriteError(f"{where} failed ({exc.strerror or exc}); temporary copies removed") from exc
    finally:
        os.close(sfd)
    return p, verdict


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


# --- the persistent store (sysext.store: persistent; esp/linkstore.py) -------------------------


def store_folders(
    name: str, rules: tuple[tuple[str, tuple[str, ...]], ...], wanted: tuple[str, ...]
) -> tuple[list[str], str]:
    """The folders of links an image goes to, and why: ``--entry`` (a role or ``common``), else the
    ``sysext.entries`` rules that match it, else active and passive (the ESP's rule)."""
    from bootkeeper.esp.linkstore import FOLDERS

    if wanted:
        bad = [w for w in wanted if w not in FOLDERS]
        if bad:
            raise UsageError(f"--entry {', '.join(bad)}: the persistent store has folders {', '.join(FOLDERS)} only")
        return list(dict.fromkeys(wanted)), "--entry"
    stem = image_stem(name)
    matched = [e for e, pats in rules if e in FOLDERS and any(re.fullmatch(p, stem) for p in pats)]
    if matched:
        return matched, f"sysext.entries rules for {', '.join(matched)}"
    return list(DEFAULT_ROLES), "no rule names it: active and passive"


def folder_targets(folders: list[str], available: list[Target]) -> list[Target]:
    """The ESP entries whose OS loads these folders: a role's entries; every role's for ``common``."""
    from bootkeeper.esp.linkstore import COMMON

    return [t for t in available if t.role is not None and (COMMON in folders or t.role.value in folders)]


@dataclass
class StorePlan:
    name: str
    size: int
    why: str
    store: str
    copied: bool = False  # the image was written to the store (False: the same bytes were there)
    image: str = ""  # its name in the store (the link's name, or <stem>~<digest>.raw beside another build)
    collected: list[str] = field(default_factory=list)  # images no folder links to any more, removed
    linked: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # folders that linked it already

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "size": self.size,
            "why": self.why,
            "store": self.store,
            "image": self.image,
            "image_written": self.copied,
            "images_removed": self.collected,
            "written": [f"{f}/{self.name}" for f in self.linked],
            "unchanged": [f"{f}/{self.name}" for f in self.unchanged],
        }


def install_persistent(
    ls: LinkStore,
    src: Path,
    name: str,
    folders: list[str],
    why: str,
    check: Callable[[Path], V],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[StorePlan, V]:
    """Copy ``src`` into the store (crash-safe, judged by ``check`` on the staged copy, as for the ESP)
    and link it as ``name`` from each folder. Another image of that name that a folder links is never
    overwritten: the new bytes get their own image name (:meth:`LinkStore.image_for`); images no folder
    links to any more are removed afterwards."""
    sfd = open_source(src)
    try:
        size = os.fstat(sfd).st_size
        p = StorePlan(name, size, why, str(ls.root))
        with ls.transaction():
            image, copy = ls.image_for(name, fsutil.sha256_fd(sfd, size))
            p.image = image
            dest = ls.root / image
            if not copy:
                verdict = check(dest)
            else:
                require_room(
                    ls,
                    size,
                    lambda need, free: (
                        f"{ls.root}: not enough room for {name}: {size} bytes need {need} with a "
                        f"1 MiB margin, {free} are free; nothing was changed"
                    ),
                )
                with ls.naming(dest, "cannot write"):
                    verdict = put_checked(ls, sfd, [dest], check, size=size, progress=progress)
                p.copied = True
            for f in folders:
                lk = next((x for x in ls.links(f) if x.name == name), None)
                if lk is not None and lk.image == image:
                    p.unchanged.append(f)
                    continue
                ls.link(f, name, image)
                p.linked.append(f)
            p.collected = ls.collect()
    finally:
        os.close(sfd)
    return p, verdict


def installed_persistent(ls: LinkStore) -> list[Link]:
    """Every link of every folder (role folders and ``common``), working or not."""
    from bootkeeper.esp.linkstore import FOLDERS

    return [lk for f in FOLDERS for lk in ls.links(f)]


def remove_persistent(ls: LinkStore, name: str, folders: list[str]) -> tuple[list[str], list[str]]:
    """Unlink ``name`` from ``folders``; the images no folder links to any more go too. Returns the
    links and the images removed."""
    check_name(name)
    gone = []
    with ls.transaction():
        for f in folders:
            if any(x.name == name for x in ls.links(f)) or (ls.root / f / name).is_symlink():
                ls.unlink(f"{f}/{name}")
                gone.append(f"{f}/{name}")
        images = ls.collect()
    return gone, images
