"""bootkeeper install-units: the service and the systemd-sysext drop-in, checked by the real
systemd-analyze verify (the host's systemd), with a broken drop-in as the control that it is read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT_DIR = "etc/systemd/system"


def bk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bootkeeper", *args], capture_output=True, text=True, check=False)


def _install(root: Path, cfg: str) -> Path:
    (root / "oem").mkdir(parents=True, exist_ok=True)
    (root / "oem/90.yaml").write_text(cfg)
    r = bk("install-units", "--root", str(root), "--exe", f"{sys.executable} -m bootkeeper")
    assert r.returncode == 0, r.stderr
    return root / UNIT_DIR


def _verify(units: Path, *names: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing; scripts/setup-test-deps.sh installs systemd")
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:", "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run([tool, "verify", "--man=no", *names], capture_output=True, text=True, env=env, check=False)


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    units = _install(tmp_path, "sysext:\n  mode: enforced\n  hierarchies: [/usr, /opt, /usr/local]\n")
    service = (units / "bootkeeper-sysext.service").read_text()
    dropin = (units / "systemd-sysext.service.d/10-bootkeeper.conf").read_text()
    assert "Before=systemd-sysext.service" in service and "After=local-fs.target" in service
    assert f"ExecStart={sys.executable} -m bootkeeper sysext activate --no-refresh" in service
    assert "ExecStart=systemd-sysext refresh --image-policy=root=signed+absent:usr=signed+absent" in dropin
    assert "Environment=SYSTEMD_SYSEXT_HIERARCHIES=/usr:/opt:/usr/local" in dropin
    link = units / "sysinit.target.wants/bootkeeper-sysext.service"
    assert os.readlink(link) == "/etc/systemd/system/bootkeeper-sysext.service"
    r = _verify(units, "bootkeeper-sysext.service", "systemd-sysext.service")
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_verify_reads_the_dropin(tmp_path: Path) -> None:
    """The control: the same check notices a broken key in our drop-in, so the pass above means it."""
    units = _install(tmp_path, "sysext: {}\n")
    p = units / "systemd-sysext.service.d/10-bootkeeper.conf"
    p.write_text(p.read_text().replace("ExecReload=\n", "ExecReloadd=\n"))
    r = _verify(units, "systemd-sysext.service")
    assert "ExecReloadd" in r.stderr


def test_permissive_mode_passes_no_policy(tmp_path: Path) -> None:
    units = _install(tmp_path, "sysext:\n  mode: permissive\n")
    dropin = (units / "systemd-sysext.service.d/10-bootkeeper.conf").read_text()
    assert "ExecStart=systemd-sysext refresh\n" in dropin and "--image-policy" not in dropin
    # re-running with another mode rewrites the drop-in in place
    units = _install(tmp_path, "sysext:\n  mode: enforced\n")
    assert "--image-policy=" in (units / "systemd-sysext.service.d/10-bootkeeper.conf").read_text()
    assert not [p for p in units.rglob(".bootkeeper-*")]
