"""``simulate``'s run: boots with injected faults (assess/simulate.py) on a copy of an ESP or on a
scratch one, in a temporary folder that is gone afterwards."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bootkeeper.assess.simulate import BootRecord, Fault
    from bootkeeper.config import BootAssessment, RebootOnFailure

BOOT_LOOP = (
    "lint BK103: FailureAction=reboot on every entry: a service that fails everywhere reboots "
    "passive and recovery too (boot loop); use reboot_on_failure: active"
)


@dataclass(frozen=True)
class Simulation:
    """The boots, and the entry files (Type #1 and UKIs, ESP-relative) with the names the boots left."""

    boots: tuple[BootRecord, ...]
    entries_after: tuple[str, ...]


def reboot_policy(cfg: BootAssessment, given: str | None) -> RebootOnFailure:
    """``--reboot-on-failure``, else the widest ``reboot_on_failure`` of the enrolled services, else active."""
    from bootkeeper.config import RebootOnFailure

    if given is None:
        policies = [s.reboot_on_failure.value for s in cfg.services] or ["active"]
        given = max(policies, key=["never", "active", "always"].index)
    return RebootOnFailure(given)


def run(
    esp: Path | None,
    cfg: BootAssessment,
    faults: list[Fault],
    boots: int,
    reboot_on_failure: RebootOnFailure,
    *,
    default: str | None,
    sdboot_version: str | None,
) -> Simulation:
    """``boots`` boots on a copy of ``esp`` (never changed), or on a scratch ESP (``default``: its
    loader.conf default pattern)."""
    from bootkeeper.assess.simulate import simulate
    from bootkeeper.esp import scratch
    from bootkeeper.esp.store import EspStore

    with tempfile.TemporaryDirectory(prefix="bootkeeper-sim-") as tmp:
        work = Path(tmp) / "esp"
        if esp is not None:
            shutil.copytree(esp, work, symlinks=False)
        else:
            scratch.make(work, tries=cfg.tries, recovery_tries=cfg.recovery_tries, default=default)
        records = simulate(
            EspStore(work), cfg, faults, boots, reboot_on_failure=reboot_on_failure, sdboot_version=sdboot_version
        )
        final = sorted(
            str(p.relative_to(work))
            for d, pattern in (("loader/entries", "*.conf"), ("EFI/Linux", "*.efi"))
            for p in (work / d).glob(pattern)
        )
    return Simulation(tuple(records), tuple(final))
