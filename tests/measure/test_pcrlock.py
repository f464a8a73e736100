"""``bootkeeper tpm pcrlock`` against systemd-pcrlock 257 (trixie tree): its UKI variants equal
``lock-uki`` plus ``lock-pe`` of the kernel inside, its PCR 13 variants ``lock-raw --pcr=13`` of the
cpio the stub builds, as parsed JSON records; and systemd-pcrlock itself, on a software TPM holding
PCRs 4, 11 and 13 of a boot of the active entry (extended from the real tools' records), recognizes
every record with our components, predicts the live values, and writes a policy for them, where
``lock-uki``'s component leaves PCR 4 out (systemd#36076)."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

import trixie
from bootkeeper.measure import cpio
from helpers import bk

pytestmark = pytest.mark.integration
CACHE = Path(os.environ.get("NODE_CACHE", Path(__file__).resolve().parents[2] / ".cache" / "node"))
PCRLOCK = "/usr/lib/systemd/systemd-pcrlock"
ROLES = ("active", "passive", "recovery")
UKI_DIR = "EFI/kairos"
# each role's extensions (none for recovery: an empty variant)
SYSEXTS = {"active": {"tools.raw": 70_001, "zz.raw": 4}, "passive": {"tools.raw": 70_002}, "recovery": {}}


def records(path: Path) -> list[dict[str, Any]]:
    out = json.loads(path.read_text())["records"]
    assert isinstance(out, list)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """UKIs per role made by trixie's ukify (one kernel, a command line per role), an ESP with an
    entry per role, and extensions in their .extra.d folders."""
    if not (trixie.ROOT / PCRLOCK.lstrip("/")).exists():
        pytest.fail(f"no systemd-pcrlock in {trixie.ROOT}: scripts/setup-trixie.sh makes it (make test runs it)")
    kernels = sorted((CACHE / "guest" / "boot").glob("vmlinuz-*"))
    assert kernels, f"no kernel under {CACHE}/guest/boot: scripts/setup-test-deps.sh (make test) fetches it"
    w = tmp_path_factory.mktemp("pcrlock")
    shutil.copy(kernels[-1], w / "vmlinuz")
    rnd = random.Random(13)
    (w / "initrd").write_bytes(rnd.randbytes(200_000))
    (w / "osrel").write_text("ID=debian\nVERSION_ID=13\n")
    cmds = [
        f"ukify build --linux=vmlinuz --initrd=initrd --os-release=@osrel --cmdline='console=ttyS0 role={r}' "
        f"--uname=6.12.0-test --output={r}.efi >/dev/null"
        for r in ROLES
    ]
    p = trixie.run(" && ".join(cmds), w)
    assert p.returncode == 0, p.stderr
    esp = w / "esp"
    (esp / "loader/entries").mkdir(parents=True)
    (esp / UKI_DIR).mkdir(parents=True)
    (esp / "loader/loader.conf").write_text("timeout 0\n")
    for r in ROLES:
        shutil.copy(w / f"{r}.efi", esp / UKI_DIR / f"{r}.efi")
        (esp / "loader/entries" / f"{r}.conf").write_text(f"title {r}\nefi /{UKI_DIR}/{r}.efi\n")
        extra = esp / UKI_DIR / f"{r}.efi.extra.d"
        extra.mkdir()
        for name, size in SYSEXTS[r].items():
            (extra / name).write_bytes(rnd.randbytes(size))
        (extra / "ignored.confext.raw").write_bytes(b"PCR 12, not 13")
        # the cpio the stub packs (written by measure/cpio.py, which tests/test_vm_* check against a boot)
        with (w / f"{r}.cpio").open("wb") as f:
            cpio.write(".extra/sysext", 0o555, 0o444, cpio.members(extra, ".raw", ".confext.raw", r), f.write, r)
    return w


@pytest.fixture(scope="module")
def theirs(built: Path) -> Path:
    """What systemd-pcrlock's own lock verbs write for the same inputs."""
    cmds = [f"{PCRLOCK} lock-pe vmlinuz --pcrlock=theirs/kernel.pcrlock"]
    for r in ROLES:
        cmds.append(f"{PCRLOCK} lock-uki {r}.efi --pcrlock=theirs/{r}.uki.pcrlock")
        if SYSEXTS[r]:
            cmds.append(f"{PCRLOCK} lock-raw --pcr=13 {r}.cpio --pcrlock=theirs/{r}.sysext.pcrlock")
    (built / "theirs").mkdir()
    p = trixie.run(" && ".join(cmds), built)
    assert p.returncode == 0, p.stderr
    return built / "theirs"


@pytest.fixture(scope="module")
def ours(built: Path) -> dict[str, Any]:
    p = bk("tpm", "pcrlock", "--esp", str(built / "esp"), "--dest", str(built / "dest"), "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert isinstance(out, dict)
    return out


@pytest.mark.root
def test_uki_variant_is_lock_uki_plus_the_kernel_lock_pe(built: Path, theirs: Path, ours: dict[str, Any]) -> None:
    kernel = records(theirs / "kernel.pcrlock")
    for r in ROLES:
        mine = records(built / "dest" / "650-bootkeeper-uki.pcrlock.d" / f"{r}.pcrlock")
        assert mine == records(theirs / f"{r}.uki.pcrlock") + kernel, r
    # the roles' UKIs differ (the command line), and so do their PCR 11 records
    assert len({json.dumps(records(theirs / f"{r}.uki.pcrlock")) for r in ROLES}) == len(ROLES)


@pytest.mark.root
def test_sysext_variant_is_lock_raw_of_the_cpio(built: Path, theirs: Path, ours: dict[str, Any]) -> None:
    for r in ROLES:
        mine = records(built / "dest" / "660-bootkeeper-sysext.pcrlock.d" / f"{r}.pcrlock")
        if SYSEXTS[r]:
            assert mine == records(theirs / f"{r}.sysext.pcrlock"), r
        else:
            assert mine == [], r  # no extensions: the stub measures nothing
    assert records(theirs / "active.sysext.pcrlock") != records(theirs / "passive.sysext.pcrlock")


@pytest.mark.root
def test_json_summary_names_every_file(built: Path, ours: dict[str, Any]) -> None:
    paths = [v["path"] for v in ours["variants"]]
    assert paths == sorted(paths)
    assert sorted(paths) == sorted(
        f"{c}.pcrlock.d/{r}.pcrlock" for c in ("650-bootkeeper-uki", "660-bootkeeper-sysext") for r in ROLES
    )
    for v in ours["variants"]:
        assert (built / "dest" / v["path"]).is_file()
        assert v["role"] == v["variant"] and v["uki"] == f"{UKI_DIR}/{v['role']}.efi"
        pcrs = [rec["pcr"] for rec in v["records"]]
        if v["component"] == "650-bootkeeper-uki":
            assert pcrs[0] == 4 and pcrs[-1] == 4 and set(pcrs[1:-1]) == {11}
            assert "kernel" in v["records"][-1]["what"]
        else:
            assert pcrs == ([13] if SYSEXTS[v["role"]] else [])
            if pcrs:
                assert all(n in v["records"][0]["what"] for n in SYSEXTS[v["role"]])


@pytest.mark.root
def test_pcrlock_lists_our_components_in_order(built: Path, ours: dict[str, Any]) -> None:
    p = trixie.run(f"{PCRLOCK} list-components --components=/work/dest --json=short", built)
    assert p.returncode == 0, p.stderr
    listed = json.loads(p.stdout)
    # one row per variant (257 names the file in "variants"), components in the order pcrlock takes them
    found = [(c["id"], c["variants"]) for c in listed]
    assert found == [
        (comp, f"/work/dest/{comp}.pcrlock.d/{r}.pcrlock")
        for comp in ("650-bootkeeper-uki", "660-bootkeeper-sysext")
        for r in sorted(ROLES)
    ]


@pytest.mark.root
def test_secure_boot_leaves_the_kernel_record_out(built: Path, theirs: Path, tmp_path: Path) -> None:
    """Under Secure Boot stub 257's security override answers the firmware's hook itself, which is
    where the firmware measures: what lock-uki writes is then the whole story."""
    p = bk("tpm", "pcrlock", "--esp", str(built / "esp"), "--dest", str(tmp_path), "--secure-boot", "on")
    assert p.returncode == 0, p.stderr
    for r in ROLES:
        mine = records(tmp_path / "650-bootkeeper-uki.pcrlock.d" / f"{r}.pcrlock")
        assert mine == records(theirs / f"{r}.uki.pcrlock")


@pytest.mark.root
def test_entries_gone_lose_their_variants(built: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    assert bk("tpm", "pcrlock", "--esp", str(built / "esp"), "--dest", str(dest)).returncode == 0
    (dest / "650-bootkeeper-uki.pcrlock.d" / "old.pcrlock").write_text('{"records":[]}\n')
    (dest / "650-bootkeeper-uki.pcrlock.d" / "notes.txt").write_text("not ours to remove\n")
    (dest / "600-gpt.pcrlock.d").mkdir()
    (dest / "600-gpt.pcrlock.d" / "generated.pcrlock").write_text('{"records":[]}\n')
    p = bk("tpm", "pcrlock", "--esp", str(built / "esp"), "--dest", str(dest), "--entry", "active", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert sorted(out["removed"]) == sorted(
        [f"650-bootkeeper-uki.pcrlock.d/{n}.pcrlock" for n in ("old", "passive", "recovery")]
        + [f"660-bootkeeper-sysext.pcrlock.d/{n}.pcrlock" for n in ("passive", "recovery")]
    )
    assert sorted(p.name for p in (dest / "650-bootkeeper-uki.pcrlock.d").iterdir()) == ["active.pcrlock", "notes.txt"]
    assert (dest / "600-gpt.pcrlock.d" / "generated.pcrlock").exists()
    assert not [p for p in dest.rglob("*") if p.name.startswith(".bootkeeper-")]


@pytest.mark.root
def test_hostile_uki_is_one_line_error(built: Path, tmp_path: Path) -> None:
    from helpers import one_line_error

    esp = tmp_path / "esp"
    shutil.copytree(built / "esp", esp)
    uki = esp / UKI_DIR / "passive.efi"
    data = bytearray(uki.read_bytes())
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    struct.pack_into("<I", data, pe + 24 + 60, len(data) + 1)  # SizeOfHeaders past the end
    uki.write_bytes(bytes(data))
    p = bk("tpm", "pcrlock", "--esp", str(esp), "--dest", str(tmp_path / "dest"))
    one_line_error(p, 4, "entry passive", f"{UKI_DIR}/passive.efi", "SizeOfHeaders")
    p = bk("tpm", "pcrlock", "--esp", str(tmp_path / "nothing"), "--dest", str(tmp_path / "dest"))
    assert p.returncode != 0 and "Traceback" not in p.stderr


# --- systemd-pcrlock predict and make-policy on a software TPM ----------------------------------

EV_NO_ACTION = 0x3
EV_IPL = 0xD
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
SHA256 = 0x000B


def _event_log(events: list[tuple[int, int, bytes, bytes]]) -> bytes:
    """A crypto-agile TCG2 log (sha256 only) as the firmware writes it: the Spec ID header, then one
    TCG_PCR_EVENT2 per (pcr, type, sha256, event data)."""
    spec = b"Spec ID Event03\0" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, 1) + struct.pack("<HH", SHA256, 32) + b"\0"
    out = struct.pack("<II", 0, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(spec)) + spec
    for pcr, typ, digest, data in events:
        out += struct.pack("<IIIH", pcr, typ, 1, SHA256) + digest + struct.pack("<I", len(data)) + data
    return out


def _image_event() -> bytes:
    """UEFI_IMAGE_LOAD_EVENT with an empty device path (its end node)."""
    end = bytes([0x7F, 0xFF, 4, 0])
    return struct.pack("<QQQQ", 0, 0, 0, len(end)) + end


def _sha256(recs: list[dict[str, Any]]) -> list[tuple[int, bytes]]:
    return [
        (r["pcr"], bytes.fromhex(next(d["digest"] for d in r["digests"] if d["hashAlg"] == "sha256"))) for r in recs
    ]


def _boot(theirs: Path, role: str, sysext: str | None = None) -> list[tuple[int, int, bytes, bytes]]:
    """The log of a boot of ``role``'s entry with Secure Boot off (and ``sysext``'s extensions, when
    given), from systemd's own records: the UKI by the firmware (PCR 4), its sections by the stub
    (PCR 11), the extensions (PCR 13), then the kernel the stub loads (PCR 4)."""
    uki = _sha256(records(theirs / f"{role}.uki.pcrlock"))
    ev: list[tuple[int, int, bytes, bytes]] = [(4, EV_EFI_BOOT_SERVICES_APPLICATION, uki[0][1], _image_event())]
    ev += [(pcr, EV_IPL, d, "section\0".encode("utf-16-le")) for pcr, d in uki[1:]]
    ext = theirs / f"{sysext or role}.sysext.pcrlock"
    if ext.exists():
        ev += [(13, EV_IPL, d, "System extension initrd\0".encode("utf-16-le")) for _, d in _sha256(records(ext))]
    ((_, kernel),) = _sha256(records(theirs / "kernel.pcrlock"))
    ev.append((4, EV_EFI_BOOT_SERVICES_APPLICATION, kernel, _image_event()))
    return ev


TCTI = "swtpm:path=/run/swtpm.sock"


def _extend(events: list[tuple[int, int, bytes, bytes]]) -> str:
    return " && ".join(f"tpm2_pcrextend -T {TCTI} {pcr}:sha256={d.hex()}" for pcr, _, d, _ in events)


def _reboot() -> str:
    """A TPM reset (PCRs back to zero, NV indexes kept), as a reboot does."""
    return f"swtpm_ioctl --unix /run/swtpm.sock.ctrl -i && tpm2_startup -T {TCTI} -c"


def _unlock(name: str) -> str:
    """Open the volume with its TPM2 token (enrolling another TPM2 key slot needs the volume key; a
    password slot would cost an Argon2 run); the exit code goes to /work/<name>.rc."""
    return (
        f"{{ systemd-cryptenroll --unlock-tpm2-device={TCTI} --tpm2-device={TCTI} "
        "--tpm2-pcrlock=/run/systemd/pcrlock.json /run/luks.img "
        f"> /work/{name}.out 2>&1; echo $? > /work/{name}.rc; }}"
    )


def _rc(work: Path, name: str) -> int:
    return int((work / f"{name}.rc").read_text())


def _live(work: Path) -> dict[int, str]:
    out = {}
    for line in (work / "pcrs.txt").read_text().splitlines():
        k, _, v = line.strip().partition(":")
        if k.strip().isdigit():
            out[int(k)] = v.strip().lower().removeprefix("0x")
    return out


@pytest.mark.root
def test_pcrlock_policy_from_our_components_unlocks_every_role(built: Path, theirs: Path, ours: dict[str, Any]) -> None:
    """On a software TPM: PCRs 4, 11 and 13 of a boot of the active entry, and the firmware log of it.
    systemd-pcrlock recognizes every record with our components (with lock-uki's it drops PCR 4),
    predicts the live values, and make-policy's policy, enrolled into a LUKS2 volume with
    systemd-cryptenroll, opens it after a boot of active and after one of passive, and not after a
    boot with an extension nobody locked."""
    active = _boot(theirs, "active")
    (built / "bios.log").write_bytes(_event_log(active))
    lockuki = built / "lockuki"
    (lockuki / "650-uki.pcrlock.d").mkdir(parents=True)
    shutil.copy(theirs / "active.uki.pcrlock", lockuki / "650-uki.pcrlock.d" / "active.pcrlock")
    shutil.copytree(built / "dest" / "660-bootkeeper-sysext.pcrlock.d", lockuki / "660-bootkeeper-sysext.pcrlock.d")
    pcrs = "--pcr=4 --pcr=11 --pcr=13"
    tampered = [e if e[0] != 13 else (13, e[1], bytes(31) + b"\1", e[3]) for e in active]
    script = " && ".join(
        [
            "mkdir -p /run/tpmstate /run/systemd",
            "swtpm socket --tpm2 --tpmstate dir=/run/tpmstate --server type=unixio,path=/run/swtpm.sock "
            "--ctrl type=unixio,path=/run/swtpm.sock.ctrl --flags startup-clear,not-need-init "
            "--daemon --pid file=/run/swtpm.pid",
            "for i in $(seq 50); do [ -S /run/swtpm.sock ] && break; sleep 0.1; done",
            f"export SYSTEMD_TPM2_DEVICE={TCTI} SYSTEMD_MEASURE_LOG_FIRMWARE=/work/bios.log "
            "SYSTEMD_MEASURE_LOG_USERSPACE=/work/none.log SYSTEMD_TPM2_HASH_ALGORITHMS=sha256",
            _extend(active),
            f"tpm2_pcrread -T {TCTI} sha256:4,11,13 > /work/pcrs.txt",
            f"{PCRLOCK} predict --components=/work/dest {pcrs} --json=short > /work/predict.json 2> /work/predict.err",
            f"{PCRLOCK} predict --components=/work/lockuki {pcrs} --json=short > /work/predict-lockuki.json "
            "2> /work/predict-lockuki.err",
            f"{PCRLOCK} make-policy --components=/work/dest {pcrs} --policy=/run/systemd/pcrlock.json "
            "> /work/policy.out 2>&1",
            "cp /run/systemd/pcrlock.json /work/pcrlock.json",
            "truncate -s 32M /run/luks.img && printf pw > /run/pw",
            "cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 /run/luks.img /run/pw",
            f"PASSWORD=pw systemd-cryptenroll --tpm2-device={TCTI} --tpm2-pcrlock=/run/systemd/pcrlock.json "
            "/run/luks.img > /work/enroll.out 2>&1",
            _unlock("unlock-active"),
            _reboot(),
            _extend(_boot(theirs, "passive")),
            _unlock("unlock-passive"),
            _reboot(),
            _extend(tampered),
            _unlock("unlock-tampered"),
            _reboot(),
            _extend(_boot(theirs, "active", sysext="passive")),
            _unlock("unlock-mixed"),
        ]
    )
    p = trixie.run(f"{{ {script} ; }}; rc=$?; kill $(cat /run/swtpm.pid) 2>/dev/null; exit $rc", built)
    logs = {n: (built / n).read_text() for n in ("predict.err", "policy.out", "enroll.out") if (built / n).exists()}
    assert p.returncode == 0, (p.stdout, p.stderr[-3000:], logs)
    live = _live(built)
    predicted = json.loads((built / "predict.json").read_text())["sha256"]
    by_pcr: dict[int, list[str]] = {r["pcr"]: r["values"] for r in predicted}
    assert sorted(by_pcr) == [4, 11, 13], logs
    for n in (4, 11, 13):
        assert live[n] in by_pcr[n], (n, live[n], by_pcr[n])
    # one policy, every role: a value per role (recovery's PCR 13 is the zero PCR: no extensions)
    assert all(len(set(by_pcr[n])) == len(ROLES) for n in (4, 11, 13))
    assert bytes(32).hex() in by_pcr[13]
    # lock-uki's own component misses the kernel's PCR 4 record (systemd#36076): pcrlock drops PCR 4
    with_lockuki = json.loads((built / "predict-lockuki.json").read_text()).get("sha256", [])
    assert sorted(r["pcr"] for r in with_lockuki) == [11, 13]
    assert (
        "PCR 4 (boot-loader-code) event log contains unrecognized measurements"
        in (built / "predict-lockuki.err").read_text()
    )
    policy = json.loads((built / "pcrlock.json").read_text())
    assert policy["pcrBank"] == "sha256"
    assert {r["pcr"]: sorted(r["values"]) for r in policy["pcrValues"]} == {n: sorted(v) for n, v in by_pcr.items()}
    out = {n: (built / f"{n}.out").read_text() for n in ("unlock-active", "unlock-passive", "unlock-tampered")}
    assert _rc(built, "unlock-active") == 0, out
    assert _rc(built, "unlock-passive") == 0, out
    assert _rc(built, "unlock-tampered") != 0 and "TPM2" in out["unlock-tampered"], out
    # pcrlock takes each PCR on its own: the active UKI with passive's extensions opens it too
    assert _rc(built, "unlock-mixed") == 0


def test_variant_names_are_roles_unless_taken() -> None:
    """One file per entry: its role; its entry name when two entries share a role or it has none
    (made safe for a file name, never hidden)."""
    from bootkeeper.measure.pcrlock import _names
    from bootkeeper.measure.predict import Prediction

    def p(role: str | None, entry: str) -> Prediction:
        return Prediction(role, entry, f"EFI/Linux/{entry}.efi", f"EFI/Linux/{entry}.efi.extra.d", (), ())

    found = [
        p("active", "active"),
        p("passive", "passive"),
        p("passive", "passive-old"),
        p(None, ".x y/z"),
        p(None, "_x_y_z"),
    ]
    assert _names(found) == ["active", "passive", "passive-old", "x_y_z", "_x_y_z"]


@pytest.mark.root
def test_each_profile_of_a_multi_profile_uki_gets_its_variant(built: Path, theirs: Path, tmp_path: Path) -> None:
    """systemd-boot 257 lists each profile as an entry; lock-uki 257 gives up on such a UKI (its
    sections come twice), we write a variant per profile: the same PE hashes, their own PCR 11."""
    import vmboot

    cmds = [
        "ukify build --profile='ID=debug' --cmdline='debug console=ttyS0' --output=p1.efi >/dev/null",
        "ukify build --linux=vmlinuz --initrd=initrd --os-release=@osrel --cmdline='console=ttyS0' "
        "--join-profile=p1.efi --output=multi.efi >/dev/null",
        f"{PCRLOCK} lock-pe multi.efi --pcrlock=multi.pe.pcrlock",
        f"{{ {PCRLOCK} lock-uki multi.efi --pcrlock=multi.uki.pcrlock > lockuki.out 2>&1; echo $? > lockuki.rc; }}",
    ]
    p = trixie.run(" && ".join(cmds), built)
    assert p.returncode == 0, p.stderr
    assert (built / "lockuki.rc").read_text().strip() != "0"
    # pe-binary.c uki_hash(): "Duplicate section" (at debug level), EBADMSG
    assert "Failed to UKI hash PE binary: Bad message" in (built / "lockuki.out").read_text()
    esp = tmp_path / "esp"
    (esp / "EFI/Linux").mkdir(parents=True)
    (esp / "EFI/BOOT").mkdir(parents=True)
    (esp / "EFI/BOOT/BOOTX64.EFI").write_bytes(vmboot.sdboot(257).read_bytes())
    shutil.copy(built / "multi.efi", esp / "EFI/Linux/active.efi")
    q = bk("tpm", "pcrlock", "--esp", str(esp), "--dest", str(tmp_path / "dest"), "--json")
    assert q.returncode == 0, q.stderr
    variants = [v for v in json.loads(q.stdout)["variants"] if v["component"] == "650-bootkeeper-uki"]
    assert [(v["entry"], v["variant"]) for v in variants] == [("active", "active"), ("active@debug", "active_debug")]
    pe = records(built / "multi.pe.pcrlock")
    kernel = records(theirs / "kernel.pcrlock")
    recs = [records(tmp_path / "dest" / v["path"]) for v in variants]
    for r in recs:
        assert r[:1] == pe and r[-1:] == kernel
    assert recs[0][1:-1] != recs[1][1:-1]
