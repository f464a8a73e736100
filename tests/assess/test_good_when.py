"""``boot_assessment.good_when`` and the units that decide a boot besides the enrolled services
(assess/units.py: bootkeeper-boot-check.service, bootkeeper-sysext-required.service): their text against
upstream's systemd-boot-check-no-failures.service (the node guest's systemd 257), the real
systemd-analyze verify, lint's boot-complete.target rules, the no-failed-units check run by the real
``sh``, and install-units switching between the values."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nodevm
from bootkeeper import config
from bootkeeper.assess import units
from bootkeeper.errors import ConfigError
from bootkeeper.sysext import required
from helpers import bk, install_units, systemd_verify

UNIT_DIR = "etc/systemd/system"
REQUIRES = "boot-complete.target.requires"


def _unit_section(text: str, keys: tuple[str, ...]) -> list[str]:
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("["):
            inside = line == "[Unit]"
        elif inside and line.split("=", 1)[0] in keys:
            out.append(line)
    return out


def test_good_when_is_parsed_at_the_edge(tmp_path: Path) -> None:
    assert config.BootAssessment().good_when is config.GoodWhen.MULTI_USER
    p = tmp_path / "90.yaml"
    for value in ("no-failed-units", "services-only", "multi-user"):
        p.write_text(f"boot_assessment:\n  good_when: {value}\n")
        assert config.load([p]).boot_assessment.good_when.value == value
    for hostile in ("graphical", "[multi-user]", "true", "'multi-user\\nExecStart=/bin/sh'"):
        p.write_text(f"boot_assessment:\n  good_when: {hostile}\n")
        with pytest.raises(ConfigError) as ei:
            config.load([p])
        msg = str(ei.value)
        assert msg.startswith(f"{p}: boot_assessment.good_when: ") and "\n" not in msg, msg
        assert msg.endswith("is not one of multi-user, no-failed-units, services-only"), msg


def test_the_default_unit_is_upstreams_ordering_plus_requires_multi_user(tmp_path: Path) -> None:
    """Ordered as the node's own systemd-boot-check-no-failures.service (Debian's systemd 257, in the
    guest tree), RequiredBy= boot-complete.target and enabled so, and Requires=multi-user.target, the
    line that makes a boot whose multi-user.target fails not good (tests/node/test_node_goodboot.py)."""
    real = nodevm.GUEST / "usr/lib/systemd/system/systemd-boot-check-no-failures.service"
    if not real.exists():
        pytest.fail(f"{real} is missing: scripts/setup-node-guest.sh installs systemd into the guest")
    unit_dir = install_units(tmp_path, "boot_assessment: {}\n")
    ours = (unit_dir / units.BOOT_CHECK_UNIT).read_text()
    keys = ("After", "Before")
    assert _unit_section(ours, keys) == _unit_section(real.read_text(), keys)
    assert _unit_section(ours, ("Requires",)) == ["Requires=multi-user.target"]
    assert "\nRequiredBy=boot-complete.target\n" in ours and "\nRequiredBy=boot-complete.target\n" in real.read_text()
    assert "\nExecStart=/bin/true\n" in ours
    for name in (units.BOOT_CHECK_UNIT, units.REQUIRED_UNIT):
        assert os.readlink(unit_dir / REQUIRES / name) == f"/{UNIT_DIR}/{name}"
    r = systemd_verify(unit_dir, units.BOOT_CHECK_UNIT, units.REQUIRED_UNIT)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_the_required_unit_runs_only_on_the_activations_verdict(tmp_path: Path) -> None:
    unit_dir = install_units(tmp_path, "sysext: {}\n")
    text = (unit_dir / units.REQUIRED_UNIT).read_text()
    assert units.REQUIRED_UNIT == required.UNIT and f"/{required.FAILED}" == units.REQUIRED_FAILED
    assert f"\nConditionPathExists=/{required.FAILED}\n" in text
    assert "\nAfter=local-fs.target bootkeeper-sysext.service systemd-sysext.service bootkeeper-boot.service\n" in text
    assert f"\nExecStart={sys.executable} -m bootkeeper sysext required --record --reboot-on-failure active\n" in text
    # systemd itself judges the condition: no process on a boot without the verdict file
    tool = shutil.which("systemd-analyze")
    assert tool is not None
    cond = subprocess.run(
        [tool, "condition", f"ConditionPathExists=/{required.FAILED}"], capture_output=True, text=True, check=False
    )
    assert cond.returncode == (0 if Path("/", required.FAILED).exists() else 1), cond.stdout + cond.stderr


def test_no_failed_units_uses_the_nodes_own_check(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    tool = root / units.NO_FAILURES.lstrip("/")
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    unit_dir = install_units(root, "boot_assessment:\n  good_when: no-failed-units\n")
    text = (unit_dir / units.BOOT_CHECK_UNIT).read_text()
    assert f"\nExecStart={units.NO_FAILURES}\n" in text and "Requires=multi-user.target" in text
    assert "and no unit failed" in text
    if not Path(units.NO_FAILURES).exists():
        pytest.fail(f"{units.NO_FAILURES} is missing on this host: systemd-analyze verify needs it")
    r = systemd_verify(unit_dir, units.BOOT_CHECK_UNIT)
    assert r.returncode == 0 and r.stderr == "", r.stderr


@pytest.mark.parametrize(("failed", "rc"), [("0", 0), ("2", 1)])
def test_no_failed_units_without_the_program_asks_the_manager(tmp_path: Path, failed: str, rc: int) -> None:
    """Where the node has no systemd-boot-check-no-failures: the same question (the manager's
    NFailedUnits), the ExecStart line run by the real sh with systemd's $$ unescaped, against a
    systemctl that answers ``failed``."""
    unit_dir = install_units(tmp_path / "root", "boot_assessment:\n  good_when: no-failed-units\n")
    line = next(ln for ln in (unit_dir / units.BOOT_CHECK_UNIT).read_text().splitlines() if ln.startswith("ExecStart="))
    assert line.startswith("ExecStart=/bin/sh -c '")
    r = systemd_verify(unit_dir, units.BOOT_CHECK_UNIT)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "systemctl"
    fake.write_text(f'#!/bin/sh\n[ "$*" = "show -P NFailedUnits" ] && echo {failed}\n')
    fake.chmod(0o755)
    script = line.removeprefix("ExecStart=/bin/sh -c '").removesuffix("'").replace("$$", "$")
    p = subprocess.run(
        ["/bin/sh", "-c", script], capture_output=True, text=True, env={"PATH": f"{bindir}:/usr/bin:/bin"}, check=False
    )
    assert p.returncode == rc, p.stdout + p.stderr
    assert p.stdout == ("" if rc == 0 else f"Detected {failed} failed units.\n")


def test_services_only_renders_no_check_and_removes_an_earlier_one(tmp_path: Path) -> None:
    unit_dir = install_units(tmp_path, "boot_assessment: {}\n")
    assert (unit_dir / REQUIRES / units.BOOT_CHECK_UNIT).is_symlink()
    install_units(tmp_path, "boot_assessment:\n  good_when: services-only\n")
    assert not (unit_dir / REQUIRES / units.BOOT_CHECK_UNIT).is_symlink()
    assert not (unit_dir / units.BOOT_CHECK_UNIT).exists()
    # the required extensions' check stays: it is the config read at boot that decides
    assert (unit_dir / REQUIRES / units.REQUIRED_UNIT).is_symlink()
    # a unit of that name bootkeeper did not write is left alone
    (unit_dir / units.BOOT_CHECK_UNIT).write_text("[Unit]\nDescription=the operator's\n")
    install_units(tmp_path, "boot_assessment:\n  good_when: services-only\n")
    assert (unit_dir / units.BOOT_CHECK_UNIT).read_text() == "[Unit]\nDescription=the operator's\n"


def test_lint_finds_nothing_in_the_units_that_decide_a_boot(tmp_path: Path) -> None:
    """lint's boot-complete.target rules (BK104: RequiredBy= on a unit nothing enables; BK105: Before=
    with nothing that makes it needed; BK103: FailureAction on a fallback role) on the rendered units,
    under the root whose links enable them."""
    unit_dir = install_units(tmp_path, "boot_assessment:\n  good_when: no-failed-units\n")
    files = [str(unit_dir / units.BOOT_CHECK_UNIT), str(unit_dir / units.REQUIRED_UNIT)]
    r = bk("lint", *files, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["findings"] == []
    # the control: the same unit without its [Install] line is found (BK105), so the pass above means it
    broken = tmp_path / units.BOOT_CHECK_UNIT
    broken.write_text((unit_dir / units.BOOT_CHECK_UNIT).read_text().replace("RequiredBy=", "#RequiredBy="))
    r = bk("lint", str(broken), "--json")
    assert [f["code"] for f in json.loads(r.stdout)["findings"]] == ["BK105"]
