"""Marking the booted entry good, bad or indeterminate — systemd-bless-boot's job, for an ESP
mounted read-only at /efi.

The booted entry comes from ``LoaderBootCountPath`` (the name systemd-boot renamed the entry
to, e.g. ``\\loader\\entries\\active+2-1.conf``). As in systemd-bless-boot, three names are
derived from it: *indeterminate* (that name), *good* (no counter) and *bad* (``+0-DONE``);
whichever exists is renamed to the one asked for, and asking for the state the entry is already
in changes nothing. On top of that, bootkeeper:

* keeps loader.conf's ``default`` valid when it named the renamed file literally;
* removes stale siblings (``foo.conf`` next to the booted ``foo+1-2.conf``): the file that just
  booted is the one kept;
* never blesses a recovery boot (so a recovery that cannot repair the node falls through to
  statereset), and re-arms recovery and statereset when active or passive is blessed good;
* on a good statereset boot hands the node back to active, passive and recovery while the budget
  ``handbacks`` allows, and gives statereset fresh tries instead of dropping its counter
  (assess/handback.py); a good active or passive boot gives the budget back;
* with ``rearm: true`` gives the booted entry fresh tries instead of dropping its counter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from bootkeeper.assess import handback as handback_mod
from bootkeeper.config import BootAssessment
from bootkeeper.errors import InputError, MalformedError, NotApplicableError, WriteError
from bootkeeper.esp import counter as counter_mod
from bootkeeper.esp import handback as handback_file
from bootkeeper.esp import loader as loader_mod
from bootkeeper.esp.entries import TYPE1_DIR, TYPE2_DIR, Role
from bootkeeper.esp.store import LOADER_CONF, EspStore, is_temporary


class Verdict(StrEnum):
    GOOD = "good"
    BAD = "bad"
    INDETERMINATE = "indeterminate"


@dataclass(frozen=True)
class BootedEntry:
    directory: str  # loader/entries or EFI/Linux
    name: counter_mod.CountedName  # the name LoaderBootCountPath gives (counted)

    @property
    def path(self) -> str:
        return f"{self.directory}/{self.name.name}"

    @property
    def good_name(self) -> str:
        return self.name.base

    @property
    def bad_name(self) -> str:
        bad = self.name.bad_name()
        assert bad is not None
        return bad

    @property
    def role(self) -> Role | None:
        return Role.from_stem(self.name.stem)


_CTRL = re.compile(r"[\x00-\x1f\x7f]")
_SHOWN = 120


def _shown(value: str) -> str:
    """``value`` quoted for a one-line message, cut short when it is long (an operator's typo or a
    hostile variable can be thousands of characters)."""
    if len(value) <= _SHOWN:
        return repr(value)
    return f"{value[:_SHOWN]!r}… ({len(value)} characters)"


def parse_entry_path(value: str, source: str) -> BootedEntry:
    """Validate a LoaderBootCountPath value or ``--entry`` argument (relative to the ESP)."""
    shown = _shown(value)
    if not value or _CTRL.search(value):
        raise MalformedError(f"{source}: {shown} is empty or has control characters")
    parts = [p for p in value.replace("\\", "/").split("/") if p != ""]
    if any(p in (".", "..") for p in parts):
        raise MalformedError(
            f"{source}: {shown} has a '.' or '..' component; entries live in {TYPE1_DIR}/ or {TYPE2_DIR}/"
        )
    if len(parts) != 3:
        raise MalformedError(f"{source}: {shown} is not a file in {TYPE1_DIR}/ or {TYPE2_DIR}/")
    directory, name = "/".join(parts[:2]), parts[2]
    if directory.lower() == TYPE1_DIR.lower():
        directory, suffix = TYPE1_DIR, ".conf"
    elif directory.lower() == TYPE2_DIR.lower():
        directory, suffix = TYPE2_DIR, ".efi"
    else:
        raise MalformedError(f"{source}: {shown} is not a file in {TYPE1_DIR}/ or {TYPE2_DIR}/")
    cn = counter_mod.parse(name, suffix)
    if not cn.counted:
        raise NotApplicableError(f"{source}: {shown} does not contain a boot counter, refusing")
    return BootedEntry(directory, cn)


@dataclass
class BlessResult:
    booted: str
    verdict: Verdict
    state_before: str
    actions: list[str] = field(default_factory=list)
    note: str | None = None
    withheld: bool = False  # a good recovery boot, deliberately not blessed
    handback: handback_mod.Result | None = None  # a good statereset boot: handed back, or stays

    def as_json(self) -> dict[str, object]:
        return {
            "booted": self.booted,
            "verdict": self.verdict.value,
            "state_before": self.state_before,
            "actions": self.actions,
            "note": self.note,
            "withheld": self.withheld,
            "handback": self.handback.as_json() if self.handback is not None else None,
        }


def _current(store: EspStore, b: BootedEntry) -> tuple[str, str] | None:
    """(state, file name) of whichever of the three names exists; good wins, as in bless-boot. Then
    bootkeeper's fourth, for statereset, whose good bless always re-arms it: the entry with a fresh
    counter (``+N``, none used) was blessed good."""
    for state, name in (("good", b.good_name), ("bad", b.bad_name), ("indeterminate", b.name.name)):
        if store.exists(f"{b.directory}/{name}"):
            return state, name
    if b.role is not Role.STATERESET:
        return None
    for name in store.list_dir(b.directory):
        cn = counter_mod.parse(name, b.name.suffix)
        if cn.counted and cn.tries_done == 0 and cn.same_entry(b.name) and not is_temporary(name):
            return "good", name
    return None


def status(store: EspStore, booted: BootedEntry) -> str:
    cur = _current(store, booted)
    if cur is None:
        raise NotApplicableError(
            f"{store.root}: none of {booted.name.name}, {booted.good_name}, {booted.bad_name} exists "
            f"in {booted.directory}: cannot determine the boot state"
        )
    return cur[0]


def _siblings(store: EspStore, b: BootedEntry, keep: set[str]) -> list[str]:
    """Other files of the same entry (same base name, any counter) that are not in ``keep``."""
    suffix = b.name.suffix
    out = []
    for name in store.list_dir(b.directory):
        if name in keep or is_temporary(name):
            continue
        if counter_mod.parse(name, suffix).same_entry(b.name):
            out.append(name)
    return out


def _rearm_plan(store: EspStore, tries: int) -> list[tuple[str, str, str]]:
    """(directory, name, new name) for every recovery and statereset entry that needs fresh tries."""
    out = []
    for directory, suffix in ((TYPE1_DIR, ".conf"), (TYPE2_DIR, ".efi")):
        for name in store.list_dir(directory):
            cn = counter_mod.parse(name, suffix)
            role = Role.from_stem(cn.stem)
            if role is None or role.burns_own_tries or not cn.counted:
                continue
            if cn.tries_left == tries and cn.tries_done == 0:
                continue
            assert cn.prefix is not None and cn.tail is not None
            out.append((directory, name, counter_mod.format_name(cn.prefix, cn.tail, tries)))
    return out


# Room a rewritten loader.conf needs besides its bytes: a cluster for the temporary's directory slot
# and the rounding of its own last cluster (FAT clusters are at most 64 KiB).
WRITE_MARGIN = 64 * 1024


def _default_plan(store: EspStore, old: str, new: str, verdict: Verdict, booted: str) -> tuple[bytes, str] | None:
    """loader.conf's new text and the action, when its ``default`` named the renamed file; read
    before the first write, so a loader.conf bootkeeper cannot read stops bless with nothing changed."""
    if not store.exists(LOADER_CONF):
        return None
    try:
        conf = loader_mod.parse(store.read_text(LOADER_CONF))
    except InputError as exc:  # too large (malformed) or unreadable: the same class, so the same exit code
        raise type(exc)(
            f"{exc}; cannot tell whether its default names {booted}: not marking it {verdict.value} (nothing changed)",
            hint=f"shorten {LOADER_CONF} (systemd-boot reads only the keys it knows), then run bless again",
        ) from exc
    change, value = loader_mod.default_after_rename(conf, old, new)
    if not change:
        return None
    if value is None:
        action = f"{LOADER_CONF}: removed 'default {conf.default}': it would pin the bad entry"
    else:
        action = f"{LOADER_CONF}: default {conf.default} -> {value}"
    return loader_mod.set_default(conf.text, value).encode(), action


def _check_room(store: EspStore, data: bytes, verdict: Verdict, booted: str, rel: str = LOADER_CONF) -> None:
    need = len(data) + WRITE_MARGIN
    free = store.free_bytes()
    if free < need:
        raise WriteError(
            f"{store.path(rel)}: {free} bytes free on the ESP, {need} needed to rewrite it: "
            f"not marking {booted} {verdict.value} (nothing changed)",
            hint="make room on the ESP (bootkeeper lint --esp lists stale temporaries), then run bless again",
        )


def _target_name(booted: BootedEntry, verdict: Verdict, cfg: BootAssessment) -> str:
    """The name the booted file gets for ``verdict``."""
    if verdict is Verdict.GOOD:
        # statereset keeps a counter: its next boot must be counted and blessed for the hand-back
        # rule to run again (bootkeeper-bless.service runs only on counted boots)
        if cfg.rearm or booted.role is Role.STATERESET:
            assert booted.name.prefix is not None and booted.name.tail is not None
            tries = cfg.recovery_tries if booted.role is Role.STATERESET else cfg.tries
            return counter_mod.format_name(booted.name.prefix, booted.name.tail, tries)
        return booted.good_name
    if verdict is Verdict.BAD:
        return booted.bad_name
    return booted.name.name


@dataclass(frozen=True)
class _BlessPlan:
    """Every read and check of a bless, made before its first write."""

    existing: str
    target: str
    default: tuple[bytes, str] | None
    stale: list[str]
    good_ab: bool
    rearm: list[tuple[str, str, str]]
    handback: handback_mod.HandbackPlan | None


def _plan(store: EspStore, booted: BootedEntry, verdict: Verdict, cfg: BootAssessment, existing: str) -> _BlessPlan:
    target = _target_name(booted, verdict, cfg)
    role = booted.role
    # The booted file is the one that proved itself: if both foo.conf and foo+N-M.conf
    # exist, the counted one the boot loader named wins over the stale sibling.
    if existing != booted.name.name and store.exists(f"{booted.directory}/{booted.name.name}"):
        existing = booted.name.name
    default = None if existing == target else _default_plan(store, existing, target, verdict, booted.path)
    stale = _siblings(store, booted, keep={existing, target})
    good_ab = verdict is Verdict.GOOD and role is not None and role.burns_own_tries
    rearm = _rearm_plan(store, cfg.recovery_tries) if good_ab else []
    handback = handback_mod.plan(store, cfg) if verdict is Verdict.GOOD and role is Role.STATERESET else None
    if default is not None:
        _check_room(store, default[0], verdict, booted.path)
    if handback is not None and handback.count_after is not None and handback.renames:
        data = handback_file.render(handback.count_after)
        _check_room(store, data, verdict, booted.path, handback_file.HANDBACKS)
    return _BlessPlan(existing, target, default, stale, good_ab, rearm, handback)


def _apply(store: EspStore, booted: BootedEntry, verdict: Verdict, p: _BlessPlan, result: BlessResult) -> None:
    """Act, in the order test_power_loss.py proves bootable after a crash at any step."""
    d = booted.directory
    if p.good_ab:
        reset = handback_mod.reset(store)  # before the rename: see assess/handback.py
        if reset is not None:
            result.actions.append(reset)
    if p.handback is not None:
        result.handback = handback_mod.apply(store, p.handback)
        result.actions.extend(result.handback.actions)
    if p.existing == p.target:
        result.note = f"already {verdict.value}: {d}/{p.target}"
    else:
        store.rename(f"{d}/{p.existing}", f"{d}/{p.target}")
        result.actions.append(f"renamed {d}/{p.existing} -> {p.target}")
        if p.default is not None:
            store.write_atomic(LOADER_CONF, p.default[0])
            result.actions.append(p.default[1])
    for name in p.stale:
        store.unlink(f"{d}/{name}")
        result.actions.append(f"removed stale duplicate {d}/{name}")
    for directory, name, new in p.rearm:
        store.rename(f"{directory}/{name}", f"{directory}/{new}")
        result.actions.append(f"re-armed {directory}/{name} -> {new}")


def bless(store: EspStore, booted: BootedEntry, verdict: Verdict, cfg: BootAssessment) -> BlessResult:
    """Everything bless needs (which file is which, loader.conf, the entries to re-arm, room for a
    rewrite) is read and checked before the first write: a refusal leaves the ESP as it was."""
    with store.transaction():
        cur = _current(store, booted)
        if cur is None:
            raise NotApplicableError(
                f"{store.root}: can't find {booted.path} (nor {booted.good_name} or {booted.bad_name}) "
                f"to mark it {verdict.value}"
            )
        state, existing = cur
        result = BlessResult(booted=booted.path, verdict=verdict, state_before=state)
        if verdict is Verdict.GOOD and booted.role is Role.RECOVERY:
            result.withheld = True
            result.note = (
                "recovery boots are never blessed: if recovery cannot repair the node, its tries "
                "run out and statereset boots"
            )
            return result
        _apply(store, booted, verdict, _plan(store, booted, verdict, cfg, existing), result)
        return result
