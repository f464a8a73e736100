"""What an upgrade leaves for the operator: the boot history records it (the OS before and after, both
extension sets), and after a fallback to passive ``status`` says that the upgrade failed.

Real scratch ESPs in both layouts, real signed extension images and real ``bootkeeper upgrade`` runs
(builders of ``tests/assess/test_upgrade.py``); the fallback is the boot engine's (``simulate``) with active's
enrolled service failing."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from bootkeeper.assess import history
from bootkeeper.assess.simulate import BootOutcome, Fault, simulate
from bootkeeper.config import BootAssessment, RebootOnFailure
from bootkeeper.esp.entries import Role
from bootkeeper.esp.store import EspStore
from helpers import bk, fake_efivars, uki
from test_upgrade import LAYOUTS, Images, esp_type1, new_uki, osrel, run


@pytest.fixture(scope="module")
def imgs(tmp_path_factory: pytest.TempPathFactory) -> Images:
    return Images(tmp_path_factory.mktemp("imgs"))


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def upgraded(tmp_path: Path, imgs: Images, layout: str = "type1") -> Path:
    """An ESP on which v1 (tools for v1, common) was upgraded to v2 with ``--extension`` tools for v2."""
    esp = LAYOUTS[layout][0](tmp_path / "esp", imgs)
    assert run(tmp_path, esp, str(new_uki(tmp_path)), "--extension", str(imgs.tools_v2)) == 0
    return esp


# --- the record ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_an_upgrade_is_recorded_with_both_oses_and_extension_sets(tmp_path: Path, imgs: Images, layout: str) -> None:
    t0 = time.time()
    upgraded(tmp_path, imgs, layout)
    h = history.read_all(tmp_path)
    assert h.warnings == [] and h.boots == []
    [u] = h.upgrades
    assert t0 <= u.time <= time.time() and u.role is Role.ACTIVE and u.result == "upgraded" and not u.forced
    assert u.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert u.before.os == {"VERSION_ID": "1", "IMAGE_VERSION": "1"}
    assert u.after.os == {"VERSION_ID": "2", "IMAGE_VERSION": "2"}
    common = history.Image("common.raw", imgs.common.stat().st_size, sha(imgs.common))
    assert u.before.extensions == (
        common,
        history.Image("tools.raw", imgs.tools_v1.stat().st_size, sha(imgs.tools_v1)),
    )
    assert u.after.extensions == (
        common,
        history.Image("tools.raw", imgs.tools_v2.stat().st_size, sha(imgs.tools_v2)),
    )
    # the CLI shows it; the boots view of the same file is unchanged by it
    j = json.loads(bk("history", "show", "--root", str(tmp_path), "--json").stdout)
    assert j["boots"] == [] and j["warnings"] == []
    assert [(x["role"], x["from"]["os"]["VERSION_ID"], x["to"]["os"]["VERSION_ID"]) for x in j["upgrades"]] == [
        ("active", "1", "2")
    ]
    text = bk("history", "show", "--root", str(tmp_path)).stdout
    assert "upgrade of active: 1 → 2" in text and "extensions common.raw, tools.raw → common.raw, tools.raw" in text


def test_recovery_upgrade_is_recorded_as_recovery(tmp_path: Path, imgs: Images) -> None:
    esp = esp_type1(tmp_path / "esp", imgs)
    new = uki(osrel("recovery", "2"), tag="recovery v2")
    assert run(tmp_path, esp, str(new_uki(tmp_path, new)), "--recovery") == 0
    [u] = history.read_all(tmp_path).upgrades
    assert u.role is Role.RECOVERY and u.before.os["VERSION_ID"] == "1" and u.after.os["VERSION_ID"] == "2"
    assert u.before.extensions == u.after.extensions == ()


def test_dry_run_refusal_and_no_op_record_nothing(tmp_path: Path, imgs: Images) -> None:
    esp = esp_type1(tmp_path / "esp", imgs)
    assert run(tmp_path, esp, str(new_uki(tmp_path)), "--extension", str(imgs.tools_v2), "--dry-run") == 0
    assert run(tmp_path, esp, str(new_uki(tmp_path))) == 1  # the carried tools.raw is for v1: refused
    assert not (tmp_path / history.HISTORY).exists()
    assert run(tmp_path, esp, str(new_uki(tmp_path)), "--extension", str(imgs.tools_v2)) == 0
    assert run(tmp_path, esp, str(new_uki(tmp_path)), "--extension", str(imgs.tools_v2)) == 0  # unchanged
    assert len(history.read_all(tmp_path).upgrades) == 1


def test_forced_upgrade_is_recorded_as_forced(tmp_path: Path, imgs: Images) -> None:
    esp = esp_type1(tmp_path / "esp", imgs)
    assert run(tmp_path, esp, str(new_uki(tmp_path)), "--force") == 0
    [u] = history.read_all(tmp_path).upgrades
    assert u.forced and [x.name for x in u.after.extensions] == ["common.raw", "tools.raw"]


def test_a_history_that_cannot_be_written_is_a_warning_not_a_failure(
    tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / history.HISTORY).mkdir(parents=True)  # a folder where the file goes: EISDIR
    esp = esp_type1(tmp_path / "esp", imgs)
    assert run(tmp_path, esp, str(new_uki(tmp_path)), "--extension", str(imgs.tools_v2)) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if "history" in ln]
    assert len(err) == 1 and err[0].startswith("bootkeeper: warning: upgraded, but not recorded in the boot history: ")
    assert str(tmp_path / history.HISTORY) in err[0]
    assert (esp / "EFI/kairos/active.efi").read_bytes() == new_uki(tmp_path).read_bytes()  # the upgrade stands
    # --json says so too (here: an upgrade of the recovery set, which also records)
    import json

    assert run(tmp_path, esp, str(new_uki(tmp_path)), "--recovery", "--json", "--force") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["result"] == "upgraded" and doc["history"]["recorded"] is False
    assert doc["history"]["file"] == str(tmp_path / history.HISTORY) and "Is a directory" in doc["history"]["error"]


def test_upgrade_records_stay_bounded(tmp_path: Path) -> None:
    images = [history.Image(f"{'x' * 180}-{i}.raw", 1 << 20, "0" * 64) for i in range(100)]
    side = history.role_os({"VERSION_ID": "1", "PRETTY_NAME": "p" * 1000}, images)
    assert len(side.extensions) == history.MAX_EXTENSIONS and side.left_off == 100 - history.MAX_EXTENSIONS
    assert len(side.os["PRETTY_NAME"]) == history.MAX_FIELD
    history.append(tmp_path, history.boot_record("b0", 1.0, "\\loader\\entries\\active+2-1.conf", None))
    one = len(json.dumps(history.upgrade_record("u00", 2.0, Role.ACTIVE, side, side, "upgraded", False))) + 1
    n = 5 * history.KEEP_UPGRADES
    for i in range(n):
        history.append(tmp_path, history.upgrade_record(f"u{i}", 2.0 + i, Role.ACTIVE, side, side, "upgraded", False))
    h = history.read_all(tmp_path)
    assert h.warnings == [] and [b.boot_id for b in h.boots] == ["b0"]  # boots are kept, upgrades trimmed
    most = max(history.LIMIT, history.KEEP_UPGRADES * one) + one  # compacted past LIMIT, then appended to
    assert history.KEEP_UPGRADES <= len(h.upgrades) <= most // one and h.upgrades[-1].boot_id == f"u{n - 1}"
    assert (tmp_path / history.HISTORY).stat().st_size <= most


# --- status after the upgrade -------------------------------------------------------------------


def fall_back(tmp_path: Path, esp: Path) -> tuple[Path, list[str]]:
    """v2 boots as active, its enrolled service fails three times (rebooting), passive (v1) boots."""
    root = tmp_path  # where upgrade wrote the history
    recs = simulate(
        EspStore(esp),
        BootAssessment(),
        [Fault(Role.ACTIVE, None, BootOutcome.SERVICE)],
        4,
        reboot_on_failure=RebootOnFailure.ACTIVE,
        history_root=root,
        start_time=time.time() + 60,
    )
    assert [r.role for r in recs] == ["active", "active", "active", "passive"]
    assert recs[-1].boot_count_path is not None
    efivars = fake_efivars(tmp_path / "efivars", LoaderBootCountPath=recs[-1].boot_count_path)
    return root, ["--root", str(root), "--esp", str(esp), "--efivars", str(efivars)]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_status_after_a_fallback_says_the_upgrade_failed(tmp_path: Path, imgs: Images, layout: str) -> None:
    esp = upgraded(tmp_path, imgs, layout)
    [u] = history.read_all(tmp_path).upgrades
    root, args = fall_back(tmp_path, esp)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(u.time))
    line = f"the upgrade to 2 ({stamp}) failed: running 1 on passive"
    j = json.loads(bk("status", *args, "--json").stdout)
    assert j["booted"]["role"] == "passive" and j["booted"]["why"]["fallback_from"][0]["role"] == "active"
    assert j["failed_upgrade"] == {
        "text": line,
        "time": u.time,
        "to": {"VERSION_ID": "2", "IMAGE_VERSION": "2"},
        "from": {"VERSION_ID": "1", "IMAGE_VERSION": "1"},
        "running": {"VERSION_ID": "1", "IMAGE_VERSION": "1"},
    }
    by_role = {r["role"]: r for r in j["roles"]}
    assert (by_role["active"]["version"], by_role["active"]["extensions"]) == ("2", ["common.raw", "tools.raw"])
    assert (by_role["passive"]["version"], by_role["passive"]["extensions"]) == ("1", ["common.raw", "tools.raw"])
    assert (
        by_role["recovery"]["os"] == {"VERSION_ID": "1", "IMAGE_VERSION": "1"}
        and by_role["recovery"]["extensions"] == []
    )
    assert [x["to"]["os"]["VERSION_ID"] for x in j["upgrades"]] == ["2"] and j["warnings"] == []
    r = bk("status", *args)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].startswith("why: passive booted as a fallback: active used its 3 tries") and lines[2] == line
    assert "  active       VERSION_ID=2, IMAGE_VERSION=2" in lines
    assert "  passive      VERSION_ID=1, IMAGE_VERSION=1" in lines
    assert bk("motd", *args).returncode == 0
    assert f"\n  {line}\n" in (root / "run/motd.d/bootkeeper").read_text()


def test_status_on_the_new_os_reports_no_failure(tmp_path: Path, imgs: Images) -> None:
    esp = upgraded(tmp_path, imgs)
    efivars = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\active+3.conf")
    j = json.loads(bk("status", "--root", str(tmp_path), "--esp", str(esp), "--efivars", str(efivars), "--json").stdout)
    assert j["booted"]["role"] == "active" and j["failed_upgrade"] is None
    assert {r["role"]: r["version"] for r in j["roles"]}["active"] == "2"


def test_passive_picked_by_hand_is_no_failed_upgrade(tmp_path: Path, imgs: Images) -> None:
    """Passive booted from the menu while active still has its tries: not a fallback, no such line."""
    esp = upgraded(tmp_path, imgs)
    efivars = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\passive+3.conf")
    j = json.loads(bk("status", "--root", str(tmp_path), "--esp", str(esp), "--efivars", str(efivars), "--json").stdout)
    assert j["booted"]["role"] == "passive" and j["failed_upgrade"] is None and len(j["upgrades"]) == 1


# --- hostile input ------------------------------------------------------------------------------

SIDE = '{"os":{"VERSION_ID":"1"},"extensions":[]}'
HOSTILE = [
    '{"type":"upgrade","boot_id":"r","time":1,"role":"bogus","from":' + SIDE + ',"to":' + SIDE + ',"result":"x"}',
    '{"type":"upgrade","boot_id":"p","time":1,"role":"passive","from":' + SIDE + ',"to":' + SIDE + ',"result":"x"}',
    '{"type":"upgrade","boot_id":"f","time":1,"role":"active","from":[],"to":' + SIDE + ',"result":"x"}',
    '{"type":"upgrade","boot_id":"m","time":1,"role":"active","from":' + SIDE + ',"result":"x"}',
    '{"type":"upgrade","boot_id":"o","time":1,"role":"active","from":{"os":{"VERSION_ID":7},"extensions":[]},"to":'
    + SIDE
    + ',"result":"x"}',
    '{"type":"upgrade","boot_id":"n","time":1,"role":"active","from":{"os":{},"extensions":['
    + ",".join(['{"name":"a.raw"}'] * 100_000)
    + ']},"to":'
    + SIDE
    + ',"result":"x"}',
    '{"type":"upgrade","boot_id":"s","time":1,"role":"active","from":{"os":{},"extensions":[{"name":"a","size":true}]},'
    '"to":' + SIDE + ',"result":"x"}',
    '{"type":"upgrade","boot_id":"l","time":1,"role":"active","from":{"os":{"PRETTY_NAME":"' + "p" * 10_000 + '"},'
    '"extensions":[]},"to":' + SIDE + ',"result":"x"}',
    '{"type":"upgrade","boot_id":"t","time":' + "9" * 400 + ',"role":"active","from":' + SIDE + ',"to":' + SIDE + "}",
    '{"type":"upgrade","boot_id":"d","time":1,"role":"active","from":' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"type":"upgrade","boot_id":"b","time":1,"role":"active","from":' + SIDE + ',"to":' + SIDE + ',"result":"x",'
    '"forced":"yes"}',
    '{"type":"upgrade","boot_id":"x","time":1,"role":"active","from":' + SIDE + ',"to":{"os":{},"extensions":[],'
    '"left_off":-1},"result":"x"}',
]


def test_hostile_upgrade_lines_are_skipped_with_one_line_each(tmp_path: Path, imgs: Images) -> None:
    esp = upgraded(tmp_path, imgs)
    root, args = fall_back(tmp_path, esp)
    p = tmp_path / history.HISTORY
    good = p.read_text()
    p.write_text("\n".join(HOSTILE) + "\n" + good)  # the real record after them: the fallback still finds it
    r = bk("status", *args, "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    j = json.loads(r.stdout)
    skipped = [w for w in j["warnings"] if "skipped a malformed line" in w]
    assert len(skipped) == len(HOSTILE) and all(len(w) < 300 and "\n" not in w for w in skipped)
    assert j["failed_upgrade"]["text"].startswith("the upgrade to 2 (") and len(j["upgrades"]) == 1
    text = bk("status", *args)
    assert text.returncode == 0 and "Traceback" not in text.stderr
    assert sum(
        ln.startswith("warning: ") and "skipped a malformed line" in ln for ln in text.stdout.splitlines()
    ) == len(HOSTILE)
    show = bk("history", "show", "--root", str(root), "--json")
    assert show.returncode == 0 and len(json.loads(show.stdout)["upgrades"]) == 1


def test_an_unreadable_uki_is_a_status_warning(tmp_path: Path, imgs: Images) -> None:
    esp = upgraded(tmp_path, imgs)
    os.truncate(esp / "EFI/kairos/passive.efi", 100)  # no longer a PE
    efivars = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\active+3.conf")
    r = bk("status", "--root", str(tmp_path), "--esp", str(esp), "--efivars", str(efivars), "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    j = json.loads(r.stdout)
    assert {x["role"]: x["os"] for x in j["roles"]}["passive"] is None
    [w] = [w for w in j["warnings"] if w.startswith("EFI/kairos/passive.efi: ")]
    assert ".osrel" in w and "\n" not in w
