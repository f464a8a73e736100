"""Measured boot, for real: the node of test_node.py booted with a software TPM (swtpm, OVMF's TCG2
driver, systemd-boot and systemd-stub 257), and what the TPM holds afterwards against
``bootkeeper tpm predict`` run on the host over the ESP read back from the disk.

The guest's rig (tests/node/guest/tpm.sh) prints the live PCRs (sysfs: the kernel reads them from the
TPM), the firmware's event log, the Loader*/Stub* EFI variables, systemd's userspace measurement log
and ``bootkeeper tpm verify``'s answer on the console. The expected values here come from the TPM
itself; the only arithmetic done here is the TPM's extend of PCR 11 by the phase words the node's log
says systemd-pcrextend measured (the initrd here is initramfs-tools', so only ``sysinit`` and
``ready`` run: the systemd-pcrphase-initrd unit exists only in a systemd initrd).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import nodevm
from test_node import NODE_TABLES, GuestCrash, Node, Row

pytestmark = pytest.mark.node

ZERO = {"sha1": "00" * 20, "sha256": "00" * 32}
EXTRA_D = "EFI/Linux/active.efi.extra.d"
# TCG PC Client Platform Firmware Profile, "Event Types" and TCG Algorithm Registry ids
EVENT_TYPES = {0x0D: "EV_IPL", 0x06: "EV_EVENT_TAG", 0x03: "EV_NO_ACTION"}
ALGS = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}


@dataclass(frozen=True)
class LogEvent:
    pcr: int
    type: str
    digests: dict[str, str]
    data: bytes

    @property
    def text(self) -> str | None:
        """The event data as the stub writes an EV_IPL description (UTF-16LE, NUL-terminated), or None."""
        try:
            s = self.data.decode("utf-16-le")
        except UnicodeDecodeError:
            return None
        return s.rstrip("\0") if s.endswith("\0") and s.rstrip("\0").isprintable() else None


def parse_event_log(data: bytes) -> list[LogEvent]:
    """The TCG2 crypto-agile event log (TCG PC Client PFP 1.05, 10.2): a SHA-1 format first event
    (the Spec ID Event, which lists the digest sizes), then TCG_PCR_EVENT2 records. Only what the
    comparison needs: no replay (that is ``tpm verify``'s job, under test)."""
    size = struct.unpack_from("<I", data, 28)[0]
    spec = data[32 : 32 + size]
    assert spec.startswith(b"Spec ID Event03\0"), spec[:16]
    n = struct.unpack_from("<I", spec, 24)[0]
    sizes = dict(struct.unpack_from("<HH", spec, 28 + 4 * i) for i in range(n))
    out, off = [], 32 + size
    while off < len(data):
        pcr, typ, count = struct.unpack_from("<III", data, off)
        off += 12
        digests = {}
        for _ in range(count):
            alg = struct.unpack_from("<H", data, off)[0]
            digests[ALGS.get(alg, hex(alg))] = data[off + 2 : off + 2 + sizes[alg]].hex()
            off += 2 + sizes[alg]
        esize = struct.unpack_from("<I", data, off)[0]
        out.append(LogEvent(pcr, EVENT_TYPES.get(typ, hex(typ)), digests, data[off + 4 : off + 4 + esize]))
        off += 4 + esize
    assert off == len(data), f"event log: {off - len(data)} bytes past the end"
    return out


@dataclass(frozen=True)
class Measured:
    """What one boot's rig printed about the TPM."""

    pcrs: dict[str, dict[int, str]]
    log: list[LogEvent]
    efivars: dict[str, bytes]
    userlog: list[dict[str, Any]]
    units: dict[str, dict[str, str]]
    verify: dict[str, tuple[str, Any, str]]  # label -> (exit code, JSON, stderr)

    def efivar(self, name: str) -> str:
        return self.efivars[name][4:].decode("utf-16-le").rstrip("\0")

    def phases(self) -> list[str]:
        """The PCR 11 words systemd-pcrextend measured, in order (its log, /run/log/systemd/tpm2-measure.log)."""
        return [r["content"]["string"] for r in self.userlog if r.get("pcr") == 11]


def measured(b: nodevm.Boot) -> Measured:
    assert b.first("TPM_PRESENT") == "2", b.first("TPM_PRESENT")
    assert b.first("TPM_DONE") is not None, "the rig's tpm.sh did not finish"
    pcrs: dict[str, dict[int, str]] = {}
    for line in b.mark("PCR"):
        bank, n, value = line.split()
        pcrs.setdefault(bank, {})[int(n)] = value.lower()
    raw = base64.b64decode("".join(b.mark("TPM_EVLOG")))
    assert hashlib.sha256(raw).hexdigest() == b.first("TPM_EVLOG_END"), "event log garbled on the console"
    efivars = {}
    for line in b.mark("TPM_EFIVAR"):
        name, _, value = line.partition(" ")
        efivars[name] = base64.b64decode(value)
    units = {}
    for line in b.mark("UNIT"):
        unit, _, props = line.partition(" ")
        units[unit] = dict(p.split("=", 1) for p in props.split())
    verify = {}
    for line in b.mark("TPM_VERIFY_RC"):
        label, _, rc = line.partition(" ")
        js = next((x.partition(" ")[2] for x in b.mark("TPM_VERIFY_JSON") if x.startswith(label + " ")), "")
        err = next((x.partition(" ")[2] for x in b.mark("TPM_VERIFY_ERR") if x.startswith(label + " ")), "")
        try:
            parsed: Any = json.loads(js)
        except json.JSONDecodeError:
            parsed = js
        verify[label] = (rc, parsed, err)
    userlog = [json.loads(x) for x in b.mark("TPM_USERLOG")]
    return Measured(pcrs, parse_event_log(raw), efivars, userlog, units, verify)


def extend(bank: str, value: str, data: bytes) -> str:
    """TPM2_PCR_Extend as systemd-pcrextend does it for a word: PCR := H(PCR || H(word))."""
    return hashlib.new(bank, bytes.fromhex(value) + hashlib.new(bank, data).digest()).hexdigest()


class TpmNode(Node):
    """A node disk with its own TPM; every boot is a measured boot."""

    def __init__(self, work: Path, title: str, *, sysexts: dict[str, Path]) -> None:
        super().__init__(work, title, [], sysexts=sysexts)
        self.tpm = nodevm.make_tpm(work / "tpm")

    def boot(self, *, kill_on: str | None = None) -> nodevm.Boot:
        n = len(self.rows) + 1
        before = [x for x in nodevm.esp_names(self.disk) if x.endswith(".efi")]
        b = nodevm.boot(self.disk, self.work / f"boot{n}.log", kill_on=kill_on, tpm=self.tpm)
        crash = b.crash_line()
        if crash is not None:
            raise GuestCrash(f"boot {n}: the guest kernel crashed by itself ({crash}); see {self.work}/boot{n}.log")
        assert b.first("DONE") is not None, f"boot {n}: the rig did not finish; see {self.work}/boot{n}.log"
        after = [x for x in nodevm.esp_names(self.disk) if x.endswith(".efi")]
        entry = dict(v.partition("=")[::2] for v in b.mark("EFIVAR")).get("LoaderEntrySelected", "?")
        self.rows.append(Row(n, "active", " ".join(before), entry, " ".join(after), "measured", b.ending, b.seconds))
        self.boots.append(b)
        return b

    def predict(self, label: str) -> dict[str, Any]:
        """``bootkeeper tpm predict`` over the ESP as the disk has it now (read back with mtools)."""
        esp = nodevm.esp_extract(self.disk, self.work / f"esp-{label}")
        args = ["tpm", "predict", "--esp", str(esp), "--secure-boot", "off", "--json"]
        for bank in self.tpm.banks:
            args += ["--bank", bank]
        out: dict[str, Any] = json.loads(nodevm.bk(*args))
        (self.work / f"predict-{label}.json").write_text(json.dumps(out, indent=1))
        return out


@dataclass
class Run:
    node: TpmNode
    boots: list[Measured]
    predicted: list[dict[str, Any]]
    swapped_in: Path  # what boot 2 booted as tools.sysext.raw
    swapped_back: Path  # what the rig put there on the running node, before its last verify


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    missing = nodevm.missing_pieces(tpm=True)
    if missing:
        pytest.fail(f"measured-boot pieces missing (scripts/setup-test-deps.sh installs them): {', '.join(missing)}")
    base = tmp_path_factory.mktemp("tpm")
    try:
        return _boot_thrice(base / "try1")
    except GuestCrash:  # rare under TCG, see nodevm.QEMU_SMP: once more from a fresh disk and TPM
        return _boot_thrice(base / "try2")


def _boot_thrice(work: Path) -> Run:
    """Boot 1 with tools-a and tools v1 in active's .extra.d; tools v2 put in v1's place on the disk;
    boot 2, given boot 1's prediction, puts v1 back on the running node before its last verify; both
    extensions removed from the disk; boot 3 with an empty .extra.d."""
    tools = nodevm.os_sysexts()
    exts = {"tools-a": nodevm.sysext_images()["tools-a"], "tools": tools["v1"]}
    node = TpmNode(work, "TPM: measured boots, one extension swapped between them", sysexts=exts)
    assert sorted(nodevm.esp_names(node.disk, EXTRA_D)) == ["tools-a.sysext.raw", "tools.sysext.raw"]
    got = [measured(node.boot())]
    predicted = [node.predict("boot1")]
    expect = node.work / "expect.json"
    expect.write_text(json.dumps(predicted[0]))
    for rel, src in (
        ("bktest/tpm-expect.json", expect),
        (f"{EXTRA_D}/tools.sysext.raw", tools["v2"]),
        ("bktest/tpm-swap.raw", tools["v1"]),
    ):
        nodevm._run(["mcopy", "-o", "-i", f"{node.disk}@@1M", str(src), f"::/{rel}"], env=nodevm.MT_ENV)
    nodevm.esp_write(node.disk, "bktest/tpm-swap", f"{EXTRA_D}/tools.sysext.raw\n")
    # what boot 2 boots with, before the rig swaps v1 back
    predicted.append(node.predict("boot2"))
    got.append(measured(node.boot()))
    for name in ("tools-a.sysext.raw", "tools.sysext.raw"):
        nodevm._run(["mdel", "-i", f"{node.disk}@@1M", f"::/{EXTRA_D}/{name}"], env=nodevm.MT_ENV)
    for rel in ("bktest/tpm-expect.json", "bktest/tpm-swap", "bktest/tpm-swap.raw"):
        nodevm._run(["mdel", "-i", f"{node.disk}@@1M", f"::/{rel}"], env=nodevm.MT_ENV)
    predicted.append(node.predict("boot3"))
    got.append(measured(node.boot()))
    NODE_TABLES.append((node.title, node.table()))
    shutil.rmtree(node.work / "esp-now", ignore_errors=True)
    return Run(node, got, predicted, tools["v2"], tools["v1"])


def _active(p: dict[str, Any]) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [e for e in p["entries"] if e["role"] == "active"]
    assert len(entries) == 1, [e["role"] for e in p["entries"]]
    return entries[0]


def _assert_live_equals_predicted(m: Measured, p: dict[str, Any], banks: tuple[str, ...]) -> None:
    e = _active(p)
    phases = m.phases()
    assert phases == ["sysinit", "ready"], phases  # no systemd in this initrd: no enter-/leave-initrd
    for bank in banks:
        want11 = e["pcrs"][bank]["11"]
        for word in phases:
            want11 = extend(bank, want11, word.encode())
        got = {n: m.pcrs[bank][n] for n in (11, 12, 13)}
        want = {11: want11, 12: e["pcrs"][bank]["12"], 13: e["pcrs"][bank]["13"]}
        assert got == want, f"{bank}: live {got} != predicted {want}"
    stub = [(ev.pcr, ev.type, ev.digests) for ev in m.log if ev.pcr in (11, 12, 13)]
    want_events = [(ev["pcr"], ev["type"], {b: ev["digests"][b] for b in banks}) for ev in e["events"]]
    assert stub == want_events
    texts = [ev.text for ev in m.log if ev.pcr in (11, 12, 13)]
    assert texts == [ev["description"] for ev in e["events"]]


def test_a_live_pcrs_are_the_prediction(run: Run) -> None:
    """Boot 1: PCRs 11 (after the phases that ran), 12 and 13 in both banks are what ``tpm predict``
    says for the ESP read back from the disk, the stub's events are the predicted ones, and
    ``tpm verify`` passes on the node."""
    m = run.boots[0]
    # the stub says where it measured (no confext, no credentials here: no StubPcrInitRDConfExts)
    assert m.efivar("StubPcrKernelImage") == "11"
    assert m.efivar("StubPcrInitRDSysExts") == "13"
    assert "StubPcrInitRDConfExts" not in m.efivars
    assert m.efivar("StubImageIdentifier") == "\\EFI\\Linux\\active+1-1.efi"
    assert m.efivar("LoaderEntrySelected") == "active.efi"  # systemd-boot's id: without the counter
    assert sorted(m.pcrs) == sorted(run.node.tpm.banks)
    for bank in run.node.tpm.banks:
        assert m.pcrs[bank][11] != ZERO[bank]
        assert m.pcrs[bank][13] != ZERO[bank]  # .extra.d has two extensions
    for unit, ran in (
        ("systemd-pcrphase-initrd", "no"),
        ("systemd-pcrphase-sysinit", "yes"),
        ("systemd-pcrphase", "yes"),
    ):
        assert (m.units[f"{unit}.service"]["ConditionResult"], m.units[f"{unit}.service"]["Result"]) == (ran, "success")
    for bank in run.node.tpm.banks:
        assert m.pcrs[bank][12] == ZERO[bank]  # nothing for PCR 12: no credential, confext or passed command line
    _assert_live_equals_predicted(m, run.predicted[0], run.node.tpm.banks)
    rc, out, err = m.verify["live"]
    assert rc == "0", (rc, out, err)


def test_b_a_swapped_extension_changes_pcr13_and_verify_names_it(run: Run) -> None:
    """Boot 2, after tools v2 took v1's place on the ESP: PCR 13 differs from boot 1's and is the new
    prediction (11 and 12 did not change); ``tpm verify`` passes; given boot 1's prediction it names
    tools.sysext.raw as changed; and once the rig swapped v1 back on the running node, it names it too."""
    one, two, _ = run.boots
    for bank in run.node.tpm.banks:
        assert two.pcrs[bank][13] != one.pcrs[bank][13]
        assert (two.pcrs[bank][11], two.pcrs[bank][12]) == (one.pcrs[bank][11], one.pcrs[bank][12])
    _assert_live_equals_predicted(two, run.predicted[1], run.node.tpm.banks)
    assert two.verify["live"][0] == "0", two.verify["live"]
    name = "tools.sysext.raw"
    for label in ("expect", "swapped"):
        rc, out, err = two.verify[label]
        assert rc == "1", (label, rc, out, err)
        assert name in json.dumps(out), (label, out)
    back = nodevm.esp_extract(run.node.disk, run.node.work / "esp-after")
    assert (back / EXTRA_D / name).read_bytes() == run.swapped_back.read_bytes()


def test_c_an_empty_extra_d_leaves_pcr13_zero(run: Run) -> None:
    """Boot 3, both extensions removed from the ESP: the stub measured nothing into PCR 13 (no event,
    PCR 13 all zero), which is the prediction, and ``tpm verify`` passes."""
    three = run.boots[2]
    assert [ev for ev in three.log if ev.pcr == 13] == []
    for bank in run.node.tpm.banks:
        assert three.pcrs[bank][13] == ZERO[bank]
        assert three.pcrs[bank][11] == run.boots[0].pcrs[bank][11]
    _assert_live_equals_predicted(three, run.predicted[2], run.node.tpm.banks)
    assert three.verify["live"][0] == "0", three.verify["live"]
    assert "expect" not in three.verify and "swapped" not in three.verify


def test_swtpm_stops_when_the_boot_fails(tmp_path: Path) -> None:
    """swtpm runs only while its block does: stopped when the code inside raises, as when QEMU fails."""
    tpm = nodevm.make_tpm(tmp_path / "tpm")
    pids = []
    with pytest.raises(RuntimeError, match="boom"), nodevm.swtpm_running(tpm) as args:
        assert "tpm-tis,tpmdev=tpm0" in args
        pids = _swtpm_pids(tpm)
        assert len(pids) == 1
        raise RuntimeError("boom")
    assert _swtpm_pids(tpm) == []


def _swtpm_pids(tpm: nodevm.Tpm) -> list[int]:
    """The swtpm processes serving ``tpm``'s state."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and Path(argv[0].decode(errors="replace")).name == "swtpm" and f"dir={tpm.state}".encode() in argv:
            out.append(int(proc.name))
    return out


def test_no_swtpm_left_running(run: Run) -> None:
    assert _swtpm_pids(run.node.tpm) == []
