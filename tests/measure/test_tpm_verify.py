"""``bootkeeper tpm verify`` over a fake root (sys/, run/, an ESP) whose event log is what the real
tools see: the UKI is made by trixie's ukify, its sections dumped by objcopy and written into the log
as systemd-stub logs them (tests/eventlog_builder.py), and that log's PCR 11 is checked against the
values ``ukify --measure`` (systemd-measure) prints before anything else relies on it. PCR 13's cpio
is written here from src/boot/cpio.c (v257.9), not by bootkeeper."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import eventlog_builder as B
import trixie
from bootkeeper.measure.banks import BANKS as BANKS_BY_NAME
from bootkeeper.measure.events import Event, FileRef
from bootkeeper.measure.predict import Prediction
from helpers import bk, fake_efivars

pytestmark = pytest.mark.integration

CMDLINE = "quiet root=LABEL=x"
OPTIONS = "console=ttyS0"
MEASURED = (".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat", ".pcrpkey")
PHASES = ("enter-initrd", "leave-initrd", "sysinit", "ready")
SYSEXTS = {"a.raw": b"A" * 5000, "b.raw": b"B" * 777}
BANKS = ("sha1", "sha256")


@dataclass(frozen=True)
class Uki:
    path: Path
    sections: dict[str, bytes]  # as objcopy dumps them
    measured: dict[str, list[bytes]]  # ukify --measure: bank -> PCR 11 after each phase of PHASES


@pytest.fixture(scope="module")
def uki(tmp_path_factory: pytest.TempPathFactory) -> Uki:
    if not (trixie.available() and (trixie.ROOT / "usr/bin/ukify").exists()):
        pytest.fail(f"no ukify in {trixie.ROOT}: scripts/setup-trixie.sh makes the tree")
    w = tmp_path_factory.mktemp("uki")
    (w / "vmlinuz").write_bytes(hashlib.sha512(b"kernel").digest() * 80)
    (w / "initrd").write_bytes(hashlib.sha512(b"initrd").digest() * 50)
    (w / "osrel").write_text("ID=debian\nVERSION_ID=13\nIMAGE_ID=bk\n")
    p = trixie.run(
        f"ukify build --linux=vmlinuz --initrd=initrd --cmdline='{CMDLINE}' --os-release=@osrel --uname=6.12.0 "
        "--measure --pcr-banks=sha1,sha256 --output=active.efi",
        w,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    # systemd-measure calculate's stdout: per phase (enter-initrd, then each longer path), one line a bank
    measured: dict[str, list[bytes]] = {}
    for bank, value in re.findall(r"^11:(\w+)=([0-9a-f]+)$", p.stdout, re.M):
        measured.setdefault(bank, []).append(bytes.fromhex(value))
    dumps = " ".join(f"--dump-section {s}=dump{s}" for s in MEASURED)
    heads = trixie.run("objdump -h active.efi", w).stdout
    present = [s for s in MEASURED if re.search(rf"\s{re.escape(s)}\s", heads)]
    dumps = " ".join(f"--dump-section {s}=dump{s}" for s in present)
    p = trixie.run(f"objcopy {dumps} active.efi scratch.efi", w)
    assert p.returncode == 0, p.stderr
    return Uki(w / "active.efi", {s: (w / f"dump{s}").read_bytes() for s in present}, measured)


def _u16(s: str) -> bytes:
    return (s + "\0").encode("utf-16-le")


def _cpio(files: dict[str, bytes], prefix: str = ".extra/sysext") -> bytes:
    """pack_cpio() of src/boot/cpio.c (v257.9): the prefix's folders, then each file, then the trailer."""
    out = bytearray()
    inode = 1

    def header(mode: int, size: int, name: bytes) -> None:
        nonlocal inode
        words = [inode, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name), 0]
        out.extend(b"070701" + b"".join(b"%08x" % w for w in words) + name)
        out.extend(bytes(-len(out) % 4))
        inode += 1

    parts = prefix.split("/")
    for i in range(1, len(parts)):
        header(0o040555, 0, "/".join(parts[:i]).encode() + b"\0")
    header(0o040555, 0, prefix.encode() + b"\0")
    for name in sorted(files):
        header(0o100444, len(files[name]), f"{prefix}/{name}".encode() + b"\0")
        out.extend(files[name])
        out.extend(bytes(-len(out) % 4))
    out.extend(b"070701" + b"00000000" * 4 + b"00000001" + b"00000000" * 6 + b"0000000B" + b"00000000")
    out.extend(b"TRAILER!!!\0\0\0\0")
    return bytes(out)


def _digests(data: bytes) -> dict[str, bytes]:
    return {b: hashlib.new(b, data).digest() for b in BANKS}


def stub_records(u: Uki, sysexts: dict[str, bytes]) -> list[B.Record]:
    recs = [B.Record(12, B.EV_IPL, _u16(OPTIONS))]  # systemd-boot: the entry's options
    for s in MEASURED:
        if s in u.sections:
            recs.append(B.Record(11, B.EV_IPL, _u16(s), _digests(s.encode() + b"\0")))
            recs.append(B.Record(11, B.EV_IPL, _u16(s), _digests(u.sections[s])))
    recs.append(B.Record(12, B.EV_IPL, _u16(OPTIONS)))  # the stub: the command line it was passed
    if sysexts:
        recs.append(B.Record(13, B.EV_IPL, _u16("System extension initrd"), _digests(_cpio(sysexts))))
    return recs


def _extend(bank: str, v: bytes, data: bytes) -> bytes:
    return hashlib.new(bank, v + hashlib.new(bank, data).digest()).digest()


def make_root(
    tmp: Path,
    u: Uki,
    *,
    booted: dict[str, bytes] | None = None,
    phases: tuple[str, ...] = PHASES,
    user_log: bool = True,
    tamper: int | None = None,
) -> Path:
    """A node after a boot of entry ``active`` with extensions ``booted`` (default: SYSEXTS)."""
    booted = SYSEXTS if booted is None else booted
    root = tmp / "root"
    esp = root / "efi"
    (esp / "loader/entries").mkdir(parents=True)
    (esp / "loader/loader.conf").write_text("timeout 0\n")
    (esp / "loader/entries/active.conf").write_text(f"title active\nefi /EFI/kairos/active.efi\noptions {OPTIONS}\n")
    extra = esp / "EFI/kairos/active.efi.extra.d"
    extra.mkdir(parents=True)
    shutil.copy(u.path, esp / "EFI/kairos/active.efi")
    for name, data in SYSEXTS.items():
        (extra / name).write_bytes(data)
    recs = B.firmware_records() + stub_records(u, booted)
    log = root / "sys/kernel/security/tpm0/binary_bios_measurements"
    log.parent.mkdir(parents=True)
    log.write_bytes(B.build(recs, BANKS, locality=0))
    for bank in BANKS:
        d = root / f"sys/class/tpm/tpm0/pcr-{bank}"
        d.mkdir(parents=True)
        size = hashlib.new(bank).digest_size
        for n in range(24):
            v = B.replay(recs, bank, n, b"\xff" * size if 17 <= n <= 22 else None)
            if n == 11:
                for p in phases:
                    v = _extend(bank, v, p.encode())
            if n == tamper:
                v = _extend(bank, v, b"not in the log")
            (d / str(n)).write_text(v.hex() + "\n")
    if user_log:
        ul = root / "run/log/systemd/tpm2-measure.log"
        ul.parent.mkdir(parents=True)
        with ul.open("wb") as f:
            for p in phases:
                rec = {
                    "pcr": 11,
                    "digests": [{"hashAlg": b, "digest": hashlib.new(b, p.encode()).hexdigest()} for b in BANKS],
                    "content_type": "systemd",
                    "content": {"string": p, "bootId": "0" * 32, "timestamp": 1, "eventType": "phase"},
                }
                f.write(b"\x1e" + json.dumps(rec).encode() + b"\n")
    fake_efivars(
        root / "sys/firmware/efi/efivars",
        LoaderEntrySelected="active.conf",
        StubImageIdentifier="\\EFI\\kairos\\active.efi",
    )
    kept = root / "run/initrd-extra/sysext"
    kept.mkdir(parents=True)
    for name, data in booted.items():
        (kept / name).write_bytes(data)
    (root / "oem").mkdir()
    (root / "oem/90_sysext.yaml").write_text("sysext:\n  sources: [/run/initrd-extra/sysext]\n")
    return root


@pytest.mark.root
def test_the_test_log_is_what_systemd_measure_computes(uki: Uki) -> None:
    """The log this file writes has the PCR 11 that ukify/systemd-measure compute for the UKI, phase by phase."""
    assert set(uki.measured) == set(BANKS), uki.measured
    recs = stub_records(uki, SYSEXTS)
    for bank in BANKS:
        v = B.replay(recs, bank, 11)
        ours = []
        for p in PHASES:
            v = _extend(bank, v, p.encode())
            ours.append(v)
        assert ours == uki.measured[bank], bank


@pytest.mark.root
def test_agrees_after_a_clean_boot(uki: Uki, tmp_path: Path) -> None:
    root = make_root(tmp_path, uki)
    p = bk("tpm", "verify", "--root", str(root), "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["agree"] is True and out["findings"] == []
    assert out["booted"]["entry"] == "active"
    assert out["booted"]["uki"] == "EFI/kairos/active.efi"
    assert "LoaderEntrySelected=active.conf" in out["booted"]["found_by"]
    rows = {(r["bank"], r["pcr"]): r for r in out["pcrs"]}
    for bank in BANKS:
        for n in (11, 12, 13):
            r = rows[(bank, n)]
            assert r["agree"] and r["live"] == r["replayed"] == r["predicted"], r
        assert rows[(bank, 11)]["phases"] == list(PHASES)
        assert rows[(bank, 0)]["agree"] and rows[(bank, 0)]["predicted"] is None
    text = bk("tpm", "verify", "--root", str(root))
    assert text.returncode == 0 and "all agree" in text.stdout, text.stdout + text.stderr
    assert "booted: active (EFI/kairos/active.efi)" in text.stdout
    # the result stays for `bootkeeper metrics`, which exports it
    assert json.loads((root / "run/bootkeeper/tpm-verify.json").read_text()) == out
    m = bk("metrics", "--root", str(root), "--esp", str(root / "efi"))
    assert m.returncode == 0, m.stderr
    assert (
        "bootkeeper_tpm_verify_agree 1.0" in m.stdout
        and 'bootkeeper_tpm_pcr_agree{bank="sha256",pcr="13"} 1.0' in m.stdout
    )


@pytest.mark.root
def test_without_the_userspace_log_any_phase_prefix_agrees(uki: Uki, tmp_path: Path) -> None:
    root = make_root(tmp_path, uki, phases=PHASES[:2], user_log=False)
    p = bk("tpm", "verify", "--root", str(root), "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    rows = [r for r in json.loads(p.stdout)["pcrs"] if r["pcr"] == 11]
    assert rows and all(r["phases"] == list(PHASES[:2]) and r["agree"] for r in rows)


@pytest.mark.root
def test_a_log_that_is_not_the_tpm_s_is_a_finding(uki: Uki, tmp_path: Path) -> None:
    root = make_root(tmp_path, uki, tamper=4)
    p = bk("tpm", "verify", "--root", str(root), "--json")
    assert p.returncode == 1, p.stdout + p.stderr
    findings = json.loads(p.stdout)["findings"]
    assert any(f.startswith("PCR 4 (sha256): the log replays to") and "not the TPM's" in f for f in findings)


@pytest.mark.root
def test_phases_not_in_the_userspace_log_are_a_finding(uki: Uki, tmp_path: Path) -> None:
    root = make_root(tmp_path, uki)
    # systemd-pcrphase measured "sysinit" twice; the log says once
    for bank in BANKS:
        pcr = root / f"sys/class/tpm/tpm0/pcr-{bank}/11"
        pcr.write_text(_extend(bank, bytes.fromhex(pcr.read_text().strip()), b"sysinit").hex())
    p = bk("tpm", "verify", "--root", str(root))
    assert p.returncode == 1
    assert "finding: PCR 11 (sha1): the log replays to" in p.stdout, p.stdout


@pytest.mark.root
def test_changed_extensions_are_named(uki: Uki, tmp_path: Path) -> None:
    """The boot had a.raw and an older b.raw and c.raw; the ESP now has a.raw and b.raw."""
    booted = {"a.raw": SYSEXTS["a.raw"], "b.raw": b"old b", "c.raw": b"C" * 10}
    root = make_root(tmp_path, uki, booted=booted)
    saved = tmp_path / "meant.json"
    # what the operator meant: a prediction made while the ESP held what booted
    meant_esp = tmp_path / "meant-esp"
    shutil.copytree(root / "efi", meant_esp)
    extra = meant_esp / "EFI/kairos/active.efi.extra.d"
    for name, data in booted.items():
        (extra / name).write_bytes(data)
    p = bk("tpm", "predict", "--esp", str(meant_esp), "--bank", "sha1", "--bank", "sha256", "--json")
    assert p.returncode == 0, p.stderr
    saved.write_text(p.stdout)
    p = bk("tpm", "verify", "--root", str(root), "--expect", str(saved), "--json")
    assert p.returncode == 1, p.stdout + p.stderr
    out = json.loads(p.stdout)
    sha_old, sha_new = hashlib.sha256(b"old b").hexdigest()[:12], hashlib.sha256(SYSEXTS["b.raw"]).hexdigest()[:12]
    kept = root / "run/initrd-extra/sysext"
    assert (
        f"PCR 13 'System extension initrd': the ESP against what booted ({kept}): "
        f"removed c.raw, changed b.raw (sha256 {sha_old}… → {sha_new}…)"
    ) in out["findings"], out["findings"]
    assert f"PCR 13 'System extension initrd': what booted is what {saved} names" in out["findings"]
    assert any(f.startswith("PCR 13: EV_IPL 'System extension initrd'") and "logged sha" in f for f in out["findings"])
    assert next(r for r in out["pcrs"] if r["pcr"] == 13 and r["bank"] == "sha256")["agree"] is False
    # without the booted copies, --expect still says the log is what was meant
    shutil.rmtree(kept)
    p = bk("tpm", "verify", "--root", str(root), "--expect", str(saved), "--json")
    assert p.returncode == 1
    f = json.loads(p.stdout)["findings"]
    assert f"PCR 13 'System extension initrd': the log matches {saved}" in f, f
    assert (
        f"PCR 13 'System extension initrd': the ESP against {saved}: removed c.raw, "
        f"changed b.raw (sha256 {sha_old}… → {sha_new}…)"
    ) in f


@pytest.mark.root
def test_expect_names_what_booted_instead_even_when_the_log_and_the_esp_agree(uki: Uki, tmp_path: Path) -> None:
    """The ESP was changed *before* the boot (b.raw replaced): log, live PCRs and ESP agree, but the
    saved prediction says b.raw was meant to be another file. Found by the node scenario
    (tests/node/test_node_tpm.py, boot 2 against boot 1's prediction)."""
    root = make_root(tmp_path, uki)
    meant_esp = tmp_path / "meant-esp"
    shutil.copytree(root / "efi", meant_esp)
    (meant_esp / "EFI/kairos/active.efi.extra.d/b.raw").write_bytes(b"the b that was meant")
    p = bk("tpm", "predict", "--esp", str(meant_esp), "--bank", "sha1", "--bank", "sha256", "--json")
    assert p.returncode == 0, p.stderr
    saved = tmp_path / "meant.json"
    saved.write_text(p.stdout)
    assert bk("tpm", "verify", "--root", str(root)).returncode == 0  # without it, all agree
    p = bk("tpm", "verify", "--root", str(root), "--expect", str(saved), "--json")
    assert p.returncode == 1, p.stdout + p.stderr
    f = json.loads(p.stdout)["findings"]
    meant, got = (
        hashlib.sha256(b"the b that was meant").hexdigest()[:12],
        hashlib.sha256(SYSEXTS["b.raw"]).hexdigest()[:12],
    )
    assert any(
        x.startswith(
            f"PCR 13 'System extension initrd': what booted against {saved}: changed b.raw (sha256 {meant}… → {got}…)"
        )
        for x in f
    ), f
    shutil.rmtree(root / "run/initrd-extra/sysext")
    f = json.loads(bk("tpm", "verify", "--root", str(root), "--expect", str(saved), "--json").stdout)["findings"]
    assert f"PCR 13 'System extension initrd': the log matches the ESP, not {saved}" in f, f
    assert any(x.startswith(f"PCR 13 'System extension initrd': the ESP against {saved}: changed b.raw") for x in f), f
    # the prediction of what booted itself: nothing to say
    same = tmp_path / "same.json"
    same.write_text(
        bk("tpm", "predict", "--esp", str(root / "efi"), "--bank", "sha1", "--bank", "sha256", "--json").stdout
    )
    assert bk("tpm", "verify", "--root", str(root), "--expect", str(same)).returncode == 0


@pytest.mark.root
def test_a_removed_extension_folder_is_named(uki: Uki, tmp_path: Path) -> None:
    root = make_root(tmp_path, uki)
    shutil.rmtree(root / "efi/EFI/kairos/active.efi.extra.d")
    p = bk("tpm", "verify", "--root", str(root), "--json")
    assert p.returncode == 1
    f = json.loads(p.stdout)["findings"]
    assert any(x.startswith("PCR 13: logged EV_IPL 'System extension initrd'") and "not predicted" in x for x in f), f
    assert any("the ESP against what booted" in x and "removed a.raw" in x and "removed b.raw" in x for x in f), f


@pytest.mark.root
def test_a_truncated_log_is_one_line_exit_4(uki: Uki, tmp_path: Path) -> None:
    root = make_root(tmp_path, uki)
    log = root / "sys/kernel/security/tpm0/binary_bios_measurements"
    log.write_bytes(log.read_bytes()[:-3])
    p = bk("tpm", "verify", "--root", str(root))
    assert p.returncode == 4, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) <= 2 and f"{log}: offset " in lines[0] and "eventSize" in lines[0], p.stderr


def test_no_tpm_is_nothing_to_verify(tmp_path: Path) -> None:
    """No TPM and no result left by an earlier run: exit 3, and no result is written."""
    (tmp_path / "efi/loader").mkdir(parents=True)
    (tmp_path / "run").mkdir()  # where a result would go
    p = bk("tpm", "verify", "--root", str(tmp_path))
    assert p.returncode == 3, p.stdout + p.stderr
    assert "no TPM event log" in p.stderr
    assert not (tmp_path / "run/bootkeeper/tpm-verify.json").exists()


@pytest.mark.root
def test_a_tag_event_decodes_in_messages(uki: Uki, tmp_path: Path) -> None:
    """An extra PCR 12 record (an addon's .initrd, EV_EVENT_TAG) the ESP does not predict."""
    root = make_root(tmp_path, uki)
    log = root / "sys/kernel/security/tpm0/binary_bios_measurements"
    text = _u16("x.addon.efi")
    data = struct.pack("<II", 0x49DFFE0F, len(text)) + text
    log.write_bytes(log.read_bytes() + B.record(B.Record(12, B.EV_EVENT_TAG, data), BANKS))
    for bank in BANKS:
        pcr = root / f"sys/class/tpm/tpm0/pcr-{bank}/12"
        pcr.write_text(_extend(bank, bytes.fromhex(pcr.read_text().strip()), data).hex())
    p = bk("tpm", "verify", "--root", str(root), "--json")
    assert p.returncode == 1
    f = json.loads(p.stdout)["findings"]
    assert any(x.startswith("PCR 12: logged EV_EVENT_TAG 'x.addon.efi'") for x in f), f


@pytest.mark.root
@pytest.mark.parametrize(
    ("selected", "stub", "how"),
    [
        ("active+2-1.conf", None, "LoaderEntrySelected=active+2-1.conf"),  # a counted entry
        (None, "\\EFI\\KAIROS\\ACTIVE.EFI", "StubImageIdentifier="),  # vfat: any case
        (None, "\\EFI\\kairos\\active+1-1.efi", "StubImageIdentifier="),  # the stub ran it before a bless
        (None, None, "the log"),
    ],
)
def test_the_booted_entry_is_found(uki: Uki, tmp_path: Path, selected: str | None, stub: str | None, how: str) -> None:
    root = make_root(tmp_path, uki)
    # a second entry on the ESP that did not boot, with other options
    (root / "efi/loader/entries/passive.conf").write_text("title passive\nefi /EFI/kairos/active.efi\noptions x=1\n")
    efivars = root / "sys/firmware/efi/efivars"
    shutil.rmtree(efivars)
    values = {k: v for k, v in (("LoaderEntrySelected", selected), ("StubImageIdentifier", stub)) if v is not None}
    fake_efivars(efivars, **values)
    p = bk("tpm", "verify", "--root", str(root), "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    booted = json.loads(p.stdout)["booted"]
    assert booted["entry"] == "active" and how in booted["found_by"], booted


@pytest.mark.root
def test_hostile_inputs_are_one_line(uki: Uki, tmp_path: Path) -> None:
    root = make_root(tmp_path, uki)
    bad = tmp_path / "bad.json"
    bad.write_text('{"entries": [{"entry": "active", "events": [{"pcr": 13, "digests": {"sha256": "zz"}}]}]}')
    p = bk("tpm", "verify", "--root", str(root), "--expect", str(bad))
    assert p.returncode == 4 and f"{bad}: entries[0]: events[0]: digests: not hex" in p.stderr, p.stderr
    pcr = root / "sys/class/tpm/tpm0/pcr-sha256/7"
    pcr.write_text("zz" * 5000)
    p = bk("tpm", "verify", "--root", str(root))
    assert p.returncode == 4 and f"{pcr}: " in p.stderr and "not a hex PCR value" in p.stderr, p.stderr


def _prediction(entry: str, description: str) -> Prediction:
    sha = BANKS_BY_NAME["sha256"]
    ev = Event(12, B.EV_IPL, description, "options", {"sha256": hashlib.sha256(_u16(description)).digest()})
    return Prediction(None, entry, "EFI/Linux/x.efi", "EFI/Linux/x.efi.extra.d", (sha,), (ev,))


@pytest.mark.parametrize(
    ("selected", "entry"),
    [("x+3-0.efi@debug", "x@debug"), ("x.efi@2", "x@2"), ("x.efi", "x"), ("X+1.EFI", "x")],
)
def test_a_profile_is_found_by_its_id(selected: str, entry: str) -> None:
    """LoaderEntrySelected of a UKI profile is FILE@ID or FILE@N (src/boot/boot.c, v257.9)."""
    from bootkeeper.measure import eventlog, verify

    preds = [_prediction("x", "@0"), _prediction("x@debug", "@1"), _prediction("x@2", "@2")]
    log = eventlog.parse(B.build([], ("sha256",)), "log")
    got, how = verify._pick(preds, log, None, selected)
    assert got is not None and got.entry == entry and how == f"LoaderEntrySelected={selected}"


def test_diff_files_names_each_change() -> None:
    from bootkeeper.measure.verify import diff_files

    a, b, c = (FileRef(n, 1, hashlib.sha256(n.encode()).hexdigest()) for n in ("a.raw", "b.raw", "c.raw"))
    b2 = FileRef("b.raw", 2, "f" * 64)
    assert diff_files([a, b], [b2, c]) == [
        "added c.raw",
        "removed a.raw",
        f"changed b.raw (sha256 {b.sha256[:12]}… → {'f' * 12}…)",
    ]
    assert diff_files([a], [a]) == []


@pytest.mark.root
def test_without_the_userspace_log_a_word_off_the_phase_path_is_a_finding(uki: Uki, tmp_path: Path) -> None:
    root = make_root(tmp_path, uki, phases=("enter-initrd", "sysinit"), user_log=False)  # leave-initrd skipped
    p = bk("tpm", "verify", "--root", str(root))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "which is the logged handover value after no prefix of the boot phases" in p.stdout, p.stdout


def _metric(root: Path, name: str) -> str:
    m = bk("metrics", "--root", str(root), "--esp", str(root / "efi"))
    assert m.returncode == 0, m.stderr
    return "\n".join(x for x in m.stdout.splitlines() if x.startswith(name))


@pytest.mark.root
def test_an_entry_that_is_not_a_pe_fails_the_verification_and_not_the_verdict(uki: Uki, tmp_path: Path) -> None:
    """Issue 27, defect 1: a tampered passive entry (its .efi is not a PE) no longer stops verify before
    it leaves a result: the booted entry is verified all the same, the broken one is a finding, the
    result file says both, and metrics exports agree 0 with the reason."""
    root = make_root(tmp_path, uki)
    (root / "efi/loader/entries/passive.conf").write_text("title passive\nefi /EFI/kairos/passive.efi\n")
    (root / "efi/EFI/kairos/passive.efi").write_bytes(b"not a PE at all" * 10)
    p = bk("tpm", "verify", "--root", str(root), "--json")
    assert p.returncode == 1, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["agree"] is False and out["complete"] is False
    assert out["booted"]["entry"] == "active"
    # the verdict on the booted entry stands: its stub PCRs replay and match the prediction
    stub = [r for r in out["pcrs"] if r["pcr"] in (11, 12, 13)]
    assert len(stub) == 6 and all(r["agree"] and r["predicted"] for r in stub), stub
    [u] = out["unverified"]
    assert u["kind"] == "entry" and u["entry"] == "passive" and u["uki"] == "EFI/kairos/passive.efi"
    assert [f for f in out["findings"] if f.startswith("entry passive (EFI/kairos/passive.efi) cannot be predicted: ")]
    assert json.loads((root / "run/bootkeeper/tpm-verify.json").read_text()) == out
    got = _metric(root, "bootkeeper_tpm_verify")
    assert "bootkeeper_tpm_verify_agree 0.0" in got, got
    assert 'bootkeeper_tpm_verify_incomplete{reason="entry"} 1.0' in got, got
    assert 'bootkeeper_tpm_verify_incomplete{reason="input"} 0.0' in got, got


@pytest.mark.root
def test_a_booted_entry_that_is_not_a_pe_is_unverified_not_another_entry(uki: Uki, tmp_path: Path) -> None:
    """The entry the efivars name cannot be predicted: verify does not pick another one by the log."""
    root = make_root(tmp_path, uki)
    (root / "efi/loader/entries/passive.conf").write_text("title passive\nefi /EFI/kairos/passive.efi\n")
    shutil.copy(root / "efi/EFI/kairos/active.efi", root / "efi/EFI/kairos/passive.efi")
    (root / "efi/EFI/kairos/active.efi").write_bytes(b"MZ" + b"\0" * 100)
    p = bk("tpm", "verify", "--root", str(root), "--json")
    assert p.returncode == 1, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["agree"] is False and out["booted"]["entry"] == "active", out["booted"]
    assert [u["entry"] for u in out["unverified"]] == ["active"]
    assert any("it is the booted entry, its PCRs 11, 12 and 13 are not verified" in f for f in out["findings"])
    # the log and the live PCRs are still checked
    assert {r["pcr"] for r in out["pcrs"]} >= {0, 7, 11}, out["pcrs"]


@pytest.mark.root
def test_an_input_that_stops_verify_leaves_a_failed_result(uki: Uki, tmp_path: Path) -> None:
    """A truncated event log: exit 4 with its one line as before, and the result file says failed
    (with the reason) instead of keeping the last good one or none."""
    root = make_root(tmp_path, uki)
    assert bk("tpm", "verify", "--root", str(root)).returncode == 0
    assert "bootkeeper_tpm_verify_agree 1.0" in _metric(root, "bootkeeper_tpm_verify_agree")
    log = root / "sys/kernel/security/tpm0/binary_bios_measurements"
    log.write_bytes(log.read_bytes()[:-3])
    p = bk("tpm", "verify", "--root", str(root))
    assert p.returncode == 4, p.stdout + p.stderr
    left = json.loads((root / "run/bootkeeper/tpm-verify.json").read_text())
    assert left["agree"] is False and left["complete"] is False
    [u] = left["unverified"]
    assert u["kind"] == "input" and u["reason"] in p.stderr and f"{log}: offset " in u["reason"], (u, p.stderr)
    got = _metric(root, "bootkeeper_tpm_verify")
    assert "bootkeeper_tpm_verify_agree 0.0" in got and 'bootkeeper_tpm_verify_incomplete{reason="input"} 1.0' in got


@pytest.mark.root
def test_a_tpm_without_its_event_log_is_a_failed_verification(uki: Uki, tmp_path: Path) -> None:
    """Review of issue 27, defect 1: a node with a TPM (sys/class/tpm/tpm0) whose event log is gone
    (removed, securityfs not mounted) cannot be verified. That is a failed verification, recorded with
    the reason (kind input) and exported as agree 0: not exit 3 with the last good result kept, which
    metrics went on exporting as agree 1 with its old time."""
    root = make_root(tmp_path, uki)
    assert bk("tpm", "verify", "--root", str(root)).returncode == 0
    assert "bootkeeper_tpm_verify_agree 1.0" in _metric(root, "bootkeeper_tpm_verify_agree")
    log = root / "sys/kernel/security/tpm0/binary_bios_measurements"
    log.unlink()
    p = bk("tpm", "verify", "--root", str(root))
    assert p.returncode == 7, p.stdout + p.stderr
    [line] = p.stderr.strip().splitlines()
    assert f"{log}: no TPM event log" in line and "sys/class/tpm/tpm0" in line, line
    left = json.loads((root / "run/bootkeeper/tpm-verify.json").read_text())
    assert left["agree"] is False and left["complete"] is False
    [u] = left["unverified"]
    assert u["kind"] == "input" and u["reason"] in line, (u, line)
    got = _metric(root, "bootkeeper_tpm_verify")
    assert "bootkeeper_tpm_verify_agree 0.0" in got and 'bootkeeper_tpm_verify_incomplete{reason="input"} 1.0' in got


@pytest.mark.root
def test_no_tpm_replaces_an_earlier_result_with_a_failed_one(uki: Uki, tmp_path: Path) -> None:
    """No TPM at all (neither the event log nor sys/class/tpm/tpm0): exit 3, not applicable. A node
    does not lose its TPM, so a result an earlier run left is not kept agreeing: it becomes a failed
    one naming why (without one, none is written: test_no_tpm_is_nothing_to_verify)."""
    root = make_root(tmp_path, uki)
    assert bk("tpm", "verify", "--root", str(root)).returncode == 0
    shutil.rmtree(root / "sys/kernel/security")
    shutil.rmtree(root / "sys/class/tpm")
    p = bk("tpm", "verify", "--root", str(root))
    assert p.returncode == 3, p.stdout + p.stderr
    assert "no TPM event log" in p.stderr
    left = json.loads((root / "run/bootkeeper/tpm-verify.json").read_text())
    assert left["agree"] is False and left["complete"] is False
    [u] = left["unverified"]
    assert u["kind"] == "input" and "no TPM" in u["reason"] and "earlier tpm verify" in u["reason"], u
    assert "bootkeeper_tpm_verify_agree 0.0" in _metric(root, "bootkeeper_tpm_verify_agree")


FIFO_GUARD = 30  # s: a FIFO nobody writes to blocks a blocking open() forever


def bk_guarded(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bootkeeper", *args], capture_output=True, text=True, check=False, timeout=FIFO_GUARD
    )


@pytest.mark.root
@pytest.mark.parametrize(
    ("where", "code"),
    [
        ("run/initrd-extra/sysext/c.raw", 7),  # what booted (the reviewer's: verify hung)
        ("sys/kernel/security/tpm0/binary_bios_measurements", 7),
        ("sys/class/tpm/tpm0/pcr-sha256/11", 7),
        ("efi/EFI/kairos/active.efi.extra.d/c.raw", 1),  # the ESP's: that entry is not predicted, a finding
    ],
)
def test_a_fifo_is_refused_in_one_line_not_waited_on(uki: Uki, tmp_path: Path, where: str, code: int) -> None:
    """Every file verify reads is opened without blocking and refused unless regular (it used to
    block in open() on a FIFO until the guard killed it)."""
    root = make_root(tmp_path, uki)
    fifo = root / where
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    p = bk_guarded("tpm", "verify", "--root", str(root))
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    if code == 7:
        (line,) = p.stderr.splitlines()
        assert line.startswith(f"bootkeeper: error: {fifo}: ") and "not a regular file" in line, line
    else:
        name = where.removeprefix("efi/")
        assert (
            f"finding: entry active (EFI/kairos/active.efi) cannot be predicted: {name}: "
            "not a regular file (a FIFO); not read"
        ) in p.stdout, p.stdout
