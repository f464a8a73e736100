"""``bootkeeper repair`` without the network (docs/updates.md, "Repair"): the role it runs on, statereset's
hand-back left to itself while A/B can boot, a repair attempt in the boot history as ``status``, ``motd``,
``history show`` and ``metrics`` show it (the metrics checked by the real ``promtool``), and the units
verified by the real ``systemd-analyze``. The repair flow itself, which needs node/update.py's fetch and
transaction, is tests/update/pending_repair_flow.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bootkeeper.assess import history
from bootkeeper.esp import scratch
from helpers import bk, fake_efivars, install_units, systemd_verify, tree

T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


def _node(tmp: Path, role: str, ab_bad: bool = False, cos: bool = True) -> tuple[Path, Path, Path]:
    """A scratch node booted as ``role`` (Kairos's /run/cos/<role>_mode, else LoaderEntrySelected), its
    ESP (active and passive used up when ``ab_bad``) and efivars."""
    root, esp = tmp / "root", scratch.make(tmp / "esp")
    root.mkdir()
    if ab_bad:
        for r in ("active", "passive"):
            (esp / f"loader/entries/{r}+3.conf").rename(esp / f"loader/entries/{r}+0-3.conf")
    if cos:
        (root / "run/cos").mkdir(parents=True)
        (root / f"run/cos/{role}_mode").touch()
        ev = fake_efivars(root / "sys/firmware/efi/efivars")
    else:
        ev = fake_efivars(root / "sys/firmware/efi/efivars", LoaderEntrySelected=f"{role}+2-1.conf")
    return root, esp, ev


@pytest.mark.parametrize("role", ["active", "passive"])
def test_repair_refuses_on_an_active_or_passive_boot_and_records_nothing(tmp_path: Path, role: str) -> None:
    root, esp, _ = _node(tmp_path, role)
    before = tree(esp)
    r = bk("repair", "--root", root, "--esp", esp, "--no-reboot")
    assert r.returncode == 3, r.stderr
    assert r.stderr.splitlines()[0] == (
        f"bootkeeper: error: booted {role} ({root}/run/cos/{role}_mode): repair runs on recovery and "
        "statereset boots only"
    )
    assert "hint: --force repairs from this boot too" in r.stderr
    assert tree(esp) == before
    assert not (root / history.HISTORY).exists()


def test_the_role_comes_from_loader_entry_selected_without_kairos_files(tmp_path: Path) -> None:
    root, esp, _ = _node(tmp_path, "passive", cos=False)
    r = bk("repair", "--root", root, "--esp", esp, "--no-reboot")
    assert r.returncode == 3
    assert "booted passive (LoaderEntrySelected=passive+2-1.conf)" in r.stderr


def test_statereset_with_a_bootable_active_or_passive_leaves_it_to_the_hand_back(tmp_path: Path) -> None:
    root, esp, _ = _node(tmp_path, "statereset")
    before = tree(esp)
    r = bk("repair", "--root", root, "--esp", esp, "--no-reboot", "--config", "/dev/null")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "nothing to repair: active or passive can boot: statereset hands back\n"
    assert tree(esp) == before
    assert not (root / history.HISTORY).exists()


@pytest.mark.parametrize(
    ("role", "ab_bad", "code", "line"),
    [
        ("active", False, 1, "no repair: booted active"),
        ("passive", True, 1, "no repair: booted passive"),
        ("statereset", False, 1, "no repair: statereset, and active or passive can boot"),
        ("statereset", True, 0, "repair: booted statereset"),
        ("recovery", False, 0, "repair: booted recovery"),
    ],
)
def test_needed_is_the_units_condition(tmp_path: Path, role: str, ab_bad: bool, code: int, line: str) -> None:
    """``repair --needed`` (ExecCondition=): 0 runs the unit, 1 skips it; it changes nothing."""
    root, esp, _ = _node(tmp_path, role, ab_bad)
    before = tree(esp)
    r = bk("repair", "--needed", "--root", root, "--esp", esp)
    assert (r.returncode, r.stdout.startswith(line)) == (code, True), (r.stdout, r.stderr)
    if role == "statereset" and ab_bad:
        assert (
            "loader/entries/active+0-3.conf: no tries left; loader/entries/passive+0-3.conf: no tries left" in r.stdout
        )
    assert tree(esp) == before


def _recorded(root: Path) -> None:
    """Two attempts as node/repair.py records them: one failed on recovery, then one that repaired."""
    history.append(
        root,
        history.repair_record(
            "b1", T0, "recovery", "oci:127.0.0.1:5000/os/node:stable", None, "failed",
            "oci:127.0.0.1:5000/os/node:stable: connection refused; no removable medium holds a release",
        ),
    )  # fmt: skip
    history.append(
        root,
        history.repair_record("b2", T0 + 600, "recovery", "ocifile:/run/bootkeeper/media/vdb", "2.0", "repaired", None),
    )


def test_a_repair_record_reads_back_and_a_malformed_one_is_skipped(tmp_path: Path) -> None:
    _recorded(tmp_path)
    with (tmp_path / history.HISTORY).open("a") as f:
        f.write(json.dumps({"type": "repair", "boot_id": "b3", "time": T0, "result": "fixed"}) + "\n")
    h = history.read_all(tmp_path)
    assert [(r.boot_id, r.role, r.version, r.result) for r in h.repairs] == [
        ("b1", "recovery", None, "failed"),
        ("b2", "recovery", "2.0", "repaired"),
    ]
    assert h.repairs[0].reason == (
        "oci:127.0.0.1:5000/os/node:stable: connection refused; no removable medium holds a release"
    )
    assert len(h.warnings) == 1 and "result 'fixed' is not one of repaired, failed" in h.warnings[0]


def test_compaction_keeps_the_newest_repairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "LIMIT", 4096)
    for n in range(60):
        history.append(tmp_path, history.repair_record(f"b{n}", T0 + n, "recovery", None, None, "failed", "x" * 40))
    kept = [r.boot_id for r in history.read_all(tmp_path).repairs]
    # each compaction keeps the newest KEEP_REPAIRS; lines appended since come on top, below LIMIT
    assert kept[-1] == "b59" and "b0" not in kept and len(kept) < 60
    assert (tmp_path / history.HISTORY).stat().st_size <= 4096 + 200


def test_history_status_and_motd_show_the_repairs(tmp_path: Path) -> None:
    root, esp, ev = _node(tmp_path, "active")
    _recorded(root)
    r = bk("history", "show", "--root", root)
    assert r.returncode == 0, r.stderr
    assert "2027-01-15 08:00:00 UTC repair on recovery from oci:127.0.0.1:5000/os/node:stable: failed: " in r.stdout
    assert (
        "2027-01-15 08:10:00 UTC repair on recovery from ocifile:/run/bootkeeper/media/vdb: repaired (2.0)\n"
        in r.stdout
    )
    doc = json.loads(bk("history", "show", "--root", root, "--json").stdout)
    assert [x["result"] for x in doc["repairs"]] == ["failed", "repaired"]
    r = bk("status", "--root", root, "--esp", esp, "--efivars", ev)
    assert r.returncode == 0, r.stderr
    assert "last repair: 2027-01-15 08:10:00 UTC repair on recovery from ocifile:" in r.stdout
    doc = json.loads(bk("status", "--root", root, "--esp", esp, "--efivars", ev, "--json").stdout)
    assert [x["boot_id"] for x in doc["repairs"]] == ["b1", "b2"]
    r = bk("motd", "--root", root, "--esp", esp, "--efivars", ev)
    assert r.returncode == 0, r.stderr
    assert "  last repair: 2027-01-15 08:10:00 UTC" in (root / "run/motd.d/bootkeeper").read_text()


def test_metrics_show_the_last_repair_and_promtool_accepts_them(tmp_path: Path) -> None:
    from test_metrics import promtool

    root, esp, ev = _node(tmp_path, "recovery")
    args = ("--root", root, "--esp", esp, "--efivars", ev)
    fams = json.loads(bk("metrics", *args, "--json").stdout)
    assert fams["bootkeeper_repair_attempts"][0]["value"] == 0
    assert fams["bootkeeper_repair_last_attempt_timestamp_seconds"] == []
    assert {s["labels"]["result"]: s["value"] for s in fams["bootkeeper_repair_last_result"]} == {
        "repaired": 0,
        "failed": 0,
    }
    history.append(root, history.repair_record("b1", T0, "recovery", None, None, "failed", "no medium"))
    fams = json.loads(bk("metrics", *args, "--json").stdout)
    assert fams["bootkeeper_repair_attempts"][0]["value"] == 1
    assert fams["bootkeeper_repair_last_attempt_timestamp_seconds"][0]["value"] == T0
    assert {s["labels"]["result"]: s["value"] for s in fams["bootkeeper_repair_last_result"]} == {
        "repaired": 0,
        "failed": 1,
    }
    text = bk("metrics", *args, "-o", tmp_path / "bootkeeper.prom")
    assert text.returncode == 0, text.stderr
    prom = (tmp_path / "bootkeeper.prom").read_text()
    assert 'bootkeeper_repair_last_result{result="failed"} 1.0' in prom
    p = subprocess.run([promtool(), "check", "metrics"], input=prom, capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_update_and_repair_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    units = install_units(
        tmp_path, "update:\n  schedule: '*-*-* 03:00:00'\n  randomized_delay: 2h\n  repair_timeout: 30min\n"
    )
    timer = (units / "bootkeeper-update.timer").read_text()
    assert "OnCalendar=*-*-* 03:00:00\nRandomizedDelaySec=2h\nPersistent=true\n" in timer
    repair = (units / "bootkeeper-repair.service").read_text()
    assert "TimeoutStartSec=30min\n" in repair
    assert "repair --needed\n" in repair and "DefaultDependencies=no\n" in repair
    assert (units / "timers.target.wants/bootkeeper-update.timer").is_symlink()
    assert (units / "multi-user.target.wants/bootkeeper-repair.service").is_symlink()
    # never part of the boot assessment: nothing of boot-complete.target pulls or waits for it
    assert "boot-complete" not in repair.replace("bootkeeper-bless.service", "")
    r = systemd_verify(units, "bootkeeper-update.service", "bootkeeper-update.timer", "bootkeeper-repair.service")
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_a_calendar_systemd_refuses_fails_verify(tmp_path: Path) -> None:
    """The control: the same verify says no to a timer systemd cannot parse."""
    units = install_units(tmp_path, "update:\n  schedule: 'every full moon'\n")
    r = systemd_verify(units, "bootkeeper-update.timer")
    assert r.returncode != 0 or "every full moon" in r.stderr, r.stderr


def test_the_repair_alert_fires_for_a_failed_repair_only(tmp_path: Path) -> None:
    """promtool's unit test of BootkeeperRepairFailed (tests/data/update/repair_alerts_test.yml), and its
    control: the same test against rules whose repair alert never fires fails."""
    from test_metrics import RULES, promtool

    tests = Path(__file__).resolve().parents[1] / "data/update/repair_alerts_test.yml"
    p = subprocess.run([promtool(), "test", "rules", str(tests)], capture_output=True, text=True, check=False)
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr
    (tmp_path / "src/bootkeeper/data").mkdir(parents=True)
    rules = RULES.read_text().replace('{result="failed"} == 1', '{result="failed"} == 2')
    (tmp_path / "src/bootkeeper/data/alerts.yml").write_text(rules)
    (tmp_path / "tests/data/update").mkdir(parents=True)
    (tmp_path / "tests/data/update/t.yml").write_text(tests.read_text())
    p = subprocess.run([promtool(), "test", "rules", str(tmp_path / "tests/data/update/t.yml")],
                       capture_output=True, text=True, check=False)  # fmt: skip
    assert p.returncode != 0 and "BootkeeperRepairFailed" in p.stdout + p.stderr


@pytest.mark.parametrize(
    ("span", "seconds"), [("20min", 1200.0), ("1h 30min", 5400.0), ("90", 90.0), ("2 d", 172800.0), ("infinity", None)]
)
def test_repair_timeout_in_seconds(span: str, seconds: float | None) -> None:
    from bootkeeper.node.repair import _seconds

    assert _seconds(span) == seconds


def test_a_fetch_that_outlives_its_share_of_repair_timeout_ends_as_an_error() -> None:
    import time

    from bootkeeper.node.repair import RepairTimeout, _bounded

    started = time.monotonic()
    expected = r"did not finish in 0 s \(80% of update.repair_timeout 1s\)"
    with pytest.raises(RepairTimeout, match=expected), _bounded(0.3, "1s"):
        time.sleep(5)
    assert time.monotonic() - started < 2
    with _bounded(0.3, "1s"):  # disarmed after a fetch that finished in time
        pass
    time.sleep(0.5)
