"""``upgrade``: a new OS as one transaction over role *sets* (DESIGN.md, "An upgrade is a transaction").

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
   this rename is the commit) or ``active.efi`` followed by the entry ``active+T.conf`` (Type #1: the entry's
   write is the commit). Before the commit the old OS boots as passive; after it, the new OS as active.

``--recovery``: staging (2) first (the carried extensions are copied out of the old folder), then the old
recovery set goes, then folder, UKI and (Type #1) entry are renamed/written into place.

**A re-run after a crash** plans from what it finds: an active entry whose UKI is gone (Type #1, between
the rename and the entry's removal in 4) counts as absent; with no active but a passive (a crash after 4),
the passive is the old OS already moved, its extensions are the ones carried, and only the new active is
installed; an active UKI with the same bytes as NEW.efi means the upgrade is complete: nothing is done.

One space check for the whole transaction, before the first write: the staged copies and the new UKI
must fit in the free space plus what step 1 frees, with a 1 MiB margin.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from bootkeeper import fsutil
from bootkeeper.assess import chain
from bootkeeper.config import BootAssessment
from bootkeeper.errors import EspError, NotApplicableError, ParseError, RefusedError, StoreIOError
from bootkeeper.esp import counter as counter_mod
from bootkeeper.esp import edit, pe
from bootkeeper.esp import entries as entries_mod
from bootkeeper.esp.entries import TYPE1_DIR, TYPE2_DIR, Entry, EntryKind, LoaderType, Role, extra_dir
from bootkeeper.esp.sdboot import SdBoot
from bootkeeper.esp.store import SPACE_MARGIN, EspStore, Snapshot

STAGE_PREFIX = ".bootkeeper-upgrade-"


def _stage_dir(folder: str, role: Role) -> str:
    return f"{folder}/{STAGE_PREFIX}{role.value}.d"


def _stage_uki(folder: str, role: Role) -> str:
    return f"{folder}/{STAGE_PREFIX}{role.value}.uki"


# --- the sets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleSet:
    role: Role
    entry: Entry
    uki: str  # ESP path of the UKI (Type #2: the entry itself)
    extra_dir: str
    extensions: tuple[str, ...]  # the *.raw systemd-stub loads for it

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
        }


def _raws(store: EspStore, rel: str) -> tuple[str, ...]:
    d = store.path(rel)
    if d.is_symlink() or not d.is_dir():
        return ()
    return tuple(n for n in store.list_dir(rel) if n.endswith(".raw") and not fsutil.is_temporary(n))


def uki_of(store: EspStore, e: Entry) -> str | None:
    if e.kind is EntryKind.TYPE2:
        return e.path
    if e.loader_type in (LoaderType.EFI, LoaderType.UKI) and e.loader:
        found = store.find_ci(e.loader)
        return found.relative_to(store.root).as_posix() if found is not None else None
    return None


@dataclass(frozen=True)
class Found:
    """The role entries of one layout, as a snapshot shows them."""

    layout: EntryKind
    sets: dict[Role, RoleSet]
    dangling: tuple[Entry, ...]  # Type #1 role entries whose UKI is not on the ESP (a crash in step 4)


def find_sets(store: EspStore, snap: Snapshot) -> Found:
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
        sets[role] = RoleSet(role, e, uki, d, _raws(store, d))
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


@dataclass(frozen=True)
class Op:
    kind: OpKind
    path: str
    src: str | None = None
    text: str | None = None
    why: str = ""
    entry: Entry | None = None

    def line(self) -> str:
        what = {
            OpKind.UNLINK: f"remove {self.path}",
            OpKind.RMDIR: f"remove folder {self.path}",
            OpKind.MKDIR: f"make folder {self.path}",
            OpKind.COPY: f"copy {self.src} -> {self.path}",
            OpKind.RENAME: f"rename {self.src} -> {self.path}",
            OpKind.WRITE: f"write {self.path}",
            OpKind.CLEAR_RO: f"clear the read-only attribute of {self.path}",
        }[self.kind]
        return f"{what} ({self.why})" if self.why else what


@dataclass(frozen=True)
class Extension:
    """One image the new set will load: ``source`` is an --extension file, or the old set's copy."""

    name: str
    source: Path
    carried: bool


@dataclass
class Plan:
    layout: EntryKind
    role: Role  # ACTIVE (A/B) or RECOVERY
    new_uki: Path
    old: RoleSet | None  # what the new set replaces (old active, or old recovery)
    gone: RoleSet | None  # A/B: the old passive set, removed
    kept_passive: RoleSet | None  # A/B resume: the passive that is the old active already moved
    extensions: tuple[Extension, ...]
    ops: list[Op] = field(default_factory=list)
    need_bytes: int = 0
    freed_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    done: bool = False  # the new UKI is the active one already
    new_uki_rel: str = ""  # where the new UKI goes
    new_entry_rel: str = ""  # its entry (Type #2: the UKI itself)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sha256(path: Path) -> str:
    return _sha256(path)


def same_bytes(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size and _sha256(a) == _sha256(b)
    except OSError:
        return False


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def carried(
    store: EspStore, old: RoleSet | None, added: list[tuple[str, Path]], stem: Callable[[str], str]
) -> list[Extension]:
    """The new set's extensions: the old set's, each replaced by an ``added`` one of the same
    extension name (``stem``: the sysext naming rule, owned by sysext/deploy.py), plus the others added."""
    new_stems = {stem(n) for n, _ in added}
    out = (
        []
        if old is None
        else [
            Extension(n, store.path(f"{old.extra_dir}/{n}"), True) for n in old.extensions if stem(n) not in new_stems
        ]
    )
    return out + [Extension(n, p, False) for n, p in added]


def _remove_dir(store: EspStore, rel: str, why: str) -> list[Op]:
    d = store.path(rel)
    if d.is_symlink():
        raise StoreIOError(f"{d}: is a symbolic link; refusing to write through it")
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


def _entry_text(template: str | None, role: Role, uki: str, key: str, title: str) -> str:
    text = template if template is not None else f"title {title}\n"
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


def plan(
    store: EspStore,
    snap: Snapshot,
    cfg: BootAssessment,
    new_uki: Path,
    added: list[tuple[str, Path]],
    stem: Callable[[str], str],
    *,
    recovery: bool = False,
) -> Plan:
    """What the upgrade will do on this ESP, as ops in the order of the module's text (no write)."""
    found = find_sets(store, snap)
    layout, sets = found.layout, found.sets
    loaders = chain.boot_loaders(store, snap)
    role = Role.RECOVERY if recovery else Role.ACTIVE
    old = sets.get(role)
    gone = sets.get(Role.PASSIVE) if not recovery else None
    kept: RoleSet | None = None
    if not recovery and old is None:
        if gone is None:
            raise NotApplicableError(
                f"{store.root}: no active UKI entry in {TYPE1_DIR}/ or {TYPE2_DIR}/; upgrade replaces a running OS"
            )
        kept, gone = gone, None  # a re-run after step 4: passive is the old active, moved
    if not recovery and old is not None and old.entry.state is entries_mod.EntryState.BAD:
        raise NotApplicableError(
            f"{old.entry.path}: the active entry is bad (the node falls back to passive); upgrading would make "
            "an OS that never booted well the fallback",
            hint="bless the running entry, or remove the bad one, then upgrade",
        )
    source_set = old if old is not None else kept
    exts = tuple(carried(store, source_set, added, stem))
    if layout is EntryKind.TYPE2:
        folder = TYPE2_DIR
    else:
        base = old or kept or next(iter(sets.values()), None)
        folder = base.folder if base is not None else "EFI/Linux"
    p = Plan(layout, role, new_uki, old, gone, kept, exts)
    tries = chain.tries_for(role, cfg)
    suffix = ".efi" if layout is EntryKind.TYPE2 else ".conf"
    if layout is EntryKind.TYPE2:
        new_uki_rel = f"{TYPE2_DIR}/{counter_mod.format_name(role.value, '.efi', tries)}"
        new_entry_rel = new_uki_rel
    else:
        new_uki_rel = f"{folder}/{role.value}.efi"
        new_entry_rel = f"{TYPE1_DIR}/{counter_mod.format_name(role.value, suffix, tries)}"
    p.new_uki_rel, p.new_entry_rel = new_uki_rel, new_entry_rel
    if old is not None and same_bytes(store.path(old.uki), new_uki):
        p.done = True
        return p
    ops = p.ops
    if layout is EntryKind.TYPE2 and old is not None and old.entry.read_only and role is Role.ACTIVE:
        why = "it becomes passive: no systemd-boot renames a read-only file, so its tries would never run down"
        ops.append(Op(OpKind.CLEAR_RO, old.entry.path, why=why, entry=old.entry))
    # 0. leftovers of an interrupted upgrade
    for r in Role:
        ops += _remove_dir(store, _stage_dir(folder, r), "left by an interrupted upgrade")
        if store.path(_stage_uki(folder, r)).is_file():
            ops.append(Op(OpKind.UNLINK, _stage_uki(folder, r), why="left by an interrupted upgrade"))
    for e in found.dangling:
        if e.role is role or (role is Role.ACTIVE and e.role is Role.PASSIVE and kept is None):
            ops.append(Op(OpKind.UNLINK, e.path, why="its UKI is not on the ESP (an interrupted upgrade)"))
    referenced = {s.uki for s in sets.values()}
    new_dir = extra_dir(new_uki_rel)
    stage_new = _stage_dir(folder, role)
    stage_uki = _stage_uki(folder, role)
    new_files = [(x.name, str(x.source)) for x in exts]
    p.need_bytes = sum(_size(x.source) for x in exts) + _size(new_uki) + SPACE_MARGIN
    if role is Role.ACTIVE:
        pas_uki = (
            f"{TYPE2_DIR}/{counter_mod.format_name('passive', '.efi', chain.tries_for(Role.PASSIVE, cfg))}"
            if layout is EntryKind.TYPE2
            else f"{folder}/passive.efi"
        )
        pas_dir = extra_dir(pas_uki)
        pas_entry = f"{TYPE1_DIR}/{counter_mod.format_name('passive', '.conf', chain.tries_for(Role.PASSIVE, cfg))}"
        # 1. the old passive set goes, its entry first
        if gone is not None:
            ops.append(Op(OpKind.UNLINK, gone.entry.path, why="the old passive goes"))
            p.freed_bytes += _size(store.path(gone.entry.path))
            if layout is EntryKind.TYPE1 and gone.uki not in {s.uki for s in sets.values() if s is not gone}:
                ops.append(Op(OpKind.UNLINK, gone.uki, why="the old passive's UKI"))
                p.freed_bytes += _size(store.path(gone.uki))
            p.freed_bytes += sum(_size(store.path(f"{gone.extra_dir}/{n}")) for n in gone.extensions)
            ops += _remove_dir(store, gone.extra_dir, "the old passive's extensions")
        if old is not None:
            if gone is None or gone.extra_dir != pas_dir:
                ops += _remove_dir(store, pas_dir, "no passive loads it")
            stray = layout is EntryKind.TYPE1 and (gone is None or gone.uki != pas_uki) and pas_uki not in referenced
            if stray and store.path(pas_uki).is_file():
                ops.append(Op(OpKind.UNLINK, pas_uki, why="no entry uses it"))
            # 2. staging, under names nothing loads
            pas_files = [(n, str(store.path(f"{old.extra_dir}/{n}"))) for n in old.extensions]
            p.need_bytes += sum(_size(Path(s)) for _, s in pas_files)
            stage_pas = _stage_dir(folder, Role.PASSIVE)
            ops += _stage(store, stage_pas, pas_files, "the old active's extensions, for it as passive")
            ops += _stage(store, stage_new, new_files, "the new active's extensions")
            ops.append(Op(OpKind.COPY, stage_uki, str(new_uki), why="the new UKI, under a name nothing loads"))
            # 3. the passive's folder
            if pas_files:
                ops.append(Op(OpKind.RENAME, pas_dir, stage_pas, why="no passive UKI yet: unread"))
            # 4. the old active becomes passive
            if layout is EntryKind.TYPE2:
                why = "the old OS, with its extensions, is passive"
                ops.append(Op(OpKind.RENAME, pas_uki, old.entry.path, why=why))
            else:
                text = store.read_text(old.entry.path)
                line = chain.loader_line(text)
                key = _key_for(loaders, line.key if line else None, pas_uki, p.warnings, pas_entry)
                t = _entry_text(text, Role.PASSIVE, pas_uki, key, "passive")
                ops.append(Op(OpKind.WRITE, pas_entry, text=t, why=f"names {pas_uki}, not there yet: not listed"))
                ops.append(Op(OpKind.RENAME, pas_uki, old.uki, why="the old OS, with its extensions, is passive"))
                if old.entry.path != pas_entry:
                    ops.append(Op(OpKind.UNLINK, old.entry.path, why="its UKI is passive now"))
            # 5. the old active's folder
            ops += _remove_dir(store, old.extra_dir, "no active UKI: unread")
        else:  # resume: the passive is in place
            ops += _remove_dir(store, new_dir, "no active UKI: unread")
            ops += _stage(store, stage_new, new_files, "the new active's extensions")
            ops.append(Op(OpKind.COPY, stage_uki, str(new_uki), why="the new UKI, under a name nothing loads"))
    else:  # recovery: stage first (carried copies come out of the old folder), then the old set goes
        ops += _stage(store, stage_new, new_files, "the new recovery's extensions")
        ops.append(Op(OpKind.COPY, stage_uki, str(new_uki), why="the new UKI, under a name nothing loads"))
        if old is not None:
            ops.append(Op(OpKind.UNLINK, old.entry.path, why="the old recovery goes"))
            if layout is EntryKind.TYPE1 and old.uki not in {s.uki for s in sets.values() if s is not old}:
                ops.append(Op(OpKind.UNLINK, old.uki, why="the old recovery's UKI"))
            ops += _remove_dir(store, old.extra_dir, "the old recovery's extensions")
        if old is None or old.extra_dir != new_dir:
            ops += _remove_dir(store, new_dir, "no recovery loads it")
    # 6. the new set: folder, UKI, (Type #1) entry: the commit
    if new_files:
        ops.append(Op(OpKind.RENAME, new_dir, stage_new, why=f"no {role.value} UKI yet: unread"))
    if layout is EntryKind.TYPE2:
        ops.append(Op(OpKind.RENAME, new_uki_rel, stage_uki, why=f"the new OS is {role.value}"))
    else:
        ops.append(Op(OpKind.RENAME, new_uki_rel, stage_uki, why=f"no {role.value} entry yet: unread"))
        template_set = old if old is not None else kept
        template = store.read_text(template_set.entry.path) if template_set is not None else None
        line = chain.loader_line(template) if template is not None else None
        key = _key_for(loaders, line.key if line else None, new_uki_rel, p.warnings, new_entry_rel)
        t = _entry_text(template, role, new_uki_rel, key, role.value)
        ops.append(Op(OpKind.WRITE, new_entry_rel, text=t, why=f"the new OS is {role.value}"))
    return p


# --- the gate: what needs no sysext/ ------------------------------------------------------------


@dataclass(frozen=True)
class UkiCheck:
    ok: bool
    reason: str | None
    osrel: dict[str, str]
    text: str = ""  # the .osrel section as text: the new OS's os-release

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, "reason": self.reason, "osrel": self.osrel}


def check_uki(path: Path) -> UkiCheck:
    """The new UKI is a PE with ``.linux`` and ``.osrel`` (``--force`` never overrides this)."""
    try:
        with path.open("rb") as f:
            names = {s.name for s in pe.read_sections(f, str(path))}
        osrel = pe.read_osrel(path)
    except OSError as exc:
        return UkiCheck(False, f"{path}: cannot read ({exc.strerror or exc})", {})
    except ParseError as exc:
        return UkiCheck(False, f"{path}: is not a UKI ({exc})", {})
    missing = [s for s in (".linux", ".osrel") if s not in names]
    if missing:
        return UkiCheck(False, f"{path}: is not a UKI: no {' and no '.join(missing)} section", {})
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


def order_check(store: EspStore, snap: Snapshot, p: Plan, new_osrel: bytes) -> OrderCheck:
    """Type #2: the model's menu order after the transaction must be the role order (each UKI's ``.osrel``
    decides it, and bootkeeper cannot rewrite it). Type #1 entries get the role sort keys: always fine."""
    if p.layout is not EntryKind.TYPE2:
        return OrderCheck(True, (), ())
    moved = {p.old.entry.path} if p.old is not None else set()
    if p.gone is not None:
        moved.add(p.gone.entry.path)
    after: list[Entry] = [e for e in snap.entries if e.path not in moved and e.kind is EntryKind.TYPE2]
    osrels: dict[str, dict[str, str]] = {}
    new_name = p.new_uki_rel.rpartition("/")[2]
    after.append(entries_mod.parse_type2(new_name, new_osrel))
    osrels[new_name] = entries_mod.parse_osrel(new_osrel.decode("utf-8", "replace"))
    if p.old is not None and p.role is Role.ACTIVE:
        raw = pe.read_osrel(store.path(p.old.entry.path))
        pas = counter_mod.format_name("passive", ".efi", p.old.entry.name.tries_left)
        name = next((op.path.rpartition("/")[2] for op in p.ops if op.src == p.old.entry.path), pas)
        after.append(entries_mod.parse_type2(name, raw))
        osrels[name] = entries_mod.parse_osrel((raw or b"").decode("utf-8", "replace"))
    for e in after:
        if e.file_name not in osrels:
            raw = pe.read_osrel(store.path(e.path))
            osrels[e.file_name] = entries_mod.parse_osrel((raw or b"").decode("utf-8", "replace"))
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


def _fd_sha256(fd: int) -> str:
    h = hashlib.sha256()
    done = 0
    while chunk := os.pread(fd, 1 << 20, done):
        h.update(chunk)
        done += len(chunk)
    return h.hexdigest()


def _copy(store: EspStore, src: Path, rel: str, digest: str | None) -> None:
    """Copy ``src`` to ``rel`` crash-safely; with ``digest`` (the bytes the gate judged) the copy is
    compared before it gets its name: a source swapped or rewritten after the gate never lands."""
    dest = store.path(rel)
    sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        size = os.fstat(sfd).st_size
        with fsutil.temp_file(dest, store.step) as (fd, tmp):
            fsutil.copy_into(sfd, fd, size)
            if digest is not None and _fd_sha256(fd) != digest:
                raise RefusedError(
                    f"{src}: changed after the gate judged it; not copied to {rel}; run bootkeeper upgrade again "
                    "(the ESP boots the old OS meanwhile)"
                )
            fsutil.commit(fd, tmp, dest, store.step)
    finally:
        os.close(sfd)


def _run(store: EspStore, op: Op, digests: Mapping[str, str]) -> None:
    if op.kind is OpKind.UNLINK:
        store.unlink(op.path)
    elif op.kind is OpKind.RMDIR:
        store.rmdir(op.path)
    elif op.kind is OpKind.MKDIR:
        store.makedirs(op.path)
    elif op.kind is OpKind.COPY:
        assert op.src is not None
        _copy(store, Path(op.src), op.path, digests.get(op.src))
    elif op.kind is OpKind.RENAME:
        assert op.src is not None
        store.rename(op.src, op.path)
    elif op.kind is OpKind.CLEAR_RO:
        assert op.entry is not None
        chain.clear_read_only(store, op.entry)
    else:
        assert op.text is not None
        store.write_atomic(op.path, op.text.encode())


def check_space(store: EspStore, p: Plan) -> None:
    free = store.free_bytes()
    if free + p.freed_bytes < p.need_bytes:
        raise StoreIOError(
            f"{store.root}: not enough room for the upgrade: it needs {p.need_bytes} bytes with a 1 MiB margin, "
            f"{free} are free and the old passive frees {p.freed_bytes}; nothing was changed"
        )


def apply(
    store: EspStore,
    make_plan: Callable[[Snapshot], Plan],
    gated: Plan,
    *,
    sdboot_version: SdBoot | int | str | None = None,
    digests: Mapping[str, str] | None = None,
) -> Plan:
    """Under the lock: plan again, refuse if the ESP changed since ``gated`` was judged, check the space
    once, then run the ops in order. ``digests``: source path -> sha256 of the bytes the gate judged."""
    with store.transaction():
        p = make_plan(store.snapshot(sdboot_version))
        if [op.line() for op in p.ops] != [op.line() for op in gated.ops] or p.done != gated.done:
            raise RefusedError(f"{store.root}: the ESP changed while the upgrade was checked; nothing was changed")
        if p.done:
            return p
        check_space(store, p)
        for op in p.ops:
            _run(store, op, digests or {})
    return p
