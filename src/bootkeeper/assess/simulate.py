"""Boots with injected faults on a scratch ESP, driving the same decision and bless code a node
runs: :func:`bootloader.choose` picks and renames as systemd-boot would, the outcome per role
decides whether ``bless good`` runs (a good boot reaches boot-complete.target), a kernel panic
resets the machine, and a failed service reboots only where ``reboot_on_failure`` says so — with
``active``, by bootkeeper-generator's own rule (:func:`generator.on_failure`: only while the
booted entry had a try left) — otherwise the node stays up on that entry, unblessed, and the run
ends there. A good statereset boot hands back to active, passive and recovery, or stays, as
bless decides it on the node (assess/handback.py): the count lives on the ESP copy simulate runs on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from bootkeeper.assess import bless as bless_mod
from bootkeeper.assess import bootloader, generator, handback, history
from bootkeeper.config import BootAssessment, RebootOnFailure
from bootkeeper.errors import UsageError
from bootkeeper.esp.efivars import LoaderVars
from bootkeeper.esp.entries import Role
from bootkeeper.esp.store import EspStore


class BootOutcome(StrEnum):
    SUCCESS = "success"
    PANIC = "panic"  # kernel panic, initrd failure, power loss: the machine resets
    SERVICE = "service"  # boots, but a service that decides the boot fails


@dataclass(frozen=True)
class Fault:
    role: Role
    count: int | None  # fail the first N boots of this role; None: always
    outcome: BootOutcome

    def fails(self, nth_boot_of_role: int) -> bool:
        return self.count is None or nth_boot_of_role <= self.count


_FAULT = re.compile(r"^(?P<role>[a-z]+)=(?P<count>always|\d+)(?::(?P<kind>panic|service))?$")


def parse_fault(text: str) -> Fault:
    m = _FAULT.match(text.strip())
    if not m:
        raise UsageError(f"--fail {text!r}: expected ROLE=always|N[:panic|service], e.g. active=always:service")
    try:
        role = Role(m["role"])
    except ValueError:
        raise UsageError(
            f"--fail {text!r}: role {m['role']!r} is not one of {', '.join(r.value for r in Role)}"
        ) from None
    count = None if m["count"] == "always" else int(m["count"])
    return Fault(role, count, BootOutcome(m["kind"] or "panic"))


@dataclass
class BootRecord:
    n: int
    entry: str
    role: str | None
    reason: str
    renamed_to: str | None
    outcome: BootOutcome
    verdict: str
    after: str  # what happens next
    actions: list[str] = field(default_factory=list)
    boot_count_path: str | None = None  # LoaderBootCountPath during this boot
    entry_selected: str | None = None  # LoaderEntrySelected during this boot
    time: float = 0.0
    handback: str | None = None  # a good statereset boot: handback.Decision's value

    def as_json(self) -> dict[str, object]:
        return {
            "boot": self.n,
            "entry": self.entry,
            "role": self.role,
            "reason": self.reason,
            "renamed_to": self.renamed_to,
            "outcome": self.outcome.value,
            "verdict": self.verdict,
            "after": self.after,
            "actions": self.actions,
            "handback": self.handback,
        }


# what follows a good statereset boot, by its hand-back decision (assess/handback.py)
_AFTER = {
    handback.Decision.HANDED_BACK.value: "up; handed back: active boots next",
    handback.Decision.STAYED.value: "up; stays on statereset (hand-back budget spent)",
    handback.Decision.NOTHING.value: "up; nothing to hand back to",
}


def _reboots(policy: RebootOnFailure, choice: bootloader.BootChoice, tries: int) -> bool:
    """As on a node: ``always`` is a static drop-in; ``active`` comes from bootkeeper-generator, which
    decides on active from what it reads at boot: ``LoaderBootCountPath``, ``LoaderEntrySelected``
    (the entry id) and the tries active is armed with."""
    role = choice.entry.role.value if choice.entry.role is not None else None
    return generator.on_failure(policy.value, role, choice.boot_count_path, choice.entry_id, tries)[0]


def simulate(
    store: EspStore,
    cfg: BootAssessment,
    faults: list[Fault],
    boots: int,
    *,
    reboot_on_failure: RebootOnFailure = RebootOnFailure.NEVER,
    efivars: LoaderVars | None = None,
    sdboot_version: str | int | None = None,
    history_root: Path | None = None,
    start_time: float = 0.0,
    seconds_per_boot: float = 90.0,
) -> list[BootRecord]:
    """With ``history_root``, each boot is also appended to the boot history there, as
    bootkeeper-boot.service and bless would (boot ids ``sim-N``, a simulated clock)."""
    by_role = {f.role: f for f in faults}
    seen: dict[Role | None, int] = {}
    out: list[BootRecord] = []
    for n in range(1, boots + 1):
        snap = store.snapshot(sdboot_version)
        choice = bootloader.choose(snap, efivars)
        if choice is None:
            out.append(BootRecord(n, "-", None, "no bootable entry", None, BootOutcome.PANIC, "-", "stops"))
            break
        # The boot loader's own act: rename before starting the kernel.
        if choice.rename_to is not None:
            store.rename(choice.entry.path, choice.path_after)
        role = choice.entry.role
        now = start_time + (n - 1) * seconds_per_boot
        if history_root is not None:
            history.append(history_root, history.boot_record(f"sim-{n}", now, choice.boot_count_path, snap))
        seen[role] = seen.get(role, 0) + 1
        fault = by_role.get(role) if role is not None else None
        outcome = fault.outcome if fault is not None and fault.fails(seen[role]) else BootOutcome.SUCCESS
        rec = BootRecord(
            n, choice.entry.path, role.value if role else None, choice.reason, choice.rename_to, outcome, "-", "reboot"
        )
        rec.boot_count_path = choice.boot_count_path
        rec.entry_selected = choice.entry_id
        rec.time = now
        if outcome is BootOutcome.SUCCESS:
            if choice.boot_count_path is None:
                rec.verdict = "good (not counted)"
            else:
                booted = bless_mod.parse_entry_path(choice.boot_count_path, "LoaderBootCountPath")
                res = bless_mod.bless(store, booted, bless_mod.Verdict.GOOD, cfg)
                rec.actions = res.actions
                rec.verdict = "not blessed (recovery)" if res.withheld else "good"
                if history_root is not None:
                    verdict = "withheld" if res.withheld else "good"
                    history.append(history_root, history.verdict_record(f"sim-{n}", now + 30, verdict))
                    if res.handback is not None:
                        history.append(history_root, handback.record(f"sim-{n}", now + 30, res.handback))
                rec.handback = res.handback.decision.value if res.handback is not None else None
            rec.after = _AFTER.get(rec.handback or "", "up; later reboot")
        elif outcome is BootOutcome.PANIC:
            rec.verdict = "none (reset)"
        else:
            rec.verdict = "not good (service failed)"
            if not _reboots(reboot_on_failure, choice, cfg.tries):
                rec.after = "stays up, not blessed"
                out.append(rec)
                break
            rec.after = "FailureAction=reboot"
        out.append(rec)
    return out
