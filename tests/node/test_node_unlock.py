"""Disk unlock by the TPM, for real: a LUKS2 volume bound to a signed PCR 11 policy on the node of
test_node.py, booted with a software TPM (nodevm.make_tpm), through two ``bootkeeper upgrade`` runs.

The disk gets a third partition (GPT name ``bkdata``): a LUKS2 volume made on the host with the
trixie tree's cryptsetup 2.7 (a file, no device mapper) and enrolled with its systemd-cryptenroll 257
against the very swtpm state the machine then boots with (swtpm serves it on a socket for the
enrollment, then stops): ``--tpm2-device=swtpm:... --tpm2-public-key=A.pub --tpm2-public-key-pcrs=11
--tpm2-pcrs=`` (no PCR bound literally: only the signed PCR 11). The guest's /etc/crypttab names it with
``tpm2-device=auto`` (tests/node/guest/crypttab); the rig (unlock.sh) opens it once the boot phases are
measured and says whether it opened.

The UKIs are built with trixie's ukify: OS v1 and v2 with key A's public key as ``.pcrpkey`` and, as
``.pcrsig``, what ``bootkeeper tpm sign-policy --key A`` computed for that UKI (built once without it,
then again with it as a section: ``.pcrsig`` is not measured); v2' is v2 with key B in both. The phases
signed are ukify's four defaults (a systemd initrd's: what upgrade's gate checks) and the two this node's
PCR 11 goes through, ``sysinit`` and ``sysinit:ready`` (its initrd is initramfs-tools', so
``enter-initrd`` never runs here; see test_node_tpm.py).

Boot 1 (v1) opens the volume, writes a marker in it, and upgrades to v2; boot 2 (v2, same key) opens it
and reads boot 1's marker; there the upgrade to v2' is refused by the gate (its ``.pcrsig`` is not
signed by the key the volume's token trusts) and then forced; boot 3 (v2') does not open it (the
volume is ``nofail``: the boot goes on and the rig reports).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import luks
import nodevm
import trixie
from test_node import DISKS, NODE_TABLES, GuestCrash, Node, Row

pytestmark = pytest.mark.node

LUKS_MIB = 32
# ukify's and systemd-measure's default phase paths (what upgrade's gate asks for: a systemd initrd's),
# and the two this node's PCR 11 goes through when unlock.sh opens the volume (after "ready")
PHASES = (
    "enter-initrd",
    "enter-initrd:leave-initrd",
    "enter-initrd:leave-initrd:sysinit",
    "enter-initrd:leave-initrd:sysinit:ready",
    "sysinit",
    "sysinit:ready",
)
LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def _sh(cmd: str, work: Path, what: str) -> str:
    p = trixie.run(cmd, work)
    if p.returncode != 0:
        raise RuntimeError(f"{what} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-2000:]}")
    return p.stdout


def pe_section(path: Path, name: str) -> bytes | None:
    """The bytes of PE section ``name`` (its virtual size), read with the PE/COFF headers only."""
    data = path.read_bytes()
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    count, opt = struct.unpack_from("<H", data, pe + 6)[0], struct.unpack_from("<H", data, pe + 20)[0]
    off = pe + 24 + opt
    for _ in range(count):
        vsize, _va, _rsize, raw = struct.unpack_from("<IIII", data, off + 8)
        if data[off : off + 8].rstrip(b"\0").decode() == name:
            return data[raw : raw + vsize]
        off += 40
    return None


def keypair(folder: Path, name: str) -> tuple[Path, Path]:
    key, pub = folder / f"{name}.key", folder / f"{name}.pub.pem"
    nodevm._run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key)])
    nodevm._run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(pub)])
    return key, pub


def signed_uki(work: Path, name: str, version: str, key: Path, pub: Path, image_version: str | None = None) -> Path:
    """OS ``version``'s UKI (as nodevm.os_ukis builds it) with ``pub`` as .pcrpkey and, as .pcrsig,
    ``bootkeeper tpm sign-policy`` over the UKI without it, signed by ``key``; ``image_version``: its
    .osrel's IMAGE_VERSION instead of ``version`` (the rig still shows OS ``version``'s os-release)."""
    kver = nodevm.kernel_version()
    for src, dst in ((f"vmlinuz-{kver}", "vmlinuz"), (f"initrd.img-{kver}", "initrd")):
        if not (work / dst).exists():
            shutil.copy(nodevm.GUEST / "boot" / src, work / dst)
    shutil.copy(key, work / f"{name}.key")
    shutil.copy(pub, work / f"{name}.pub.pem")
    osrel = nodevm.os_release(version)
    if image_version is not None:
        osrel = osrel.replace(f"IMAGE_VERSION={version}\n", f"IMAGE_VERSION={image_version}\n")
    (work / f"os-release.{name}").write_text(osrel)
    cmdline = f"{nodevm.CMDLINE} bktest.role=active bktest.osversion={version}"
    build = (
        f"ukify build --linux=vmlinuz --initrd=initrd --cmdline='{cmdline}' --os-release=@os-release.{name} "
        f"--uname={kver} --pcrpkey={name}.pub.pem"
    )
    _sh(f"{build} --output={name}.nosig.efi >/dev/null", work, f"ukify ({name}, no .pcrsig)")
    phases = [a for p in PHASES for a in ("--phase", p)]
    nodevm.bk("tpm", "sign-policy", "--uki", str(work / f"{name}.nosig.efi"), "--key", str(key), *phases,
              "-o", str(work / f"{name}.pcrsig.json"))  # fmt: skip
    _sh(f"{build} --section=.pcrsig:@{name}.pcrsig.json --output={name}.efi >/dev/null", work, f"ukify ({name})")
    return work / f"{name}.efi"


@contextlib.contextmanager
def swtpm_socket(tpm: nodevm.Tpm, sock: Path) -> Iterator[None]:
    """swtpm serving ``tpm``'s state on ``sock`` (and ``sock``.ctrl) for a TSS on the host (TCTI
    ``swtpm:path=...``), already started up; stopped when the block ends, however it ends."""
    cmd = [
        "swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tpm.state}",
        "--server", f"type=unixio,path={sock}", "--ctrl", f"type=unixio,path={sock}.ctrl",
        "--flags", "not-need-init,startup-clear", "--log", f"file={tpm.folder}/swtpm-enroll.log,level=1",
    ]  # fmt: skip
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"swtpm did not open {sock} (rc {p.poll()}); log {tpm.folder}/swtpm-enroll.log")
            time.sleep(0.02)
        yield
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        p.wait()


def luks_volume(tpm: nodevm.Tpm, pub: Path, out: Path) -> dict[str, Any]:
    """A LUKS2 volume (a file, ``out``) with a passphrase and a systemd-tpm2 token trusting ``pub`` for
    PCR 11, sealed by ``tpm``; returns the token as the header has it. Built in a short folder under
    /tmp (the swtpm socket's path, which the trixie tree sees at /work/sock). The volume is
    tests/luks.py's; the enrollment is not its ``enroll``, which runs the trixie tree's swtpm: the machine
    boots with the host's swtpm (libtpms 0.9), and a state a newer libtpms wrote need not be one an older
    one reads, so the host's swtpm serves the enrollment too."""
    work = Path(tempfile.mkdtemp(prefix="bkluks-", dir="/tmp"))
    try:
        luks.make_volume(work, "bkdata.img", LUKS_MIB)
        shutil.copy(pub, work / "trusted.pub.pem")
        with swtpm_socket(tpm, work / "sock"):
            _sh(
                "systemd-cryptenroll --unlock-key-file=/work/passphrase --tpm2-device=swtpm:path=/work/sock "
                "--tpm2-public-key=/work/trusted.pub.pem --tpm2-public-key-pcrs=11 --tpm2-pcrs= /work/bkdata.img",
                work,
                "systemd-cryptenroll",
            )
        dump = json.loads(_sh("cryptsetup luksDump --dump-json-metadata bkdata.img", work, "cryptsetup luksDump"))
        shutil.move(work / "bkdata.img", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tokens = [t for t in dump["tokens"].values() if t["type"] == "systemd-tpm2"]
    assert len(tokens) == 1, dump["tokens"]
    token: dict[str, Any] = tokens[0]
    return token


def add_partition(disk: Path, volume: Path) -> None:
    """Append ``volume`` to ``disk`` as a third GPT partition named bkdata (the backup GPT moved to
    the new end first)."""
    start_mib = disk.stat().st_size // (1024 * 1024)
    size_mib = volume.stat().st_size // (1024 * 1024)
    nodevm._run(["truncate", "-s", f"{start_mib + size_mib + 1}M", str(disk)])
    nodevm._run(["sfdisk", "-q", "--relocate", "gpt-bak-std", str(disk)])
    table = f"start={start_mib * 2048}, size={size_mib * 2048}, type={LINUX_DATA}, name=bkdata\n"
    nodevm._run(["sfdisk", "-q", "--append", str(disk)], input=table)
    nodevm._run(["dd", f"if={volume}", f"of={disk}", "bs=1M", f"seek={start_mib}", "conv=notrunc", "status=none"])


class UnlockNode(Node):
    """The node disk with the LUKS partition and its own TPM; every boot is a measured boot."""

    def __init__(self, work: Path, title: str, ukis: dict[str, Path], pub_a: Path) -> None:
        files: dict[str, Path | str] = {"bktest/v2.efi": ukis["v2"], "bktest/v2b.efi": ukis["v2b"]}
        super().__init__(work, title, [], active=ukis["v1"], files=files)
        self.names = {hashlib.sha256(p.read_bytes()).digest(): n for n, p in ukis.items()}
        self.names.update({hashlib.sha256(p.read_bytes()).digest(): r for r, p in nodevm.ukis().items()})
        self.tpm = nodevm.make_tpm(work / "tpm")
        (work / "luks").mkdir()
        self.token = luks_volume(self.tpm, pub_a, work / "luks" / "bkdata.img")
        add_partition(self.disk, work / "luks" / "bkdata.img")
        self.ran: list[str] = []  # what each boot's booted entry was: v1, v2, v2b or a role's UKI

    def which(self, name: str) -> str:
        """What the ESP file EFI/Linux/``name`` is: "v1", "v2", "v2b", a role, or "?"."""
        out = self.work / "which.efi"
        nodevm._run(
            ["mcopy", "-o", "-n", "-i", f"{self.disk}@@1M", f"::/EFI/Linux/{name}", str(out)], env=nodevm.MT_ENV
        )
        found = self.names.get(hashlib.sha256(out.read_bytes()).digest(), "?")
        out.unlink()
        return found

    def boot(self, *, kill_on: str | None = None) -> nodevm.Boot:
        n = len(self.rows) + 1
        before = [x for x in nodevm.esp_names(self.disk) if x.endswith(".efi")]
        what = {x.split("+")[0].removesuffix(".efi"): (x, self.which(x)) for x in before}
        b = nodevm.boot(self.disk, self.work / f"boot{n}.log", kill_on=kill_on, tpm=self.tpm)
        crash = b.crash_line()
        if crash is not None:
            raise GuestCrash(f"boot {n}: the guest kernel crashed by itself ({crash}); see {self.work}/boot{n}.log")
        assert "Ordering cycle found" not in b.text(), f"boot {n}: ordering cycle, see {self.work}/boot{n}.log"
        assert b.first("UNLOCK_DONE") is not None, f"boot {n}: unlock.sh did not finish; see {self.work}/boot{n}.log"
        assert b.first("DONE") is not None, f"boot {n}: the rig did not finish; see {self.work}/boot{n}.log"
        after = [x for x in nodevm.esp_names(self.disk) if x.endswith(".efi")]
        opened = "opened" if b.first("UNLOCK_OPEN") == "yes" else "not opened"
        ran = [" rc=".join(v.split(" ", 1)) for v in b.mark("UPGRADE_RC")]
        then = "; ".join([*ran, b.ending])
        role = (b.first("BOOT") or "role=?").split()[0].removeprefix("role=")
        name, runs = what.get(role, ("?", "?"))
        selected = dict(v.partition("=")[::2] for v in b.mark("EFIVAR")).get("LoaderEntrySelected", "?")
        left = next((x for x in after if x.split("+")[0].removesuffix(".efi") == role), "?")
        self.rows.append(Row(n, f"{role} ({runs})", name, selected, left, opened, then, b.seconds))
        self.ran.append(runs)
        self.boots.append(b)
        return b


@dataclass
class Run:
    node: UnlockNode
    boots: list[nodevm.Boot]
    ukis: dict[str, Path]
    keys: dict[str, tuple[Path, Path]]
    runs: list[str]  # what each boot booted: v1, v2, v2b (the entry's UKI before the boot)


def _upgrade(b: nodevm.Boot, label: str) -> tuple[int, Any, str]:
    rc = next(int(v.split()[1]) for v in b.mark("UPGRADE_RC") if v.split()[0] == label)
    err = next(v.partition(" ")[2] for v in b.mark("UPGRADE_ERR") if v.split()[0] == label)
    js = next(v.partition(" ")[2] for v in b.mark("UPGRADE_JSON") if v.split()[0] == label)
    try:
        out: Any = json.loads(js)
    except json.JSONDecodeError:
        out = js
    return rc, out, err


def _sig(run: Run, name: str) -> str:
    """The sha256 of the policy sign-policy made for UKI ``name`` (its .pcrsig)."""
    return hashlib.sha256((run.ukis[name].parent / f"{name}.pcrsig.json").read_bytes()).hexdigest()


def _scenario(work: Path) -> Run:
    work.mkdir(parents=True)
    build = work / "build"
    build.mkdir()
    keys = {k: keypair(build, k) for k in ("a", "b")}
    ukis = {
        "v1": signed_uki(build, "v1", "1", *keys["a"]),
        "v2": signed_uki(build, "v2", "2", *keys["a"]),
        # a rebuild of v2 (IMAGE_VERSION 2.1: systemd-boot puts it before v2, so that the menu order
        # gives the gate no reason to refuse it) signed with key B
        "v2b": signed_uki(build, "v2b", "2", *keys["b"], image_version="2.1"),
    }
    node = UnlockNode(
        work / "node", "TPM unlock: LUKS2 bound to signed PCR 11 through two upgrades", ukis, keys["a"][1]
    )
    DISKS.append(node.disk)
    try:
        nodevm.esp_write(node.disk, "bktest/unlock-upgrade", "to-v2 /efi/bktest/v2.efi\n")
        node.boot()
        nodevm.esp_write(
            node.disk, "bktest/unlock-upgrade", "refuse /efi/bktest/v2b.efi\nforce /efi/bktest/v2b.efi --force\n"
        )
        node.boot()
        nodevm.esp_write(node.disk, "bktest/unlock-upgrade", "")
        node.boot()
    finally:
        NODE_TABLES.append((node.title, node.table()))
    return Run(node, node.boots, ukis, keys, node.ran)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    missing = nodevm.missing_pieces(tpm=True)
    for tool in ("usr/bin/systemd-cryptenroll", "usr/sbin/cryptsetup"):
        if not (trixie.ROOT / tool).exists():
            missing.append(f"{trixie.ROOT}/{tool} (scripts/setup-trixie.sh)")
    if not (nodevm.GUEST / "usr/lib/systemd/systemd-cryptsetup").exists():
        missing.append(f"{nodevm.GUEST}: systemd-cryptsetup (scripts/setup-node-guest.sh)")
    if missing:
        pytest.fail(f"unlock pieces missing (scripts/setup-test-deps.sh installs them): {', '.join(missing)}")
    base = tmp_path_factory.mktemp("unlock")
    try:
        return _scenario(base / "try1")
    except GuestCrash:  # rare under TCG, see nodevm.QEMU_SMP: once more from a fresh disk and TPM
        return _scenario(base / "try2")


def test_the_token_trusts_key_a_for_pcr_11_only(run: Run) -> None:
    """What systemd-cryptenroll wrote: a signed PCR 11 policy with key A's public key, no literal PCRs."""
    t = run.node.token
    assert t["tpm2_pubkey_pcrs"] == [11] and t["tpm2-pcrs"] == [] and t["tpm2-pcr-bank"] == "sha256"
    assert base64.b64decode(t["tpm2_pubkey"]) == run.keys["a"][1].read_bytes()


def test_the_policy_is_sign_policys_and_ukifys(run: Run, tmp_path: Path) -> None:
    """The .pcrsig in each UKI is what sign-policy computes over the finished UKI, and what ukify's
    own --pcr-private-key path (systemd-measure sign) puts there for the same inputs."""
    for name, uki in run.ukis.items():
        key = run.keys["b" if name == "v2b" else "a"][0]
        phases = [a for p in PHASES for a in ("--phase", p)]
        again = nodevm.bk("tpm", "sign-policy", "--uki", str(uki), "--key", str(key), *phases)
        built = (uki.parent / f"{name}.pcrsig.json").read_text()
        assert json.loads(again) == json.loads(built), name
    work = run.ukis["v1"].parent
    kver = nodevm.kernel_version()
    cmdline = f"{nodevm.CMDLINE} bktest.role=active bktest.osversion=1"
    _sh(
        f"ukify build --linux=vmlinuz --initrd=initrd --cmdline='{cmdline}' --os-release=@os-release.v1 "
        f"--uname={kver} --pcr-private-key=v1.key --pcr-public-key=v1.pub.pem "
        f"--phases='{' '.join(PHASES)}' --output=v1.ukify.efi >/dev/null",
        work,
        "ukify (v1, .pcrsig by systemd-measure)",
    )
    assert pe_section(work / "v1.ukify.efi", ".pcrsig") == (work / "v1.pcrsig.json").read_bytes()


def test_v1_opens_the_volume_and_upgrades_to_v2(run: Run) -> None:
    b = run.boots[0]
    assert (b.first("BOOT") or "").startswith("role=active")
    assert run.runs[0] == "v1"
    assert b.first("OSREL") == "VERSION_ID=1 IMAGE_VERSION=1"
    assert b.first("UNLOCK_SIG") == _sig(run, "v1")
    assert (b.first("UNLOCK_RC") or "").split()[0] == "0", b.mark("UNLOCK_LOG")
    assert b.first("UNLOCK_OPEN") == "yes", b.mark("UNLOCK_LOG")
    wrote = b.first("UNLOCK_WROTE")
    assert wrote and (b.first("UNLOCK_DATA") or "").startswith(f"bktest-data {wrote}")
    rc, out, err = _upgrade(b, "to-v2")
    assert rc == 0 and out["result"] == "upgraded" and out["gate"]["verdict"] == "ok", err
    # the gate read the volume's token and found v2 signed for its key
    (tpm,) = out["gate"]["tpm"]
    assert tpm["device"] == "/dev/disk/by-partlabel/bkdata" and tpm["ok"] is True, tpm


def test_v2_signed_by_the_same_key_still_opens(run: Run) -> None:
    b = run.boots[1]
    assert (b.first("BOOT") or "").startswith("role=active")
    assert run.runs[1] == "v2"
    assert b.first("OSREL") == "VERSION_ID=2 IMAGE_VERSION=2"
    assert b.first("UNLOCK_SIG") == _sig(run, "v2")
    assert b.first("UNLOCK_OPEN") == "yes", b.mark("UNLOCK_LOG")
    # the same volume: boot 1's marker, decrypted with the key the TPM unsealed this time
    wrote = run.boots[0].first("UNLOCK_WROTE")
    assert b.first("UNLOCK_WROTE") is None
    assert (b.first("UNLOCK_DATA") or "").startswith(f"bktest-data {wrote}")


def test_upgrade_refuses_a_uki_signed_by_another_key(run: Run) -> None:
    b = run.boots[1]
    rc, out, err = _upgrade(b, "refuse")
    assert rc == 1, (out, err)
    assert out["result"] == "refused" and out["gate"]["verdict"] == "refused", out
    # the TPM gate's reason, and no other (v2b's IMAGE_VERSION sorts it first)
    assert "upgrade refused: /dev/disk/by-partlabel/bkdata would not unlock after the upgrade" in err, err
    (tpm,) = out["gate"]["tpm"]
    assert tpm["ok"] is False and [u["signed_for_key"] for u in tpm["ukis"]] == [False], tpm
    # nothing was written: every file under /efi hashed before and after the refused run
    hashes = {v.split()[0]: v.split()[1] for v in b.mark("UNLOCK_ESP_HASH")}
    assert hashes["refuse-before"] == hashes["refuse-after"] != hashes["force-after"], hashes
    rc, out, err = _upgrade(b, "force")
    assert rc == 0 and out["result"] == "upgraded", err


def test_v2_signed_by_another_key_does_not_open(run: Run) -> None:
    """Forced on: the TPM does not unseal (no signature by key A for this PCR 11), the unit fails with
    no passphrase prompt (headless), and the boot goes on to the rig's end."""
    b = run.boots[2]
    assert (b.first("BOOT") or "").startswith("role=active")
    assert run.runs[2] == "v2b"
    assert b.first("OSREL") == "VERSION_ID=2 IMAGE_VERSION=2"
    assert b.first("UNLOCK_SIG") == _sig(run, "v2b")
    assert (b.first("UNLOCK_RC") or "").split()[0] != "0"
    assert b.first("UNLOCK_OPEN") == "no"
    unit = b.first("UNLOCK_UNIT") or ""
    assert "ActiveState=failed" in unit, unit
    # systemd-cryptsetup's own account: no signature in the .pcrsig for this bank, PCR and the token's
    # key (ENXIO: find_signature, systemd v257.9 src/shared/tpm2-util.c), so nothing to unseal with;
    # and no passphrase was asked for
    log = b.mark("UNLOCK_LOG")
    assert "Failed to unseal secret using TPM2: No such device or address" in log, log
    assert "Password querying disabled via 'headless' option." in log, log
    assert b.first("DONE") is not None and b.ending == "poweroff"
