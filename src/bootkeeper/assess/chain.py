"""The fallback chain active → passive → recovery → statereset, kept by file names and sort keys.

* ``arm``: on install/upgrade, give each role's entry a fresh counter (``boot_assessment.tries``
  for active and passive, ``recovery_tries`` for recovery and statereset), write sort keys that
  order the roles, and drop a loader.conf ``default`` that could match a counted entry (where ids
  drop the counter, 257.10+ and 258.1+, ``default active.conf`` matches ``active+0-3.conf`` and
  pins the bad entry).
* ``rotate``: a new active; the old active becomes passive with a *fresh* counter, never the
  half-used ``+1-2`` it had.
* **The loader key suits the boot loader on the ESP** (:func:`plan_key`, the one home of the rule,
  used by lint too): a Type #1 entry that boots a UKI is counted only with the key this
  systemd-boot counts, ``SdBoot.counted_key()``: ``efi`` before 258, ``uki`` from 258 (729f3c21c5
  stopped counting ``efi``; e2a3d56218 added ``uki``, which older versions do not know: they drop
  the entry). arm and rotate convert the key of a role entry whose file is a UKI (a PE with a
  ``.linux`` section) and never write a key the boot loader does not know; ``linux`` entries stay.
  Nothing is converted when the version is only assumed (no systemd-boot binary on the ESP), and a
  conversion is refused when the ESP's two systemd-boot binaries disagree about the key: the
  firmware decides which one runs, and no key suits both.
* **The FAT read-only attribute**: no systemd-boot renames a read-only file (booted on 252.39,
  257.13 and 262.1), so its tries never run down; arm clears it on the entries it arms, before any
  other write. A rewritten entry is a new file (``write_atomic``: mode 0644 less the umask, on vfat
  the mount's fmask), so it never keeps the attribute either way.

Steps are ordered so that a crash between any two of them leaves a bootable ESP.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from bootkeeper import fsutil
from bootkeeper.config import BootAssessment
from bootkeeper.errors import (
    BootkeeperError,
    EspError,
    InputError,
    MalformedError,
    NotApplicableError,
    UnreadableError,
    WriteError,
)
from bootkeeper.esp import counter as counter_mod
from bootkeeper.esp import edit, pe
from bootkeeper.esp import entries as entries_mod
from bootkeeper.esp import loader as loader_mod
from bootkeeper.esp.efiglob import efi_fnmatch
from bootkeeper.esp.entries import TYPE1_DIR, TYPE2_DIR, Entry, EntryKind, Role
from bootkeeper.esp.keyvalue import KeyValue, split_lines
from bootkeeper.esp.sdboot import SdBoot
from bootkeeper.esp.store import LOADER_CONF, SDBOOT_PATHS, EspStore, Snapshot


@dataclass
class ChainResult:
    actions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {"actions": self.actions, "warnings": self.warnings}


def tries_for(role: Role, cfg: BootAssessment) -> int:
    return cfg.tries if role.burns_own_tries else cfg.recovery_tries


# --- the loader key ---------------------------------------------------------------------------

LOADER_KEYS = ("linux", "efi", "uki")
_KEY_RULE = "systemd-boot before 258 counts 'efi' and drops entries with 'uki'; 258 and later count 'uki', not 'efi'"


@dataclass(frozen=True)
class LoaderLine:
    """An entry's loader line as written: also a ``uki`` line that an older systemd-boot ignores."""

    key: str  # linux, efi or uki
    path: str  # the file on the ESP


# what parse_type1 says about the loader key (entries.py owns the text)
_EFI_PROBLEM = re.compile(r"uses the 'efi' key")
_UKI_IGNORED = re.compile(r"line \d+: 'uki' is unknown to systemd-boot ")


def uki_ignored(e: Entry) -> bool:
    """A ``uki`` line that this systemd-boot does not know (it dropped the line, and the entry
    with it when that was the loader line)."""
    return any(_UKI_IGNORED.match(p) for p in e.problems)


def loader_line(text: str) -> LoaderLine | None:
    """The loader line of an entry's text, read as systemd-boot splits lines; None when there is
    none or more than one kind (systemd-boot drops such an entry; arm refuses it)."""
    found = [kv for kv in split_lines(text, " \t") if isinstance(kv, KeyValue) and kv.key in LOADER_KEYS]
    if not found or len({kv.key for kv in found}) > 1:
        return None
    return LoaderLine(found[-1].key, found[-1].value)  # a later duplicate overrides, as in parse_type1


@dataclass(frozen=True)
class BootLoaders:
    """The systemd-boot the model uses (``sdboot``, read from ``source``) and every systemd-boot
    binary found on the ESP, in the order :data:`SDBOOT_PATHS` gives."""

    sdboot: SdBoot
    source: str
    binaries: tuple[tuple[str, SdBoot], ...] = ()

    @property
    def assumed(self) -> bool:
        return self.source.startswith("assumed")

    @property
    def overridden(self) -> bool:
        return self.source == "--systemd-boot-version"

    def disagree(self, key: str) -> tuple[tuple[str, SdBoot], tuple[str, SdBoot]] | None:
        """Two binaries of which one counts ``key`` and the other does not, or None."""
        for i, a in enumerate(self.binaries):
            for b in self.binaries[i + 1 :]:
                if a[1].counts(key) != b[1].counts(key):
                    return a, b
        return None


def sdboot_binaries(store: EspStore) -> tuple[tuple[str, SdBoot], ...]:
    """Every systemd-boot binary on the ESP with the version its ``.sdmagic`` carries."""
    out = []
    for rel in SDBOOT_PATHS:
        p = store.find_ci(rel)
        if p is None or not p.is_file():
            continue
        try:
            v = pe.sdboot_version(p)
            if v:
                out.append((rel, SdBoot.parse(v)))
        except (OSError, BootkeeperError):
            continue
    return tuple(out)


def boot_loaders(store: EspStore, snap: Snapshot) -> BootLoaders:
    return BootLoaders(snap.sdboot, snap.sdboot_version_source, sdboot_binaries(store))


def uki_problem(store: EspStore, loader: str) -> str | None:
    """None when ``loader`` is a UKI on the ESP (a PE with a ``.linux`` section, found as FAT
    finds it: case-insensitively); else what it is instead."""
    p = store.find_ci(loader)
    if p is None or not p.is_file():
        return "is not on the ESP"
    try:
        with fsutil.open_nonblocking(p) as f:  # a FIFO must not hang the reader
            names = {s.name for s in pe.read_sections(f, str(p))}
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    except InputError:
        return "is not a UKI (not a PE file)"
    return None if ".linux" in names else "is not a UKI (no .linux section)"


class KeyCase(StrEnum):
    FINE = "fine"  # linux, or a key this systemd-boot counts
    CONVERT = "convert"  # the file is a UKI: new_key is the key this systemd-boot counts
    NOT_UKI = "not-uki"  # not counted here (or not by every binary), and the file is no UKI: kept
    ASSUMED = "assumed"  # the version is only assumed: kept
    DISAGREE = "disagree"  # the ESP's two binaries differ about the key: refused
    UNCOUNTED = "uncounted"  # this systemd-boot counts neither efi nor uki: kept


@dataclass(frozen=True)
class KeyPlan:
    """What to do with one entry's loader key, and why (naming the version and the commit)."""

    case: KeyCase
    key: str | None = None
    new_key: str | None = None
    reason: str = ""

    def line(self, where: str) -> str:
        """The action, warning or refusal line arm and rotate print."""
        if self.case is KeyCase.CONVERT:
            return f"{where}: {self.key} -> {self.new_key}: {self.reason}"
        if self.case is KeyCase.DISAGREE:
            return (
                f"{where}: '{self.key}' cannot be converted: {self.reason}; install one version as both "
                "(bootctl update), or say which one boots with --systemd-boot-version"
            )
        if self.case is KeyCase.ASSUMED:
            return f"{where}: '{self.key}' kept: {self.reason}; give --systemd-boot-version"
        return f"{where}: '{self.key}' kept: {self.reason}"


def _not_counted(sd: SdBoot, key: str) -> str:
    if key == "efi":
        return f"systemd-boot {sd} does not count 'efi' entries (729f3c21c5)"
    return f"systemd-boot {sd} does not know 'uki' (added in 258, e2a3d56218): the entry is dropped and never boots"


def _keys_of(sd: SdBoot) -> str:
    if sd.counts_efi_key and not sd.knows_uki_key:
        return "counts 'efi', does not know 'uki'"
    if sd.knows_uki_key and not sd.counts_efi_key:
        return "counts 'uki', not 'efi'"
    return "counts 'efi' and 'uki'" if sd.counts_efi_key else "counts neither 'efi' nor 'uki'"


def plan_key(line: LoaderLine | None, not_uki: str | None, loaders: BootLoaders) -> KeyPlan:
    """The key an entry should have on this ESP (pure). ``not_uki``: None when the file the line
    names is a UKI, else what it is (:func:`uki_problem`)."""
    if line is None or line.key not in ("efi", "uki"):
        return KeyPlan(KeyCase.FINE, line.key if line else None)
    k, sd = line.key, loaders.sdboot
    if loaders.assumed:
        return KeyPlan(
            KeyCase.ASSUMED, k, reason=f"no systemd-boot binary on the ESP ({sd} is only assumed), and {_KEY_RULE}"
        )
    pair = loaders.disagree(k) if not loaders.overridden else None
    if pair is not None:
        (pa, va), (pb, vb) = pair
        both = f"{pa} is systemd-boot {va} ({_keys_of(va)}) and {pb} is {vb} ({_keys_of(vb)})"
        if not_uki is None:
            return KeyPlan(
                KeyCase.DISAGREE, k, reason=f"{both}: no key suits both, and whichever the firmware starts decides"
            )
        return KeyPlan(KeyCase.NOT_UKI, k, reason=f"{both}, and {line.path} {not_uki}")
    if sd.counts(k):
        return KeyPlan(KeyCase.FINE, k)
    why = _not_counted(sd, k)
    if not_uki is not None:
        return KeyPlan(KeyCase.NOT_UKI, k, reason=f"{why}, but {line.path} {not_uki}")
    new = sd.counted_key()
    if new is None:
        return KeyPlan(KeyCase.UNCOUNTED, k, reason=f"{why}, and it counts no other key for a UKI")
    return KeyPlan(KeyCase.CONVERT, k, new, why)


def entry_key_plan(store: EspStore, loaders: BootLoaders, text: str) -> tuple[LoaderLine | None, KeyPlan]:
    """:func:`plan_key` for an entry's text, with its file checked on the ESP."""
    line = loader_line(text)
    not_uki = uki_problem(store, line.path) if line is not None and line.key in ("efi", "uki") else None
    return line, plan_key(line, not_uki, loaders)


def apply_key(text: str, plan: KeyPlan) -> str:
    if plan.case is KeyCase.CONVERT and plan.key and plan.new_key:
        return edit.rename_key(text, plan.key, plan.new_key)
    return text


# --- the read-only attribute ------------------------------------------------------------------


def clear_read_only(store: EspStore, e: Entry) -> str:
    """Clear the FAT read-only attribute of ``e`` (vfat maps it to the write bits): u+w, or every
    write bit where vfat refuses u+w alone (it takes the write bits all or none of those its fmask
    allows: a ``umask=0`` mount). Returns the action line; an :class:`OSError` refuses the verb."""
    p = store.path(e.path)
    store.step(f"chmod:{e.file_name}")
    try:
        mode = stat.S_IMODE(os.stat(p).st_mode)
        try:
            os.chmod(p, mode | stat.S_IWUSR)
        except PermissionError:
            os.chmod(p, mode | 0o222)
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)  # on vfat the attribute goes to disk with the file's directory entry
        finally:
            os.close(fd)
    except OSError as exc:
        raise WriteError(
            f"{p}: has the read-only attribute, and clearing it failed ({exc.strerror or exc}); no systemd-boot "
            "renames a read-only file, so its tries would never run down: clear it (mattrib -r, chmod u+w) and run "
            "bootkeeper arm again"
        ) from exc
    return (
        f"{e.path}: cleared the read-only attribute: no systemd-boot renames a read-only file, so its tries "
        "would never run down"
    )


# --- arm and rotate ---------------------------------------------------------------------------


def _by_role(entries: tuple[Entry, ...]) -> dict[Role, list[Entry]]:
    out: dict[Role, list[Entry]] = {}
    for e in entries:
        if e.role is not None:
            out.setdefault(e.role, []).append(e)
    return out


def _check_unique(role: Role, found: list[Entry]) -> None:
    per_kind: dict[EntryKind, list[Entry]] = {}
    for e in found:
        per_kind.setdefault(e.kind, []).append(e)
    for group in per_kind.values():
        if len(group) > 1:
            names = ", ".join(e.path for e in group)
            raise EspError(
                f"more than one {role.value} entry: {names}; remove the stale one "
                f"(bootkeeper bless repairs this for the booted entry)"
            )


def role_entries(entries: tuple[Entry, ...]) -> dict[Role, list[Entry]]:
    """The entry files of each role (upgrade's sets start from these)."""
    return _by_role(entries)


def check_unique(role: Role, found: list[Entry]) -> None:
    """Refuse two entries of one role and kind (which one would boot is a matter of names)."""
    _check_unique(role, found)


def _rewrite_problems(e: Entry) -> list[str]:
    """The entry's problems except those about its loader key, which :func:`plan_key` deals with."""
    return [p for p in e.problems if not _EFI_PROBLEM.match(p) and not _UKI_IGNORED.match(p)]


def _check_rewritable(e: Entry) -> None:
    bad = _rewrite_problems(e)
    if bad:
        raise MalformedError(f"{e.path}: {bad[0]}; fix the file before bootkeeper rewrites it")


def counted_name_variants(e: Entry, tries: int) -> list[str]:
    """Every id the entry can have while its counter runs down, for either id scheme."""
    stem, suffix = e.name.stem, e.name.suffix
    out = [e.name.entry_key]
    for left in range(tries, -1, -1):
        out.append(f"{stem}+{left}-{tries - left}{suffix}".lower())
    out.append(f"{stem}+{tries}{suffix}".lower())
    for extra in range(1, 4):
        out.append(f"{stem}+0-{tries + extra}{suffix}".lower())
    return out


def default_can_pin(pattern: str | None, entries: list[Entry], cfg: BootAssessment) -> list[str]:
    """Entries (paths) that a loader.conf ``default`` pattern can match once they are bad."""
    if not pattern or pattern == "@saved":
        return []
    hits = []
    for e in entries:
        if e.role is None:
            continue
        if any(efi_fnmatch(pattern, v) for v in counted_name_variants(e, tries_for(e.role, cfg))):
            hits.append(e.path)
    return hits


def _report_key(res: ChainResult, plan: KeyPlan, where: str) -> None:
    """A converted loader key is an action; any other case but a fine one is a warning."""
    if plan.case is KeyCase.CONVERT:
        res.actions.append(plan.line(where))
    elif plan.case is not KeyCase.FINE:
        res.warnings.append(plan.line(where))


def _arm_roles(store: EspStore, entries: tuple[Entry, ...], res: ChainResult) -> dict[Role, list[Entry]]:
    """The entries by role, each role at most once; refused without an active, warned without a fallback."""
    by_role = _by_role(entries)
    for role in Role:
        _check_unique(role, by_role.get(role, []))
    missing = [r.value for r in (Role.ACTIVE, Role.RECOVERY) if r not in by_role]
    if Role.ACTIVE.value in missing:
        raise EspError(f"{store.root}: no active entry in {TYPE1_DIR}/ or {TYPE2_DIR}/; nothing to arm")
    for m in missing:
        res.warnings.append(f"no {m} entry: nothing to fall back to after passive")
    return by_role


def _read_type1_plans(
    store: EspStore, loaders: BootLoaders, armed: list[Entry]
) -> tuple[dict[str, str], dict[str, KeyPlan]]:
    """Each Type #1 entry's text and loader-key plan, read and decided before the first write."""
    texts: dict[str, str] = {}
    plans: dict[str, KeyPlan] = {}
    for e in armed:
        if e.kind is EntryKind.TYPE1:
            _check_rewritable(e)
            texts[e.path] = store.read_text(e.path)
            plans[e.path] = entry_key_plan(store, loaders, texts[e.path])[1]
            if plans[e.path].case is KeyCase.DISAGREE:
                raise EspError(plans[e.path].line(e.path))
    return texts, plans


def _arm_entry(
    store: EspStore, e: Entry, cfg: BootAssessment, texts: dict[str, str], plans: dict[str, KeyPlan], res: ChainResult
) -> None:
    """One entry armed: a Type #1's sort key and loader key written, then the file renamed to a fresh counter."""
    assert e.role is not None
    tries = tries_for(e.role, cfg)
    if e.kind is EntryKind.TYPE1:
        text, plan = texts[e.path], plans[e.path]
        with_key = edit.set_key(text, "sort-key", e.role.sort_key)
        new_text = apply_key(with_key, plan)
        if new_text != text:
            store.write_atomic(e.path, new_text.encode())
        if with_key != text:
            res.actions.append(f"{e.path}: sort-key {e.role.sort_key}")
        _report_key(res, plan, e.path)
    new_name = counter_mod.format_name(e.name.stem, e.name.suffix, tries)
    if new_name != e.file_name:
        store.rename(e.path, f"{e.directory}/{new_name}")
        res.actions.append(f"renamed {e.path} -> {new_name}")


def _drop_pinning_default(store: EspStore, snap: Snapshot, cfg: BootAssessment, res: ChainResult) -> None:
    """loader.conf's ``default`` removed when it can match a counted entry that has gone bad."""
    conf = snap.loader_conf
    if conf is not None and conf.default is not None:
        pins = default_can_pin(conf.default_pattern, [e for e in snap.entries if e.counted], cfg)
        if pins:
            store.write_atomic(LOADER_CONF, loader_mod.set_default(conf.text, None).encode())
            res.actions.append(
                f"{LOADER_CONF}: removed 'default {conf.default}': it can match {', '.join(pins)} "
                "once that entry is bad, and systemd-boot would boot it anyway"
            )


def arm(
    store: EspStore,
    cfg: BootAssessment,
    roles: list[Role] | None = None,
    *,
    sdboot_version: SdBoot | int | str | None = None,
) -> ChainResult:
    """``sdboot_version``: the systemd-boot to write for, instead of the one read from the ESP."""
    roles = roles or list(Role)
    res = ChainResult()
    with store.transaction():
        snap = store.snapshot(sdboot_version)
        by_role = _arm_roles(store, snap.entries, res)
        armed = [e for role in roles for e in by_role.get(role, [])]
        texts, plans = _read_type1_plans(store, boot_loaders(store, snap), armed)
        for e in armed:
            if e.read_only:
                res.actions.append(clear_read_only(store, e))
        for e in armed:
            _arm_entry(store, e, cfg, texts, plans, res)
        snap = store.snapshot(sdboot_version)
        _check_type2_order(snap.entries, snap.sdboot, res)
        _drop_pinning_default(store, snap, cfg, res)
    return res


def _check_type2_order(entries: tuple[Entry, ...], version: SdBoot, res: ChainResult) -> None:
    ukis = entries_mod.type2_role_order(list(entries), version)
    if entries_mod.out_of_role_order(ukis):
        order = " → ".join(e.role.value for e in ukis if e.role is not None)
        res.warnings.append(
            f"{TYPE2_DIR}: UKIs boot in the order {order}; their .osrel IMAGE_ID/ID and VERSION fields decide "
            "it and bootkeeper cannot rewrite them"
        )


def _new_type1(store: EspStore, loaders: BootLoaders, new_entry: Path, text: str, res: ChainResult) -> str:
    """The text to install for a new Type #1 active: refused unless this systemd-boot counts it
    (``linux``; ``efi``/``uki`` as :func:`plan_key` converts them), with the active sort key."""
    probe = entries_mod.parse_type1("active.conf", text, sdboot_version=loaders.sdboot)
    bad = _rewrite_problems(probe)
    if bad:
        raise MalformedError(f"{new_entry}: {bad[0]}")
    line, plan = entry_key_plan(store, loaders, text)
    if line is None:
        why = probe.why_unlisted or "no loader line"
        raise MalformedError(f"{new_entry}: needs a linux line, or efi or uki naming a UKI ({why})")
    if plan.case is KeyCase.DISAGREE:
        raise EspError(plan.line(str(new_entry)))
    if plan.case in (KeyCase.NOT_UKI, KeyCase.UNCOUNTED) and not loaders.sdboot.counts(line.key):
        # never counted down: a bad active could never fall back
        raise MalformedError(
            f"{new_entry}: '{line.key}' is not counted: {plan.reason}; a bad active would never fall back "
            "(use a linux line, or point efi/uki at a UKI)"
        )
    _report_key(res, plan, str(new_entry))
    return edit.set_key(apply_key(text, plan), "sort-key", Role.ACTIVE.sort_key)


def _remove_old_passives(store: EspStore, passives: list[Entry], new_passive: str, res: ChainResult) -> None:
    for p in passives:
        if p.file_name != new_passive:
            store.unlink(p.path)
            res.actions.append(f"removed old passive {p.path}")


def _demote_type1(
    store: EspStore,
    loaders: BootLoaders,
    old: Entry,
    passives: list[Entry],
    names: tuple[str, str, str],
    res: ChainResult,
) -> None:
    """The old Type #1 active written anew as passive (passive sort key, loader key suited), a fresh
    counter; ``names`` is the directory and the new active's and passive's file names."""
    directory, new_active, new_passive = names
    text = store.read_text(old.path)
    plan = entry_key_plan(store, loaders, text)[1]
    if plan.case is KeyCase.DISAGREE:
        raise EspError(plan.line(old.path))
    text = apply_key(edit.set_key(text, "sort-key", Role.PASSIVE.sort_key), plan)
    store.write_atomic(f"{directory}/{new_passive}", text.encode())
    res.actions.append(f"{old.path} -> {directory}/{new_passive} (fresh counter)")
    _report_key(res, plan, f"{directory}/{new_passive}")
    _remove_old_passives(store, passives, new_passive, res)
    if old.file_name != new_active:
        store.unlink(old.path)


def _demote_type2(store: EspStore, old: Entry, passives: list[Entry], new_path: str, res: ChainResult) -> None:
    """The old UKI active renamed to passive (``new_path``), with a fresh counter."""
    if old.read_only:
        res.actions.append(clear_read_only(store, old))
    _remove_old_passives(store, passives, new_path.rpartition("/")[2], res)
    store.rename(old.path, new_path)
    res.actions.append(f"{old.path} -> {new_path} (fresh counter)")


def rotate(
    store: EspStore,
    cfg: BootAssessment,
    new_entry: Path,
    *,
    sdboot_version: SdBoot | int | str | None = None,
) -> ChainResult:
    """Install ``new_entry`` (a .conf or a UKI .efi) as active; the old active becomes passive.
    A Type #1 entry's loader key is made to suit the ESP's systemd-boot, the new one's and the old
    active's (see :func:`plan_key`)."""
    res = ChainResult()
    is_uki = new_entry.name.lower().endswith(".efi")
    if not is_uki and not new_entry.name.lower().endswith(".conf"):
        raise MalformedError(f"{new_entry}: a new active entry must be a .conf entry file or a .efi UKI")
    try:
        data = new_entry.read_bytes()
    except OSError as exc:
        raise UnreadableError(f"{new_entry}: cannot read ({exc.strerror})") from exc
    kind = EntryKind.TYPE2 if is_uki else EntryKind.TYPE1
    directory, suffix = (TYPE2_DIR, ".efi") if is_uki else (TYPE1_DIR, ".conf")
    sd, source = store.sdboot_version(sdboot_version)
    loaders = BootLoaders(sd, source, sdboot_binaries(store))
    if not is_uki:  # checked before the transaction: a refused entry never remounts the ESP
        data = _new_type1(store, loaders, new_entry, data.decode("utf-8", "replace"), res).encode()
    ab = [e for r in (Role.ACTIVE, Role.PASSIVE) for e in _by_role(store.snapshot(sdboot_version).entries).get(r, [])]
    if is_uki and ab and all(e.kind is EntryKind.TYPE1 for e in ab):
        # A UKI would land in EFI/Linux/ beside Type #1 entries that name EFI/<vendor>/: a second,
        # unmanaged active (docs/upgrades.md, "A bad active is replaced").
        raise NotApplicableError(
            f"{new_entry}: the active and passive entries are Type #1 ({TYPE1_DIR}/); rotate installs a UKI "
            f"only as a Type #2 entry in {TYPE2_DIR}/; nothing was changed",
            hint=f"bootkeeper upgrade {new_entry} installs it with its extensions (and replaces a bad active)",
        )
    with store.transaction():
        snap = store.snapshot(sdboot_version)
        by_role = _by_role(snap.entries)
        olds = [e for e in by_role.get(Role.ACTIVE, []) if e.kind is kind]
        _check_unique(Role.ACTIVE, olds)
        passives = [e for e in by_role.get(Role.PASSIVE, []) if e.kind is kind]
        new_active = counter_mod.format_name("active", suffix, cfg.tries)
        new_passive = counter_mod.format_name("passive", suffix, cfg.tries)
        if olds and olds[0].state is entries_mod.EntryState.BAD:
            # The old active never booted well: the node runs on passive, which must stay.
            store.unlink(olds[0].path)
            res.actions.append(f"removed bad active {olds[0].path}; passive is kept as the fallback")
        elif olds and kind is EntryKind.TYPE1:
            _demote_type1(store, loaders, olds[0], passives, (directory, new_active, new_passive), res)
        elif olds:
            _demote_type2(store, olds[0], passives, f"{directory}/{new_passive}", res)
        else:
            res.warnings.append("there was no active entry: nothing moved to passive")
        store.write_atomic(f"{directory}/{new_active}", data)
        res.actions.append(f"installed {new_entry} as {directory}/{new_active}")
    return res
