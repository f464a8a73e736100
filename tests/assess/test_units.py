"""bootkeeper install-units: the service and the systemd-sysext drop-in, checked by the real
systemd-analyze verify (the host's systemd), with a broken drop-in as the control that it is read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import bk, install_units, systemd_verify

UNIT_DIR = "etc/systemd/system"


def test_units_pass_systemd_analyzesystemd_verify(tmp_path: Path) -> None:
    units = install_units(tmp_path, "sysext:\n  mode: enforced\n  hierarchies: [/usr, /opt, /usr/local]\n")
    service = (units / "bootkeeper-sysext.service").read_text()
    dropin = (units / "systemd-sysext.service.d/10-bootkeeper.conf").read_text()
    assert "Before=systemd-sysext.service" in service and "After=local-fs.target" in service
    assert f"ExecStart={sys.executable} -m bootkeeper sysext activate --no-refresh" in service
    assert "ExecStart=systemd-sysext refresh --image-policy=root=signed+absent:usr=signed+absent" in dropin
    assert "Environment=SYSTEMD_SYSEXT_HIERARCHIES=/usr:/opt:/usr/local" in dropin
    link = units / "sysinit.target.wants/bootkeeper-sysext.service"
    assert os.readlink(link) == "/etc/systemd/system/bootkeeper-sysext.service"
    r = systemd_verify(units, "bootkeeper-sysext.service", "systemd-sysext.service")
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_verify_reads_the_dropin(tmp_path: Path) -> None:
    """The control: the same check notices a broken key in our drop-in, so the pass above means it."""
    units = install_units(tmp_path, "sysext: {}\n")
    p = units / "systemd-sysext.service.d/10-bootkeeper.conf"
    p.write_text(p.read_text().replace("ExecReload=\n", "ExecReloadd=\n"))
    r = systemd_verify(units, "systemd-sysext.service")
    assert "ExecReloadd" in r.stderr


def test_permissive_mode_passes_no_policy(tmp_path: Path) -> None:
    units = install_units(tmp_path, "sysext:\n  mode: permissive\n")
    dropin = (units / "systemd-sysext.service.d/10-bootkeeper.conf").read_text()
    assert "ExecStart=systemd-sysext refresh\n" in dropin and "--image-policy" not in dropin
    # re-running with another mode rewrites the drop-in in place
    units = install_units(tmp_path, "sysext:\n  mode: enforced\n")
    assert "--image-policy=" in (units / "systemd-sysext.service.d/10-bootkeeper.conf").read_text()
    assert not [p for p in units.rglob(".bootkeeper-*")]


# --- what the node's systemd-sysext understands (issue 13, item 5) ---------------------------------

DROPIN = "systemd-sysext.service.d/10-bootkeeper.conf"
POLICY = "--image-policy=root=signed+absent:usr=signed+absent"
BINARY = "usr/lib/systemd/systemd"


def _with_systemd(root: Path, binary: Path) -> Path:
    """``root`` holding a copy of a real systemd binary, which is what install-units reads."""
    (root / "usr/lib/systemd").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(binary, root / BINARY)
    return root


def _host_systemd() -> Path:
    p = Path("/usr/lib/systemd/systemd")
    if not p.is_file():
        pytest.fail("this machine has no /usr/lib/systemd/systemd; scripts/setup-test-deps.sh installs systemd")
    return p


def _trixie_systemd() -> Path:
    import trixie

    if not trixie.available():
        pytest.fail("the trixie tree is missing: run bash scripts/setup-test-deps.sh")
    return trixie.ROOT / BINARY


def _exec_start(dropin: str) -> str:
    lines = [ln.removeprefix("ExecStart=") for ln in dropin.splitlines() if ln.startswith("ExecStart=")]
    assert lines[0] == "" and len(lines) == 2, lines  # reset, then ours
    return lines[1]


def _install_json(root: Path, cfg: str, *more: str) -> tuple[subprocess.CompletedProcess[str], str]:
    (root / "oem").mkdir(parents=True, exist_ok=True)
    (root / "oem/90.yaml").write_text(cfg)
    r = bk("install-units", "--root", str(root), "--exe", f"{sys.executable} -m bootkeeper", "--python", sys.executable,
           "--json", *more)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r, (root / UNIT_DIR / DROPIN).read_text()


@pytest.mark.root
def test_a_252_node_gets_a_dropin_its_systemd_sysext_runs(tmp_path: Path) -> None:
    """systemd 252 (this machine's, read from the binary under ROOT): no --image-policy, a comment
    saying why, a warning; systemd-analyze verify passes, and the very command line the drop-in runs
    is accepted by this machine's systemd-sysext 252 (with --root on an empty tree, in a private mount
    namespace). Before: the drop-in had --image-policy, which 252 refuses (exit 1, nothing merged)."""
    root = _with_systemd(tmp_path / "root", _host_systemd())
    r, dropin = _install_json(root, "sysext:\n  mode: enforced\n")
    assert json.loads(r.stdout)["systemd"] == {
        "version": 252,
        "source": f"{root / BINARY}: needs libsystemd-shared-252.so",
        "found": True,
    }
    assert _exec_start(dropin) == "systemd-sysext refresh" and "ExecReload=systemd-sysext refresh\n" in dropin
    assert "# No --image-policy: systemd 252's systemd-sysext rejects it (it exists from\n# v254)" in dropin
    assert r.stderr == (
        f"bootkeeper: warning: systemd 252 ({root / BINARY}: needs libsystemd-shared-252.so): the node's "
        "systemd-sysext cannot enforce the image policy itself (--image-policy exists from 254); only "
        "bootkeeper-sysext.service does, for the images it places and those in /etc/extensions or "
        "/var/lib/extensions when it runs; one put there later merges unchecked at the next refresh\n"
    )
    v = systemd_verify(root / UNIT_DIR, "bootkeeper-sysext.service", "systemd-sysext.service")
    assert v.returncode == 0 and v.stderr == "", v.stderr
    empty = tmp_path / "empty"
    (empty / "usr/lib").mkdir(parents=True)
    (empty / "usr/lib/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    for line, ok in ((_exec_start(dropin), True), (f"systemd-sysext refresh {POLICY}", False)):  # ours, the old one
        run = subprocess.run(
            ["unshare", "-m", "--propagation", "private", *line.split(), f"--root={empty}"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert (run.returncode == 0) is ok, (line, run.stderr)
    assert "unrecognized option '--image-policy" in run.stderr


@pytest.mark.root
def test_a_257_node_keeps_the_policy_and_its_systemd_sysext_takes_it(tmp_path: Path) -> None:
    """trixie's systemd 257 under ROOT: the policy stays, and trixie's own systemd-sysext runs the
    drop-in's command line (exit 0). Before: the same drop-in, but no word of the version used."""
    import trixie

    root = _with_systemd(tmp_path / "root", _trixie_systemd())
    r, dropin = _install_json(root, "sysext:\n  mode: enforced\n")
    assert json.loads(r.stdout)["systemd"]["version"] == 257 and r.stderr == ""
    assert _exec_start(dropin) == f"systemd-sysext refresh {POLICY}" and "# No --image-policy" not in dropin
    (tmp_path / "empty/usr/lib").mkdir(parents=True)
    (tmp_path / "empty/usr/lib/os-release").write_text("ID=debian\nVERSION_ID=13\n")
    run = trixie.run(f"{_exec_start(dropin)} --root=/work/empty", tmp_path)
    assert run.returncode == 0, run.stderr


def test_systemd_version_option_beats_config_beats_what_is_read(tmp_path: Path) -> None:
    root = _with_systemd(tmp_path / "root", _host_systemd())  # reads 252
    r, dropin = _install_json(root, "sysext:\n  mode: enforced\n", "--systemd-version", "257")
    assert _exec_start(dropin) == f"systemd-sysext refresh {POLICY}" and r.stderr == ""
    assert json.loads(r.stdout)["systemd"] == {"version": 257, "source": "--systemd-version", "found": True}
    r, dropin = _install_json(root, "sysext:\n  mode: enforced\n  systemd_version: 257\n")
    assert _exec_start(dropin) == f"systemd-sysext refresh {POLICY}"
    r, dropin = _install_json(root, "sysext:\n  mode: enforced\n  systemd_version: 257\n", "--systemd-version", "253")
    assert _exec_start(dropin) == "systemd-sysext refresh" and "systemd 253 (--systemd-version)" in r.stderr
    assert bk("install-units", "--root", str(root), "--systemd-version", "99").returncode == 2


def test_an_unknown_systemd_is_assumed_current_with_a_warning(tmp_path: Path) -> None:
    r, dropin = _install_json(tmp_path, "sysext:\n  mode: enforced\n")
    assert _exec_start(dropin) == f"systemd-sysext refresh {POLICY}"
    assert r.stderr == (
        f"bootkeeper: warning: {tmp_path}: the node's systemd version was not found (usr/lib/systemd/systemd, "
        "libsystemd-shared-*.so, dpkg status); assuming 254 or later (set sysext.systemd_version)\n"
    )
    assert json.loads(r.stdout)["systemd"] == {"version": 254, "source": "assumed: not found", "found": False}
    r, dropin = _install_json(tmp_path, "sysext:\n  mode: permissive\n")  # no policy, nothing to warn about
    assert _exec_start(dropin) == "systemd-sysext refresh" and r.stderr == ""


def test_under_root_the_units_name_the_nodes_programs_never_this_virtualenv(tmp_path: Path) -> None:
    """issue 15, item 3: install-units --root wrote this machine's virtualenv into ExecStart= and the
    generator's #!; under --root the defaults are the node's paths, refused when the node lacks them."""
    from helpers import one_line_error

    root = tmp_path / "node"
    (root / "oem").mkdir(parents=True)
    (root / "oem/90.yaml").write_text("sysext:\n  systemd_version: 257\n")
    r = bk("install-units", "--root", str(root))
    one_line_error(r, 3, "has none of /usr/bin/bootkeeper, /usr/local/bin/bootkeeper")
    assert not (root / UNIT_DIR).exists()
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/bootkeeper").write_text("#!/bin/sh\n")
    one_line_error(bk("install-units", "--root", str(root)), 3, "has none of /usr/bin/python3")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/python3").write_text("")
    r = bk("install-units", "--root", str(root), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["command"] == ["/usr/local/bin/bootkeeper"]
    texts = [p.read_text() for p in (root / "etc/systemd").rglob("*") if p.is_file()]
    assert sys.prefix not in "".join(texts) and str(Path(sys.executable).parent) not in "".join(texts)
    gen = root / "etc/systemd/system-generators/bootkeeper-generator"
    assert gen.read_text().startswith("#!/usr/bin/python3 -IS\n")


# systemd v257 units/systemd-boot-random-seed.service (Debian's systemd-boot 257.13 ships it in
# sysinit.target.wants): what orders and conditions it; tests/node/test_node.py compares with the node's own file.
REAL_RANDOM_SEED_UNIT = """\
DefaultDependencies=no
After=local-fs.target systemd-random-seed.service
Conflicts=shutdown.target
Before=sysinit.target shutdown.target
ConditionVirtualization=!container
ConditionPathExists=!/etc/initrd-release
ConditionPathExists=|/sys/firmware/efi/efivars/LoaderFeatures-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
ConditionPathExists=|/sys/firmware/efi/efivars/StubFeatures-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
"""


def test_random_seed_unit_takes_the_real_ones_place(tmp_path: Path) -> None:
    """issue 15, item 11 (seed 002): bootkeeper-random-seed.service runs where systemd-boot-random-seed.service
    runs (same ordering and conditions, wanted by sysinit.target), which is masked; systemd-analyze verify passes."""
    units = install_units(tmp_path, "sysext: {}\n")
    text = (units / "bootkeeper-random-seed.service").read_text()
    unit = text.split("[Unit]\n", 1)[1].split("\n[Service]", 1)[0]
    assert [x for x in unit.splitlines() if not x.startswith(("Description=", "Documentation="))] == [
        *REAL_RANDOM_SEED_UNIT.splitlines(),
        "ConditionFileIsExecutable=/usr/bin/bootctl",  # no bootctl: no real unit to replace, and no failure
    ]
    assert f"ExecStart={sys.executable} -m bootkeeper random-seed\n" in text
    assert "Type=oneshot\nRemainAfterExit=yes\n" in text
    assert os.readlink(units / "systemd-boot-random-seed.service") == "/dev/null"
    link = units / "sysinit.target.wants/bootkeeper-random-seed.service"
    assert os.readlink(link) == "/etc/systemd/system/bootkeeper-random-seed.service"
    r = systemd_verify(units, "bootkeeper-random-seed.service")
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_random_seed_unit_is_skipped_where_there_is_no_bootctl(tmp_path: Path) -> None:
    """The one condition more than the real unit has, judged by systemd itself (systemd-analyze condition, on
    this machine): true exactly where /usr/bin/bootctl is executable (Debian 12 here has none: skipped, so a
    node without bootctl gets no failed unit on every boot)."""
    units = install_units(tmp_path, "sysext: {}\n")
    text = (units / "bootkeeper-random-seed.service").read_text()
    (line,) = [x for x in text.splitlines() if x.startswith("ConditionFileIsExecutable=")]
    tool = shutil.which("systemd-analyze")
    assert tool is not None
    r = subprocess.run([tool, "condition", line], capture_output=True, text=True, check=False)
    assert (r.returncode == 0) == os.access("/usr/bin/bootctl", os.X_OK), r.stdout + r.stderr
    assert "ConditionFileIsExecutable=/usr/bin/bootctl" in r.stdout + r.stderr


def test_the_units_that_remount_the_esp_stop_only_bootkeeper(tmp_path: Path) -> None:
    """Review item 1 (issue 27, defect 5): systemd's default KillMode=control-group sends a stop's SIGTERM to
    the `mount -o remount,ro` bootkeeper is waiting for on its way back; KillMode=mixed sends it to
    bootkeeper alone (systemd.kill(5)). The units whose verbs remount /efi say so, and verify passes."""
    units = install_units(tmp_path, "sysext: {}\n")
    for name in ("bootkeeper-bless.service", "bootkeeper-random-seed.service"):
        service = (units / name).read_text().split("[Service]\n", 1)[1].split("\n[", 1)[0]
        assert "KillMode=mixed" in service.splitlines(), name
        r = systemd_verify(units, name)
        assert r.returncode == 0 and r.stderr == "", r.stderr
