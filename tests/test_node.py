"""The whole node, for real: bootkeeper on a Debian 13 guest booted by systemd-boot 257 under QEMU.

Each scenario is a sequence of real boots of one disk (see nodevm.py for what is on it). After every
power-off the ESP is read back from the disk image with mtools, and the ``@@@`` lines the guest's test
rig printed on the serial console say what happened inside. The booted entries, their renames and
verdicts must be what ``bootkeeper simulate`` predicts for the same faults, on a copy of the same ESP.
Every scenario's boots are printed as a table at the end of the run (conftest.py).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import nodevm

pytestmark = pytest.mark.node

NODE_TABLES: list[tuple[str, list[str]]] = []
_COUNTED = re.compile(r"^(?P<stem>[^+]+)(?:\+(?P<left>\d+)(?:-(?P<done>\d+))?)?\.efi$")


def _role_of(name: str) -> str:
    m = _COUNTED.match(name)
    assert m, name
    return m["stem"]


@dataclass
class Row:
    n: int
    role: str
    before: str
    booted: str  # the name systemd-boot booted it under (LoaderBootCountPath), or before
    after: str
    verdict: str
    then: str
    seconds: float


@pytest.fixture(scope="module")
def pieces() -> dict[str, Path]:
    missing = nodevm.missing_pieces()
    if missing:
        pytest.fail(f"node test pieces missing (scripts/setup-test-deps.sh installs them): {', '.join(missing)}")
    nodevm.root_image()
    nodevm.ukis()
    return nodevm.sysext_images()


class Node:
    """One disk, booted again and again."""

    def __init__(self, work: Path, title: str, faults: list[str], *, sysexts: dict[str, Path] | None = None) -> None:
        work.mkdir(parents=True)
        self.work = work
        self.title = title
        self.config = work / "host.yaml"
        self.config.write_text(nodevm.NODE_CONFIG.replace("/etc/bootkeeper/node-good.crt", str(nodevm.keys().good_crt)))
        esp = nodevm.make_esp(work / "esp", self.config)
        self.installed: list[dict[str, Any]] = []
        for img in (sysexts or {}).values():
            out = nodevm.bk(
                "sysext", "install", str(img), "--entry", "active", "--esp", str(esp),
                "--config", str(self.config), "--force", "--json",
            )  # fmt: skip
            self.installed.append(json.loads(out))
        (esp / "bktest/faults").write_text("".join(f + "\n" for f in faults))
        self.disk = nodevm.make_disk(esp, work / "disk.img")
        self.rows: list[Row] = []
        self.boots: list[nodevm.Boot] = []

    def set_faults(self, faults: list[str]) -> None:
        nodevm.esp_write(self.disk, "bktest/faults", "".join(f + "\n" for f in faults))

    def simulate(self, faults: list[str], boots: int) -> list[dict[str, Any]]:
        """What ``bootkeeper simulate`` says the next ``boots`` boots do, on a copy of the ESP as it is now."""
        esp = nodevm.esp_extract(self.disk, self.work / "esp-now")
        args = ["simulate", "--esp", str(esp), "--boots", str(boots), "--config", str(self.config), "--json"]
        for f in faults:
            args += ["--fail", f]
        out: list[dict[str, Any]] = json.loads(nodevm.bk(*args))["boots"]
        return out

    def boot(self, *, kill_on: str | None = None) -> nodevm.Boot:
        before = [n for n in nodevm.esp_names(self.disk) if n.endswith(".efi")]
        n = len(self.rows) + 1
        b = nodevm.boot(self.disk, self.work / f"boot{n}.log", kill_on=kill_on)
        after = [n for n in nodevm.esp_names(self.disk) if n.endswith(".efi")]
        crash = b.crash_line()
        if crash is not None:
            self.rows.append(Row(n, "?", "?", "?", "?", "guest kernel crashed by itself", "reset", b.seconds))
            raise GuestCrash(f"boot {n}: the guest kernel crashed by itself ({crash}); see {self.work}/boot{n}.log")
        # systemd drops a job to break an ordering cycle and boots on: that must never happen here
        assert "Ordering cycle found" not in b.text(), f"boot {n}: ordering cycle, see {self.work}/boot{n}.log"
        boot_line = b.first("BOOT")
        assert boot_line, f"boot {n}: the guest never reached the test rig; see {self.work}/boot{n}.log"
        role = boot_line.split()[0].removeprefix("role=")
        pick = {_role_of(x): x for x in before}
        done = {_role_of(x): x for x in after}
        efivars = dict(v.partition("=")[::2] for v in b.mark("EFIVAR"))
        count_path = efivars.get("LoaderBootCountPath", "")
        status = b.status()
        if status is not None:
            count_path = status["efi_variables"]["LoaderBootCountPath"] or ""
        booted = count_path.replace("\\", "/").rsplit("/", 1)[-1] or pick[role]
        row = Row(n, role, pick[role], booted, done[role], self._verdict(b, role, done[role]), "", b.seconds)
        row.then = {
            "panic": "kernel panic: reset",
            "reboot": "FailureAction=reboot",
            "poweroff": "up; powered off by the test",
            "killed": "power cut",
        }.get(b.ending, b.ending)
        self.rows.append(row)
        self.boots.append(b)
        return b

    @staticmethod
    def _verdict(b: nodevm.Boot, role: str, after: str) -> str:
        """The boot's verdict in simulate's words, from what the guest printed and the ESP after it."""
        counted = _COUNTED.match(after)
        assert counted
        if b.ending == "panic":
            return "none (reset)"
        if "fail" in b.mark("HEALTH"):
            return "not good (service failed)"
        if b.ending == "killed":
            return "none (reset)" if counted["left"] is not None else "good"
        if b.first("HEALTH") != "ok":
            return "?"
        status = b.status()
        assert status is not None
        if not status["booted"]["counting"]:
            return "good (not counted)"
        if counted["left"] is None:
            return "good"
        return "not blessed (recovery)" if role == "recovery" else "?"

    def run_predicted(self, faults: list[str], boots: int) -> list[dict[str, Any]]:
        """Ask simulate about the next ``boots`` boots, boot as many as it ran, and check they agree."""
        predicted = self.simulate(faults, boots)
        first = len(self.rows) + 1
        for _ in predicted:
            self.boot()
        self.check_against(predicted, first)
        return predicted

    def check_against(self, predicted: list[dict[str, Any]], first: int) -> None:
        """The real boots from number ``first`` on are what simulate predicted."""
        real = self.rows[first - 1 : first - 1 + len(predicted)]
        want = [
            (p["entry"].rsplit("/", 1)[-1], (p["renamed_to"] or p["entry"]).rsplit("/", 1)[-1], p["verdict"])
            for p in predicted
        ]
        got = [(r.before, r.booted, r.verdict) for r in real]
        assert got == want, f"real boots {got} != bootkeeper simulate {want}"

    def damaged_ukis(self) -> list[str]:
        """UKIs on the ESP whose bytes differ from the one built for their role (e.g. empty after a cut)."""
        esp = nodevm.esp_extract(self.disk, self.work / "esp-now")
        built = {r: hashlib.sha256(p.read_bytes()).digest() for r, p in nodevm.ukis().items()}
        return [
            f"{p.name} ({p.stat().st_size} bytes)"
            for p in sorted((esp / "EFI/Linux").glob("*.efi"))
            if hashlib.sha256(p.read_bytes()).digest() != built[_role_of(p.name)]
        ]

    def table(self) -> list[str]:
        out = [
            "| boot | entry | counter before | booted as | after | verdict | then | seconds |",
            "|---:|---|---|---|---|---|---|---:|",
        ]
        for r in self.rows:
            out.append(
                f"| {r.n} | {r.role} | {r.before} | {r.booted} | {r.after} | {r.verdict} | {r.then} | {r.seconds:.1f} |"
            )
        return out


class GuestCrash(RuntimeError):
    """The emulated machine failed on its own (not a fault the test injected)."""


NODE_RETRIES: list[str] = []


def retry_on_guest_crash(
    fn: Callable[[dict[str, Path], Path, list[Node]], None],
) -> Callable[[dict[str, Path], Path, list[Node]], None]:
    """A guest kernel that crashes by itself under TCG (rare; see nodevm.QEMU_SMP) consumed a boot the
    scenario did not plan: the scenario runs once more from a fresh disk, and the run says so."""

    @functools.wraps(fn)
    def run(pieces: dict[str, Path], tmp_path: Path, node_factory: list[Node]) -> None:
        try:
            fn(pieces, tmp_path / "try1", node_factory)
        except GuestCrash as exc:
            NODE_RETRIES.append(f"{fn.__name__}: {exc}; run again from a fresh disk")
            if node_factory:
                node_factory[-1].title += " (abandoned: the guest crashed by itself)"
            fn(pieces, tmp_path / "try2", node_factory)

    return run


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for node in made:
        NODE_TABLES.append((node.title, node.table()))
    table_file = nodevm.CACHE / "tables.md"
    with table_file.open("a") as f:
        for node in made:
            f.write(f"\n### {node.title}\n\n" + "\n".join(node.table()) + "\n")


def _unit(b: nodevm.Boot, name: str) -> dict[str, str]:
    for line in b.mark("UNIT"):
        unit, _, props = line.partition(" ")
        if unit == name:
            return dict(p.split("=", 1) for p in props.split())
    raise AssertionError(f"no UNIT line for {name}")


def _marks_json(b: nodevm.Boot, key: str, label: str) -> Any:
    for line in b.mark(key):
        lab, _, rest = line.partition(" ")
        if lab == label:
            return json.loads(rest)
    raise AssertionError(f"no {key} {label} line")


def _runs(b: nodevm.Boot, phase: str) -> dict[str, bool]:
    out = {}
    for line in b.mark("RUN"):
        ph, binary, state, *_ = line.split(" ")
        if ph == phase:
            out[binary.removeprefix("bk-hello-")] = state == "ok"
    return out


def _merged(b: nodevm.Boot, phase: str) -> object:
    usr = [h for h in _marks_json(b, "SX_STATUS", phase) if h["hierarchy"] == "/usr"]
    return usr[0]["extensions"]


@retry_on_guest_crash
def test_healthy_node_with_signed_extensions(pieces: dict[str, Path], tmp_path: Path, node_factory: list[Node]) -> None:
    node = Node(tmp_path, "1. healthy node, four extensions", [], sysexts=pieces)
    node_factory.append(node)
    assert [i["written"] for i in node.installed] == [[f"EFI/Linux/active.efi.extra.d/{n}.sysext.raw"] for n in pieces]
    assert [(i["validation"]["ok"], i["forced"]) for i in node.installed] == [
        (True, False),
        (True, False),
        (False, True),
        (False, True),
    ]
    nodevm.esp_write(node.disk, "bktest/sysext-compare", "1\n")
    node.run_predicted([], 1)
    b = node.boots[0]

    # systemd-stub handed the four images over; bootkeeper placed only the two good ones ...
    report = json.loads(b.first("SX_REPORT") or "null")
    verdicts = {i["name"]: (i["placed"], i["verdict"]) for i in report["images"]}
    assert verdicts == {
        "tools-a.sysext.raw": (True, "passed"),
        "tools-b.sysext.raw": (True, "passed"),
        "rogue.sysext.raw": (False, "refused"),
        "plain.sysext.raw": (False, "refused"),
    }
    assert report["mode"] == "enforced"
    # ... and exported the trust anchor for systemd-sysext's own check
    assert report["trust"]["exported"]["dir"] == "/run/verity.d"
    assert (b.first("VERITY_D") or "").split() == report["trust"]["exported"]["written"] != []
    # the real systemd-sysext merged them: a binary from each runs, nothing from the refused ones
    assert _merged(b, "enforced") == ["tools-a", "tools-b"]
    assert _runs(b, "enforced") == {"tools-a": True, "tools-b": True, "rogue": False, "plain": False}
    assert _unit(b, "systemd-sysext.service")["Result"] == "success"

    # boot-complete.target reached; bootkeeper-bless blessed active on the read-only /efi
    assert _unit(b, "boot-complete.target")["ActiveState"] == "active"
    assert _unit(b, "bootkeeper-bless.service")["Result"] == "success"
    assert (b.first("EFI_MOUNT") or "").split(",")[0] == "ro"
    assert node.rows[0].before == "active+2.efi" and node.rows[0].booted == "active+1-1.efi"
    assert node.rows[0].after == "active.efi"
    status = b.status()
    assert status is not None
    assert status["booted"]["role"] == "active" and status["booted"]["blessed"] == "good"
    ext = json.dumps(status["extensions"])
    for name in pieces:
        assert f"{name}.sysext.raw" in ext

    # the same boot in permissive mode: all four placed, and the real systemd-sysext refuses the
    # whole set (one bad image blocks all); enforced again merges the two good ones
    perm = _marks_json(b, "SX_ACTIVATE", "permissive")
    assert sorted(i["name"] for i in perm["images"] if i["placed"]) == sorted(f"{n}.sysext.raw" for n in pieces)
    refresh = {line.split()[0]: line for line in b.mark("SX_REFRESH")}
    assert "rc=1" in refresh["permissive"] and "Failed to merge" in refresh["permissive"]
    assert _merged(b, "permissive") == "none"
    assert not any(_runs(b, "permissive").values())
    assert "rc=0" in refresh["enforced"]
    assert _merged(b, "enforced-again") == ["tools-a", "tools-b"]


@retry_on_guest_crash
def test_failed_upgrade_falls_back_to_passive_and_stays_up(
    pieces: dict[str, Path], tmp_path: Path, node_factory: list[Node]
) -> None:
    faults = ["active=always:service", "passive=always:service"]
    node = Node(tmp_path, "2. failed upgrade (bk-health fails on active and passive)", faults)
    node_factory.append(node)
    predicted = node.run_predicted(faults, 5)
    assert len(predicted) == 3  # simulate stops where the node stays up
    first, last = node.boots[0], node.boots[-1]
    # active: the generator's FailureAction=reboot made the node reboot by itself, twice
    reboot = "FailureAction=reboot"
    assert [r.then for r in node.rows] == [reboot, reboot, "up; powered off by the test"]
    assert "@@@ HEALTH fail" in first.text()
    assert [r.after for r in node.rows] == ["active+1-1.efi", "active+0-2.efi", "passive+1-1.efi"]
    # passive: the same failure, but no FailureAction there: the node stays up, not blessed
    assert node.rows[2].role == "passive"
    assert _unit(last, "bk-health.service")["FailureAction"] == "none"
    assert (last.first("DROPINS") or "") == ""
    assert _unit(last, "boot-complete.target")["ActiveState"] != "active"
    status = last.status()
    assert status is not None
    assert status["booted"]["role"] == "passive" and status["booted"]["blessed"] == "indeterminate"
    why = status["booted"]["why"]
    assert [f["role"] for f in why["fallback_from"]] == ["active"]
    assert why["fallback_from"][0]["tries_used"] == 2 and why["fallback_from"][0]["last_try"] is not None
    text = "\n".join(last.mark("STATUS"))
    assert "active used its 2 tries" in text and "NOT blessed" in text


@retry_on_guest_crash
def test_nothing_boots_well_then_statereset_and_active_again(
    pieces: dict[str, Path], tmp_path: Path, node_factory: list[Node]
) -> None:
    faults = ["active=always:panic", "passive=always:panic"]
    node = Node(tmp_path, "3. nothing boots well: recovery, statereset, then active again", faults)
    node_factory.append(node)
    predicted = node.run_predicted(faults, 7)
    assert [p["role"] for p in predicted] == ["active"] * 2 + ["passive"] * 2 + ["recovery"] * 2 + ["statereset"]
    # recovery booted fine twice and was never blessed: its tries ran out, statereset booted
    assert [r.after for r in node.rows if r.role == "recovery"] == ["recovery+1-1.efi", "recovery+0-2.efi"]
    # statereset's reset armed active and passive again (bootkeeper arm, inside the guest)
    assert any("active" in line for line in node.boots[-1].mark("RESET"))
    names = nodevm.esp_names(node.disk)
    assert "active+2.efi" in names and "passive+2.efi" in names and "recovery+0-2.efi" in names

    # the fault removed: active boots, is blessed, and its bless re-arms recovery's counter
    node.set_faults([])
    node.run_predicted([], 1)
    assert node.rows[-1].role == "active" and node.rows[-1].after == "active.efi"
    names = nodevm.esp_names(node.disk)
    assert "recovery+2.efi" in names and "recovery+0-2.efi" not in names


@retry_on_guest_crash
def test_power_cut_during_bless(pieces: dict[str, Path], tmp_path: Path, node_factory: list[Node]) -> None:
    node = Node(tmp_path, "4. power cut while bless writes", [])
    node_factory.append(node)
    predicted = node.simulate(["active=1:panic"], 3)
    nodevm.esp_write(node.disk, "bktest/bless-pause", "BOOTKEEPER_TEST_STEP_PAUSE=10\n")
    # cut 1: /efi already remounted rw, the rename not done
    b1 = node.boot(kill_on="bootkeeper: test pause before rename:")
    assert b1.killed_at is not None
    assert "test pause before remount-rw" in b1.text()
    fsck1 = nodevm.esp_fsck(node.disk)
    assert node.damaged_ukis() == []
    # cut 2 (next boot): renamed and the directory synced, /efi not yet read-only again
    b2 = node.boot(kill_on="bootkeeper: test pause before remount-ro")
    assert b2.killed_at is not None
    fsck2 = nodevm.esp_fsck(node.disk)
    # the renamed UKI is whole: on vfat a rename persists the new entry empty until the file's own
    # fsync writes it (bootkeeper <= 71fffb5 left a 0-byte active.efi here, and passive booted)
    assert node.damaged_ukis() == []
    nodevm.esp_write(node.disk, "bktest/bless-pause", "")
    node.boot()
    node.check_against(predicted, 1)
    assert [r.after for r in node.rows] == ["active+1-1.efi", "active.efi", "active.efi"]
    # the cut left the ESP dirty (it was mounted rw), and nothing else
    assert "Dirty bit is set" in fsck1 and "Dirty bit is set" in fsck2
    for report in (fsck1, fsck2):
        assert nodevm.fsck_problems(report) == [], report
    names = nodevm.esp_names(node.disk)
    assert not [n for n in names if n.startswith(".bootkeeper-")]
    assert sorted(_role_of(n) for n in names if n.endswith(".efi")) == ["active", "passive", "recovery", "statereset"]


def test_no_machine_left_running(tmp_path: Path) -> None:
    p = subprocess.run(["pgrep", "-af", "qemu-system-x86_64"], capture_output=True, text=True, check=False)
    mine = [line for line in p.stdout.splitlines() if str(nodevm.ROOT) in line or "/pytest-" in line]
    assert mine == [], mine
