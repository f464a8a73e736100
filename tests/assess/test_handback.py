"""Statereset hands back (issue 26 item 9, seed 002): a good statereset boot re-arms active, passive and
recovery from the ESP and the next boot is active; ``boot_assessment.handbacks`` hand-backs in a row,
then statereset stays and status, history and the metrics say so. On scratch ESPs with the real bless,
the boot loader model and simulate; the real systemd-boot boots the same sequence in
tests/vm/test_vm_bootcount.py, the node in tests/node/test_node.py (scenario 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bootkeeper.assess import bless, bootloader
from bootkeeper.assess import handback as handback_mod
from bootkeeper.assess.simulate import BootOutcome, Fault, simulate
from bootkeeper.config import BootAssessment, RebootOnFailure, load
from bootkeeper.errors import ConfigError, MalformedError
from bootkeeper.esp import handback as handback_file
from bootkeeper.esp import scratch
from bootkeeper.esp.entries import Role
from bootkeeper.esp.store import EspStore
from bootkeeper.node import metrics
from bootkeeper.node import status as joined
from helpers import bk, entry_body, esp_with, fake_efivars, names

START = 1795000000.0
CFG = BootAssessment(tries=2, recovery_tries=2)
NOTHING_BOOTS = [Fault(Role.ACTIVE, None, BootOutcome.PANIC), Fault(Role.PASSIVE, None, BootOutcome.PANIC)]


def _all_bad(root: Path) -> Path:
    """A/B and recovery used their tries; statereset is booting its first try."""
    return esp_with(
        root,
        {
            "active+0-2.conf": entry_body("active"),
            "passive+0-2.conf": entry_body("passive"),
            "recovery+0-2.conf": entry_body("recovery"),
            "statereset+1-1.conf": entry_body("statereset"),
        },
    )


STATERESET = bless.parse_entry_path("loader/entries/statereset+1-1.conf", "test")


def _next_role(root: Path) -> str | None:
    c = bootloader.choose(EspStore(root).snapshot(257))
    assert c is not None and c.entry.role is not None
    return c.entry.role.value


# --- the count file ----------------------------------------------------------------------------


def test_count_file_round_trips_and_is_no_file_the_boot_loader_or_stub_loads() -> None:
    for n in (0, 1, 7, handback_file.MAX_COUNT):
        assert handback_file.parse(handback_file.render(n), "f") == n
    assert handback_file.parse(b"handbacks = 3\r\n\n# a comment\n", "f") == 3
    name = handback_file.HANDBACKS.rsplit("/", 1)[-1]
    assert f"loader/{name}" == handback_file.HANDBACKS and "." not in name  # no .conf/.efi/.cred/.raw


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "no 'handbacks=N' line"),
        (b"handbacks=1\nhandbacks=2\n", "line 2: 'handbacks' set twice"),
        (b"tries=1\n", "line 1: 'tries=1' is not 'handbacks=N'"),
        (b"handbacks=-1\n", "line 1: handbacks: '-1' is not a whole number from 0 to 1000"),
        (b"handbacks=1001\n", "line 1: handbacks: '1001'"),
        (b"handbacks=" + b"9" * 5000 + b"\n", "bytes, more than the 1024"),
        (b"handbacks=\xff\n", "not UTF-8 text (byte 10)"),
        ("handbacks=\u0663\n".encode(), "is not a whole number"),  # int() would take the Arabic-Indic 3
        (b"handbacks=1\x00\n", "is not a whole number"),
    ],
)
def test_hostile_count_files_give_one_line_naming_the_file(data: bytes, words: str) -> None:
    with pytest.raises(MalformedError) as ei:
        handback_file.parse(data, "/efi/loader/bootkeeper-handbacks")
    msg = str(ei.value)
    assert msg.startswith("/efi/loader/bootkeeper-handbacks: ") and words in msg and "\n" not in msg


def test_handbacks_setting_is_validated_at_the_edge(tmp_path: Path) -> None:
    p = tmp_path / "a.yaml"
    p.write_text("boot_assessment:\n  handbacks: 3\n")
    assert load([p]).boot_assessment.handbacks == 3
    assert load([]).boot_assessment.handbacks == 1
    for bad, words in (("-1", "out of range 0..100"), ("yes", "is not a whole number"), ("'1'", "not a whole")):
        p.write_text(f"boot_assessment:\n  handbacks: {bad}\n")
        with pytest.raises(ConfigError, match=f"a.yaml: boot_assessment.handbacks: .*{words}"):
            load([p])


# --- bless on a good statereset boot ---------------------------------------------------------------


def test_good_statereset_boot_hands_back_and_the_next_boot_is_active(tmp_path: Path) -> None:
    root = _all_bad(tmp_path / "esp")
    assert _next_role(root) == "statereset"  # before: A/B and recovery are bad
    res = bless.bless(EspStore(root), STATERESET, bless.Verdict.GOOD, CFG)
    assert names(root) == ["active+2.conf", "passive+2.conf", "recovery+2.conf", "statereset+2.conf"]
    assert (root / handback_file.HANDBACKS).read_text().splitlines()[-1] == "handbacks=1"
    assert res.handback is not None and res.handback.decision is handback_mod.Decision.HANDED_BACK
    assert res.as_json()["handback"]["count"] == 1  # type: ignore[index]
    assert _next_role(root) == "active"
    # the order of the writes: the count first (a cut after it never exceeds the budget)
    assert res.actions[0].startswith(f"{handback_file.HANDBACKS}: handbacks=1")
    assert res.actions[-1] == "renamed loader/entries/statereset+1-1.conf -> statereset+2.conf"
    # status of the booted entry: blessed (re-armed), not "unknown"
    assert bless.status(EspStore(root), STATERESET) == "good"


def test_budget_spent_statereset_stays_and_keeps_its_counter(tmp_path: Path) -> None:
    root = _all_bad(tmp_path / "esp")
    (root / handback_file.HANDBACKS).write_bytes(handback_file.render(1))
    res = bless.bless(EspStore(root), STATERESET, bless.Verdict.GOOD, CFG)
    assert res.handback is not None and res.handback.decision is handback_mod.Decision.STAYED
    assert names(root) == ["active+0-2.conf", "passive+0-2.conf", "recovery+0-2.conf", "statereset+2.conf"]
    assert "statereset stays: its hand-back budget is spent (1 of 1" in res.handback.text
    assert _next_role(root) == "statereset"


def test_handbacks_zero_never_hands_back(tmp_path: Path) -> None:
    root = _all_bad(tmp_path / "esp")
    res = bless.bless(
        EspStore(root), STATERESET, bless.Verdict.GOOD, BootAssessment(tries=2, recovery_tries=2, handbacks=0)
    )
    assert res.handback is not None and res.handback.decision is handback_mod.Decision.STAYED
    assert not (root / handback_file.HANDBACKS).exists()
    assert _next_role(root) == "statereset"


def test_a_damaged_count_is_a_spent_budget_and_a_good_active_boot_removes_it(tmp_path: Path) -> None:
    root = _all_bad(tmp_path / "esp")
    (root / handback_file.HANDBACKS).write_bytes(b"handbacks=lots\n")
    res = bless.bless(EspStore(root), STATERESET, bless.Verdict.GOOD, CFG)
    assert res.handback is not None and res.handback.decision is handback_mod.Decision.STAYED
    assert (
        res.handback.problem is not None and "bootkeeper-handbacks: line 1: handbacks: 'lots'" in res.handback.problem
    )
    # the operator repairs active (an upgrade gives it fresh tries); its good boot gives the budget back
    (root / "loader/entries/active+0-2.conf").rename(root / "loader/entries/active+1-1.conf")
    good = bless.bless(
        EspStore(root), bless.parse_entry_path("loader/entries/active+1-1.conf", "t"), bless.Verdict.GOOD, CFG
    )
    assert not (root / handback_file.HANDBACKS).exists()
    assert good.actions[0].startswith(f"removed {handback_file.HANDBACKS}")
    assert "statereset+2.conf" in names(root)  # re-armed as recovery is: counted, so it can hand back again


def test_hand_back_re_arms_good_entries_too_and_never_two_files_onto_one(tmp_path: Path) -> None:
    """A reset picked by hand (one-shot) while active is good: active gets a counter again, so its next
    good boot is blessed and gives the budget back; a stale sibling is left, not renamed over."""
    root = esp_with(
        tmp_path / "esp",
        {
            "active.conf": entry_body("active"),
            "active+0-2.conf": entry_body("active"),
            "passive.conf": entry_body("passive"),
            "recovery+1-1.conf": entry_body("recovery"),
            "statereset+1-1.conf": entry_body("statereset"),
            "other+0-1.conf": "title other\nlinux /vmlinuz\n",
        },
    )
    (root / "loader/entries/active.txt").write_text("not an entry")
    bless.bless(EspStore(root), STATERESET, bless.Verdict.GOOD, CFG)
    assert names(root) == [
        "active+2.conf",
        "active.conf",
        "active.txt",
        "other+0-1.conf",
        "passive+2.conf",
        "recovery+2.conf",
        "statereset+2.conf",
    ]


def test_type2_ukis_are_handed_back_too(tmp_path: Path) -> None:
    root = tmp_path / "esp"
    (root / "EFI/Linux").mkdir(parents=True)
    (root / "loader").mkdir()
    for n in ("active+0-2.efi", "passive+0-2.efi", "recovery+0-2.efi", "statereset+1-1.efi"):
        (root / "EFI/Linux" / n).write_bytes(b"MZ")
    booted = bless.parse_entry_path("\\EFI\\Linux\\statereset+1-1.efi", "LoaderBootCountPath")
    bless.bless(EspStore(root), booted, bless.Verdict.GOOD, CFG)
    assert sorted(p.name for p in (root / "EFI/Linux").iterdir()) == [
        "active+2.efi",
        "passive+2.efi",
        "recovery+2.efi",
        "statereset+2.efi",
    ]


def test_bless_cli_says_it_last_and_in_json(tmp_path: Path) -> None:
    root = _all_bad(tmp_path / "esp")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("boot_assessment: {tries: 2, recovery_tries: 2}\n")
    args = ["--esp", str(root), "--entry", "loader/entries/statereset+1-1.conf", "--config", str(cfg)]
    args += ["--root", str(tmp_path / "root")]
    r = bk("bless", "good", *args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == (
        "statereset handed back to active, passive and recovery (hand-back 1 of 1 since the last good active "
        "or passive boot): the next boot is active"
    )
    j = json.loads(bk("bless", "good", *args, "--json").stdout)  # blessed already: budget spent, nothing moves
    assert j["handback"]["decision"] == "stayed" and j["note"] == "already good: loader/entries/statereset+2.conf"


# --- simulate, and what status, history and the metrics say -------------------------------------


def _run(tmp: Path, cfg: BootAssessment, boots: int) -> tuple[Path, Path, list[str]]:
    esp = scratch.make(tmp / "esp", tries=cfg.tries, recovery_tries=cfg.recovery_tries)
    root = tmp / "root"
    recs = simulate(
        EspStore(esp),
        cfg,
        NOTHING_BOOTS,
        boots,
        reboot_on_failure=RebootOnFailure.ACTIVE,
        history_root=root,
        start_time=START,
    )
    return esp, root, [f"{r.role}:{r.handback or '-'}" for r in recs]


@pytest.mark.parametrize("budget", [1, 2])
def test_simulate_hands_back_budget_times_then_stays(tmp_path: Path, budget: int) -> None:
    cfg = BootAssessment(tries=1, recovery_tries=1, handbacks=budget)
    cycle = ["active:-", "passive:-", "recovery:-", "statereset:handed-back"]
    _, _, got = _run(tmp_path, cfg, 4 * (budget + 1) + 2)
    assert got == cycle * budget + [*cycle[:3], "statereset:stayed", "statereset:stayed", "statereset:stayed"]


def test_status_history_and_metrics_say_it_stays_on_statereset(tmp_path: Path) -> None:
    cfg = BootAssessment(tries=1, recovery_tries=1)
    esp, root, got = _run(tmp_path, cfg, 9)
    assert got[-2:] == ["statereset:stayed", "statereset:stayed"]
    ev = fake_efivars(
        tmp_path / "ev",
        LoaderBootCountPath="\\loader\\entries\\statereset+0-1.conf",
        LoaderEntrySelected="statereset+1.conf",
    )
    shown = joined.gather(root, esp, ev, 257, read_services=None)
    hb = shown.as_json()["handback"]
    assert hb == {
        "count": 1,
        "budget": 1,
        "spent": True,
        "staying": True,
        "problem": None,
        "text": hb["text"],
    }
    assert hb["text"].startswith("STAYS ON STATERESET: hand-back budget spent (1 of 1")
    text = bk("status", "--root", str(root), "--esp", str(esp), "--efivars", str(ev)).stdout
    assert f"hand-back: {hb['text']}" in text.splitlines()
    fams = {f.name: f.samples for f in metrics.build(shown, None, 0.0)}
    assert fams["bootkeeper_statereset_stays"] == [((), 1.0)]
    assert fams["bootkeeper_statereset_handbacks"] == [((), 1.0)]
    assert fams["bootkeeper_statereset_handback_budget"] == [((), 1.0)]
    hist = json.loads(bk("history", "show", "--root", str(root), "--json").stdout)["boots"]
    assert [b["handback"]["decision"] if b["handback"] else None for b in hist] == [None] * 3 + ["handed-back"] + [
        None
    ] * 3 + ["stayed", "stayed"]
    shown_text = bk("history", "show", "--root", str(root)).stdout
    assert "good; handed back to active (1 of 1)" in shown_text
    assert "good; stays on statereset: hand-back budget spent (1 of 1)" in shown_text
    # a budget of 2 in the config: the same ESP has one hand-back left, and status says so
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("boot_assessment:\n  handbacks: 2\n")
    more = bk(
        "status", "--root", str(root), "--esp", str(esp), "--efivars", str(ev), "--config", str(cfg_file), "--json"
    )
    assert json.loads(more.stdout)["handback"]["staying"] is False


def test_status_after_a_hand_back_and_after_a_good_active_boot(tmp_path: Path) -> None:
    cfg = BootAssessment(tries=1, recovery_tries=1)
    esp, root, got = _run(tmp_path, cfg, 4)
    assert got[-1] == "statereset:handed-back"
    ev = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\statereset+0-1.conf")
    shown = joined.gather(root, esp, ev, 257, read_services=None)
    assert shown.node.booted.blessed == "good"  # re-armed statereset+1.conf: blessed, not "unknown"
    # why it booted is how the entries stood when it started (this boot's history record), not re-armed
    why = shown.node.booted.why
    assert why is not None
    assert why.text.startswith("statereset booted as a fallback: active used its 1 tries, last try"), why.text
    assert [f["role"] for f in why.fallbacks] == ["active", "passive", "recovery"]
    assert shown.node.handback is not None and not shown.node.handback.staying
    assert shown.node.handback.text == (
        "statereset handed back 1 of 1 time(s) since the last good active or passive boot; the budget is spent: "
        "the next good statereset boot stays"
    )
    fams = {f.name: f.samples for f in metrics.build(shown, None, 0.0)}
    assert fams["bootkeeper_statereset_stays"] == [((), 0.0)]
    # the next boot is active; it boots well: the budget is whole again and status has nothing to say
    recs = simulate(EspStore(esp), cfg, [], 1, history_root=root, start_time=START + 3600)
    assert recs[0].role == "active" and recs[0].verdict == "good"
    assert not (esp / handback_file.HANDBACKS).exists()
    ev2 = fake_efivars(tmp_path / "ev2", LoaderBootCountPath="\\loader\\entries\\active+0-1.conf")
    assert joined.gather(root, esp, ev2, 257, read_services=None).node.handback is None


def test_a_damaged_count_file_is_a_status_warning(tmp_path: Path) -> None:
    esp = scratch.make(tmp_path / "esp")
    (esp / handback_file.HANDBACKS).write_bytes(b"\xff\xfe")
    r = bk("status", "--root", str(tmp_path / "root"), "--esp", str(esp), "--efivars", str(tmp_path / "none"))
    assert r.returncode == 0, r.stderr
    assert "warning: " in r.stdout and "bootkeeper-handbacks: not UTF-8 text" in r.stdout
    assert "hand-back: hand-back budget spent (" in r.stdout and "the next good statereset boot stays" in r.stdout


def test_history_skips_a_malformed_handback_line(tmp_path: Path) -> None:
    from bootkeeper.assess import history

    text = "\n".join(
        [
            json.dumps(history.boot_record("b1", START, "loader/entries/statereset+0-1.conf", None)),
            json.dumps({"type": "handback", "boot_id": "b1", "time": START, "decision": "explode", "budget": 1}),
            json.dumps({"type": "handback", "boot_id": "b1", "time": START, "decision": "stayed", "budget": True}),
        ]
    )
    h = history.parse_all(text, "boots.jsonl")
    assert h.boots[0].handback is None and len(h.warnings) == 2
    assert "boots.jsonl:2: skipped a malformed line (ValueError: decision 'explode'" in h.warnings[0]


class Crash(OSError):
    pass


def test_a_crash_at_any_step_never_hands_back_beyond_the_budget(tmp_path: Path) -> None:
    """The count is written before the first re-arm: whatever a power cut leaves, an A/B or recovery
    entry with fresh tries means the count says 1 (test_power_loss.py: the ESP boots after every cut)."""
    seen: list[str] = []
    bless.bless(EspStore(_all_bad(tmp_path / "count"), fault=seen.append), STATERESET, bless.Verdict.GOOD, CFG)
    first_rearm = next(i for i, s in enumerate(seen) if s.startswith("rename:active"))
    assert seen[0] == "write:bootkeeper-handbacks" and seen[first_rearm - 1] == "fsync-dir:loader", seen
    for k in range(len(seen)):
        root = _all_bad(tmp_path / f"cut-{k}")
        steps = iter(range(len(seen)))

        def fault(name: str, k: int = k, steps: object = steps) -> None:
            if next(steps) == k:  # type: ignore[call-overload]
                raise Crash(f"power cut at {name}")

        with pytest.raises(Crash):
            bless.bless(EspStore(root, fault=fault), STATERESET, bless.Verdict.GOOD, CFG)
        rearmed = [n for n in names(root) if n.endswith("+2.conf") and not n.startswith("statereset")]
        count = handback_file.read(EspStore(root)).count
        assert not rearmed or count == 1, (seen[k], names(root), count)
        # and the next statereset boot decides by that count: never a second hand-back
        assert count in (0, 1)
