"""The remount promise across signals (issue 27, defect 5): a read-only ``/efi`` that bootkeeper remounted
rw is read-only again when the run is stopped by SIGTERM (systemd stopping the unit: shutdown,
``TimeoutSec=``), SIGINT or SIGHUP; and a run that finds it read-write where fstab or its mount unit
mounts it read-only puts it back.

Real mounts in a private mount namespace (``unshare -m``): a read-only bind mount (the per-mount flag
only) and a read-only tmpfs (the file system's flag). A real signal is sent to the real bootkeeper
process while it is inside the writable window, held there by ``BOOTKEEPER_TEST_STEP_PAUSE`` (the
documented test hook: each ESP write step is announced on stderr, then waits): the signal goes once
the first step after ``remount-rw`` is announced. The flags come from the namespace's
/proc/self/mountinfo.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bootkeeper.esp import store as store_mod
from helpers import entry_body, esp_with

pytestmark = pytest.mark.integration

ENTRY = "loader/entries/active+2-1.conf"
TOOLS = Path(os.environ.get("VM_CACHE", Path(__file__).resolve().parents[2] / ".cache" / "vm")) / "host-tools"
PAUSE = "2"  # seconds each announced step waits: the window the signal is sent in

# Runs inside the namespace: mounts, runs bootkeeper, sends the signal, prints what it saw as JSON.
DRIVER = r"""
import json, os, signal, subprocess, sys, time

cfg = json.loads(sys.argv[1])
mnt, src = cfg["mnt"], cfg["src"]

def sh(*a):
    subprocess.run(a, check=True)

def flags():
    for line in open("/proc/self/mountinfo").read().splitlines():
        f = line.split(" ")
        if f[4] == mnt:
            sep = f.index("-", 6)
            found = ("ro" in f[5].split(","), "ro" in f[sep + 3].split(","))
    return found

if cfg["how"] == "bind":
    sh("mount", "--bind", src, mnt)
    if cfg["ro"]:
        sh("mount", "-o", "remount,bind,ro", mnt)
else:
    sh("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt)
    sh("cp", "-a", src + "/.", mnt + "/")
    if cfg["ro"]:
        sh("mount", "-o", "remount,ro", mnt)
if cfg.get("fstab"):
    sh("mount", "--bind", cfg["fstab"], "/etc/fstab")
if cfg.get("units"):  # systemd's unit folders of this namespace: empty, then these files
    for d in ("/etc/systemd/system", "/run/systemd"):
        sh("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d)
    for rel, text in cfg["units"].items():
        os.makedirs(os.path.dirname("/" + rel), exist_ok=True)
        with open("/" + rel, "w") as f:
            f.write(text)
if cfg.get("wrap"):  # bootkeeper's run() looks in /usr/local/sbin first (its fixed PATH): a mount there
    sh("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", "/usr/local/sbin")
    with open("/usr/local/sbin/mount", "w") as f:
        f.write(cfg["wrap"])
    os.chmod("/usr/local/sbin/mount", 0o755)
out = {"before": flags()}
env = {**os.environ, **cfg.get("env", {})}
if cfg["signal"]:
    env["BOOTKEEPER_TEST_STEP_PAUSE"] = cfg["pause"]
p = subprocess.Popen([sys.executable, "-m", "bootkeeper", *cfg["args"]], env=env,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
seen = []
if cfg["signal"]:
    while True:
        line = p.stderr.readline()
        if not line:
            break
        seen.append(line)
        if cfg.get("ready"):  # the way back: wait until its mount has started, then signal
            if line.startswith("bootkeeper: test pause before remount-ro "):
                for _ in range(600):
                    if os.path.exists(cfg["ready"]):
                        break
                    time.sleep(0.05)
                break
        elif line.startswith("bootkeeper: test pause before "):
            at_remount = line.startswith("bootkeeper: test pause before remount-rw ")
            if at_remount != cfg["after"]:  # the first step after the remount, or the remount itself
                break
    out["during"] = flags()
    if cfg.get("group"):  # as systemd's KillMode=control-group: the process and all its children
        os.killpg(p.pid, cfg["signal"])
    else:
        p.send_signal(cfg["signal"])
stdout, stderr = p.communicate(timeout=120)
out.update(rc=p.returncode, stdout=stdout, stderr="".join(seen) + stderr, after=flags())
print(json.dumps(out))
"""


def _esp(tmp_path: Path) -> Path:
    return esp_with(tmp_path / "esp", {"active+2-1.conf": entry_body("active")}, "timeout 0\n")


def _in_namespace(tmp_path: Path, **cfg: Any) -> dict[str, Any]:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is missing; scripts/setup-test-deps.sh installs it")
    mnt = tmp_path / "efi"
    mnt.mkdir(exist_ok=True)
    cfg = {"mnt": str(mnt), "ro": True, "signal": 0, "pause": PAUSE, "after": True, **cfg}
    cfg["args"] = [a.replace("@MNT@", str(mnt)) for a in cfg["args"]]
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", DRIVER, json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    assert "Traceback" not in out["stderr"], out["stderr"]
    return out


def _bless(tmp_path: Path) -> list[str]:
    return ["bless", "good", "--esp", "@MNT@", "--entry", ENTRY, "--root", str(tmp_path)]


@pytest.mark.root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_in_the_writable_window_leaves_the_bind_mount_read_only(tmp_path: Path, sig: signal.Signals) -> None:
    """Before: SIGTERM and SIGHUP ended the process at once, /efi stayed rw; the run ends by the same
    signal now (what systemd counts as a clean stop), after the way back to ro."""
    esp = _esp(tmp_path)
    out = _in_namespace(tmp_path, how="bind", src=str(esp), args=_bless(tmp_path), signal=int(sig))
    assert out["before"] == [True, False]  # a read-only bind of a writable file system
    assert out["during"] == [False, False], out["stderr"]  # inside the window: rw
    assert out["after"] == [True, False], out["stderr"]  # the bind read-only again, the file system untouched
    assert out["rc"] == -sig, out["stderr"]
    assert f"bootkeeper: error: stopped by {sig.name}" in out["stderr"].splitlines()
    assert "test pause before remount-ro" in out["stderr"]  # the way back ran
    # stopped before the rename: the entry is as it was
    assert (esp / ENTRY).exists() and not (esp / "loader/entries/active.conf").exists()


@pytest.mark.root
def test_sigterm_leaves_a_read_only_file_system_read_only(tmp_path: Path) -> None:
    """A read-only tmpfs (the file system's flag), and SIGTERM sent to the whole process group, as
    systemd stops a unit (KillMode=control-group: every process of it)."""
    out = _in_namespace(
        tmp_path, how="tmpfs", src=str(_esp(tmp_path)), args=_bless(tmp_path), signal=signal.SIGTERM, group=True
    )
    assert out["before"] == [True, True]
    assert out["during"] == [False, False], out["stderr"]
    assert out["after"] == [True, True], out["stderr"]
    assert out["rc"] == -signal.SIGTERM


@pytest.mark.root
def test_sigterm_before_the_remount_changes_nothing(tmp_path: Path) -> None:
    """The signal arrives while the run waits just before ``mount -o remount,rw``: it is acted on before
    the remount, so the ESP is never made writable."""
    esp = _esp(tmp_path)
    out = _in_namespace(tmp_path, how="bind", src=str(esp), args=_bless(tmp_path), signal=signal.SIGTERM, after=False)
    assert out["during"] == [True, False]  # still read-only while it waits
    assert out["after"] == [True, False], out["stderr"]
    assert out["rc"] == -signal.SIGTERM
    assert "remount-ro" not in out["stderr"]  # nothing to undo
    assert (esp / ENTRY).exists()


# The way back killed with the run: systemd's KillMode=control-group sends SIGTERM to every process of
# the unit, the ``mount -o remount,…ro`` bootkeeper is waiting for included. A wrapper over mount holds
# the first way-back remount (it says so in a file, then sleeps until the signal kills it); the mount a
# retry spawns after the signal runs the real one.
WRAP = """#!/bin/sh
case "$*" in
*remount,ro*|*remount,bind,ro*)
    if mkdir "@MARK@" 2>/dev/null; then : > "@MARK@/ready"; sleep 60; fi ;;
esac
exec /usr/bin/mount "$@"
"""


def _killed_way_back(tmp_path: Path, **cfg: Any) -> dict[str, Any]:
    mark = tmp_path / "held"
    cfg = {"signal": int(signal.SIGTERM), "group": True, "pause": "0.1", **cfg}
    return _in_namespace(tmp_path, wrap=WRAP.replace("@MARK@", str(mark)), ready=str(mark / "ready"), **cfg)


@pytest.mark.root
@pytest.mark.parametrize("how", ["bind", "tmpfs"])
def test_sigterm_that_kills_the_way_back_mount_still_leaves_it_read_only(tmp_path: Path, how: str) -> None:
    """Before: the way-back mount ran once; killed by the group's SIGTERM, its failure ended the run
    and /efi stayed read-write. Now the real state is read again and the remount retried (the retry's
    mount is spawned after the signal), then the run ends by the signal."""
    esp = _esp(tmp_path)
    out = _killed_way_back(tmp_path, how=how, src=str(esp), args=_bless(tmp_path))
    ro = [True, False] if how == "bind" else [True, True]
    assert out["before"] == ro
    assert out["during"] == [False, False], out["stderr"]  # the signal came while the way back was held
    assert out["after"] == ro, out["stderr"]
    assert out["rc"] == -signal.SIGTERM, out["stderr"]
    lines = out["stderr"].splitlines()
    assert lines[-1] == "bootkeeper: error: stopped by SIGTERM", out["stderr"]
    assert any("failed with killed by signal SIGTERM" in x and "trying again" in x for x in lines), out["stderr"]
    assert (tmp_path / "held").is_dir()  # the wrapper did hold (and lose) the first attempt


@pytest.mark.root
def test_sigterm_that_kills_the_restoring_mount_still_leaves_it_read_only(tmp_path: Path) -> None:
    """bless without boot counting only restores what fstab says (restore_read_only): the same retry."""
    esp = _esp(tmp_path)
    (tmp_path / "efivars").mkdir()
    args = ["bless", "good", "--esp", "@MNT@", "--efivars", str(tmp_path / "efivars"), "--root", str(tmp_path)]
    fstab = _fstab(tmp_path, esp, "bind,ro")
    out = _killed_way_back(tmp_path, how="bind", src=str(esp), ro=False, fstab=str(fstab), args=args)
    assert out["before"] == [False, False]
    assert out["after"] == [True, False], out["stderr"]
    assert out["rc"] == -signal.SIGTERM, out["stderr"]
    assert out["stderr"].splitlines()[-1] == "bootkeeper: error: stopped by SIGTERM", out["stderr"]
    assert (tmp_path / "held").is_dir()


def _fstab(tmp_path: Path, esp: Path, options: str) -> Path:
    f = tmp_path / "fstab"
    f.write_text(f"# test\n{esp} {tmp_path / 'efi'} none {options} 0 0\n")
    return f


@pytest.mark.root
def test_a_run_that_finds_it_read_write_where_fstab_says_ro_restores_it(tmp_path: Path) -> None:
    """As a stopped run of the code before the fix left it: rw, while fstab mounts it ro. bless writes
    and leaves it read-only, saying so in one line."""
    esp = _esp(tmp_path)
    fstab = _fstab(tmp_path, esp, "bind,ro")
    out = _in_namespace(tmp_path, how="bind", src=str(esp), ro=False, fstab=str(fstab), args=_bless(tmp_path))
    assert out["before"] == [False, False]
    assert out["rc"] == 0, out["stderr"]
    assert out["after"] == [True, False], out["stderr"]
    mnt = tmp_path / "efi"
    assert out["stderr"].splitlines() == [
        f"bootkeeper: {mnt}: read-write, but /etc/fstab mounts it read-only; read-only again after this run"
    ]
    assert (esp / "loader/entries/active.conf").exists()


@pytest.mark.root
def test_bless_without_boot_counting_restores_it_too(tmp_path: Path) -> None:
    """bless at boot on a node not booted with boot counting writes nothing (exit 3), and still puts
    the ESP back to read-only; a plain (not bind) fstab line gets ``remount,ro``."""
    esp = _esp(tmp_path)
    fstab = _fstab(tmp_path, esp, "defaults,ro")
    (tmp_path / "efivars").mkdir()
    args = ["bless", "good", "--esp", "@MNT@", "--efivars", str(tmp_path / "efivars"), "--root", str(tmp_path)]
    out = _in_namespace(tmp_path, how="tmpfs", src=str(esp), ro=False, fstab=str(fstab), args=args)
    assert out["before"] == [False, False]
    assert out["rc"] == 3, out["stderr"]
    assert out["after"] == [True, True], out["stderr"]
    assert (
        f"{tmp_path / 'efi'}: read-write, but /etc/fstab mounts it read-only; remounting it read-only"
        in (out["stderr"])
    )


@pytest.mark.root
def test_a_writable_esp_that_fstab_mounts_rw_is_left_writable(tmp_path: Path) -> None:
    esp = _esp(tmp_path)
    fstab = _fstab(tmp_path, esp, "bind,ro,rw")  # the last of ro/rw counts, as mount(8) reads it
    out = _in_namespace(tmp_path, how="bind", src=str(esp), ro=False, fstab=str(fstab), args=_bless(tmp_path))
    assert out["rc"] == 0, out["stderr"]
    assert out["after"] == [False, False]
    assert out["stderr"] == ""


# -- what says read-only: the mount unit before or after fstab, as systemd's unit search path orders them


def test_mount_unit_names_match_systemd_escape() -> None:
    tool = shutil.which("systemd-escape")
    if tool is None:
        pytest.fail("systemd-escape is missing")
    for point in ("/efi", "/boot/efi", "/", "/efi/a-b/.x y/ü", "/.hidden"):
        want = subprocess.run([tool, "--path", "--suffix=mount", point], capture_output=True, text=True, check=True)
        assert store_mod._mount_unit_name(point) == want.stdout.strip(), point


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def _mount(options: str) -> str:
    return f"[Mount]\nWhat=/dev/vda1\nWhere=/efi\nOptions={options}\n"


def test_unit_search_path_is_systemds() -> None:
    """The folders and their order, from the real tool: ``systemd-analyze unit-paths``."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing")
    r = subprocess.run([tool, "unit-paths"], capture_output=True, text=True, check=True)
    real = [x.removeprefix("/") for x in r.stdout.split()]
    assert [d for d in store_mod.UNIT_PATH if d in real] == real
    assert "run/systemd/generator" in real  # where systemd-fstab-generator's units are found


def test_meant_read_only_reads_units_and_fstab_in_systemd_order(tmp_path: Path) -> None:
    root = tmp_path
    assert store_mod._meant_read_only("/efi", root) is None
    _write(root, {"usr/lib/systemd/system/efi.mount": _mount("umask=0077,ro")})
    assert store_mod._meant_read_only("/efi", root) == ("/usr/lib/systemd/system/efi.mount", False)
    _write(root, {"etc/fstab": "/dev/vda1 /efi vfat umask=0077 0 2\n"})  # the generator's place: before /usr
    assert store_mod._meant_read_only("/efi", root) is None
    _write(root, {"etc/fstab": "/dev/vda1 /efi vfat umask=0077,ro 0 2\n/ /boot\\040efi none bind,ro 0 0\n"})
    assert store_mod._meant_read_only("/efi", root) == ("/etc/fstab", False)
    assert store_mod._meant_read_only("/boot efi", root) == ("/etc/fstab", True)
    _write(root, {"run/systemd/generator/efi.mount": _mount("rw")})  # what the generator wrote is loaded
    assert store_mod._meant_read_only("/efi", root) is None
    _write(root, {"etc/systemd/system/efi.mount": "[Unit]\nOptions=ro\n[Mount]\nOptions=rw\n"})
    assert store_mod._meant_read_only("/efi", root) is None
    _write(root, {"run/systemd/transient/efi.mount": _mount("ro")})  # transient before /etc
    assert store_mod._meant_read_only("/efi", root) == ("/run/systemd/transient/efi.mount", False)
    (root / "etc/systemd/system.control").mkdir(parents=True)
    (root / "etc/systemd/system.control/efi.mount").symlink_to("/dev/null")  # masked: no unit at all
    assert store_mod._meant_read_only("/efi", root) is None


def test_meant_read_only_reads_drop_ins(tmp_path: Path) -> None:
    """Before: only the unit file was read; a drop-in's Options= (the last, by file name, counts) was not."""
    root = tmp_path
    _write(root, {"usr/lib/systemd/system/efi.mount": _mount("rw")})
    _write(root, {"etc/systemd/system/efi.mount.d/50-ro.conf": "[Mount]\nOptions=umask=0077,ro\n"})
    assert store_mod._meant_read_only("/efi", root) == ("/etc/systemd/system/efi.mount.d/50-ro.conf", False)
    _write(root, {"usr/lib/systemd/system/efi.mount.d/60-rw.conf": "[Mount]\nOptions=\n"})  # later name: reset
    assert store_mod._meant_read_only("/efi", root) is None
    _write(root, {"run/systemd/system/efi.mount.d/60-rw.conf": "[Mount]\nOptions=bind,ro\n"})  # hides /usr's
    assert store_mod._meant_read_only("/efi", root) == ("/run/systemd/system/efi.mount.d/60-rw.conf", True)
    _write(root, {"etc/systemd/system/mount.d/70-all.conf": "[Mount]\nOptions=rw\n"})  # every mount unit
    assert store_mod._meant_read_only("/efi", root) is None
    # /boot/efi is boot-efi.mount: its dash prefix boot-.mount.d applies, fstab gives the unit
    _write(root, {"etc/fstab": "/dev/vda1 /boot/efi vfat umask=0077 0 2\n"})
    _write(root, {"etc/systemd/system/boot-.mount.d/80-ro.conf": "[Mount]\nOptions=ro\n"})
    assert store_mod._meant_read_only("/boot/efi", root) == ("/etc/systemd/system/boot-.mount.d/80-ro.conf", False)


def test_unit_files_are_read_in_the_order_systemd_analyze_cat_config_shows(tmp_path: Path) -> None:
    """The real tool on a scratch root: the unit file, then the drop-ins by file name, one in /etc
    hiding the same name in /usr/lib."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing")
    _write(
        tmp_path,
        {
            "usr/lib/systemd/system/efi.mount": _mount("rw"),
            "usr/lib/systemd/system/efi.mount.d/10-a.conf": "[Mount]\nOptions=ro\n",
            "usr/lib/systemd/system/efi.mount.d/20-b.conf": "[Mount]\nOptions=rw\n",
            "etc/systemd/system/efi.mount.d/20-b.conf": "[Mount]\nOptions=bind,ro\n",
            "run/systemd/system/efi.mount.d/15-c.conf": "[Mount]\n",
            "etc/systemd/system/efi.mount.d/05-d.conf": "[Mount]\nOptions=rw\n",
        },
    )
    r = subprocess.run(
        [tool, f"--root={tmp_path}", "--no-pager", "cat-config", "systemd/system/efi.mount"],
        capture_output=True,
        text=True,
        check=True,
    )
    real = [x.removeprefix("# ") for x in r.stdout.splitlines() if x.startswith(f"# {tmp_path}/")]
    sources = store_mod._mount_unit_sources("/efi", tmp_path)
    assert sources is not None
    assert [str(p) for p, _ in sources] == real
    assert store_mod._meant_read_only("/efi", tmp_path) == ("/etc/systemd/system/efi.mount.d/20-b.conf", True)


@pytest.mark.root
@pytest.mark.parametrize("where", ["drop-in", "generator"])
def test_a_run_that_finds_it_read_write_where_the_mount_unit_says_ro_restores_it(tmp_path: Path, where: str) -> None:
    """Before: a drop-in's Options=, and a unit in /run/systemd/generator, were not read: left rw."""
    esp = _esp(tmp_path)
    unit = store_mod._mount_unit_name(str(tmp_path / "efi"))
    if where == "drop-in":  # fstab mounts it rw; a drop-in makes it ro
        fstab = str(_fstab(tmp_path, esp, "bind"))
        units = {f"etc/systemd/system/{unit}.d/50-ro.conf": "[Mount]\nOptions=bind,ro\n"}
        said = f"/etc/systemd/system/{unit}.d/50-ro.conf"
    else:  # what systemd-fstab-generator wrote at boot (no fstab line now)
        fstab = ""
        units = {f"run/systemd/generator/{unit}": f"[Mount]\nWhat={esp}\nOptions=bind,ro\n"}
        said = f"/run/systemd/generator/{unit}"
    out = _in_namespace(tmp_path, how="bind", src=str(esp), ro=False, fstab=fstab, units=units, args=_bless(tmp_path))
    assert out["before"] == [False, False]
    assert out["rc"] == 0, out["stderr"]
    assert out["after"] == [True, False], out["stderr"]
    assert out["stderr"].splitlines() == [
        f"bootkeeper: {tmp_path / 'efi'}: read-write, but {said} mounts it read-only; read-only again after this run"
    ]


# -- every verb that remounts goes through EspStore.writable(): the class


def _scratch(tmp_path: Path) -> Path:
    from bootkeeper.esp import scratch

    esp = scratch.make(tmp_path / "esp", ukis=True)
    (esp / "loader/entries/active+3.conf").rename(esp / "loader/entries/active+0-3.conf")  # used up: arm re-arms
    (tmp_path / "efivars").mkdir()
    return esp


VERBS = {
    # the stale temporary gives random-seed a step inside the window before bootctl runs
    "random-seed": ["random-seed", "--esp", "@MNT@"],
    "arm": ["arm", "active", "--esp", "@MNT@", "--systemd-boot-version", "257"],
    "select": ["select", "--persistent", "passive", "--esp", "@MNT@", "--efivars", "@EFIVARS@"],
    "rotate": ["rotate", "@NEW@", "--esp", "@MNT@", "--systemd-boot-version", "257"],
}


@pytest.mark.root
@pytest.mark.parametrize("verb", list(VERBS))
def test_sigterm_in_other_verbs_leaves_it_read_only(tmp_path: Path, verb: str) -> None:
    esp = _scratch(tmp_path)
    new = tmp_path / "new.conf"
    new.write_text("title new\nlinux /EFI/kairos/vmlinuz\ninitrd /EFI/kairos/initrd.img\n")
    args = [a.replace("@EFIVARS@", str(tmp_path / "efivars")).replace("@NEW@", str(new)) for a in VERBS[verb]] + [
        "--root",
        str(tmp_path),
    ] * (verb != "select")
    env = {}
    if verb == "random-seed":
        if not (TOOLS / "bootctl").exists():
            pytest.fail(f"{TOOLS}/bootctl is missing: scripts/setup-test-deps.sh unpacks Debian 12's bootctl there")
        (esp / "loader/.bootkeeper-left.tmp").write_bytes(b"")  # what a killed run leaves
        env = {"PATH": f"{TOOLS}:{os.environ.get('PATH', '')}", "SYSTEMD_RELAX_ESP_CHECKS": "1"}
    before = sorted(p.name for p in esp.rglob("*"))
    out = _in_namespace(tmp_path, how="bind", src=str(esp), args=args, signal=signal.SIGTERM, env=env)
    assert out["during"] == [False, False], out["stderr"]
    assert out["after"] == [True, False], out["stderr"]
    assert out["rc"] == -signal.SIGTERM, out["stderr"]
    assert "bootkeeper: error: stopped by SIGTERM" in out["stderr"].splitlines()
    assert sorted(p.name for p in esp.rglob("*")) == before  # stopped before its first write


def test_only_the_esp_store_remounts() -> None:
    """The class, structurally: every ``mount -o remount,…`` bootkeeper runs is in esp/store.py
    (writable() and restore_read_only()), so every verb that remounts gets the signal handling."""
    src = Path(store_mod.__file__).resolve().parent.parent
    runs_mount = re.compile(r"""["']mount["'],\s*["']-o["']""")
    hits = sorted(str(p.relative_to(src)) for p in src.rglob("*.py") if runs_mount.search(p.read_text()))
    assert hits == ["esp/store.py"]
