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
import subprocess
import sys
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
    raw_log: bytes
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
    return Measured(pcrs, raw, parse_event_log(raw), efivars, userlog, units, verify)


LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"


def node_root(m: Measured, root: Path, booted: dict[str, Path]) -> Path:
    """What ``tpm verify --root`` reads of a node, as the node had it: the event log, the PCR files
    (the kernel's format: uppercase hex and a newline), the Loader*/Stub* variables (efivarfs files),
    systemd-pcrextend's log (RFC 7464 records), the node's config and ``booted`` (name -> file) as
    the copies the initrd handed over in its ``sysext.sources`` folder."""
    sec = root / "sys/kernel/security/tpm0"
    sec.mkdir(parents=True)
    (sec / "binary_bios_measurements").write_bytes(m.raw_log)
    for bank, values in m.pcrs.items():
        d = root / f"sys/class/tpm/tpm0/pcr-{bank}"
        d.mkdir(parents=True)
        for n, v in values.items():
            (d / str(n)).write_text(v.upper() + "\n")
    ev = root / "sys/firmware/efi/efivars"
    ev.mkdir(parents=True)
    for name, data in m.efivars.items():
        (ev / f"{name}-{LOADER_GUID}").write_bytes(data)
    user = root / "run/log/systemd/tpm2-measure.log"
    user.parent.mkdir(parents=True)
    user.write_text("".join("\x1e" + json.dumps(r, separators=(",", ":")) + "\n" for r in m.userlog))
    (root / "oem").mkdir()
    (root / "oem/90-node.yaml").write_text(nodevm.NODE_CONFIG)
    handed = root / "run/initrd-extra/sysext"
    handed.mkdir(parents=True)
    for name, src in booted.items():
        shutil.copy(src, handed / name)
    return root


def findings(out: Any) -> list[str]:
    """``tpm verify --json``'s findings (none when its output was no JSON object)."""
    return list(out.get("findings", [])) if isinstance(out, dict) else []


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
        before = self._active_name()
        # a measured boot hashes the UKI again in the firmware and in the stub, in two banks, and the rig
        # prints the event log: one took 275 s here on a loaded host, against the 420 s of a plain boot
        timeout = 2 * nodevm.BOOT_TIMEOUT
        b = nodevm.boot(self.disk, self.work / f"boot{n}.log", kill_on=kill_on, tpm=self.tpm, timeout=timeout)
        crash = b.crash_line()
        if crash is not None:
            raise GuestCrash(f"boot {n}: the guest kernel crashed by itself ({crash}); see {self.work}/boot{n}.log")
        assert b.first("DONE") is not None, f"boot {n}: the rig did not finish; see {self.work}/boot{n}.log"
        booted = dict(v.partition("=")[::2] for v in b.mark("EFIVAR")).get("LoaderBootCountPath", "")
        booted = booted.replace("\\", "/").rsplit("/", 1)[-1] or before
        extra = " ".join(nodevm.esp_names(self.disk, EXTRA_D)) or "(empty .extra.d)"
        self.rows.append(Row(n, "active", before, booted, self._active_name(), extra, b.ending, b.seconds))
        self.boots.append(b)
        return b

    def table(self) -> list[str]:
        out = [
            "| boot | active before | booted as | after | .extra.d | then | seconds |",
            "|---:|---|---|---|---|---|---:|",
        ]
        for r in self.rows:
            out.append(f"| {r.n} | {r.before} | {r.booted} | {r.after} | {r.verdict} | {r.then} | {r.seconds:.1f} |")
        return out

    def _active_name(self) -> str:
        return next(x for x in nodevm.esp_names(self.disk) if x.startswith("active") and x.endswith(".efi"))

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
    after_boot2: Path  # the ESP as boot 2 left it (read back)


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
    after2 = nodevm.esp_extract(node.disk, node.work / "esp-after2")
    for name in ("tools-a.sysext.raw", "tools.sysext.raw"):
        nodevm._run(["mdel", "-i", f"{node.disk}@@1M", f"::/{EXTRA_D}/{name}"], env=nodevm.MT_ENV)
    for rel in ("bktest/tpm-expect.json", "bktest/tpm-swap", "bktest/tpm-swap.raw"):
        nodevm._run(["mdel", "-i", f"{node.disk}@@1M", f"::/{rel}"], env=nodevm.MT_ENV)
    predicted.append(node.predict("boot3"))
    got.append(measured(node.boot()))
    NODE_TABLES.append((node.title, node.table()))
    NODE_TABLES.append(("TPM: predicted vs live PCRs", _pcr_table(got, predicted, node.tpm.banks)))
    shutil.rmtree(node.work / "esp-now", ignore_errors=True)
    return Run(node, got, predicted, tools["v2"], tools["v1"], after2)


def _pcr_table(got: list[Measured], predicted: list[dict[str, Any]], banks: tuple[str, ...]) -> list[str]:
    """Per boot, bank and PCR: the prediction (PCR 11: at the handover, then after the phases the
    node's log names) and the live value, as the run prints them."""
    out = ["| boot | bank | PCR | predicted | live | equal |", "|---:|---|---:|---|---|---|"]
    for n, (m, p) in enumerate(zip(got, predicted, strict=True), 1):
        e = _active(p)
        for bank in banks:
            for pcr in (11, 12, 13):
                want = e["pcrs"][bank][str(pcr)]
                shown = want[:16]
                if pcr == 11:
                    for word in m.phases():
                        want = extend(bank, want, word.encode())
                    shown += f"… → +{'+'.join(m.phases())} {want[:16]}"
                live = m.pcrs[bank][pcr]
                out.append(f"| {n} | {bank} | {pcr} | {shown}… | {live[:16]}… | {'yes' if live == want else 'NO'} |")
    return out


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
    says for the ESP read back from the disk, and the stub's events are the predicted ones."""
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


def test_b_a_swapped_extension_changes_pcr13(run: Run) -> None:
    """Boot 2, after tools v2 took v1's place on the ESP: PCR 13 differs from boot 1's and is the new
    prediction; 11 and 12 did not change."""
    one, two, _ = run.boots
    for bank in run.node.tpm.banks:
        assert two.pcrs[bank][13] != one.pcrs[bank][13]
        assert (two.pcrs[bank][11], two.pcrs[bank][12]) == (one.pcrs[bank][11], one.pcrs[bank][12])
    _assert_live_equals_predicted(two, run.predicted[1], run.node.tpm.banks)


def test_c_an_empty_extra_d_leaves_pcr13_zero(run: Run) -> None:
    """Boot 3, both extensions removed from the ESP: the stub measured nothing into PCR 13 (no event,
    PCR 13 all zero), which is the prediction, and ``tpm verify`` passes."""
    three = run.boots[2]
    assert [ev for ev in three.log if ev.pcr == 13] == []
    for bank in run.node.tpm.banks:
        assert three.pcrs[bank][13] == ZERO[bank]
        assert three.pcrs[bank][11] == run.boots[0].pcrs[bank][11]
    _assert_live_equals_predicted(three, run.predicted[2], run.node.tpm.banks)


def test_verify_on_the_node(run: Run) -> None:
    """``bootkeeper tpm verify`` on the node: it passes after each of the three boots; in boot 2, once
    the rig put v1 back in tools.sysext.raw's place on the running node (the ESP changed after the
    boot), it exits 1 naming that file (the ESP against what booted)."""
    for n, m in enumerate(run.boots, 1):
        rc, out, err = m.verify["live"]
        assert (rc, findings(out)) == ("0", []), (n, out, err)
        assert out["agree"] is True and out["booted"]["entry"] == "active", (n, out)
    _assert_names(run.boots[1], "swapped", "the ESP against what booted")
    assert (run.after_boot2 / EXTRA_D / "tools.sysext.raw").read_bytes() == run.swapped_back.read_bytes()
    assert sorted(run.boots[2].verify) == ["live"]


def test_verify_on_the_node_against_the_last_prediction(run: Run) -> None:
    """Boot 2 given boot 1's saved prediction (``--expect``): the node booted tools v2 where v1 was
    meant, so verify exits 1 naming tools.sysext.raw as changed, although the ESP and the log agree."""
    _assert_names(run.boots[1], "expect", "against /efi/bktest/tpm-expect.json")


def _assert_names(m: Measured, label: str, where: str) -> None:
    rc, out, err = m.verify[label]
    assert rc == "1", (label, out, err)
    named = [f for f in findings(out) if where in f and "changed tools.sysext.raw" in f]
    assert named, (label, findings(out))
    assert not any("tools-a.sysext.raw" in f.rpartition(": ")[2] for f in named), named


def _verify_offline(root: Path, esp: Path) -> tuple[int, Any, str]:
    p = subprocess.run(
        [sys.executable, "-m", "bootkeeper", "tpm", "verify", "--root", str(root), "--esp", str(esp), "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    try:
        out: Any = json.loads(p.stdout)
    except json.JSONDecodeError:
        out = p.stdout
    return p.returncode, out, p.stderr


def test_d_verify_offline_names_what_changed_on_the_esp(run: Run, tmp_path: Path) -> None:
    """``tpm verify --root --esp`` on the host, over boot 2's event log, PCRs, variables and userspace
    log as the node printed them, and the copies it booted: with the ESP that boot 2 booted it passes;
    with tools.sysext.raw changed (v1 again), removed, or another extension added, it exits 1 naming
    that file."""
    booted_exts = {"tools-a.sysext.raw": nodevm.sysext_images()["tools-a"], "tools.sysext.raw": run.swapped_in}
    root = node_root(run.boots[1], tmp_path / "root", booted_exts)
    booted = run.node.work / "esp-boot2"  # the ESP as boot 2 booted it (read back for its prediction)
    rc, out, err = _verify_offline(root, booted)
    assert (rc, findings(out)) == (0, []), (out, err)
    cases: dict[str, tuple[str, Path | None]] = {
        "changed": ("tools.sysext.raw", run.swapped_back),
        "removed": ("tools.sysext.raw", None),
        "added": ("tools-b.sysext.raw", nodevm.sysext_images()["tools-b"]),
    }
    for how, (name, src) in cases.items():
        esp = tmp_path / f"esp-{how}"
        shutil.copytree(booted, esp)
        target = esp / EXTRA_D / name
        if src is None:
            target.unlink()
        else:
            shutil.copy(src, target)
        rc, out, err = _verify_offline(root, esp)
        assert rc == 1, (how, out, err)
        named = [f for f in findings(out) if f"{how} {name}" in f]
        assert named, (how, findings(out))


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
