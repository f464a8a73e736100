"""Statereset hands back (a reset "hopefully can do a better job setting every right": docs/upgrades.md,
"Statereset hands back"; docs/seed-audit.md, "9. Statereset hands back").

A good statereset boot means the reset worked; the node should then run its A/B entries again, not
statereset for ever. So when bless marks a statereset boot good, it **hands back**: active, passive and
recovery get fresh counters from what is on the ESP (``boot_assessment.tries`` for active and passive,
``recovery_tries`` for recovery, as ``bootkeeper arm`` gives them), and the next boot is active again.
statereset itself keeps a counter (fresh ``recovery_tries``), so that its next boot is counted and
blessed too — the only way this rule runs again.

A hand-back costs one of ``boot_assessment.handbacks`` (default 1); a good active or passive boot gives
the budget back. A node whose A/B entries cannot boot (still bad UKIs) thus resets at most that many
times in a row, then **stays on statereset**: its good boots re-arm statereset alone, and ``status``,
``history``, the metrics and an alert say so, until an upgrade or repair brings A/B back. The count
lives on the ESP (esp/handback.py says why); a count that cannot be read is a spent budget.

Crash safety, in the order bless writes: the count first (a cut after it loses that hand-back, never
exceeds the budget), then the re-arms (each rename leaves a bootable ESP), then the booted statereset's
own rename. A good active or passive boot removes the count before its own rename (a cut in between
leaves the boot counted, and its next good boot blesses it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from bootkeeper.config import BootAssessment
from bootkeeper.esp import counter as counter_mod
from bootkeeper.esp import handback as file_mod
from bootkeeper.esp.counter import EntryState
from bootkeeper.esp.entries import TYPE1_DIR, TYPE2_DIR, Entry, Role, valid_type1_filename, valid_type2_filename
from bootkeeper.esp.store import EspStore

HANDED_BACK_TO = (Role.ACTIVE, Role.PASSIVE, Role.RECOVERY)


class Decision(StrEnum):
    HANDED_BACK = "handed-back"  # active, passive and recovery re-armed: the next boot is active
    STAYED = "stayed"  # the budget is spent: statereset stays
    NOTHING = "nothing"  # no active, passive or recovery entry on the ESP to hand back to


def tries_of(role: Role, cfg: BootAssessment) -> int:
    return cfg.tries if role.burns_own_tries else cfg.recovery_tries


Rename = tuple[str, str, str]  # directory, name, new name


def rearm_plan(store: EspStore, cfg: BootAssessment) -> list[Rename]:
    """Every active, passive and recovery entry file given fresh tries (a good one too: its next good
    boot is then counted, and blessing it gives the budget back). Two files of one entry (a stale
    sibling) would get the same name: the second is left as it is."""
    out: list[Rename] = []
    folders = ((TYPE1_DIR, ".conf", valid_type1_filename), (TYPE2_DIR, ".efi", valid_type2_filename))
    for directory, suffix, valid in folders:
        names = store.list_dir(directory)
        taken = {n.lower() for n in names}
        for name in names:
            if not valid(name):  # what systemd-boot would not list (temporaries, other suffixes)
                continue
            cn = counter_mod.parse(name, suffix)
            role = Role.from_stem(cn.stem)
            if role not in HANDED_BACK_TO:
                continue
            assert role is not None
            tries = tries_of(role, cfg)
            if cn.prefix is not None and cn.tail is not None:
                new = counter_mod.format_name(cn.prefix, cn.tail, tries)
            else:
                new = counter_mod.format_name(cn.stem, name[len(cn.stem) :], tries)
            if new == name:
                continue
            if new.lower() in taken:
                continue
            taken.add(new.lower())
            out.append((directory, name, new))
    return out


@dataclass(frozen=True)
class HandbackPlan:
    """What a good statereset boot's bless does about the hand-back, read and decided before any write."""

    decision: Decision
    before: file_mod.Count
    budget: int
    renames: tuple[Rename, ...] = ()

    @property
    def count_after(self) -> int | None:
        if self.decision is Decision.HANDED_BACK:
            assert self.before.count is not None
            return self.before.count + 1
        return self.before.count


def plan(store: EspStore, cfg: BootAssessment) -> HandbackPlan:
    before = file_mod.read(store)
    if before.spent(cfg.handbacks):
        return HandbackPlan(Decision.STAYED, before, cfg.handbacks)
    renames = rearm_plan(store, cfg)
    if not renames:
        return HandbackPlan(Decision.NOTHING, before, cfg.handbacks)
    return HandbackPlan(Decision.HANDED_BACK, before, cfg.handbacks, tuple(renames))


@dataclass
class Result:
    """What bless did about the hand-back (``bless --json`` key ``handback``)."""

    decision: Decision
    count: int | None  # hand-backs since the last good active or passive boot, after this bless
    budget: int
    actions: list[str] = field(default_factory=list)
    problem: str | None = None  # the count file could not be read

    @property
    def text(self) -> str:
        used = f"{self.count if self.count is not None else '?'} of {self.budget}"
        if self.decision is Decision.HANDED_BACK:
            return (
                f"statereset handed back to active, passive and recovery (hand-back {used} since the last good "
                "active or passive boot): the next boot is active"
            )
        if self.decision is Decision.NOTHING:
            return "statereset booted well, but there is no active, passive or recovery entry to hand back to"
        why = f": {self.problem}" if self.problem else ""
        return (
            f"statereset stays: its hand-back budget is spent ({used} since the last good active or passive "
            f"boot{why}); repair active or passive (bootkeeper upgrade) to leave it"
        )

    def as_json(self) -> dict[str, object]:
        return {
            "decision": self.decision.value,
            "count": self.count,
            "budget": self.budget,
            "actions": self.actions,
            "problem": self.problem,
            "text": self.text,
        }


def apply(store: EspStore, p: HandbackPlan) -> Result:
    """The count, then the re-arms (the order the module docstring gives)."""
    res = Result(p.decision, p.count_after, p.budget, problem=p.before.problem)
    if p.decision is not Decision.HANDED_BACK:
        return res
    assert res.count is not None
    store.write_atomic(file_mod.HANDBACKS, file_mod.render(res.count))
    res.actions.append(f"{file_mod.HANDBACKS}: handbacks={res.count} (budget {p.budget})")
    for directory, name, new in p.renames:
        store.rename(f"{directory}/{name}", f"{directory}/{new}")
        res.actions.append(f"handed back {directory}/{name} -> {new}")
    return res


def reset(store: EspStore) -> str | None:
    """A good active or passive boot: the budget is whole again (the count file goes)."""
    if not store.exists(file_mod.HANDBACKS):
        return None
    store.unlink(file_mod.HANDBACKS)
    return f"removed {file_mod.HANDBACKS}: a good {'/'.join(r.value for r in Role if r.burns_own_tries)} boot"


def record(boot_id: str, now: float, res: Result) -> dict[str, object]:
    """The boot history's line for it (assess/history.py reads it back onto the boot)."""
    from bootkeeper.assess import history

    return history.handback_record(boot_id, now, res.decision.value, res.count, res.budget)


# --- what status says --------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """The hand-back state as ``status`` shows it (``status --json`` key ``handback``)."""

    count: int | None
    budget: int
    spent: bool
    staying: bool  # statereset booted, the budget is spent and no active or passive entry can boot
    problem: str | None

    @property
    def text(self) -> str:
        used = f"{self.count if self.count is not None else '?'} of {self.budget}"
        why = f" ({self.problem})" if self.problem else ""
        if self.staying:
            return (
                f"STAYS ON STATERESET: hand-back budget spent ({used} since the last good active or passive "
                f"boot{why}); active and passive cannot boot: repair them (bootkeeper upgrade)"
            )
        if self.count is None:
            return f"hand-back budget spent{why}: the next good statereset boot stays"
        text = f"statereset handed back {used} time(s) since the last good active or passive boot"
        return f"{text}; the budget is spent: the next good statereset boot stays" if self.spent else text

    def as_json(self) -> dict[str, object]:
        return {
            "count": self.count,
            "budget": self.budget,
            "spent": self.spent,
            "staying": self.staying,
            "problem": self.problem,
            "text": self.text,
        }


def view(count: file_mod.Count, budget: int, booted: Role | None, entries: tuple[Entry, ...]) -> View | None:
    """None when there is nothing to say: no count file (no hand-back since the last good A/B boot) and
    the node does not stay on statereset (with ``handbacks: 0`` it stays without a count file)."""
    spent = count.spent(budget)
    ab = [e for e in entries if e.role is not None and e.role.burns_own_tries]
    staying = booted is Role.STATERESET and spent and all(e.state is EntryState.BAD for e in ab)
    if not count.present and not staying:
        return None
    return View(count.count, budget, spent, staying, count.problem)
