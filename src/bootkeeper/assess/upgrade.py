"""``upgrade``: a new OS as one transaction over role *sets* (docs/design.md, "An upgrade is a transaction").

A role's set is its UKI, the ``<uki>.efi.extra.d/`` folder systemd-stub hands to the initrd (named after
the UKI's uncounted name: ``active+2-1.efi`` reads ``active.efi.extra.d``), and its entry. Layouts:

* Kairos Type #1: ``loader/entries/<role>+N.conf`` with ``efi|uki /EFI/<vendor>/<role>.efi``;
* Type #2: ``EFI/Linux/<role>+N.efi`` (the UKI is the entry).

A/B upgrade: the old passive set goes; the old active set becomes passive (UKI and extensions together,
fresh counter, passive's sort key); the new set becomes active (fresh counter, for Type #1 the loader key
:func:`chain.plan_key` says). ``--recovery`` replaces the recovery set and leaves A/B alone.

This module plans (pure: :func:`plan` over an :class:`~bootkeeper.esp.store.Snapshot` and the folder
listings) and applies the plan's :class:`Op` list in order. The gate (PE sections, extensions, menu order)
is decided before the first write; the extension checks need ``sysext/`` and live in the CLI
(``cli/upgrade_cmd.py``), the order check is :func:`order_check`.

**The order of the steps** (a crash between any two leaves an ESP on which the model boots the old OS with
its own extensions or the new OS with its own, and no listed entry whose UKI or extension set is half there):

0. Leftovers of an interrupted upgrade: the staging names (below) and a folder or UKI of the new sets
   that no entry uses are removed (nothing loads them).
1. The old passive set goes, the entry first (after that its UKI and folder are loaded by nothing). Done
   first so that its space is free for what follows. The old active still boots, with its extensions.
2. Staging, under names nothing loads: ``.bootkeeper-upgrade-<role>.d/`` (not ``*.efi.extra.d``: systemd-stub
   reads only ``<its own name>.extra.d``) gets a *copy* of the old active's extensions for the passive, and
   the new active's extensions (carried ones copied from the old active's folder, plus each ``--extension``);
   the new UKI goes to ``.bootkeeper-upgrade-<role>.uki`` (no ``.efi``: systemd-boot does not list it). Copies
   and not renames: a UKI and its folder cannot be renamed in one step, so the passive gets its own folder,
   complete, before its UKI has the passive name.
3. The passive folder is renamed to ``passive.efi.extra.d`` (no passive UKI exists: unread).
4. The old active becomes passive. Type #2: one rename ``active+N.efi`` → ``passive+T.efi``: the old OS,
   with its extensions, is now the first entry. Type #1: ``passive+T.conf`` is written naming
   ``/EFI/<vendor>/passive.efi``, which does not exist yet (systemd-boot does not list an entry whose file is
   missing: the old active still boots first); then ``active.efi`` is renamed ``passive.efi`` (now the
   old active's entry is the one without its file, and the passive entry boots the old OS with its copy
   of the extensions); then the old active's entry is removed.
5. The old active's folder ``active.efi.extra.d`` goes (no active UKI exists: unread).
6. The staged new folder is renamed ``active.efi.extra.d``, then the staged UKI ``active+T.efi`` (Type #2:
   this rename is the commit) or ``active.efi`` followed by the entry ``active+T.conf`` (Type #1: renamed from
   ``loader/entries/.bootkeeper-upgrade-active.entry``, written in step 2; this rename is the commit).
   Before the commit the old OS boots as passive; after it, the new OS as active.

``--recovery``: staging (2) first (the carried extensions are copied out of the old folder), then the old
recovery set goes, then folder, UKI and (Type #1) entry are renamed/written into place.

**A re-run after a crash** plans from what it finds: an active entry whose UKI is gone (Type #1, between
the rename and the entry's removal in 4) counts as absent; with no active but a passive (a crash after 4),
the passive is the old OS already moved, its extensions are the ones carried, and only the new active is
installed; an active UKI with the same bytes as NEW.efi means the upgrade is complete: nothing is done.

**A bad active** (no tries left: the node fell back to passive) is never moved to passive: it is
``replaced``. Its entry goes first (Type #1: then its UKI; the model boots passive meanwhile, as it did),
then the steps of a re-run after step 4 run (no active, the passive in place): the active's folder and
links go, the new set is staged and committed, carrying the running passive's extensions. A re-run after
the bad entry went plans exactly those steps, so it gives the same tree (docs/upgrades.md, "A bad active
is replaced").

**Rebuild** (``rebuild``, for repair): an active that is not blessed is replaced like a bad one, an ESP
with neither active nor passive gets a new active; then :func:`finish_rebuild` gives passive the new set
(Type #1) or drops it (Type #2) unless it is :func:`fit_to_stay`, and :func:`rearm` gives every role fresh
tries. Each part is its own transaction and decides from what it finds (docs/upgrades.md, "Rebuild").

One space check for the whole transaction, before the first write: the staged copies and the new UKI
must fit in the free space plus what step 1 frees, with a 1 MiB margin (and the new images in the
persistent store's file system).

**The persistent extension store** (``sysext.store: persistent``, esp/linkstore.py): a role's set is also
its folder of links, moved in the same order. Step 0 removes staging folders the store has left; after
step 1, ``passive/`` goes (no passive entry is left to read it); step 2 copies each new image into the
store (another build of a linked name gets its own image name) and stages ``.bootkeeper-upgrade-passive.d``
(the old active's links) and ``.bootkeeper-upgrade-active.d`` (the new set's); step 3 renames the first to
``passive/``; after step 5 ``active/`` goes and the second is renamed to ``active/`` before the commit;
after it, images no folder links to are removed. ``common/`` stays: the gate judges its images against
the new OS (:attr:`UpgradePlan.common`). The staged Type #1 entry (not ``*.conf``: systemd-boot does not read
it) keeps a ``--recovery`` re-run after a cut that came after the old recovery's entry went in possession
of its text; such a re-run carries the staged folders on (:class:`StagedRecovery`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from bootkeeper import fsutil
from bootkeeper.assess import chain
from bootkeeper.config import BootAssessment
from bootkeeper.errors import EspError, InputError, NotApplicableError, RefusedError, UnreadableError, WriteError
from bootkeeper.esp import counter as counter_mod
from bootkeeper.esp import edit, pe
from bootkeeper.esp import entries as entries_mod
from bootkeeper.esp.checked import put_checked, require_room
from bootkeeper.esp.entries import TYPE1_DIR, TYPE2_DIR, Entry, EntryKind, LoaderType, Role, extra_dir
from bootkeeper.esp.linkstore import COMMON, LinkStore
from bootkeeper.esp.sdboot import SdBoot
from bootkeeper.esp.store import EspStore, FolderStore, Snapshot

STAGE_PREFIX = ".bootkeeper-upgrade-"


def _stage_dir(folder: str, role: Role) -> str:
    return f"{folder}/{STAGE_PREFIX}{role.value}.d"


def _stage_uki(folder: str, role: Role) -> str:
    return f"{folder}/{STAGE_PREFIX}{role.value}.uki"


def _stage_entry(role: Role) -> str:
    return f"{TYPE1_DIR}/{STAGE_PREFIX}{role.value}.entry"  # not *.conf: systemd-boot does not read it


# --- the sets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleSet:
    role: Role
    entry: Entry
    uki: str  # ESP path of the UKI (Type #2: the entry itself)
    extra_dir: str
    extensions: tuple[str, ...]  # the *.raw systemd-stub loads for it
    links: tuple[tuple[str, str], ...] = ()  # persistent store: (link name, image) of its folder

    @property
    def folder(self) -> str:
        return self.uki.rpartition("/")[0]

    def as_json(self) -> dict[str, object]:
        return {
            "role": self.role.value,
            "entry": self.entry.path,
            "uki": self.uki,
            "extra_dir": self.extra_dir,
            "extensions": list(self.extensions),
            "links": [name for name, _ in self.links],
        }


def _raws(store: EspStore, rel: str) -> tuple[str, ...]:
    d = store.path(rel)
    if d.is_symlink() or not d.is_dir():
        return ()
    return tuple(n for n in store.list_dir(rel) if n.endswith(".raw") and not fsutil.is_temporary(n))


def _links(links: LinkStore | None, folder: str) -> tuple[tuple[str, str], ...]:
    if links is None:
        return ()
    return tuple((lk.name, lk.image) for lk in links.links(folder) if lk.image is not None)


def uki_of(store: EspStore, e: Entry) -> str | None:
    if e.kind is EntryKind.TYPE2:
        return e.path
    if e.loader_type in (LoaderType.EFI, LoaderType.UKI) and e.loader:
        found = store.find_ci(e.loader)
        return found.relative_to(store.root).as_posix() if found is not None else None
    return None


@dataclass(frozen=True)
class StagedRecovery:
    """A recovery set staged by an upgrade that was cut after the old recovery went: its folder (ESP) and
    links (store) are complete, and a re-run carries them on (they hold the old recovery's extensions)."""

    extra_dir: str
    extensions: tuple[str, ...]
    links: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Found:
    """The role entries of one layout, as a snapshot shows them."""

    layout: EntryKind
    sets: dict[Role, RoleSet]
    dangling: tuple[Entry, ...]  # Type #1 role entries whose UKI is not on the ESP (a crash in step 4)


def find_sets(store: EspStore, snap: Snapshot, links: LinkStore | None = None) -> Found:
    by_role = chain.role_entries(snap.entries)
    kinds = {e.kind for es in by_role.values() for e in es if uki_of(store, e) or e.kind is EntryKind.TYPE1}
    ab = [e for r in (Role.ACTIVE, Role.PASSIVE) for e in by_role.get(r, [])]
    if {e.kind for e in ab} == {EntryKind.TYPE1, EntryKind.TYPE2}:
        raise EspError(
            f"{store.root}: active/passive entries in both {TYPE1_DIR}/ and {TYPE2_DIR}/; upgrade moves one layout"
        )
    layout = ab[0].kind if ab else (EntryKind.TYPE2 if kinds == {EntryKind.TYPE2} else EntryKind.TYPE1)
    sets: dict[Role, RoleSet] = {}
    dangling: list[Entry] = []
    for role in Role:
        found = [e for e in by_role.get(role, []) if e.kind is layout]
        chain.check_unique(role, found)
        if not found:
            continue
        e = found[0]
        if layout is EntryKind.TYPE1 and e.loader_type not in (LoaderType.EFI, LoaderType.UKI):
            if role in (Role.ACTIVE, Role.PASSIVE):
                raise EspError(f"{e.path}: boots '{e.loader_type}', not a UKI; upgrade moves UKI sets only")
            continue
        uki = uki_of(store, e)
        if uki is None:
            dangling.append(e)
            continue
        d = extra_dir(uki)
        sets[role] = RoleSet(role, e, uki, d, _raws(store, d), _links(links, role.value))
    return Found(layout, sets, tuple(dangling))


# --- the plan ---------------------------------------------------------------------------------


class OpKind(StrEnum):
    UNLINK = "unlink"
    RMDIR = "rmdir"
    MKDIR = "mkdir"
    COPY = "copy"  # src (a file anywhere) -> path, crash-safe
    RENAME = "rename"  # src (ESP path) -> path, same folder
    WRITE = "write"  # text -> path, crash-safe
    CLEAR_RO = "clear-read-only"  # the FAT read-only attribute of ``entry`` (chain.clear_read_only)
    LINK = "link"  # persistent store: path (folder/name) -> ../src (an image of the store)


@dataclass(frozen=True)
class Op:
    kind: OpKind
    path: str
    src: str | None = None
    text: str | None = None
    why: str = ""
    entry: Entry | None = None
    store: str = ""  # a step in the persistent extension store (its folder), not on the ESP

    def line(self, shown_src: str | None = None) -> str:
        """The step as one line; ``shown_src``: the name to show for ``src`` (the file the user gave, when
        ``src`` is a private copy of it)."""
        path = f"{self.store}/{self.path}" if self.store else self.path
        src = f"{self.store}/{self.src}" if self.store and self.kind is OpKind.RENAME else self.src
        src = shown_src if shown_src is not None else src
        if self.kind is OpKind.LINK:
            return f"link {path} -> ../{self.src}" + (f" ({self.why})" if self.why else "")
        what = {
            OpKind.UNLINK: f"remove {path}",
            OpKind.RMDIR: f"remove folder {path}",
            OpKind.MKDIR: f"make folder {path}",
            OpKind.COPY: f"copy {src} -> {path}",
            OpKind.RENAME: f"rename {src} -> {path}",
            OpKind.WRITE: f"write {path}",
            OpKind.CLEAR_RO: f"clear the read-only attribute of {path}",
        }[self.kind]
        return f"{what} ({self.why})" if self.why else what


@dataclass(frozen=True)
class Extension:
    """One image the new set will load: ``source`` is an --extension file, or the old set's copy."""

    name: str
    source: Path
    carried: bool
    image: str | None = None  # in the persistent store: the image its link names (None: on the ESP)
    common: bool = False  # a link of common/: every role loads it, the upgrade leaves it in place


@dataclass
class UpgradePlan:
    """What one upgrade does: the sets it moves, its ops in order, and the space they need."""

    layout: EntryKind
    role: Role  # ACTIVE (A/B) or RECOVERY
    new_uki: Path
    old: RoleSet | None  # what the new set replaces (old active, or old recovery)
    gone: RoleSet | None  # A/B: the old passive set, removed
    kept_passive: RoleSet | None  # A/B resume: the passive that is the old active already moved
    extensions: tuple[Extension, ...]
    ops: list[Op] = field(default_factory=list)
    need_bytes: int = 0  # on the ESP, before the margin (check_space adds it)
    freed_bytes: int = 0  # on the ESP, by step 1
    warnings: list[str] = field(default_factory=list)
    done: bool = False  # the new UKI is the active one already
    new_uki_rel: str = ""  # where the new UKI goes
    new_entry_rel: str = ""  # its entry (Type #2: the UKI itself)
    common: tuple[Extension, ...] = ()  # persistent store: common/, loaded by the new OS too (gated, not moved)
    left_behind: tuple[str, ...] = ()  # the old set's extensions the sysext.entries rules do not carry
    store_need_bytes: int = 0  # persistent store: the new images
    replaced: RoleSet | None = None  # A/B: a bad (or, rebuilding, an unblessed) active the new set replaces


def sha256(path: Path) -> str:
    return fsutil.sha256_file(path)


def same_bytes(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size and fsutil.sha256_file(a) == fsutil.sha256_file(b)
    except (OSError, UnreadableError):
        return False


def _bytes_or_zero(p: Path) -> int:
    """A file's size for the space sums; one that is not there (or unreadable) adds nothing."""
    try:
        return p.stat().st_size
    except OSError:
        return 0


def carried(
    store: EspStore,
    old: RoleSet | StagedRecovery | None,
    added: list[tuple[str, Path]],
    stem: Callable[[str], str],
    *,
    links: LinkStore | None = None,
    carry: Callable[[str], bool] | None = None,
    key: Callable[[str, Path], str] | None = None,
) -> tuple[list[Extension], list[str]]:
    """The new set's extensions: the old set's (its ``.extra.d`` and, with the persistent store, its links),
    each replaced by an ``added`` one of the same extension name (``stem``: the sysext naming rule, owned by
    sysext/deploy.py) and kept only where ``carry`` (the ``sysext.entries`` rules) allows, plus the others
    added (into the store, when there is one). Also the names the rules left behind.

    ``key``: which extension an image is a build of (node/upgrade.py: its ``SYSEXT_ID``, else its name
    without the version, docs/upgrades.md "Versioned extensions"); an old image whose key or file name
    an added one has is replaced by it, so the new set never holds two builds of one extension."""

    def key_of(n: str, path: Path) -> str:
        return key(n, path) if key is not None else stem(n)

    new_stems = {key_of(n, p) for n, p in added} | {n for n, _ in added}
    out: list[Extension] = []
    left: list[str] = []
    candidates: list[tuple[str, Path, str | None]] = []
    if old is not None:
        candidates += [(n, store.path(f"{old.extra_dir}/{n}"), None) for n in old.extensions]
        if links is not None:
            candidates += [(n, links.root / image, image) for n, image in old.links]
    for n, path, image in candidates:
        if n in new_stems or key_of(n, path) in new_stems:
            continue
        if carry is not None and not carry(n):
            left.append(n)
            continue
        out.append(Extension(n, path, True, image))
    return out + [Extension(n, p, False, n if links is not None else None) for n, p in added], left


def _store_dir(folder: str) -> str:
    return f"{STAGE_PREFIX}{folder}.d"


def _store_remove(links: LinkStore, folder: str, why: str) -> list[Op]:
    """Ops that remove a folder of links (every entry in it: links, and whatever else is there)."""
    d = links.root / folder
    if d.is_symlink():
        raise WriteError(f"{d}: is a symbolic link; refusing to write through it")
    if not d.is_dir():
        return []
    names = [n for n in sorted(os.listdir(d)) if not (d / n).is_dir() or (d / n).is_symlink()]
    root = str(links.root)
    return [
        *(Op(OpKind.UNLINK, f"{folder}/{n}", why=why, store=root) for n in names),
        Op(OpKind.RMDIR, folder, why=why, store=root),
    ]


def _store_stage(links: LinkStore, folder: str, exts: list[tuple[str, str]], why: str) -> list[Op]:
    """Ops that build a staged folder of links ((name, image) each) under a name activate never reads."""
    root = str(links.root)
    return [Op(OpKind.LINK, f"{_store_dir(folder)}/{n}", image, why=why, store=root) for n, image in exts]


def _store_images(
    links: LinkStore, exts: tuple[Extension, ...], p: UpgradePlan
) -> tuple[list[Op], tuple[Extension, ...]]:
    """The added images the store does not hold yet, and the extensions with the image each will be:
    another image of the same name that a folder links is never overwritten (LinkStore.image_for)."""
    ops = []
    out = []
    for x in exts:
        if x.carried or x.image is None:
            out.append(x)
            continue
        if x.source.parent == links.root and x.source.name in links.images():  # the store's own (a rebuild's
            out.append(Extension(x.name, x.source, False, x.source.name))  # passive): linked, never copied
            continue
        image, copy = links.image_for(x.name, fsutil.sha256_file(x.source))
        out.append(Extension(x.name, x.source, False, image))
        if copy:
            why = "a new extension, linked by nothing yet"
            ops.append(Op(OpKind.COPY, image, str(x.source), why=why, store=str(links.root)))
            p.store_need_bytes += _bytes_or_zero(x.source)
    return ops, tuple(out)


def _remove_dir(store: EspStore, rel: str, why: str) -> list[Op]:
    d = store.path(rel)
    if d.is_symlink():
        raise WriteError(f"{d}: is a symbolic link; refusing to write through it")
    if not d.is_dir():
        return []
    # temporaries are the transaction's to remove (EspStore.clear_temporaries), before this runs
    names = [n for n in sorted(os.listdir(d)) if (d / n).is_file() and not fsutil.is_temporary(n)]
    ops = [Op(OpKind.UNLINK, f"{rel}/{n}", why=why) for n in names]
    return [*ops, Op(OpKind.RMDIR, rel, why=why)]


def _stage(store: EspStore, rel: str, files: list[tuple[str, str]], why: str) -> list[Op]:
    """Ops that build folder ``rel`` holding ``files`` ((name, source path)) under a staging name."""
    if not files:
        return []
    return [Op(OpKind.MKDIR, rel, why=why), *(Op(OpKind.COPY, f"{rel}/{n}", src, why=why) for n, src in files)]


_TITLE = re.compile(r"^([ \t]*title[ \t]+)(.*)$", re.MULTILINE)


def retitle(text: str, role: Role) -> str:
    """The ``title`` with another role's name (a whole word, any case) replaced by ``role``'s: the old
    active's entry, moved to passive, no longer shows "Kairos active" in the menu."""
    words = "|".join(r.value for r in Role if r is not role)

    def swap(m: re.Match[str]) -> str:
        w = m.group(0)
        new = role.value.upper() if w.isupper() else role.value.capitalize() if w[0].isupper() else role.value
        return new

    def line(m: re.Match[str]) -> str:
        return m.group(1) + re.sub(rf"\b({words})\b", swap, m.group(2), flags=re.IGNORECASE)

    return _TITLE.sub(line, text, count=1)


def _entry_text(template: str | None, role: Role, uki: str, key: str, title: str) -> str:
    text = retitle(template, role) if template is not None else f"title {title}\n"
    line = chain.loader_line(text)
    if line is None:
        text = text.rstrip("\n") + f"\n{key} /{uki}\n"
    else:
        text = edit.set_key(text, line.key, f"/{uki}")
        if line.key != key:
            text = edit.rename_key(text, line.key, key)
    return edit.set_key(text, "sort-key", role.sort_key)


def _key_for(loaders: chain.BootLoaders, current: str | None, uki: str, warnings: list[str], where: str) -> str:
    """The loader key for an entry naming a UKI (the new one passed the PE gate)."""
    line = chain.LoaderLine(current or "efi", f"/{uki}")
    kp = chain.plan_key(line, None, loaders)
    if kp.case is chain.KeyCase.DISAGREE:
        raise EspError(kp.line(where))
    if kp.case is chain.KeyCase.CONVERT and kp.new_key:
        return kp.new_key
    if kp.case is not chain.KeyCase.FINE:
        warnings.append(kp.line(where))
    return line.key


@dataclass
class _Draft:
    """What the planning steps share: the ESP (and store) as found, the role the upgrade replaces, and
    the plan the steps fill in, op by op, in the order of the module's text."""

    store: EspStore
    links: LinkStore | None
    cfg: BootAssessment
    found: Found
    loaders: chain.BootLoaders
    folder: str  # where the role UKIs live (Type #1: beside the old one; Type #2: EFI/Linux)
    plan: UpgradePlan
    staged: StagedRecovery | None = None
    store_ops: list[Op] = field(default_factory=list)  # the new images into the store, the new links staged
    uki_ops: list[Op] = field(default_factory=list)  # the new UKI (and Type #1 entry) staged

    @property
    def role(self) -> Role:
        return self.plan.role

    @property
    def layout(self) -> EntryKind:
        return self.found.layout

    @property
    def stage_new(self) -> str:
        return _stage_dir(self.folder, self.role)

    @property
    def sroot(self) -> str:
        return str(self.links.root) if self.links is not None else ""

    def new_files(self) -> list[tuple[str, str]]:
        """The new set's extensions on the ESP: (name, source path)."""
        return [(x.name, str(x.source)) for x in self.plan.extensions if x.image is None]

    def new_links(self) -> list[tuple[str, str]]:
        """The new set's links in the persistent store: (name, image)."""
        return [(x.name, x.image) for x in self.plan.extensions if x.image is not None]

    def add(self, ops: Iterable[Op]) -> None:
        self.plan.ops.extend(ops)


def plan(
    store: EspStore,
    snap: Snapshot,
    cfg: BootAssessment,
    new_uki: Path,
    added: list[tuple[str, Path]],
    stem: Callable[[str], str],
    *,
    recovery: bool = False,
    links: LinkStore | None = None,
    carry: Callable[[str], bool] | None = None,
    key: Callable[[str, Path], str] | None = None,
    role: Role | None = None,
    rebuild: bool = False,
) -> UpgradePlan:
    """What the upgrade will do on this ESP (and in the persistent extension store ``links``), as ops in
    the order of the module's text (no write). ``role``: the set replaced (default active; recovery with
    ``recovery``; passive only for a rebuild's second half). ``rebuild``: an active that was never blessed
    is replaced like a bad one, and an ESP with neither active nor passive gets a new active (see the
    module's text, "Rebuild")."""
    role = role if role is not None else Role.RECOVERY if recovery else Role.ACTIVE
    d = _draft(store, snap, cfg, new_uki, role, links, rebuild)
    _carry_extensions(d, added, stem, carry, key)
    _name_new_set(d)
    if _already_done(d):
        return d.plan
    _clear_read_only(d)
    _remove_leftovers(d)  # step 0
    _stage_new_set(d)  # what step 2 will write, and the space it needs
    if d.role is Role.ACTIVE and d.plan.replaced is not None and d.plan.kept_passive is None:
        _stage_then_replace(d)  # no passive: the staged UKI is what a re-run finds
    elif d.role is Role.ACTIVE:
        _remove_replaced(d)  # a bad active goes, passive stays (module's text, "A bad active")
        _swap_active_to_passive(d)  # steps 1 to 5
    else:
        _replace_recovery(d)
    _commit_new_set(d)  # step 6
    _collect_images(d)  # step 7
    return d.plan


def _draft(
    store: EspStore,
    snap: Snapshot,
    cfg: BootAssessment,
    new_uki: Path,
    role: Role,
    links: LinkStore | None,
    rebuild: bool = False,
) -> _Draft:
    """The sets as found: what the new set replaces (old active or recovery), the old passive that goes,
    or (a re-run after step 4) the passive that is the old active moved already. A bad active (a rebuild:
    any active not blessed) is ``replaced``: it goes, and the passive stays as it is."""
    found = find_sets(store, snap, links)
    loaders = chain.boot_loaders(store, snap)
    old = found.sets.get(role)
    gone = found.sets.get(Role.PASSIVE) if role is Role.ACTIVE else None
    kept: RoleSet | None = None
    replaced: RoleSet | None = None
    if role is Role.ACTIVE and old is not None and _replaceable(store, old, new_uki, rebuild):
        replaced, old = old, None
    if role is Role.ACTIVE and old is None:
        staged = any(
            store.path(x).is_file() for x in (_stage_uki(_folder_of(found), Role.ACTIVE), _stage_entry(Role.ACTIVE))
        )
        if gone is None and replaced is None and not rebuild and not staged:
            raise NotApplicableError(
                f"{store.root}: no active UKI entry in {TYPE1_DIR}/ or {TYPE2_DIR}/; upgrade replaces a running OS"
            )
        kept, gone = gone, None  # a re-run after step 4, or a bad active replaced: passive stays
    p = UpgradePlan(found.layout, role, new_uki, old, gone, kept, (), replaced=replaced)
    return _Draft(store, links, cfg, found, loaders, _folder_of(found, old or kept or replaced), p)


def _replaceable(store: EspStore, active: RoleSet, new_uki: Path, rebuild: bool) -> bool:
    """A bad active (no tries left) is replaced, never moved to passive: it never booted well. A rebuild
    also replaces an active that is not blessed (a counter: it is being tried, or failed), unless it is
    the new UKI already (a re-run after the rebuild: nothing to do)."""
    state = active.entry.state
    if state is entries_mod.EntryState.BAD:
        return True
    return rebuild and state is not entries_mod.EntryState.GOOD and not same_bytes(store.path(active.uki), new_uki)


def fit_to_stay(s: RoleSet) -> bool:
    """Whether a rebuild keeps a passive set: blessed (no counter: systemd-bless-boot dropped it) or
    never failed (a counter with no try done, as an upgrade leaves the old active it moved). A set with
    a failed try, or none left, is rebuilt from the new set (docs/upgrades.md, "Rebuild")."""
    name = s.entry.name
    return not name.counted or (not name.tries_done and (name.tries_left or 0) > 0)


def finish_rebuild(
    store: EspStore,
    cfg: BootAssessment,
    *,
    links: LinkStore | None = None,
    sdboot_version: SdBoot | int | str | None = None,
) -> list[str]:
    """A rebuild's second half, on the ESP its first (the active, :func:`plan` with ``rebuild``) left; a
    re-run decides again from what it finds: the passive from the active's set unless it is
    :func:`fit_to_stay`, then fresh counters for every role (:func:`rearm`). Returns the steps as lines."""
    found = find_sets(store, store.snapshot(sdboot_version), links)
    active, passive = found.sets.get(Role.ACTIVE), found.sets.get(Role.PASSIVE)
    lines: list[str] = []
    if found.layout is EntryKind.TYPE2 and (passive is None or not fit_to_stay(passive)):
        lines += _drop_passive(store, passive, links)  # a copy of the new UKI would sort before it
    elif active is not None and (passive is None or not fit_to_stay(passive)):
        src = store.path(active.uki)
        added = [(n, store.path(f"{active.extra_dir}/{n}")) for n in active.extensions]
        added += [(n, links.root / image) for n, image in active.links] if links is not None else []

        def make(snap: Snapshot) -> UpgradePlan:
            return plan(
                store, snap, cfg, src, added, lambda n: n, links=links, carry=lambda _: False, role=Role.PASSIVE
            )

        p = make(store.snapshot(sdboot_version))
        apply(store, make, p, sdboot_version=sdboot_version, links=links)
        lines += [op.line() for op in p.ops]
    return lines + rearm(store, cfg)


def _drop_passive(store: EspStore, passive: RoleSet | None, links: LinkStore | None) -> list[str]:
    """Type #2: the passive that is not fit to stay goes, entry first (then its folder and links are
    unread), and the store's images no folder links to any more. Not rebuilt from the new set: two UKIs
    with one ``.osrel`` are ordered by their ids, descending, so ``passive+3.efi`` would boot before
    ``active+3.efi`` (docs/upgrades.md, "Rebuild (for repair)"); recovery is the fallback until the next upgrade."""
    ops: list[Op] = []
    if passive is not None:
        ops.append(Op(OpKind.UNLINK, passive.entry.path, why="the passive is bad and a copy would boot first"))
    ops += _remove_dir(store, f"{TYPE2_DIR}/passive.efi.extra.d", "no passive loads it")
    if links is not None:
        ops += _store_remove(links, Role.PASSIVE.value, "no passive entry: unread")
        used = {i for i, fs in links.linked().items() if any(f != Role.PASSIVE.value for f in fs)}
        why = "no folder links to it any more"
        ops += [Op(OpKind.UNLINK, n, why=why, store=str(links.root)) for n in links.images() if n not in used]
    if not ops:
        return []
    with store.transaction(), links.transaction() if links is not None else contextlib.nullcontext():
        for op in ops:
            _run(links if op.store and links is not None else store, op, {})
    return [op.line() for op in ops]


def rearm(store: EspStore, cfg: BootAssessment) -> list[str]:
    """Fresh counters for active and passive (``boot_assessment.tries``), a rebuild's last step. Recovery
    and statereset keep theirs: a repair runs on a recovery boot that is never blessed, so each attempt,
    one that installs a release that fails again included, costs one of recovery's tries and in the
    end statereset, never a loop; the new active's good boot re-arms recovery as every good boot does
    (docs/updates.md, Repair). Each is one rename in its own folder (a crash between two leaves every
    entry bootable; a re-run renames the rest). Returns the renames as lines."""
    from bootkeeper.assess import handback

    renames = []
    for directory, name, new in handback.rearm_plan(store, cfg):
        suffix = ".conf" if directory == TYPE1_DIR else ".efi"
        if Role.from_stem(counter_mod.parse(name, suffix).stem) in (Role.ACTIVE, Role.PASSIVE):
            renames.append((directory, name, new))
    if not renames:
        return []
    with store.transaction():
        for directory, name, new in renames:
            store.rename(f"{directory}/{name}", f"{directory}/{new}")
    return [f"rename {d}/{n} -> {d}/{m} (fresh tries)" for d, n, m in renames]


def _folder_of(found: Found, base: RoleSet | None = None) -> str:
    """Where the role UKIs live (Type #1: beside the set's, else beside any role's UKI)."""
    if found.layout is EntryKind.TYPE2:
        return TYPE2_DIR
    base = base or found.sets.get(Role.ACTIVE) or found.sets.get(Role.PASSIVE) or next(iter(found.sets.values()), None)
    return base.folder if base is not None else "EFI/Linux"


def _staged_recovery(d: _Draft) -> StagedRecovery | None:
    """A cut after the old recovery went: its extensions are in the staging folders, or already in the
    role's own (renamed there before the cut); no recovery UKI exists, so neither is read yet."""
    store, links, role = d.store, d.links, d.role
    sd = d.stage_new if store.path(d.stage_new).is_dir() else f"{d.folder}/{role.value}.efi.extra.d"
    ld = _store_dir(role.value)
    ld = ld if links is not None and (links.root / ld).is_dir() else role.value
    if store.path(sd).is_dir() or (links is not None and (links.root / ld).is_dir()):
        return StagedRecovery(sd, _raws(store, sd), _links(links, ld))
    return None


def _carry_extensions(
    d: _Draft,
    added: list[tuple[str, Path]],
    stem: Callable[[str], str],
    carry: Callable[[str], bool] | None,
    key: Callable[[str, Path], str] | None,
) -> None:
    """The new set's extensions (:func:`carried`), and the store's ``common/`` the gate judges too. A
    replaced bad active's are not carried: the new set carries the running passive's."""
    p, links = d.plan, d.links
    source: RoleSet | StagedRecovery | None = p.old if p.old is not None else p.kept_passive
    if d.role is not Role.ACTIVE and p.old is None:
        d.staged = _staged_recovery(d)
        source = d.staged if d.staged is not None else source
    exts, left = carried(d.store, source, added, stem, links=links, carry=carry, key=key)
    p.extensions, p.left_behind = tuple(exts), tuple(left)
    if links is not None:
        p.common = tuple(
            Extension(lk.name, links.root / lk.image, False, lk.image, common=True)
            for lk in links.links(COMMON)
            if lk.image is not None
        )


def _name_new_set(d: _Draft) -> None:
    """Where the new UKI and its entry go (a fresh counter; Type #2: the UKI is the entry)."""
    p = d.plan
    tries = chain.tries_for(d.role, d.cfg)
    if d.layout is EntryKind.TYPE2:
        p.new_uki_rel = p.new_entry_rel = f"{TYPE2_DIR}/{counter_mod.format_name(d.role.value, '.efi', tries)}"
    else:
        p.new_uki_rel = f"{d.folder}/{d.role.value}.efi"
        p.new_entry_rel = f"{TYPE1_DIR}/{counter_mod.format_name(d.role.value, '.conf', tries)}"


def _already_done(d: _Draft) -> bool:
    """The new UKI is the role's already: nothing to do but tidy what a crash after the commit left in
    the store (staging folders, images no folder links to)."""
    p, links = d.plan, d.links
    if d.role is Role.PASSIVE or p.old is None or not same_bytes(d.store.path(p.old.uki), p.new_uki):
        return False  # passive: the rebuild decides from its state whether to replace it
    p.done = True
    if links is not None:
        for r in Role:
            d.add(_store_remove(links, _store_dir(r.value), "left by an interrupted upgrade"))
        used = {i for i, fs in links.linked().items() if any(not f.startswith(STAGE_PREFIX) for f in fs)}
        why = "no folder links to it any more (an interrupted upgrade)"
        d.add(Op(OpKind.UNLINK, n, why=why, store=d.sroot) for n in links.images() if n not in used)
    return True


def _clear_read_only(d: _Draft) -> None:
    """Type #2: the old active's UKI becomes passive by a rename that must run its tries down."""
    old = d.plan.old
    if d.layout is EntryKind.TYPE2 and old is not None and old.entry.read_only and d.role is Role.ACTIVE:
        why = "it becomes passive: no systemd-boot renames a read-only file, so its tries would never run down"
        d.add([Op(OpKind.CLEAR_RO, old.entry.path, why=why, entry=old.entry)])


def _remove_leftovers(d: _Draft) -> None:
    """Step 0: what an interrupted upgrade left (a staged recovery a re-run carries on stays)."""
    store, links, role = d.store, d.links, d.role
    for r in Role:
        if d.staged is None or r is not role:
            d.add(_remove_dir(store, _stage_dir(d.folder, r), "left by an interrupted upgrade"))
        for leftover in (_stage_uki(d.folder, r), _stage_entry(r)):
            if r is role:  # staged again below (a crash-safe copy over it): never a moment without it
                continue
            if store.path(leftover).is_file():
                d.add([Op(OpKind.UNLINK, leftover, why="left by an interrupted upgrade")])
    if links is not None:
        for r in Role:
            if d.staged is None or r is not role:
                d.add(_store_remove(links, _store_dir(r.value), "left by an interrupted upgrade"))
    for e in d.found.dangling:
        if e.role is role or (role is Role.ACTIVE and e.role is Role.PASSIVE and d.plan.kept_passive is None):
            d.add([Op(OpKind.UNLINK, e.path, why="its UKI is not on the ESP (an interrupted upgrade)")])


def _stage_new_set(d: _Draft) -> None:
    """The ops that stage the new set (run in step 2): the new images into the store and their staged
    links; the new UKI and (Type #1) its entry under names nothing loads (the entry is staged with the
    rest so that a re-run after the old recovery's entry went still has its text). And the space needed."""
    p, links, role = d.plan, d.links, d.role
    if links is not None:
        d.store_ops, p.extensions = _store_images(links, p.extensions, p)
        d.store_ops += _store_stage(links, role.value, d.new_links(), f"the new {role.value}'s links")
    stage_uki = _stage_uki(d.folder, role)
    d.uki_ops = [Op(OpKind.COPY, stage_uki, str(p.new_uki), why="the new UKI, under a name nothing loads")]
    if d.layout is EntryKind.TYPE1:
        stage_entry = _stage_entry(role)
        template_set = p.old or p.kept_passive or p.replaced
        if role is Role.PASSIVE:  # a rebuild's passive: the active's entry, there all along
            template_set = d.found.sets.get(Role.ACTIVE)
        template = d.store.read_text(template_set.entry.path) if template_set is not None else None
        if template is None and d.store.path(stage_entry).is_file():
            template = d.store.read_text(stage_entry)
        line = chain.loader_line(template) if template is not None else None
        key = _key_for(d.loaders, line.key if line else None, p.new_uki_rel, p.warnings, p.new_entry_rel)
        t = _entry_text(template, role, p.new_uki_rel, key, role.value)
        why = "the new entry, under a name systemd-boot does not read"
        d.uki_ops.append(Op(OpKind.WRITE, stage_entry, text=t, why=why))
    p.need_bytes = sum(_bytes_or_zero(x.source) for x in p.extensions if x.image is None)
    p.need_bytes += _bytes_or_zero(p.new_uki)


def _remove_replaced(d: _Draft) -> None:
    """A bad active goes, entry first (the model boots passive, the fallback, meanwhile); a re-run after
    it plans as after step 4 (no active, the passive in place) and gives the same tree. Its folder and
    links go with the resumed steps (``_swap_active_to_passive``)."""
    bad, store = d.plan.replaced, d.store
    if bad is None:
        return
    d.add([Op(OpKind.UNLINK, bad.entry.path, why="the bad active goes (no tries left: it never booted well)")])
    d.plan.freed_bytes += _bytes_or_zero(store.path(bad.entry.path))
    if d.layout is EntryKind.TYPE1 and bad.uki not in {s.uki for s in d.found.sets.values() if s is not bad}:
        d.add([Op(OpKind.UNLINK, bad.uki, why="the bad active's UKI")])
        d.plan.freed_bytes += _bytes_or_zero(store.path(bad.uki))
    if bad.extra_dir != extra_dir(d.plan.new_uki_rel):
        d.add(_remove_dir(store, bad.extra_dir, "the bad active's extensions"))


def _stage_then_replace(d: _Draft) -> None:
    """A bad active and no passive: the new set is staged first, then the bad set goes. A re-run after
    the bad entry went finds no active and no passive, only the staged UKI: it plans as after step 4."""
    d.add(d.store_ops)
    d.add(_stage(d.store, d.stage_new, d.new_files(), "the new active's extensions"))
    d.add(d.uki_ops)
    _remove_replaced(d)
    d.add(_remove_dir(d.store, extra_dir(d.plan.new_uki_rel), "no active UKI: unread"))
    if d.links is not None:
        d.add(_store_remove(d.links, Role.ACTIVE.value, "no active entry: unread"))


@dataclass(frozen=True)
class _PassiveNames:
    """Where the old active goes as passive: its UKI, its extensions' folder and (Type #1) its entry."""

    uki: str
    extra_dir: str
    entry: str


def _passive_names(d: _Draft) -> _PassiveNames:
    tries = chain.tries_for(Role.PASSIVE, d.cfg)
    if d.layout is EntryKind.TYPE2:
        uki = f"{TYPE2_DIR}/{counter_mod.format_name('passive', '.efi', tries)}"
    else:
        uki = f"{d.folder}/passive.efi"
    return _PassiveNames(uki, extra_dir(uki), f"{TYPE1_DIR}/{counter_mod.format_name('passive', '.conf', tries)}")


def _swap_active_to_passive(d: _Draft) -> None:
    """A/B, steps 1 to 5: the old passive goes, the old active becomes passive with a copy of its
    extensions, and the new set is staged; a re-run after step 4 (the passive in place) stages only."""
    pas = _passive_names(d)
    _remove_old_passive(d, pas)
    old = d.plan.old
    if old is None:  # resume: the passive is in place
        d.add(_remove_dir(d.store, extra_dir(d.plan.new_uki_rel), "no active UKI: unread"))
        if d.links is not None:
            d.add(_store_remove(d.links, Role.ACTIVE.value, "no active entry: unread"))
        d.add(d.store_ops)
        d.add(_stage(d.store, d.stage_new, d.new_files(), "the new active's extensions"))
        d.add(d.uki_ops)
        return
    _clear_passive_place(d, pas, old)
    pas_files = _stage_passive_and_new(d, old)
    _place_passive_extensions(d, pas, old, pas_files)
    _active_becomes_passive(d, pas, old)
    # 5. the old active's folder
    d.add(_remove_dir(d.store, old.extra_dir, "no active UKI: unread"))
    if d.links is not None:
        d.add(_store_remove(d.links, Role.ACTIVE.value, "no active entry: unread"))


def _remove_old_passive(d: _Draft, pas: _PassiveNames) -> None:
    """Step 1: the old passive set goes, its entry first (its space is then free for what follows)."""
    gone, p, store = d.plan.gone, d.plan, d.store
    if gone is None:
        return
    d.add([Op(OpKind.UNLINK, gone.entry.path, why="the old passive goes")])
    p.freed_bytes += _bytes_or_zero(store.path(gone.entry.path))
    if d.layout is EntryKind.TYPE1 and gone.uki not in {s.uki for s in d.found.sets.values() if s is not gone}:
        d.add([Op(OpKind.UNLINK, gone.uki, why="the old passive's UKI")])
        p.freed_bytes += _bytes_or_zero(store.path(gone.uki))
    p.freed_bytes += sum(_bytes_or_zero(store.path(f"{gone.extra_dir}/{n}")) for n in gone.extensions)
    d.add(_remove_dir(store, gone.extra_dir, "the old passive's extensions"))


def _clear_passive_place(d: _Draft, pas: _PassiveNames, old: RoleSet) -> None:
    """Step 1, the rest: a passive folder, UKI or store folder no passive entry uses goes too."""
    gone, store = d.plan.gone, d.store
    if gone is None or gone.extra_dir != pas.extra_dir:
        d.add(_remove_dir(store, pas.extra_dir, "no passive loads it"))
    referenced = {s.uki for s in d.found.sets.values()}
    stray = d.layout is EntryKind.TYPE1 and (gone is None or gone.uki != pas.uki) and pas.uki not in referenced
    if stray and store.path(pas.uki).is_file():
        d.add([Op(OpKind.UNLINK, pas.uki, why="no entry uses it")])
    if d.links is not None:  # no passive entry is left: passive/ is unread
        d.add(_store_remove(d.links, Role.PASSIVE.value, "no passive entry: unread"))


def _stage_passive_and_new(d: _Draft, old: RoleSet) -> list[tuple[str, str]]:
    """Step 2: staging, under names nothing loads: a copy of the old active's extensions (and links)
    for it as passive, the new set's, and the new UKI. Returns the passive's files."""
    if d.links is not None:
        why = "the old active's links, for it as passive"
        d.add(_store_stage(d.links, Role.PASSIVE.value, list(old.links), why))
        d.add(d.store_ops)
    pas_files = [(n, str(d.store.path(f"{old.extra_dir}/{n}"))) for n in old.extensions]
    d.plan.need_bytes += sum(_bytes_or_zero(Path(s)) for _, s in pas_files)
    stage_pas = _stage_dir(d.folder, Role.PASSIVE)
    d.add(_stage(d.store, stage_pas, pas_files, "the old active's extensions, for it as passive"))
    d.add(_stage(d.store, d.stage_new, d.new_files(), "the new active's extensions"))
    d.add(d.uki_ops)
    return pas_files


def _place_passive_extensions(d: _Draft, pas: _PassiveNames, old: RoleSet, pas_files: list[tuple[str, str]]) -> None:
    """Step 3: the passive's folders are renamed into place (no passive UKI or entry yet: unread)."""
    if d.links is not None and old.links:
        why = "no passive entry yet: unread"
        d.add([Op(OpKind.RENAME, Role.PASSIVE.value, _store_dir(Role.PASSIVE.value), why=why, store=d.sroot)])
    if pas_files:
        stage_pas = _stage_dir(d.folder, Role.PASSIVE)
        d.add([Op(OpKind.RENAME, pas.extra_dir, stage_pas, why="no passive UKI yet: unread")])


def _active_becomes_passive(d: _Draft, pas: _PassiveNames, old: RoleSet) -> None:
    """Step 4: Type #2, one rename; Type #1, the passive entry (naming a UKI not there yet), the UKI's
    rename, then the old active's entry goes."""
    if d.layout is EntryKind.TYPE2:
        why = "the old OS, with its extensions, is passive"
        d.add([Op(OpKind.RENAME, pas.uki, old.entry.path, why=why)])
        return
    text = d.store.read_text(old.entry.path)
    line = chain.loader_line(text)
    key = _key_for(d.loaders, line.key if line else None, pas.uki, d.plan.warnings, pas.entry)
    t = _entry_text(text, Role.PASSIVE, pas.uki, key, "passive")
    d.add(
        [
            Op(OpKind.WRITE, pas.entry, text=t, why=f"names {pas.uki}, not there yet: not listed"),
            Op(OpKind.RENAME, pas.uki, old.uki, why="the old OS, with its extensions, is passive"),
        ]
    )
    if old.entry.path != pas.entry:
        d.add([Op(OpKind.UNLINK, old.entry.path, why="its UKI is passive now")])


def _replace_recovery(d: _Draft) -> None:
    """``--recovery`` (and a rebuild's passive): stage first (carried copies come out of the old folder),
    then the old set goes."""
    if d.staged is not None:
        _restage_recovery(d, d.staged)
    else:
        d.add(d.store_ops)
        d.add(_stage(d.store, d.stage_new, d.new_files(), f"the new {d.role.value}'s extensions"))
    d.add(d.uki_ops)
    old, store = d.plan.old, d.store
    new_dir = extra_dir(d.plan.new_uki_rel)
    if old is not None:
        d.add([Op(OpKind.UNLINK, old.entry.path, why=f"the old {d.role.value} goes")])
        if d.layout is EntryKind.TYPE1 and old.uki not in {s.uki for s in d.found.sets.values() if s is not old}:
            d.add([Op(OpKind.UNLINK, old.uki, why=f"the old {d.role.value}'s UKI")])
        d.add(_remove_dir(store, old.extra_dir, f"the old {d.role.value}'s extensions"))
    if old is None or old.extra_dir != new_dir:
        d.add(_remove_dir(store, new_dir, f"no {d.role.value} loads it"))
    if d.links is not None:
        d.add(_store_remove(d.links, d.role.value, f"no {d.role.value} entry: unread"))


def _restage_recovery(d: _Draft, staged: StagedRecovery) -> None:
    """A re-run: the staged set is complete; what it holds that goes is removed, what is new copied."""
    keep = {x.name for x in d.plan.extensions}
    stage_new, store = d.stage_new, d.store
    new_files = d.new_files()
    d.add(Op(OpKind.UNLINK, f"{staged.extra_dir}/{n}", why="replaced") for n in staged.extensions if n not in keep)
    d.add(
        Op(OpKind.UNLINK, f"{_store_dir(d.role.value)}/{n}", why="replaced", store=d.sroot)
        for n, _ in staged.links
        if n not in keep
    )
    to_copy = [(n, src) for n, src in new_files if Path(src) != store.path(f"{stage_new}/{n}")]
    if to_copy and not store.path(stage_new).is_dir():
        d.add([Op(OpKind.MKDIR, stage_new, why=f"the new {d.role.value}'s extensions")])
    if not new_files and store.path(stage_new).is_dir():
        d.add(_remove_dir(store, stage_new, "empty: nothing is carried"))
    d.add(d.store_ops)
    d.add(Op(OpKind.COPY, f"{stage_new}/{n}", src, why=f"the new {d.role.value}'s extensions") for n, src in to_copy)


def _commit_new_set(d: _Draft) -> None:
    """Step 6: the new set's links, folder, UKI and (Type #1) entry; the last rename is the commit."""
    p, role = d.plan, d.role.value
    if d.new_links():
        d.add([Op(OpKind.RENAME, role, _store_dir(role), why=f"no {role} entry yet: unread", store=d.sroot)])
    if d.new_files():
        d.add([Op(OpKind.RENAME, extra_dir(p.new_uki_rel), d.stage_new, why=f"no {role} UKI yet: unread")])
    stage_uki = _stage_uki(d.folder, d.role)
    if d.layout is EntryKind.TYPE2:
        d.add([Op(OpKind.RENAME, p.new_uki_rel, stage_uki, why=f"the new OS is {role}")])
        return
    d.add(
        [
            Op(OpKind.RENAME, p.new_uki_rel, stage_uki, why=f"no {role} entry yet: unread"),
            Op(OpKind.RENAME, p.new_entry_rel, _stage_entry(d.role), why=f"the new OS is {role}"),
        ]
    )


def _collect_images(d: _Draft) -> None:
    """Step 7, persistent store: the images no folder links to any more (the old passive's)."""
    if d.links is None:
        return
    p, links = d.plan, d.links
    moved = {Role.ACTIVE.value, Role.PASSIVE.value} if p.role is Role.ACTIVE else {p.role.value}
    used = {x.image for x in p.extensions if x.image is not None}
    for image, folders in links.linked().items():
        if any(f not in moved and not f.startswith(STAGE_PREFIX) for f in folders):
            used.add(image)
    kept = p.old if p.old is not None else p.kept_passive
    if p.role is Role.ACTIVE and kept is not None:
        used |= {image for _, image in kept.links}
    why = "no folder links to it any more"
    d.add(Op(OpKind.UNLINK, n, why=why, store=str(links.root)) for n in links.images() if n not in used)


# --- the gate: what needs no sysext/ ------------------------------------------------------------


@dataclass(frozen=True)
class UkiCheck:
    ok: bool
    reason: str | None
    osrel: dict[str, str]
    text: str = ""  # the .osrel section as text: the new OS's os-release

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, "reason": self.reason, "osrel": self.osrel}


def check_uki(path: Path, shown_as: str | None = None) -> UkiCheck:
    """The new UKI is a PE with ``.linux`` and ``.osrel`` (``--force`` never overrides this).
    ``shown_as``: the name its reasons give the file (the user's, when ``path`` is a private copy)."""
    shown = shown_as if shown_as is not None else str(path)
    try:
        with fsutil.open_nonblocking(path) as f:  # a FIFO must not hang the reader
            sections = pe.read_sections(f, shown)
            osrel = pe.read_section(f, sections, ".osrel", shown)
        names = {s.name for s in sections}
    except OSError as exc:
        return UkiCheck(False, f"{shown}: cannot read ({exc.strerror or exc})", {})
    except InputError as exc:
        return UkiCheck(False, f"{shown}: is not a UKI ({exc})", {})
    missing = [s for s in (".linux", ".osrel") if s not in names]
    if missing:
        return UkiCheck(False, f"{shown}: is not a UKI: no {' and no '.join(missing)} section", {})
    assert osrel is not None
    text = osrel.decode("utf-8", "replace")
    return UkiCheck(True, None, entries_mod.parse_osrel(text), text)


@dataclass(frozen=True)
class OrderCheck:
    ok: bool
    order: tuple[str, ...]  # roles in menu order after the upgrade
    reasons: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, "order": list(self.order), "reasons": list(self.reasons)}


_ORDER_FIELDS = ("IMAGE_ID", "ID", "IMAGE_VERSION", "VERSION", "VERSION_ID", "BUILD_ID")


def _fields(osrel: dict[str, str]) -> str:
    shown = [f"{k}={osrel[k]}" for k in _ORDER_FIELDS if k in osrel]
    return ", ".join(shown) or "none of IMAGE_ID, ID, IMAGE_VERSION, VERSION, VERSION_ID, BUILD_ID"


def _type2_after(
    store: EspStore, snap: Snapshot, p: UpgradePlan, new_osrel: bytes
) -> tuple[list[Entry], dict[str, dict[str, str]]]:
    """The Type #2 entries the transaction leaves (the new UKI and the old active under its passive
    name included), and each one's ``.osrel`` fields by file name."""
    moved = {p.old.entry.path} if p.old is not None and not p.done else set()
    if p.replaced is not None:
        moved.add(p.replaced.entry.path)
    if p.gone is not None:
        moved.add(p.gone.entry.path)
    after: list[Entry] = [e for e in snap.entries if e.path not in moved and e.kind is EntryKind.TYPE2]
    osrels: dict[str, dict[str, str]] = {}
    new_name = p.new_uki_rel.rpartition("/")[2]
    if not p.done:  # done: the new UKI is the active entry already, nothing moves
        after.append(entries_mod.parse_type2(new_name, new_osrel))
        osrels[new_name] = entries_mod.parse_osrel(new_osrel.decode("utf-8", "replace"))
    if p.old is not None and p.role is Role.ACTIVE and not p.done:
        raw = pe.read_osrel(store.path(p.old.entry.path))
        pas = counter_mod.format_name("passive", ".efi", p.old.entry.name.tries_left)
        name = next((op.path.rpartition("/")[2] for op in p.ops if op.src == p.old.entry.path), pas)
        after.append(entries_mod.parse_type2(name, raw))
        osrels[name] = entries_mod.parse_osrel((raw or b"").decode("utf-8", "replace"))
    for e in after:
        if e.file_name not in osrels:
            raw = pe.read_osrel(store.path(e.path))
            osrels[e.file_name] = entries_mod.parse_osrel((raw or b"").decode("utf-8", "replace"))
    return after, osrels


def order_check(store: EspStore, snap: Snapshot, p: UpgradePlan, new_osrel: bytes) -> OrderCheck:
    """Type #2: the model's menu order after the transaction must be the role order (each UKI's ``.osrel``
    decides it, and bootkeeper cannot rewrite it). Type #1 entries get the role sort keys: always fine."""
    if p.layout is not EntryKind.TYPE2:
        return OrderCheck(True, (), ())
    after, osrels = _type2_after(store, snap, p, new_osrel)
    ranked = [e for e in entries_mod.type2_role_order(after, snap.sdboot) if e.listed]
    order = tuple(e.role.value for e in ranked if e.role is not None)
    reasons = [
        f"{TYPE2_DIR}/{a.file_name} ({a.role.value}: {_fields(osrels[a.file_name])}) would boot before "
        f"{TYPE2_DIR}/{b.file_name} ({b.role.value}: {_fields(osrels[b.file_name])}): the .osrel sort key "
        "(IMAGE_ID, else ID) and version (IMAGE_VERSION, VERSION, VERSION_ID, BUILD_ID) decide it, and "
        "bootkeeper cannot rewrite them"
        for a, b in entries_mod.out_of_role_order(ranked)
        if a.role is not None and b.role is not None
    ]
    return OrderCheck(not reasons, order, tuple(reasons))


# --- applying ---------------------------------------------------------------------------------


def _put(folder: FolderStore, src: Path, rel: str, digest: str | None) -> None:
    """Copy ``src`` to ``rel`` crash-safely; with ``digest`` (the bytes the gate judged) the copy is
    compared before it gets its name: a source swapped or rewritten after the gate never lands."""
    if isinstance(folder, LinkStore):
        folder.put(src, rel, digest)
        return
    sfd = fsutil.open_input(src)
    try:
        changed = (
            f"{src}: changed after the gate judged it; not copied to {rel}; run bootkeeper upgrade again "
            "(the ESP boots the old OS meanwhile)"
        )
        put_checked(folder, sfd, [folder.path(rel)], _judged, digest=digest, changed=changed)
    finally:
        os.close(sfd)


def _judged(_: Path) -> None:
    """No check on the copy beyond its digest: the gate judged the source before the transaction."""


def _run(folder: FolderStore, op: Op, digests: Mapping[str, str]) -> None:
    """One op, on the ESP or in the persistent store (``op.store``): both are a :class:`FolderStore`
    with the same steps; linking is the store's own, the FAT read-only attribute the ESP's."""
    src = op.src or ""
    if op.kind is OpKind.UNLINK:
        folder.unlink(op.path)
    elif op.kind is OpKind.RMDIR:
        folder.rmdir(op.path)
    elif op.kind is OpKind.MKDIR:
        folder.makedirs(op.path)
    elif op.kind is OpKind.COPY:
        _put(folder, Path(src), op.path, digests.get(src))
    elif op.kind is OpKind.RENAME:
        folder.rename(src, op.path)
    elif op.kind is OpKind.WRITE:
        folder.write_atomic(op.path, (op.text or "").encode())
    elif op.kind is OpKind.LINK and isinstance(folder, LinkStore):
        dirname, _, name = op.path.rpartition("/")
        folder.link(dirname, name, src)
    elif op.kind is OpKind.CLEAR_RO and isinstance(folder, EspStore) and op.entry is not None:
        chain.clear_read_only(folder, op.entry)
    else:
        raise AssertionError(f"no step {op.kind} in {folder.root}")


def check_space(store: EspStore, p: UpgradePlan, links: LinkStore | None = None) -> None:
    """One space check for the whole transaction, before the first write (see the module's text)."""
    require_room(
        store,
        p.need_bytes,
        lambda need, free: (
            f"{store.root}: not enough room for the upgrade: it needs {need} bytes with a 1 MiB "
            f"margin, {free} are free and the old passive frees {p.freed_bytes}; nothing was changed"
        ),
        freed=p.freed_bytes,
    )
    if links is not None and p.store_need_bytes:
        require_room(
            links,
            p.store_need_bytes,
            lambda need, free: (
                f"{links.root}: not enough room for the new extensions: they need {need} bytes "
                f"with a 1 MiB margin, {free} are free; nothing was changed"
            ),
        )


def apply(
    store: EspStore,
    make_plan: Callable[[Snapshot], UpgradePlan],
    gated: UpgradePlan,
    *,
    sdboot_version: SdBoot | int | str | None = None,
    digests: Mapping[str, str] | None = None,
    links: LinkStore | None = None,
) -> UpgradePlan:
    """Under the lock: plan again, refuse if the ESP changed since ``gated`` was judged, check the space
    once, then run the ops in order. ``digests``: source path -> sha256 of the bytes the gate judged."""
    with store.transaction(), links.transaction() if links is not None else contextlib.nullcontext():
        p = make_plan(store.snapshot(sdboot_version))
        if [op.line() for op in p.ops] != [op.line() for op in gated.ops] or p.done != gated.done:
            raise RefusedError(f"{store.root}: the ESP changed while the upgrade was checked; nothing was changed")
        if p.done and not p.ops:
            return p
        check_space(store, p, links)
        for op in p.ops:
            _run(links if op.store and links is not None else store, op, digests or {})
    return p
