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
import itertools
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import nodevm
from bootkeeper.assess import generator, units

pytestmark = pytest.mark.node

NODE_TABLES: list[tuple[str, list[str]]] = []
DISKS: list[Path] = []  # every disk this run made: the QEMU processes booting one of them are this run's
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

    def __init__(
        self,
        work: Path,
        title: str,
        faults: list[str],
        *,
        sysexts: dict[str, Path] | None = None,
        active: Path | None = None,
        files: dict[str, Path | str] | None = None,
    ) -> None:
        """``active``: another UKI as the active one (OS v1); ``files``: ESP path -> a file to copy
        there or a text to write (the upgrade scenarios' payload and commands under bktest/)."""
        work.mkdir(parents=True)
        self.work = work
        self.title = title
        self.config = work / "host.yaml"
        self.config.write_text(nodevm.NODE_CONFIG.replace("/etc/bootkeeper/node-good.crt", str(nodevm.keys().good_crt)))
        esp = nodevm.make_esp(work / "esp", self.config, active=active)
        for rel, what in (files or {}).items():
            (esp / rel).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(what, Path):
                shutil.copy(what, esp / rel)
            else:
                (esp / rel).write_text(what)
        self.installed: list[dict[str, Any]] = []
        for img in (sysexts or {}).values():
            out = nodevm.bk(
                "sysext", "install", str(img), "--entry", "active", "--esp", str(esp),
                "--config", str(self.config), "--force", "--json",
            )  # fmt: skip
            self.installed.append(json.loads(out))
        (esp / "bktest/faults").write_text("".join(f + "\n" for f in faults))
        self.disk = nodevm.make_disk(esp, work / "disk.img")
        DISKS.append(self.disk)
        self.rows: list[Row] = []
        self.boots: list[nodevm.Boot] = []
        self.extra: list[tuple[str, list[str]]] = []  # more tables for the run's summary (title, lines)
        self.cmdline_extra: str | None = None  # words systemd-stub adds to the command line of the next boots
        self.net: nodevm.NetSpec | None = None  # the next boots' NIC (tests/node/test_node_update.py)
        self.stick: Path | None = None  # the next boots' USB stick

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
        b = nodevm.boot(
            self.disk,
            self.work / f"boot{n}.log",
            kill_on=kill_on,
            cmdline_extra=self.cmdline_extra,
            net=self.net,
            stick=self.stick,
        )
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
        # an upgrade in this boot (upgrade.sh) printed the names as bless left them, before it ran
        upgraded = b.first("LINUX_BEFORE")
        if upgraded is not None:
            after = [x for x in upgraded.split() if x.endswith(".efi")]
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
        ran = [" rc=".join(line.split(" ", 1)) for line in b.mark("UPGRADE_RC")]
        row.then = "; ".join([*ran, row.then])
        if b.killed_at is not None and upgraded is not None and "UPGRADE_RC" not in b.marks:
            step = b.killed_at.split("test pause before ", 1)[-1].split(" (", 1)[0]
            row.then = f"power cut in upgrade, before {step}"
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
        if status["booted"]["blessed"] == "good":  # blessed with fresh tries: statereset always is
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

    def esp_state(self) -> dict[str, str]:
        """Every file under EFI/Linux, named by what it is: the built UKI (role, or OS "v1"/"v2") or
        extension ("tools v1"/"tools v2") with the same bytes, else "? N bytes"."""
        esp = nodevm.esp_extract(self.disk, self.work / "esp-now")
        known = {hashlib.sha256(p.read_bytes()).digest(): r for r, p in nodevm.ukis().items()}
        known.update({hashlib.sha256(p.read_bytes()).digest(): v for v, p in nodevm.os_ukis().items()})
        known.update({hashlib.sha256(p.read_bytes()).digest(): f"tools {v}" for v, p in nodevm.os_sysexts().items()})
        linux = esp / "EFI/Linux"
        out = {}
        for p in sorted(x for x in linux.rglob("*") if x.is_file()):
            out[p.relative_to(linux).as_posix()] = known.get(
                hashlib.sha256(p.read_bytes()).digest(), f"? {p.stat().st_size} B"
            )
        return out

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


def retry_on_guest_crash(fn: Callable[..., None]) -> Callable[..., None]:
    """A guest kernel that crashes by itself under TCG (rare; see nodevm.QEMU_SMP) consumed a boot the
    scenario did not plan: the scenario runs once more from a fresh disk, and the run says so.
    ``fn`` takes pieces, tmp_path, node_factory and, as keywords, its parameters (``cut``)."""

    @functools.wraps(fn)
    def run(pieces: dict[str, Path], tmp_path: Path, node_factory: list[Node], **params: Any) -> None:
        try:
            fn(pieces, tmp_path / "try1", node_factory, **params)
        except GuestCrash as exc:
            NODE_RETRIES.append(f"{fn.__name__}: {exc}; run again from a fresh disk")
            if node_factory:
                node_factory[-1].title += " (abandoned: the guest crashed by itself)"
            fn(pieces, tmp_path / "try2", node_factory, **params)

    return run


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    tables = [t for node in made for t in [(node.title, node.table()), *node.extra]]
    NODE_TABLES.extend(tables)
    table_file = nodevm.CACHE / "tables.md"
    with table_file.open("a") as f:
        for title, lines in tables:
            f.write(f"\n### {title}\n\n" + "\n".join(lines) + "\n")


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


SEED = "loader/random-seed"
PLANTED_SEED = "bktest: an old seed, refresh me\n"  # 32 bytes: a node's seed from its last boot


def _esp_bytes(disk: Path, rel: str) -> bytes | None:
    """A file of the disk's ESP, byte for byte (mcopy: nodevm.esp_read decodes text), or None."""
    out = disk.with_name(disk.name + ".get")
    p = subprocess.run(
        ["mcopy", "-n", "-i", f"{disk}@@1M", f"::/{rel}", str(out)], capture_output=True, env=nodevm.MT_ENV, check=False
    )
    if p.returncode != 0:
        return None
    data = out.read_bytes()
    out.unlink()
    return data


def _assert_seed_refreshed(b: nodevm.Boot, before: bytes | None, after: bytes | None) -> None:
    """Issue 15, item 11 (seed 002): bootkeeper-random-seed.service ran the real bootctl on the read-only
    /efi in systemd-boot-random-seed.service's place (masked); the seed the OS left is the one on the disk
    after power-off, other than systemd-boot's of this boot and the one before the boot; /efi read-only
    again, and no unit failed (the real unit fails on a read-only ESP: that was seed 002's quiet failure)."""
    assert (b.first("FAILED") or "").split() == []
    assert after is not None and len(after) == 32 and after != before, (before, after)
    action = "refreshed" if before else "written"  # bootctl hashes an old seed in
    seen = dict(kv.split("=", 1) for kv in (b.first("SEED") or "").split())
    assert seen["after"] == hashlib.sha256(after).hexdigest() != seen["before"], seen
    unit = _unit(b, "bootkeeper-random-seed.service")
    assert (unit["ActiveState"], unit["Result"]) == ("active", "success"), unit
    assert _unit(b, "systemd-boot-random-seed.service")["LoadState"] == "masked"
    log = b.mark("SEED_LOG")
    assert f"bootctl: Random seed file /efi/loader/random-seed successfully {action} (32 bytes)." in log, log
    assert f"/efi/loader/random-seed: {action} (32 bytes); /efi read-only again" in log, log


# -- what bootkeeper costs every boot (issue 18) -------------------------------------------------

# every unit install-units enables; the services among them that a healthy boot of this node runs to
# the end (bootkeeper-metrics.service runs where node_exporter's textfile folder is: its condition)
BOOTKEEPER_UNITS = tuple(units.WANTED_BY)
RUN_ON_A_HEALTHY_BOOT = (units.SYSEXT_UNIT, units.RANDOM_SEED_UNIT, units.BOOT_UNIT, units.BLESS_UNIT)
# The boot without bootkeeper: the same disk, every unit of bootkeeper masked by the debug generator
# (systemd v257 src/debug-generator/debug-generator.c: systemd.mask= links the unit to /dev/null in
# /run/systemd/generator, which comes before /usr/lib/systemd/system, where the package ships them),
# and boot-complete.target pulled in by the rig's stand-in for systemd-bless-boot.service (masked by
# install-units; on this node nothing but bootkeeper-bless's Requires= pulls the target in), wanted from
# the command line (tests/node/guest/bktest-boot-complete.service says why not the target itself).
BOOT_COMPLETE_STANDIN = "bktest-boot-complete.service"
WITHOUT_BOOTKEEPER = " ".join(
    [*(f"systemd.mask={u}" for u in BOOTKEEPER_UNITS), f"systemd.wants={BOOT_COMPLETE_STANDIN}"]
)
GENERATOR_DROPIN = f"./normal/bk-health.service.d/{generator.DROPIN}"


@dataclass(frozen=True)
class BootTimes:
    """What tests/node/guest/boottime.sh printed about one boot: timestamps in µs since the kernel started."""

    units: dict[str, dict[str, str]]
    manager: dict[str, str]
    blame: list[str]
    chain: list[str]
    generator: list[tuple[int, int, list[str]]]  # (rc, µs, files written) of each run by hand
    python_us: list[int]
    cmdline: str
    activation_report: bool

    @classmethod
    def of(cls, b: nodevm.Boot) -> BootTimes:
        assert b.first("BT_DONE") is not None, "boottime.sh did not finish"
        found = {}
        for line in b.mark("BT_UNIT"):
            name, _, props = line.partition(" ")
            found[name] = dict(p.split("=", 1) for p in props.split())
        runs = []
        for line in b.mark("BT_GENERATOR_RUN"):
            head, _, wrote = line.partition(" wrote=")
            kv = dict(w.split("=", 1) for w in head.split()[1:])
            runs.append((int(kv["rc"]), int(kv["us"]), wrote.split()))
        return cls(
            units=found,
            manager=dict(p.split("=", 1) for p in (b.first("BT_MANAGER") or "").split()),
            blame=b.mark("BT_BLAME"),
            chain=b.mark("BT_CHAIN"),
            generator=runs,
            python_us=[int(x.split("us=", 1)[1]) for x in b.mark("BT_PYTHON_RUN")],
            cmdline=b.first("BT_CMDLINE") or "",
            activation_report=b.first("BT_SXREPORT") == "present",
        )

    def stamp(self, unit: str, key: str) -> int:
        return int(self.units[unit].get(key) or 0)

    def active_at(self, unit: str) -> float:
        """Seconds after the kernel started when ``unit`` became active (0: never)."""
        return self.stamp(unit, "ActiveEnterTimestampMonotonic") / 1e6

    def took_ms(self, unit: str) -> float | None:
        """From the start job (activating) to active: for a oneshot, ExecStart and ExecStartPost."""
        start, done = (
            self.stamp(unit, "InactiveExitTimestampMonotonic"),
            self.stamp(unit, "ActiveEnterTimestampMonotonic"),
        )
        return (done - start) / 1000 if start and done else None

    def main_ms(self, unit: str) -> float | None:
        start, done = (
            self.stamp(unit, "ExecMainStartTimestampMonotonic"),
            self.stamp(unit, "ExecMainExitTimestampMonotonic"),
        )
        return (done - start) / 1000 if start and done else None

    def blame_of(self, unit: str) -> str:
        return next((line.rsplit(" ", 1)[0] for line in self.blame if line.endswith(" " + unit)), "-")

    def generators_ms(self) -> float:
        start, done = (int(self.manager.get(f"Generators{k}TimestampMonotonic", 0)) for k in ("Start", "Finish"))
        return (done - start) / 1000

    def generator_ms(self) -> float:
        return statistics.median(us for _, us, _ in self.generator) / 1000

    def python_ms(self) -> float:
        return statistics.median(self.python_us) / 1000


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def _boottime_table(on: BootTimes, off: BootTimes) -> list[str]:
    """Each unit's time, the generators', and when boot-complete.target was reached, with bootkeeper and
    with its units masked (one boot each, QEMU/TCG: one sample, noisy)."""
    out = [
        "| | with bootkeeper | bootkeeper's units masked | difference |",
        "|---|---:|---:|---:|",
    ]
    for u in (*BOOTKEEPER_UNITS, "systemd-sysext.service"):
        took, main = on.took_ms(u), on.main_ms(u)
        if not u.endswith(".service"):  # a path or timer unit: no process, active at once
            what = f"{on.units[u].get('ActiveState')} at {on.active_at(u):.2f} s"
        elif took is None:
            what = f"did not run ({on.units[u].get('ActiveState')}, condition {on.units[u].get('ConditionResult')})"
        else:
            what = f"{_ms(took)} (ExecStart {_ms(main)}; blame {on.blame_of(u)})"
        state = off.units[u].get("LoadState", "?") if u in BOOTKEEPER_UNITS else _ms(off.took_ms(u))
        out.append(f"| {u}: activating → active | {what} | {state if state != '-' else 'did not run'} | |")
    gens, gen, py = (
        (on.generators_ms(), off.generators_ms()),
        (on.generator_ms(), off.generator_ms()),
        (on.python_ms(), off.python_ms()),
    )
    out.append(
        f"| all generators (manager's phase) | {gens[0]:.0f} ms | {gens[1]:.0f} ms | {gens[0] - gens[1]:+.0f} ms |"
    )
    out.append(
        f"| bootkeeper-generator by hand, median of {len(on.generator)} | {gen[0]:.0f} ms | {gen[1]:.0f} ms "
        "| (it runs in both) |"
    )
    out.append(f"| python3 -IS -c pass by hand, median | {py[0]:.0f} ms | {py[1]:.0f} ms | |")
    for u in ("sysinit.target", "basic.target", "boot-complete.target", "multi-user.target"):
        a, b = on.active_at(u), off.active_at(u)
        out.append(f"| {u} active at | {a:.2f} s | {b:.2f} s | {a - b:+.2f} s |")
    out.append(f"| bootkeeper-bless.service active (blessed) at | {on.active_at(units.BLESS_UNIT):.2f} s | - | |")
    out.append("")
    for label, t in (("with bootkeeper", on), ("bootkeeper's units masked", off)):
        out.append(f"critical-chain boot-complete.target, {label}:")
        out += [f"    {line}" for line in t.chain if "@" in line or "+" in line]
    return out


def _assert_boot_without_bootkeeper(node: Node, on: BootTimes, off: BootTimes, seed_before: bytes | None) -> None:
    """The masked boot ran none of bootkeeper's units, the healthy one ran each; both reached
    boot-complete.target, and what each left is what that says."""
    assert all(f"systemd.mask={u}" not in on.cmdline for u in BOOTKEEPER_UNITS), on.cmdline
    assert set(WITHOUT_BOOTKEEPER.split()) <= set(off.cmdline.split()), off.cmdline
    for u in RUN_ON_A_HEALTHY_BOOT:
        props = on.units[u]
        assert (props["ActiveState"], props["Result"]) == ("active", "success"), (u, props)
        assert 0 < on.stamp(u, "InactiveExitTimestampMonotonic") <= on.stamp(u, "ActiveEnterTimestampMonotonic"), props
    # its start job ran (its condition, node_exporter's folder, decides whether it does anything)
    assert on.stamp(units.METRICS_UNIT, "ConditionTimestampMonotonic") > 0, on.units[units.METRICS_UNIT]
    for u in (units.METRICS_PATH, units.METRICS_TIMER):
        assert on.units[u]["ActiveState"] == "active", (u, on.units[u])
    for u in BOOTKEEPER_UNITS:
        props = off.units[u]
        assert (props["LoadState"], props["ActiveState"]) == ("masked", "inactive"), (u, props)
        assert off.stamp(u, "InactiveExitTimestampMonotonic") == off.stamp(u, "ConditionTimestampMonotonic") == 0, props
    assert on.units[BOOT_COMPLETE_STANDIN]["ActiveState"] == "inactive"
    assert off.units[BOOT_COMPLETE_STANDIN]["ActiveState"] == "active", off.units[BOOT_COMPLETE_STANDIN]
    for t in (on, off):
        assert t.units["boot-complete.target"]["ActiveState"] == "active", t.units["boot-complete.target"]
        assert any(line.startswith("boot-complete.target @") for line in t.chain), t.chain
        # the manager's generator phase of the boot (not of a later reload), before anything was up
        start, finish = (int(t.manager[f"Generators{k}TimestampMonotonic"]) for k in ("Start", "Finish"))
        assert 0 < start < finish < t.stamp("sysinit.target", "ActiveEnterTimestampMonotonic"), t.manager
        assert [rc for rc, _, _ in t.generator] == [0] * 3 and len(t.python_us) == 3
    # the activation report only bootkeeper-sysext writes; the generator wrote its drop-in on the counted
    # boot of active, and nothing once active was blessed (no counter: a reboot would come back to it)
    assert on.activation_report and not off.activation_report
    assert all(wrote == [GENERATOR_DROPIN] for _, _, wrote in on.generator), on.generator
    assert all(wrote == [] for _, _, wrote in off.generator), off.generator
    # nothing of bootkeeper's wrote the ESP: no rename, the seed as the healthy boot left it
    row = node.rows[-1]
    assert (row.before, row.booted, row.after, row.verdict) == ("active.efi",) * 3 + ("good (not counted)",), row
    assert _esp_bytes(node.disk, SEED) == seed_before
    assert (node.boots[-1].first("FAILED") or "").split() == []


@retry_on_guest_crash
def test_healthy_node_with_signed_extensions(pieces: dict[str, Path], tmp_path: Path, node_factory: list[Node]) -> None:
    node = Node(tmp_path, "1. healthy node, four extensions", [], sysexts=pieces, files={SEED: PLANTED_SEED})
    node_factory.append(node)
    assert [i["written"] for i in node.installed] == [[f"EFI/Linux/active.efi.extra.d/{n}.sysext.raw"] for n in pieces]
    assert [(i["validation"]["ok"], i["forced"]) for i in node.installed] == [
        (True, False),
        (True, False),
        (False, True),
        (False, True),
    ]
    nodevm.esp_write(node.disk, "bktest/sysext-compare", "1\n")
    nodevm.esp_write(node.disk, "bktest/boottime", "1\n")
    seed_before = _esp_bytes(node.disk, SEED)
    assert seed_before == PLANTED_SEED.encode()
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
    _assert_seed_refreshed(b, seed_before, _esp_bytes(node.disk, SEED))
    assert node.rows[0].after == "active.efi"
    status = b.status()
    assert status is not None
    assert status["booted"]["role"] == "active" and status["booted"]["blessed"] == "good"
    ext = json.dumps(status["extensions"])
    for name in pieces:
        assert f"{name}.sysext.raw" in ext

    # the same boot in permissive mode: all but rogue placed (its signature would make the real
    # systemd-sysext refuse the whole set, issue 26 item 4), and it merges the three, plain
    # unchecked; enforced again merges the two good ones (also tests/node/test_node_extdirs.py)
    perm = _marks_json(b, "SX_ACTIVATE", "permissive")
    placed = sorted(i["name"] for i in perm["images"] if i["placed"])
    assert placed == sorted(f"{n}.sysext.raw" for n in pieces if n != "rogue")
    refresh = {line.split()[0]: line for line in b.mark("SX_REFRESH")}
    assert "rc=0" in refresh["permissive"], refresh
    assert sorted(_merged(b, "permissive")) == ["plain", "tools-a", "tools-b"]  # type: ignore[call-overload]
    assert _runs(b, "permissive") == {"tools-a": True, "tools-b": True, "rogue": False, "plain": True}
    assert "rc=0" in refresh["enforced"]
    assert _merged(b, "enforced-again") == ["tools-a", "tools-b"]

    # issue 18: what bootkeeper costs this boot. The last boot of the scenario: the same disk once more,
    # every unit of bootkeeper masked (nothing blesses, nothing counts: active is blessed already)
    nodevm.esp_write(node.disk, "bktest/sysext-compare", "")  # that ran once; the masked boot only reports
    seed_healthy = _esp_bytes(node.disk, SEED)
    node.cmdline_extra = WITHOUT_BOOTKEEPER
    node.boot()
    node.rows[-1].then = f"bootkeeper's units masked; {node.rows[-1].then}"
    on, off = BootTimes.of(b), BootTimes.of(node.boots[-1])
    for t in (on, off):  # boottime.sh names the units it reports: every one install-units enables
        assert set(BOOTKEEPER_UNITS) <= set(t.units), (
            f"tests/node/guest/boottime.sh: add {set(BOOTKEEPER_UNITS) - set(t.units)}"
        )
    node.extra.append((f"{node.title}: what bootkeeper costs this boot (boot 1 vs boot 2)", _boottime_table(on, off)))
    _assert_boot_without_bootkeeper(node, on, off, seed_healthy)


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
    node = Node(tmp_path, "3. nothing boots well: recovery, statereset hands back, then active again", faults)
    node_factory.append(node)
    predicted = node.run_predicted(faults, 7)
    assert [p["role"] for p in predicted] == ["active"] * 2 + ["passive"] * 2 + ["recovery"] * 2 + ["statereset"]
    # recovery booted fine twice and was never blessed: its tries ran out, statereset booted
    assert [r.after for r in node.rows if r.role == "recovery"] == ["recovery+1-1.efi", "recovery+0-2.efi"]
    # issue 26 item 9: statereset's own bless (bootkeeper-bless.service, no test rig step) handed back:
    # active, passive and recovery re-armed from the ESP, statereset with fresh tries, the count on the ESP
    assert predicted[-1]["handback"] == "handed-back"
    assert nodevm.esp_names(node.disk) == ["active+2.efi", "passive+2.efi", "recovery+2.efi", "statereset+2.efi"]
    assert nodevm.esp_read(node.disk, "loader/bootkeeper-handbacks").splitlines()[-1] == "handbacks=1"
    status = node.boots[-1].status()
    assert status is not None
    assert status["booted"]["role"] == "statereset" and status["booted"]["blessed"] == "good"
    assert status["handback"]["count"] == 1 and status["handback"]["staying"] is False
    # why statereset booted: the entries as they stood when it started, not as its hand-back left them
    assert [f["role"] for f in status["booted"]["why"]["fallback_from"]] == ["active", "passive", "recovery"]
    assert _unit(node.boots[-1], "bootkeeper-bless.service")["Result"] == "success"
    assert (node.boots[-1].first("EFI_MOUNT") or "").startswith("ro")  # /efi read-only again after bless

    # the next boot is active again (the fault removed): blessed, and its bless gives the budget back
    node.set_faults([])
    node.run_predicted([], 1)
    assert node.rows[-1].role == "active" and node.rows[-1].after == "active.efi"
    names = nodevm.esp_names(node.disk)
    assert "recovery+2.efi" in names and "recovery+0-2.efi" not in names
    assert "bootkeeper-handbacks" not in nodevm.esp_names(node.disk, "loader")


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


# -- upgrades (issue 14, items 5 to 7) -----------------------------------------------------------

UPGRADE_ARGS = "/efi/bktest/v2.efi --extension /efi/bktest/v2/tools.sysext.raw\n"
# the node runs OS v1 with tools built for v1; bktest/ holds v2 and tools built for v2 (nothing loads them)
V1_NODE = {"active.efi.extra.d/tools.sysext.raw": "tools v1"}
V1_ESP = {
    "active+2.efi": "v1",
    "passive+2.efi": "passive",
    "recovery+2.efi": "recovery",
    "statereset+2.efi": "statereset",
}
UPGRADED_ESP = {
    "active+2.efi": "v2",
    "active.efi.extra.d/tools.sysext.raw": "tools v2",
    "passive+2.efi": "v1",
    "passive.efi.extra.d/tools.sysext.raw": "tools v1",
    "recovery+2.efi": "recovery",
    "statereset+2.efi": "statereset",
}


def _v1_node(tmp_path: Path, title: str, files: dict[str, Path | str]) -> Node:
    osu, osx = nodevm.os_ukis(), nodevm.os_sysexts()
    payload: dict[str, Path | str] = {"bktest/v2.efi": osu["v2"], "bktest/v2/tools.sysext.raw": osx["v2"]}
    node = Node(tmp_path, title, [], sysexts={"tools": osx["v1"]}, active=osu["v1"], files={**payload, **files})
    assert node.installed[0]["written"] == ["EFI/Linux/active.efi.extra.d/tools.sysext.raw"]
    assert node.installed[0]["validation"]["ok"] and not node.installed[0]["forced"]
    assert node.esp_state() == {**V1_ESP, **V1_NODE}
    return node


def _upgrade(b: nodevm.Boot, label: str) -> tuple[int, dict[str, Any], str]:
    """The in-guest ``bootkeeper upgrade --json`` run ``label``: exit code, JSON, stderr."""
    rc = next(int(v.split()[1]) for v in b.mark("UPGRADE_RC") if v.split()[0] == label)
    err = next(v.partition(" ")[2] for v in b.mark("UPGRADE_ERR") if v.split()[0] == label)
    return rc, _marks_json(b, "UPGRADE_JSON", label), err


def _runs_os(b: nodevm.Boot) -> tuple[str | None, str | None, str | None]:
    """(the os-release the rig gave this UKI, the one seen after the sysext merge, what bk-hello-tools printed)."""
    return b.first("OSREL"), b.first("OS"), b.first("TOOLS")


@retry_on_guest_crash
def test_upgrade_refused_then_failed_rolls_back_to_the_old_os(
    pieces: dict[str, Path], tmp_path: Path, node_factory: list[Node]
) -> None:
    """5. A failed upgrade rolls back to the old OS with its own extensions; 6. a refused upgrade changes
    nothing (in the first boot, before the upgrade that goes through)."""
    node = _v1_node(
        tmp_path,
        "5./6. upgrade v1 -> v2: refused without tools for v2, then v2 fails, passive v1 runs with its tools",
        {"bktest/refuse": "/efi/bktest/v2.efi\n", "bktest/upgrade": UPGRADE_ARGS},
    )
    node_factory.append(node)
    node.run_predicted([], 1)
    b = node.boots[0]
    # OS v1 runs, and the real systemd-sysext merged the extension built for v1
    assert _runs_os(b) == ("VERSION_ID=1 IMAGE_VERSION=1", "VERSION_ID=1", "tools v1")
    assert _unit(b, "bootkeeper-bless.service")["Result"] == "success"
    assert (b.first("EFI_MOUNT") or "").split(",")[0] == "ro"
    assert node.rows[0].after == "active.efi"  # as bless left it (LINUX_BEFORE), before the upgrade

    # 6. refused: the only extension (carried) is built for v1; exit 1 naming it; the ESP byte-identical
    rc, out, err = _upgrade(b, "refuse")
    assert rc == 1
    assert out["result"] == "refused" and out["gate"]["verdict"] == "refused"
    assert [(x["name"], x["carried"], x["verdict"]) for x in out["gate"]["extensions"]] == [
        ("tools.sysext.raw", True, "refused")
    ]
    assert "upgrade refused: tools.sysext.raw: extension-release: VERSION_ID=1, the host has 2" in err
    hashes = dict(v.split(" ", 1) for v in b.mark("ESP_HASH"))
    listing = dict(v.split(" ", 1) for v in b.mark("ESP_FILES"))
    assert hashes["before"] == hashes["after"] and listing["before"] == listing["after"]
    assert "./EFI/Linux/active.efi" in listing["before"].split()

    # 5. the upgrade, on the node's read-only /efi, with tools built for v2
    rc, out, err = _upgrade(b, "upgrade")
    assert rc == 0 and out["result"] == "upgraded" and out["gate"]["verdict"] == "ok", err
    assert out["gate"]["order"]["order"] == ["active", "passive", "recovery", "statereset"]
    ro = {v.split()[0]: v.split()[1] for v in b.mark("EFI_MOUNT_AFTER")}
    assert ro["refuse"].split(",")[0] == "ro" and ro["upgrade"].split(",")[0] == "ro"
    assert node.esp_state() == UPGRADED_ESP
    nodevm.esp_write(node.disk, "bktest/refuse", "")  # once (the next boots run no upgrade either: done)

    # v2's enrolled service fails: v2 counts down, then passive (the v1 OS) boots, as simulate says
    # (three boots: after that passive, blessed, boots on and on)
    faults = ["active=always:service"]
    node.set_faults(faults)
    predicted = node.run_predicted(faults, 3)
    assert [(p["role"], p["verdict"]) for p in predicted] == [
        ("active", "not good (service failed)"),
        ("active", "not good (service failed)"),
        ("passive", "good"),
    ]
    reboot = "FailureAction=reboot"
    assert [r.then for r in node.rows[1:]] == [reboot, reboot, "up; powered off by the test"]
    for v2 in node.boots[1:3]:
        assert _runs_os(v2) == ("VERSION_ID=2 IMAGE_VERSION=2", "VERSION_ID=2", "tools v2")
        assert (v2.first("BOOT") or "").startswith("role=active")
    last = node.boots[3]
    assert (last.first("BOOT") or "").startswith("role=passive")
    assert _runs_os(last) == ("VERSION_ID=1 IMAGE_VERSION=1", "VERSION_ID=1", "tools v1")
    assert [r.after for r in node.rows[1:]] == ["active+1-1.efi", "active+0-2.efi", "passive.efi"]
    assert node.esp_state() == {
        **{k: v for k, v in UPGRADED_ESP.items() if not k.endswith(".efi")},
        "active+0-2.efi": "v2",
        "passive.efi": "v1",
        "recovery+2.efi": "recovery",
        "statereset+2.efi": "statereset",
    }
    # status on the node: the upgrade to v2 failed, v1 runs on passive
    status = last.status()
    assert status is not None
    assert status["booted"]["role"] == "passive" and status["booted"]["blessed"] == "good"
    failed = status["failed_upgrade"]
    assert failed is not None and failed["to"]["VERSION_ID"] == "2" and failed["running"]["VERSION_ID"] == "1"
    text = "\n".join(last.mark("STATUS"))
    assert failed["text"] in text and "the upgrade to" in failed["text"] and "failed" in failed["text"]


# the step right after the old active's rename to passive (renamed, file and folder synced), and the
# rename that makes the staged UKI the new active (the commit): labels of EspStore's pause hook
CUTS = {
    "after-passive": "bootkeeper: test pause before unlink:tools.sysext.raw",
    "before-commit": "bootkeeper: test pause before rename:.bootkeeper-upgrade-active.uki->active+",
}


# what else the cut left under EFI/Linux: unread by systemd-stub (no active UKI) or staged under names nothing loads
CUT_ESP = {
    "after-passive": {
        "active.efi.extra.d/tools.sysext.raw": "tools v1",
        ".bootkeeper-upgrade-active.d/tools.sysext.raw": "tools v2",
        ".bootkeeper-upgrade-active.uki": "v2",
        "recovery+2.efi": "recovery",
        "statereset+2.efi": "statereset",
    },
    "before-commit": {
        "active.efi.extra.d/tools.sysext.raw": "tools v2",
        ".bootkeeper-upgrade-active.uki": "v2",
        "recovery+2.efi": "recovery",
        "statereset+2.efi": "statereset",
    },
}


@pytest.mark.parametrize("cut", list(CUTS))
@retry_on_guest_crash
def test_power_cut_during_upgrade(pieces: dict[str, Path], tmp_path: Path, node_factory: list[Node], cut: str) -> None:
    """7. A power cut during the upgrade: the next boot runs a consistent OS with its own extensions
    (the one simulate predicts for the ESP the cut left), and the upgrade run again there completes."""
    node = _v1_node(
        tmp_path,
        f"7. power cut during the upgrade ({cut})",
        {"bktest/upgrade": UPGRADE_ARGS, "bktest/upgrade-env": "BOOTKEEPER_TEST_STEP_PAUSE=1\n"},
    )
    node_factory.append(node)
    first = node.simulate([], 1)
    b1 = node.boot(kill_on=CUTS[cut])
    assert b1.killed_at is not None, f"no cut at {CUTS[cut]!r}"
    node.check_against(first, 1)
    assert _runs_os(b1)[2] == "tools v1"
    assert "test pause before remount-rw" in b1.text()
    fsck = nodevm.esp_fsck(node.disk)
    assert nodevm.fsck_problems(fsck) == [], fsck
    # the old OS is passive with its own copy of its tools; no active entry: nothing listed is half there
    assert node.esp_state() == {
        **CUT_ESP[cut],
        "passive+2.efi": "v1",
        "passive.efi.extra.d/tools.sysext.raw": "tools v1",
    }

    # the next boot: the OS simulate predicts, with its own extensions; the upgrade runs again, unpaused
    nodevm.esp_write(node.disk, "bktest/upgrade-env", "")
    predicted = node.simulate([], 1)
    b2 = node.boot()
    node.check_against(predicted, 2)
    assert node.rows[1].role == "passive" and node.rows[1].verdict == "good"
    assert _runs_os(b2) == ("VERSION_ID=1 IMAGE_VERSION=1", "VERSION_ID=1", "tools v1")
    rc, out, err = _upgrade(b2, "upgrade")
    assert rc == 0 and out["result"] == "upgraded", err
    state = node.esp_state()
    assert state == {**{k: v for k, v in UPGRADED_ESP.items() if k != "passive+2.efi"}, "passive.efi": "v1"}, state
    names = nodevm.esp_names(node.disk)
    assert not [n for n in names if n.startswith(".bootkeeper-")], names
    # and the completed upgrade boots: v2 as active, with the tools built for v2, blessed
    node.run_predicted([], 1)
    assert node.rows[2].role == "active" and node.rows[2].after == "active.efi"
    assert _runs_os(node.boots[2]) == ("VERSION_ID=2 IMAGE_VERSION=2", "VERSION_ID=2", "tools v2")


def _unit_section(text: str) -> list[str]:
    """The [Unit] lines that order and condition a unit (not what describes it), in order."""
    out, inside = [], False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            inside = line == "[Unit]"
        elif inside and line and not line.startswith("#") and not line.startswith(("Description=", "Documentation=")):
            out.append(line)
    return out


def test_the_random_seed_unit_runs_where_the_real_one_does(tmp_path: Path) -> None:
    """bootkeeper-random-seed.service has the ordering and conditions of the node's own
    systemd-boot-random-seed.service (Debian's systemd-boot 257 in the guest tree), and both are
    wanted by sysinit.target: the seed is refreshed at the same point of every boot."""
    real = nodevm.GUEST / "usr/lib/systemd/system/systemd-boot-random-seed.service"
    if not real.exists():
        pytest.fail(f"{real} is missing: scripts/setup-node-guest.sh installs systemd-boot into the guest")
    assert (nodevm.GUEST / "usr/lib/systemd/system/sysinit.target.wants" / real.name).is_symlink()
    nodevm.bk("install-units", "--root", str(tmp_path), "--exe", "/usr/bin/bootkeeper", "--python", "/usr/bin/python3")
    ours = tmp_path / "etc/systemd/system/bootkeeper-random-seed.service"
    # one condition more: bootctl (the guest's is /usr/bin/bootctl, from systemd-boot-tools)
    assert _unit_section(ours.read_text()) == [
        *_unit_section(real.read_text()),
        "ConditionFileIsExecutable=/usr/bin/bootctl",
    ]
    assert (nodevm.GUEST / "usr/bin/bootctl").is_file()
    assert "WantedBy=sysinit.target" in ours.read_text()
    assert "ExecStart=/usr/bin/bootkeeper random-seed" in ours.read_text()
    assert (tmp_path / "etc/systemd/system" / real.name).readlink() == Path("/dev/null")


def _machines_booting(disks: list[Path]) -> list[str]:
    """The QEMU processes on this machine that boot one of ``disks`` (``-drive …,file=DISK``, as
    nodevm.boot starts them), as "PID DISK": another run's machines, on their own disks, are not ours."""
    ours = {str(d.resolve()) for d in disks}
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # gone meanwhile
            continue
        if not argv or Path(argv[0]).name != "qemu-system-x86_64":
            continue
        for flag, value in itertools.pairwise(argv):
            opts = dict(o.split("=", 1) for o in value.split(",") if "=" in o) if flag == "-drive" else {}
            if "file" in opts and str(Path(opts["file"]).resolve()) in ours:
                found.append(f"{proc.name} {opts['file']}")
    return found


def test_no_machine_left_running() -> None:
    """Issue 15, item 17: no QEMU of this run's scenarios is still running (it used to grep every QEMU
    on the machine, and failed while another run's scenarios booted)."""
    assert _machines_booting(DISKS) == []


def test_only_this_runs_machines_are_counted(tmp_path: Path) -> None:
    """The control: a QEMU booting another run's disk is not this run's (the old pgrep check counted it:
    its command line has "/pytest-" in it); one booting a disk of this run is found."""
    other, mine = tmp_path / "pytest-other" / "disk.img", tmp_path / "mine" / "disk.img"

    def fake_qemu(disk: Path) -> subprocess.Popen[bytes]:
        # a process whose command line is a QEMU's as nodevm.boot writes it (exec -a: argv[0])
        drive = f"if=virtio,format=raw,file={disk}"
        script = f'exec -a qemu-system-x86_64 "$0" -c "import time; time.sleep(30)" -drive "{drive}"'
        return subprocess.Popen(["bash", "-c", script, sys.executable])

    procs = [fake_qemu(other), fake_qemu(mine)]
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(_machines_booting([other, mine])) < 2:
            time.sleep(0.05)
        pgrep = subprocess.run(["pgrep", "-af", "qemu-system-x86_64"], capture_output=True, text=True, check=False)
        old_check = [line for line in pgrep.stdout.splitlines() if str(nodevm.ROOT) in line or "/pytest-" in line]
        assert any(str(other) in line for line in old_check)  # what failed before
        assert _machines_booting([mine]) == [f"{procs[1].pid} {mine}"]
        assert _machines_booting([]) == []
    finally:
        for p in procs:
            p.kill()
            p.wait()
