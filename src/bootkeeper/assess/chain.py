"""The fallback chain active → passive → recovery → statereset, kept by file names and sort keys.

* ``arm``: on install/upgrade, give each role's entry a fresh counter (``boot_assessment.tries``
  for active and passive, ``recovery_tries`` for recovery and statereset), write sort keys that
  order the roles, and drop a loader.conf ``default`` that could match a counted entry (on
  systemd-boot ≥ 254 ``default active.conf`` matches ``active+0-3.conf`` and pins the bad entry).
* ``rotate``: a new active; the old active becomes passive with a *fresh* counter, never the
  half-used ``+1-2`` it had.

Steps are ordered so that a crash between any two of them leaves a bootable ESP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bootkeeper.config import BootAssessment
from bootkeeper.errors import EspError, ParseError
from bootkeeper.esp import counter as counter_mod
from bootkeeper.esp import edit
from bootkeeper.esp import entries as entries_mod
from bootkeeper.esp import loader as loader_mod
from bootkeeper.esp.entries import TYPE1_DIR, TYPE2_DIR, Entry, EntryKind, Role
from bootkeeper.esp.fnmatch import efi_fnmatch
from bootkeeper.esp.sdboot import SdBoot
from bootkeeper.esp.store import LOADER_CONF, EspStore


@dataclass
class ChainResult:
    actions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {"actions": self.actions, "warnings": self.warnings}


def tries_for(role: Role, cfg: BootAssessment) -> int:
    return cfg.tries if role.burns_own_tries else cfg.recovery_tries


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


def _check_rewritable(e: Entry) -> None:
    bad = [p for p in e.problems if not p.startswith("uses the 'efi' key")]
    if bad:
        raise ParseError(f"{e.path}: {bad[0]}; fix the file before bootkeeper rewrites it")


def counted_name_variants(e: Entry, tries: int) -> list[str]:
    """Every id the entry can have while its counter runs down, for either id scheme."""
    base = e.name.base
    stem, suffix = base[: len(base) - len(e.name.suffix)], e.name.suffix
    out = [base.lower()]
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


def arm(store: EspStore, cfg: BootAssessment, roles: list[Role] | None = None) -> ChainResult:
    roles = roles or list(Role)
    res = ChainResult()
    with store.transaction():
        snap = store.snapshot()
        by_role = _by_role(snap.entries)
        for role in Role:
            _check_unique(role, by_role.get(role, []))
        missing = [r.value for r in (Role.ACTIVE, Role.RECOVERY) if r not in by_role]
        if Role.ACTIVE.value in missing:
            raise EspError(f"{store.root}: no active entry in {TYPE1_DIR}/ or {TYPE2_DIR}/; nothing to arm")
        for m in missing:
            res.warnings.append(f"no {m} entry: nothing to fall back to after passive")
        for role in roles:
            for e in by_role.get(role, []):
                if e.kind is EntryKind.TYPE1:
                    _check_rewritable(e)
        for role in roles:
            for e in by_role.get(role, []):
                tries = tries_for(role, cfg)
                current = e.file_name
                if e.kind is EntryKind.TYPE1:
                    text = store.read_text(e.path)
                    new_text = edit.set_key(text, "sort-key", role.sort_key)
                    if new_text != text:
                        store.write_atomic(e.path, new_text.encode())
                        res.actions.append(f"{e.path}: sort-key {role.sort_key}")
                    if e.loader_type is entries_mod.LoaderType.EFI:
                        res.warnings.append(
                            f"{e.path}: uses the 'efi' key, which systemd-boot never counts; use 'uki' or 'linux'"
                        )
                stem = e.name.base[: len(e.name.base) - len(e.name.suffix)]
                new_name = counter_mod.format_name(stem, e.name.suffix, tries)
                if new_name != current:
                    store.rename(e.path, f"{e.directory}/{new_name}")
                    res.actions.append(f"renamed {e.path} -> {new_name}")
        snap = store.snapshot()
        _check_type2_order(snap.entries, snap.sdboot, res)
        conf = snap.loader_conf
        if conf is not None and conf.default is not None:
            pins = default_can_pin(conf.default_pattern, [e for e in snap.entries if e.counted], cfg)
            if pins:
                store.write_atomic(LOADER_CONF, loader_mod.set_default(conf.text, None).encode())
                res.actions.append(
                    f"{LOADER_CONF}: removed 'default {conf.default}': it can match {', '.join(pins)} "
                    "once that entry is bad, and systemd-boot would boot it anyway"
                )
    return res


def _check_type2_order(entries: tuple[Entry, ...], version: SdBoot, res: ChainResult) -> None:
    ukis = [
        e
        for e in entries_mod.menu_order(list(entries), version)
        if e.kind is EntryKind.TYPE2 and e.role is not None and e.state is not entries_mod.EntryState.BAD
    ]
    ranks = [e.role.rank for e in ukis if e.role is not None]
    if ranks != sorted(ranks):
        order = " → ".join(e.role.value for e in ukis if e.role is not None)
        res.warnings.append(
            f"{TYPE2_DIR}: UKIs boot in the order {order}; their .osrel IMAGE_ID/ID and VERSION fields decide "
            "it and bootkeeper cannot rewrite them"
        )


def rotate(store: EspStore, cfg: BootAssessment, new_entry: Path) -> ChainResult:
    """Install ``new_entry`` (a .conf or a UKI .efi) as active; the old active becomes passive."""
    res = ChainResult()
    is_uki = new_entry.name.lower().endswith(".efi")
    if not is_uki and not new_entry.name.lower().endswith(".conf"):
        raise ParseError(f"{new_entry}: a new active entry must be a .conf entry file or a .efi UKI")
    try:
        data = new_entry.read_bytes()
    except OSError as exc:
        raise ParseError(f"{new_entry}: cannot read ({exc.strerror})") from exc
    kind = EntryKind.TYPE2 if is_uki else EntryKind.TYPE1
    directory, suffix = (TYPE2_DIR, ".efi") if is_uki else (TYPE1_DIR, ".conf")
    if not is_uki:
        probe = entries_mod.parse_type1("active.conf", data.decode("utf-8", "replace"))
        if probe.problems:
            raise ParseError(f"{new_entry}: {probe.problems[0]}")
        if probe.loader_type not in (entries_mod.LoaderType.LINUX, entries_mod.LoaderType.UKI):
            # an 'efi' entry is never counted down, so it could never roll back
            raise ParseError(f"{new_entry}: needs a linux or uki line ({probe.why_unlisted or 'efi is not counted'})")
        data = edit.set_key(data.decode("utf-8", "replace"), "sort-key", Role.ACTIVE.sort_key).encode()
    with store.transaction():
        snap = store.snapshot()
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
        elif olds:
            old = olds[0]
            if kind is EntryKind.TYPE1:
                text = edit.set_key(store.read_text(old.path), "sort-key", Role.PASSIVE.sort_key)
                store.write_atomic(f"{directory}/{new_passive}", text.encode())
                res.actions.append(f"{old.path} -> {directory}/{new_passive} (fresh counter)")
                for p in passives:
                    if p.file_name != new_passive:
                        store.unlink(p.path)
                        res.actions.append(f"removed old passive {p.path}")
                if old.file_name != new_active:
                    store.unlink(old.path)
            else:
                for p in passives:
                    if p.file_name != new_passive:
                        store.unlink(p.path)
                        res.actions.append(f"removed old passive {p.path}")
                store.rename(old.path, f"{directory}/{new_passive}")
                res.actions.append(f"{old.path} -> {directory}/{new_passive} (fresh counter)")
        else:
            res.warnings.append("there was no active entry: nothing moved to passive")
        store.write_atomic(f"{directory}/{new_active}", data)
        res.actions.append(f"installed {new_entry} as {directory}/{new_active}")
    return res
