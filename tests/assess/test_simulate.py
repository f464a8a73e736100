"""The simulator on scratch ESPs: sequences that follow from systemd-boot's counting and the
chain's rules (tries per role, reboot-on-failure), each worked out by hand in the comments."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootkeeper.assess.simulate import BootOutcome, parse_fault, simulate
from bootkeeper.config import BootAssessment, RebootOnFailure
from bootkeeper.errors import UsageError
from bootkeeper.esp import scratch
from bootkeeper.esp.entries import Role
from bootkeeper.esp.store import EspStore


def _run(tmp: Path, faults: list[str], boots: int, policy: str = "active", **kw: object) -> list[str]:
    root = scratch.make(tmp / "esp", tries=2, recovery_tries=2, **kw)  # type: ignore[arg-type]
    recs = simulate(
        EspStore(root),
        BootAssessment(tries=2, recovery_tries=2),
        [parse_fault(f) for f in faults],
        boots,
        reboot_on_failure=RebootOnFailure(policy),
        sdboot_version=257,
    )
    return [f"{r.role}:{r.verdict}:{r.after}" for r in recs]


def test_panicking_active_falls_back_and_passive_is_blessed(tmp_path: Path) -> None:
    # active+2 -> +1-1 -> +0-2 (bad), then passive+2 boots fine and is blessed
    got = _run(tmp_path, ["active=always"], 4)
    assert [g.split(":")[0] for g in got] == ["active", "active", "passive", "passive"]
    assert got[2].split(":")[1] == "good" and got[3].split(":")[1] == "good (not counted)"


def test_service_failure_reboots_on_active_only(tmp_path: Path) -> None:
    # the seed's advice: FailureAction=reboot on active only -> the node stays up on passive
    got = _run(tmp_path, ["active=always:service", "passive=always:service"], 10)
    assert got == [
        "active:not good (service failed):FailureAction=reboot",
        "active:not good (service failed):FailureAction=reboot",
        "passive:not good (service failed):stays up, not blessed",
    ]


def test_reboot_always_loops_through_to_statereset_which_hands_back(tmp_path: Path) -> None:
    got = _run(tmp_path, ["active=always:service", "passive=always:service", "recovery=always"], 8, policy="always")
    roles = [g.split(":")[0] for g in got]
    assert roles == ["active"] * 2 + ["passive"] * 2 + ["recovery"] * 2 + ["statereset", "active"]
    assert got[6] == "statereset:good:up; handed back: active boots next"


def test_recovery_is_not_blessed_and_falls_through(tmp_path: Path) -> None:
    got = _run(tmp_path, ["active=always", "passive=always"], 7)
    roles = [g.split(":")[0] for g in got]
    assert roles == ["active", "active", "passive", "passive", "recovery", "recovery", "statereset"]
    assert all("not blessed (recovery)" in g for g in got[4:6])


def test_transient_fault(tmp_path: Path) -> None:
    got = _run(tmp_path, ["active=1"], 3)
    assert [g.split(":")[:2] for g in got] == [
        ["active", "none (reset)"],
        ["active", "good"],
        ["active", "good (not counted)"],
    ]


def test_default_glob_pins_bad_active(tmp_path: Path) -> None:
    got = _run(tmp_path, ["active=always"], 4, default="active*")
    assert [g.split(":")[0] for g in got] == ["active"] * 4


@pytest.mark.parametrize("bad", ["active", "active=", "active=x", "active=2:melt", "king=2"])
def test_fault_grammar(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_fault(bad)
    assert parse_fault("passive=2:service").outcome is BootOutcome.SERVICE


@pytest.mark.parametrize("version", [252, 257])
@pytest.mark.parametrize(
    "setup",
    [
        # loader.conf default pins active: +2 -> +1-1 -> +0-2 (both reboot: a try was left), then
        # +0-2 -> +0-3 is booted with no tries left; a reboot would boot it again, forever.
        {"default": "active*"},
        # active is the only entry: the same.
        {"roles": (Role.ACTIVE,)},
    ],
)
def test_service_failure_on_a_pinned_bad_active_stays_up(
    tmp_path: Path, version: int, setup: dict[str, object]
) -> None:
    root = scratch.make(tmp_path / "esp", tries=2, recovery_tries=2, **setup)  # type: ignore[arg-type]
    recs = simulate(
        EspStore(root),
        BootAssessment(tries=2, recovery_tries=2),
        [parse_fault("active=always:service")],
        20,
        reboot_on_failure=RebootOnFailure.ACTIVE,
        sdboot_version=version,
    )
    assert [(r.role, r.after) for r in recs] == [
        ("active", "FailureAction=reboot"),
        ("active", "FailureAction=reboot"),
        ("active", "stays up, not blessed"),
    ]
    assert [r.boot_count_path for r in recs][-1] == "\\loader\\entries\\active+0-3.conf"


@pytest.mark.parametrize("version", [252, 257])
@pytest.mark.parametrize("tries", [1, 2, 3])
@pytest.mark.parametrize("setup", [{}, {"default": "active*"}, {"roles": (Role.ACTIVE,)}])
def test_the_simulator_and_the_generator_reboot_alike(
    tmp_path: Path, version: int, tries: int, setup: dict[str, object]
) -> None:
    """One reboot-on-failure rule (generator.on_failure): on every boot where the simulator's service
    fails, the generator, given what that boot sets (the mode file, LoaderBootCountPath,
    LoaderEntrySelected, the recorded tries), writes FailureAction=reboot exactly when the simulator
    reboots."""
    import json

    from bootkeeper.assess import generator
    from helpers import fake_efivars

    esp = scratch.make(tmp_path / "esp", tries=tries, recovery_tries=tries, **setup)  # type: ignore[arg-type]
    faults = [parse_fault(f"{r}=always:service") for r in ("active", "passive")]
    recs = simulate(
        EspStore(esp),
        BootAssessment(tries=tries, recovery_tries=tries),
        faults,
        20,
        reboot_on_failure=RebootOnFailure.ACTIVE,
        sdboot_version=version,
    )
    failed = [r for r in recs if r.outcome is BootOutcome.SERVICE]
    assert failed and failed[-1].after == "stays up, not blessed"
    for n, rec in enumerate(failed):
        root = tmp_path / f"node{n}"
        (root / "etc/bootkeeper").mkdir(parents=True)
        (root / generator.CONFIG).write_text(
            json.dumps({"version": 1, "services": {"k3s.service": "active"}, "tries": tries})
        )
        (root / "run/cos").mkdir(parents=True)
        (root / f"run/cos/{rec.role}_mode").touch()
        values = {"LoaderEntrySelected": rec.entry_selected or ""}
        if rec.boot_count_path is not None:
            values["LoaderBootCountPath"] = rec.boot_count_path
        fake_efivars(root / generator.EFIVARS, **values)
        files, why = generator.plan(str(root))
        assert bool(files) == (rec.after == "FailureAction=reboot"), (rec, why)
