"""Boots simulated with the boot engine where an enrolled service fails, the boot history they leave,
and what ``bootkeeper status`` / ``motd`` then tell the operator."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bootkeeper.assess import history
from bootkeeper.assess import status as boot_status
from bootkeeper.assess.simulate import BootOutcome, BootRecord, Fault, simulate
from bootkeeper.cli.render import status_lines
from bootkeeper.config import BootAssessment, RebootOnFailure
from bootkeeper.esp import scratch
from bootkeeper.esp.entries import Role
from bootkeeper.esp.store import EspStore
from bootkeeper.node import status as joined
from helpers import bk, fake_efivars

START = 1795000000.0  # 2026-11-18 11:06:40 UTC
STEP = 90.0


def everywhere() -> list[Fault]:
    return [Fault(r, None, BootOutcome.SERVICE) for r in Role]


def roles(records: list[BootRecord]) -> list[str | None]:
    return [r.role for r in records]


def test_service_failing_on_active_only_falls_back_to_passive_without_a_loop(tmp_path: Path) -> None:
    store = EspStore(scratch.make(tmp_path / "esp"))
    recs = simulate(
        store,
        BootAssessment(),
        [Fault(Role.ACTIVE, None, BootOutcome.SERVICE)],
        8,
        reboot_on_failure=RebootOnFailure.ACTIVE,
    )
    assert roles(recs) == ["active"] * 3 + ["passive"] * 5
    assert [r.after for r in recs[:3]] == ["FailureAction=reboot"] * 3
    assert recs[3].verdict == "good"


def test_service_failing_everywhere_with_active_only_reboot_stays_up_on_passive(tmp_path: Path) -> None:
    store = EspStore(scratch.make(tmp_path / "esp"))
    recs = simulate(store, BootAssessment(), everywhere(), 20, reboot_on_failure=RebootOnFailure.ACTIVE)
    assert roles(recs) == ["active", "active", "active", "passive"]
    assert recs[-1].after == "stays up, not blessed"


def test_service_failing_everywhere_with_reboot_always_loops_and_lint_said_so_first(tmp_path: Path) -> None:
    store = EspStore(scratch.make(tmp_path / "esp"))
    recs = simulate(store, BootAssessment(), everywhere(), 14, reboot_on_failure=RebootOnFailure.ALWAYS)
    assert roles(recs) == ["active"] * 3 + ["passive"] * 3 + ["recovery"] * 3 + ["statereset"] * 3 + ["active"] * 2
    assert all(r.after == "FailureAction=reboot" for r in recs)
    # before it happens: the enrolment that leads there is flagged by lint, and simulate warns
    cc = bk("cloud-config", "render", "k3s", "--reboot-on-failure", "always").stdout
    (tmp_path / "cc.yaml").write_text(cc)
    lint = json.loads(bk("lint", "--json", str(tmp_path / "cc.yaml")).stdout)
    assert [f["code"] for f in lint["findings"]] == ["BK103"]
    assert "passive, recovery, statereset" in lint["findings"][0]["message"]
    cfg = tmp_path / "oem.yaml"
    cfg.write_text("boot_assessment:\n  services:\n    - name: k3s\n      reboot_on_failure: always\n")
    r = bk("simulate", "--config", str(cfg), "--fail", "active=always:service", "--fail", "passive=always:service")
    assert r.stderr.startswith("warning: lint BK103")


def fallen_back_node(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Active's service fails three times (rebooting), passive boots, the service fails there too and
    the node stays up on passive, unblessed; history and EFI variables as the node would have them."""
    root = tmp_path / "root"
    esp = scratch.make(tmp_path / "esp")
    assert bk("service", "enroll", "k3s", "--reboot-on-failure", "active", "--root", str(root)).returncode == 0
    recs = simulate(
        EspStore(esp),
        BootAssessment(),
        everywhere(),
        10,
        reboot_on_failure=RebootOnFailure.ACTIVE,
        history_root=root,
        start_time=START,
        seconds_per_boot=STEP,
    )
    last = recs[-1]
    assert last.boot_count_path is not None
    efivars = fake_efivars(
        tmp_path / "efivars", LoaderBootCountPath=last.boot_count_path, LoaderEntrySelected="passive+2-1.conf"
    )
    return root, esp, efivars


SHOW = """Id=k3s.service
LoadState=loaded
ActiveState=failed
SubState=failed
Result=exit-code
"""


def test_status_of_a_node_that_fell_back(tmp_path: Path) -> None:
    root, esp, efivars = fallen_back_node(tmp_path)
    r = bk("status", "--root", str(root), "--esp", str(esp), "--efivars", str(efivars))
    assert r.returncode == 0, r.stderr
    last_try = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(START + 2 * STEP))
    assert last_try == "2026-11-18 11:09:40 UTC"
    lines = r.stdout.splitlines()
    assert lines[0] == (
        "booted: loader/entries/passive+2-1.conf (role passive); "
        "NOT blessed yet: boot-complete.target not reached (or bless did not run)"
    )
    assert lines[1] == (
        f"why: passive booted as a fallback: active used its 3 tries, last try {last_try} "
        "(3 boot(s) of it without a good verdict)"
    )
    assert "loader/entries/active+0-3.conf" in r.stdout and "0 tries left, 3 used" in r.stdout
    assert "2 tries left, 1 used" in r.stdout  # passive
    j = json.loads(bk("status", "--root", str(root), "--esp", str(esp), "--efivars", str(efivars), "--json").stdout)
    assert j["booted"]["blessed"] == "indeterminate" and j["booted"]["role"] == "passive"
    fb = j["booted"]["why"]["fallback_from"]
    assert [(f["role"], f["tries_used"], f["last_try"], f["last_try_text"]) for f in fb] == [
        ("active", 3, START + 2 * STEP, last_try)
    ]
    assert fb[0]["boots"] == [START, START + STEP, START + 2 * STEP]
    assert j["booted"]["why"]["first_choice"] is False
    assert [h["verdict"] for h in j["history"]] == [None, None, None, None]
    assert j["services"][0]["name"] == "k3s.service"
    # services, with what systemctl show reports on such a node
    shown = joined.gather(root, esp, efivars, None, read_services=lambda u: boot_status.parse_systemctl_show(SHOW))
    assert shown.as_json()["services"] == [
        {"name": "k3s.service", "reboot_on_failure": "active", "result": "failed (exit-code)", "active_state": "failed"}
    ]
    assert "k3s.service                    failed (exit-code)" in "\n".join(status_lines(shown))


def test_status_first_choice_and_blessed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    esp = scratch.make(tmp_path / "esp")
    simulate(EspStore(esp), BootAssessment(), [], 1, history_root=root, start_time=START)
    efivars = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\active+2-1.conf")
    j = json.loads(bk("status", "--root", str(root), "--esp", str(esp), "--efivars", str(efivars), "--json").stdout)
    assert j["booted"]["blessed"] == "good"
    assert j["booted"]["why"] == {"first_choice": True, "text": "active is the first choice", "fallback_from": []}
    assert j["history"][0]["verdict"] == "good"


def test_motd(tmp_path: Path) -> None:
    root, esp, efivars = fallen_back_node(tmp_path)
    r = bk("motd", "--root", str(root), "--esp", str(esp), "--efivars", str(efivars))
    assert r.returncode == 0, r.stderr
    text = (root / "run/motd.d/bootkeeper").read_text()
    assert text.startswith("bootkeeper\n  booted: loader/entries/passive+2-1.conf")
    assert "active used its 3 tries" in text
    assert not list((root / "run/motd.d").glob(".bootkeeper-*"))


def test_history_record_and_verdict_from_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "root"
    esp = scratch.make(tmp_path / "esp")
    efivars = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\active+3.conf")
    (esp / "loader/entries/active+3.conf").rename(esp / "loader/entries/active+2-1.conf")
    ev2 = fake_efivars(tmp_path / "ev2", LoaderBootCountPath="\\loader\\entries\\active+2-1.conf")
    base = ["--root", str(root), "--esp", str(esp)]
    assert bk("history", "record", *base, "--efivars", str(ev2), "--boot-id", "b1").returncode == 0
    assert "already recorded" in bk("history", "record", *base, "--efivars", str(ev2), "--boot-id", "b1").stdout
    r = bk("bless", "good", "--esp", str(esp), "--efivars", str(ev2), "--root", str(root), "--boot-id", "b1")
    assert r.returncode == 0, r.stderr
    boots = json.loads(bk("history", "show", "--root", str(root), "--json").stdout)["boots"]
    assert [(b["boot_id"], b["entry"], b["tries_left"], b["tries_done"], b["verdict"]) for b in boots] == [
        ("b1", "loader/entries/active+2-1.conf", 2, 1, "good")
    ]
    assert efivars.is_dir()


def test_history_survives_a_torn_line_and_stays_bounded(tmp_path: Path, monkeypatch: object) -> None:
    root = tmp_path
    history.append(root, history.boot_record("a", 1.0, "\\loader\\entries\\active+2-1.conf", None))
    with (root / history.HISTORY).open("ab") as f:
        f.write(b'{"type":"boot","boot_id":"torn","ti')  # power cut mid-write
    history.append(root, history.boot_record("b", 2.0, "\\loader\\entries\\active+1-2.conf", None))
    boots, warnings = history.read(root)
    assert [b.boot_id for b in boots] == ["a"]  # the torn line swallowed "b" onto the same line
    assert warnings and "skipped a malformed line" in warnings[0]
    n = 2000  # ~170 bytes each: well past LIMIT
    for i in range(n):
        history.append(root, history.boot_record(f"n{i}", float(i), "\\loader\\entries\\active.conf", None))
    assert (root / history.HISTORY).stat().st_size <= history.LIMIT
    boots, warnings = history.read(root)
    assert history.KEEP <= len(boots) < n and boots[-1].boot_id == f"n{n - 1}"
    assert warnings == []  # the torn line went with the compaction


def test_parse_systemctl_show_blocks() -> None:
    text = SHOW + "\nId=health.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nResult=success\n"
    states = boot_status.parse_systemctl_show(text)
    assert set(states) == {"k3s.service", "health.service"}
    assert states["health.service"]["LoadState"] == "not-found"


def test_status_shows_installed_and_active_extensions(tmp_path: Path) -> None:
    from bootkeeper.sysext import activate

    root = tmp_path / "root"
    esp = scratch.make(tmp_path / "esp", ukis=True)
    (esp / "EFI/kairos/active.efi.extra.d").mkdir()
    (esp / "EFI/kairos/active.efi.extra.d/k3s.raw").write_bytes(b"x" * 4096)
    report = activate.Report("enforced", "root=signed+absent:usr=signed+absent", str(root), ["/.extra/sysext"])
    report.images = [
        activate.Outcome("k3s.raw", "/.extra/sysext/k3s.raw", True, "passed", signer="CN=fleet"),
        activate.Outcome("rogue.raw", "/.extra/sysext/rogue.raw", False, "refused", ["no trusted certificate"]),
    ]
    activate.write_report(root, report)
    efivars = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\active+3.conf")
    r = bk("status", "--root", str(root), "--esp", str(esp), "--efivars", str(efivars))
    assert "extensions installed for active: k3s.raw" in r.stdout
    assert "extensions active (enforced): k3s.raw" in r.stdout
    assert "extensions refused: rogue.raw (refused)" in r.stdout
    j = json.loads(bk("status", "--root", str(root), "--esp", str(esp), "--efivars", str(efivars), "--json").stdout)
    assert j["extensions"]["installed"] == {"active": ["k3s.raw"]}
    assert [(i["name"], i["placed"]) for i in j["extensions"]["activation"]] == [
        ("k3s.raw", True),
        ("rogue.raw", False),
    ]


def test_status_lists_what_service_list_lists_however_half_enrolled(tmp_path: Path) -> None:
    """status asks services.listing (the one reader of an enrolment) and nothing else: a unit whose
    record and boot-complete link are gone but whose drop-in is left is still shown, as `service list`
    shows it (status used to look for the record or the link first, under names of its own, and then
    showed no service at all)."""
    root = tmp_path / "root"
    esp = scratch.make(tmp_path / "esp")
    ev = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\active+3.conf")
    assert bk("service", "enroll", "k3s", "--reboot-on-failure", "active", "--root", str(root)).returncode == 0
    (root / "etc/bootkeeper/services.json").unlink()
    requires = root / "etc/systemd/system/boot-complete.target.requires"
    for link in requires.iterdir():
        link.unlink()
    requires.rmdir()
    assert "k3s.service" in bk("service", "list", "--root", str(root)).stdout
    r = bk("status", "--root", str(root), "--esp", str(esp), "--efivars", str(ev), "--json")
    assert r.returncode == 0, r.stderr
    assert [s["name"] for s in json.loads(r.stdout)["services"]] == ["k3s.service"]


def _pinned_node(tmp_path: Path, version: str) -> tuple[list[str], Path, Path]:
    esp = scratch.make(tmp_path / "esp")
    ev = tmp_path / "ev"
    ev.mkdir()
    args = ["--esp", str(esp), "--efivars", str(ev), "--systemd-boot-version", version]
    r = bk("select", "passive", "--persistent", *args)
    assert r.returncode == 0, r.stderr
    return args, esp, ev


@pytest.mark.parametrize(
    ("version", "kind", "target"), [("262", "preferred", "passive.conf"), ("257", "sort-key", "0-passive")]
)
def test_status_shows_a_pin_and_whether_it_is_in_effect(tmp_path: Path, version: str, kind: str, target: str) -> None:
    """A persistent pin is in effect while passive has tries left; once passive is bad it is not, and
    status says why and what boots instead (before: no pin key, no pin line)."""
    args, esp, _ = _pinned_node(tmp_path, version)
    j = json.loads(bk("status", *args, "--root", str(tmp_path / "root"), "--json").stdout)
    pin = j["pin"]
    assert (pin["kind"], pin["target"], pin["entry"], pin["in_effect"], pin["why_not"]) == (
        kind,
        target,
        "loader/entries/passive+3.conf",
        True,
        None,
    )
    assert pin["others"] == [] and j["next"]["path"] == "loader/entries/passive+3.conf"
    assert json.loads(bk("entries", *args, "--json").stdout)["pin"] == pin
    (esp / "loader/entries/passive+3.conf").rename(esp / "loader/entries/passive+0-3.conf")
    j = json.loads(bk("status", *args, "--root", str(tmp_path / "root"), "--json").stdout)
    why = (
        "passive (loader/entries/passive+0-3.conf) has no tries left: active (loader/entries/active+3.conf) boots next"
    )
    assert (j["pin"]["in_effect"], j["pin"]["why_not"], j["pin"]["boots"]) == (
        False,
        why,
        "loader/entries/active+3.conf",
    )
    r = bk("status", *args, "--root", str(tmp_path / "root"))
    assert r.returncode == 0, r.stderr
    pin_lines = [x for x in r.stdout.splitlines() if x.startswith("pin: ")]
    assert len(pin_lines) == 1 and pin_lines[0].endswith(f": NOT in effect: {why}"), r.stdout


def test_status_shows_a_one_shot_first_and_the_persistent_pin_after_it(tmp_path: Path) -> None:
    args, _, ev = _pinned_node(tmp_path, "262")
    assert bk("select", "recovery", "--once", *args).returncode == 0
    j = json.loads(bk("status", *args, "--root", str(tmp_path / "root"), "--json").stdout)
    assert (j["pin"]["kind"], j["pin"]["target"], j["pin"]["in_effect"]) == ("once", "recovery.conf", True)
    assert [(o["kind"], o["in_effect"]) for o in j["pin"]["others"]] == [("preferred", True)]
    text = bk("status", *args, "--root", str(tmp_path / "root")).stdout
    once = "EFI variable LoaderEntryOneShot 'recovery.conf' (next boot only)"
    assert f"pin: {once} → loader/entries/recovery+3.conf: in effect" in text
    assert "  also: loader/loader.conf preferred 'passive.conf' → loader/entries/passive+3.conf: in effect" in text
    # without a pin the key is there and null
    assert bk("select", "--clear", *args).returncode == 0
    assert json.loads(bk("status", *args, "--root", str(tmp_path / "root"), "--json").stdout)["pin"] is None
    assert list(ev.iterdir()) == []


def test_status_shows_each_roles_os_and_extension_set(tmp_path: Path) -> None:
    """Each entry that boots a UKI: the OS its ``.osrel`` names and the images in its ``.extra.d``
    (before: no ``roles`` key, no OS line)."""
    from helpers import uki

    root = tmp_path / "root"
    esp = scratch.make(tmp_path / "esp", ukis=True)
    (esp / "EFI/kairos/active.efi").write_bytes(
        uki('PRETTY_NAME="Kairos v3.4.2"\nID=kairos\nVERSION_ID=24.04\nIMAGE_VERSION=v3.4.2\n')
    )
    for role, names in (("active", ["k3s.raw", "tools.raw"]), ("passive", ["k3s.raw"])):
        (esp / f"EFI/kairos/{role}.efi.extra.d").mkdir()
        for n in names:
            (esp / f"EFI/kairos/{role}.efi.extra.d/{n}").write_bytes(b"x" * 4096)
    efivars = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\active+3.conf")
    args = ["--root", str(root), "--esp", str(esp), "--efivars", str(efivars)]
    j = json.loads(bk("status", *args, "--json").stdout)
    assert [(r["role"], r["uki"], r["os"], r["version"], r["extensions"]) for r in j["roles"]] == [
        (
            "active",
            "EFI/kairos/active.efi",
            {"PRETTY_NAME": "Kairos v3.4.2", "VERSION_ID": "24.04", "IMAGE_VERSION": "v3.4.2"},
            "v3.4.2",
            ["k3s.raw", "tools.raw"],
        ),
        ("passive", "EFI/kairos/passive.efi", {"VERSION_ID": "1"}, "1", ["k3s.raw"]),
        ("recovery", "EFI/kairos/recovery.efi", {"VERSION_ID": "1"}, "1", []),
        ("statereset", "EFI/kairos/statereset.efi", {"VERSION_ID": "1"}, "1", []),
    ]
    assert j["failed_upgrade"] is None and j["upgrades"] == []
    lines = bk("status", *args).stdout.splitlines()
    at = lines.index("OS per entry (its UKI's .osrel):")
    assert lines[at + 1 : at + 3] == [
        "  active       Kairos v3.4.2 (VERSION_ID=24.04, IMAGE_VERSION=v3.4.2)",
        "  passive      VERSION_ID=1",
    ]


def test_a_fallback_with_no_recorded_upgrade_names_no_upgrade(tmp_path: Path) -> None:
    """The fallback line stays the boot history's; without an upgrade record nothing claims one failed."""
    root, esp, efivars = fallen_back_node(tmp_path)
    r = bk("status", "--root", str(root), "--esp", str(esp), "--efivars", str(efivars), "--json")
    j = json.loads(r.stdout)
    assert j["booted"]["why"]["fallback_from"] and j["failed_upgrade"] is None and j["upgrades"] == []
    assert (
        "the upgrade to" not in bk("status", "--root", str(root), "--esp", str(esp), "--efivars", str(efivars)).stdout
    )


def test_failed_upgrade_is_the_last_active_upgrade_not_running() -> None:
    why = history.Why(False, "passive booted as a fallback", ({"role": "active"},))
    v1, v2 = history.role_os({"VERSION_ID": "1"}, []), history.role_os({"VERSION_ID": "2"}, [])
    up = history.Upgrade("b", START, Role.ACTIVE, v1, v2, "upgraded", False)
    rec = history.Upgrade("b", START + 1, Role.RECOVERY, v1, v2, "upgraded", False)
    found = history.failed_upgrade([up, rec], Role.PASSIVE, why, {"VERSION_ID": "1"})
    assert found is not None and found.upgrade is up
    assert found.text == "the upgrade to 2 (2026-11-18 11:06:40 UTC) failed: running 1 on passive"
    assert history.failed_upgrade([up], Role.PASSIVE, why, {"VERSION_ID": "2"}) is None  # passive runs v2
    assert history.failed_upgrade([up], Role.ACTIVE, why, {"VERSION_ID": "1"}) is None
    assert history.failed_upgrade([up], Role.PASSIVE, history.Why(False, "picked"), {"VERSION_ID": "1"}) is None
    assert history.failed_upgrade([rec], Role.PASSIVE, why, {"VERSION_ID": "1"}) is None


def test_root_covers_the_efi_variables_and_a_missing_booted_file_is_named(tmp_path: Path) -> None:
    """issue 15, item 7: status, history record and bless status read ROOT/sys/firmware/efi/efivars under
    --root (they read the host's), and status says why the booted entry's state is unknown when
    LoaderBootCountPath names a file that is not there (it printed "no systemd-boot variables")."""
    import json
    import subprocess

    from helpers import entry_body, esp_with, fake_efivars

    esp = esp_with(tmp_path / "efi", {"active+1-1.conf": entry_body("active")})
    ev = fake_efivars(tmp_path / "sys/firmware/efi/efivars", LoaderBootCountPath="\\loader\\entries\\active+1-1.conf")

    def bk(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "bootkeeper", *args, "--esp", str(esp), "--root", str(tmp_path)]
        return subprocess.run(argv, capture_output=True, text=True, check=False)

    p = bk("status", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["booted"]["entry"] == "loader/entries/active+1-1.conf"
    p = bk("bless", "status")
    assert (p.returncode, p.stdout.strip()) == (0, "indeterminate"), p.stderr
    assert bk("history", "record").returncode == 0
    rec = json.loads((tmp_path / "var/lib/bootkeeper/boots.jsonl").read_text().splitlines()[-1])
    assert "active+1-1.conf" in json.dumps(rec)
    # the file it names is gone: the real reason, not "no systemd-boot variables"
    (esp / "loader/entries/active+1-1.conf").rename(esp / "loader/entries/passive+2.conf")
    p = bk("status")
    first = p.stdout.splitlines()[0]
    assert first.startswith("booted: loader/entries/active+1-1.conf (role active); its state is unknown: "), first
    assert "none of active+1-1.conf, active.conf, active+0-1.conf exists" in first
    assert str(ev).startswith(str(tmp_path))


STATUS_KEYS = [
    *("esp", "systemd_boot_version", "default", "efi_variables", "next", "pin", "entries", "unlisted", "problems"),
    *(
        "booted",
        "failed_upgrade",
        "handback",
        "roles",
        "services",
        "extensions",
        "history",
        "upgrades",
        "repairs",
        "warnings",
    ),
]


def test_status_json_is_the_views_as_json_and_the_views_are_frozen(tmp_path: Path) -> None:
    """The schema docs/services.md documents (tests/project/test_docs_json.py), key by key and in order, is what the
    frozen views give; their ``as_json()`` holds only JSON values (a tuple left in would not survive the round trip)."""
    import dataclasses

    root, esp, efivars = fallen_back_node(tmp_path)
    args = ["--root", str(root), "--esp", str(esp), "--efivars", str(efivars)]
    j = json.loads(bk("status", *args, "--json").stdout)
    assert list(j) == STATUS_KEYS
    assert list(j["booted"]) == ["entry", "role", "blessed", "counting", "why"]
    assert list(j["extensions"]) == ["installed", "activation", "mode", "shadowed", "required"]
    shown = joined.gather(root, esp, efivars, None, read_services=None)
    mine = shown.as_json()
    assert json.loads(json.dumps(mine)) == mine
    asked = ("services", "warnings")  # the CLI asked systemctl, which this machine has not for k3s
    assert {k: v for k, v in j.items() if k in mine and k not in asked} == {
        k: v for k, v in mine.items() if k not in asked
    }
    assert [s["name"] for s in mine["services"]] == ["k3s.service"]
    for view, field in (
        (shown, "node"),
        (shown.node, "booted"),
        (shown.node.booted, "entry"),
        (shown.node.entries[0], "state"),
        (shown.node.roles, None),
        (shown.node.services[0], "result"),
        (shown.extensions, "activation"),
    ):
        if field is None:
            assert isinstance(view, tuple)
            continue
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(view, field, None)


def test_the_activation_report_reads_back_what_activate_wrote(tmp_path: Path) -> None:
    """One home for the report's path and schema (sysext/report.py): activate writes it, status reads it."""
    from bootkeeper.sysext import activate, report

    assert report.read(tmp_path) is None  # activate has not run
    rep = activate.Report("permissive", "root=signed+absent", str(tmp_path), ["/.extra/sysext"])
    rep.images = [
        activate.Outcome("a.raw", "/.extra/sysext/a.raw", True, "passed", signer="CN=fleet"),
        activate.Outcome("b.raw", "/.extra/sysext/b.raw", True, "failed-but-placed", ["unsigned"]),
        activate.Outcome("c.raw", "", False, "skipped", ["a symbolic link"], file="/.extra/global_sysext/c.raw"),
    ]
    activate.write_report(tmp_path, rep)
    assert (tmp_path / activate.REPORT).is_file() and activate.REPORT == report.REPORT
    got = report.read(tmp_path)
    assert got == report.Activation(
        "permissive",
        (
            report.Activated("a.raw", "passed", True, "CN=fleet"),
            report.Activated("b.raw", "failed-but-placed", True, None, ("unsigned",)),
            report.Activated("c.raw", "skipped", False, None, ("a symbolic link",), "/.extra/global_sysext/c.raw"),
        ),
    )
    assert got.placed == ("a.raw", "b.raw")


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "IsADirectoryError"), (b"[1, 2]", "AttributeError"), (b"\xff{", "UnicodeDecodeError")],
)
def test_status_names_an_unreadable_activation_report(tmp_path: Path, content: bytes | None, reason: str) -> None:
    """The report in /run cannot be read: status shows everything else, and a warning line that says
    which file and why, in the text too (it was only an "error" key inside `extensions` of the JSON)."""
    root = tmp_path / "root"
    p = root / "run/bootkeeper/sysext.json"
    p.parent.mkdir(parents=True)
    if content is None:
        p.mkdir()
    else:
        p.write_bytes(content)
    esp = scratch.make(tmp_path / "esp")
    ev = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\active+3.conf")
    args = ["--root", str(root), "--esp", str(esp), "--efivars", str(ev)]
    r = bk("status", *args)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    [line] = [ln for ln in r.stdout.splitlines() if ln.startswith("warning: ")]
    assert line.startswith(f"warning: run/bootkeeper/sysext.json: {reason}: "), line
    assert r.stdout.splitlines()[-1].startswith("next boot: loader/entries/active+3.conf")
    j = json.loads(bk("status", *args, "--json").stdout)
    assert j["extensions"] == {"installed": {}, "activation": [], "mode": None, "shadowed": [], "required": None}
    assert j["warnings"] == [line.removeprefix("warning: ")]
    assert bk("motd", *args).returncode == 0
    assert f"  {line}\n" in (root / "run/motd.d/bootkeeper").read_text()


def test_a_booted_entry_that_cannot_be_followed_is_a_warning_not_an_error_key(tmp_path: Path) -> None:
    """LoaderBootCountPath names a file that is not there: `blessed` is null and the reason is the
    first warning (it was an "error" key inside `booted`); the text says it on the booted line, once."""
    root = tmp_path / "root"
    esp = scratch.make(tmp_path / "esp")
    ev = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\active+1-2.conf")
    args = ["--root", str(root), "--esp", str(esp), "--efivars", str(ev)]
    j = json.loads(bk("status", *args, "--json").stdout)
    assert j["booted"] == {
        "entry": "loader/entries/active+1-2.conf",
        "role": "active",
        "blessed": None,
        "counting": True,
        "why": j["booted"]["why"],
    }
    assert "none of active+1-2.conf" in j["warnings"][0]
    text = bk("status", *args).stdout
    assert text.splitlines()[0].endswith(f"its state is unknown: {j['warnings'][0]}")
    assert text.count("none of active+1-2.conf") == 1


def test_the_activation_reports_path_is_written_in_one_place() -> None:
    """activate writes the report, status and activate read it: the path is sysext/report.py's alone
    (it was written in activate.py and again in assess/nodestatus.py, with its schema)."""
    src = Path(boot_status.__file__).resolve().parent.parent
    holders = sorted(str(p.relative_to(src)) for p in src.rglob("*.py") if "sysext.json" in p.read_text())
    assert holders == ["sysext/report.py"]
