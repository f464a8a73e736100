"""``sysext.timeout`` (issue 26, item 7): the ``TimeoutSec=`` of bootkeeper-sysext.service. The value is
checked at the edge (a systemd time span, the same ones ``systemd-analyze timespan`` takes; nothing that
could add a line to the unit), the rendered unit passes the real ``systemd-analyze verify``, and what a
timeout leaves (systemd stops the service with SIGTERM) is what docs/operator-guide.md says: the images
placed before it, which systemd-sysext (the real 252, ``list``) sees, and temporaries it does not."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bootkeeper.config import Certificate, Sysext, SysextMode, _timespan
from bootkeeper.errors import ConfigError
from bootkeeper.sysext import signature
from helpers import bk, one_line_error, signed_extension

UNIT_DIR = "etc/systemd/system"
KEY, CERT = signature.self_signed("ec", "timeout test")
GOOD = ["90s", "5min", "1h 30min", "1h30m", "1.5min", "250ms", "2 weeks", "10 s", "infinity", "0", 90]
HOSTILE = [
    "5s\nExecStartPre=/bin/sh -c id",
    "5s\\\nExecStartPre=/bin/sh",
    "5min ExecStart=x",
    "5min;reboot",
    "",
    " 5s",
    "5s ",
    "min",
    "-5s",
    "5 μs",
    "5ss",
    "1" * 70,
    "1" * 60 + "x",  # the time this takes is bounded: the pattern never splits a number
    True,
    -1,
    ["5s"],
]


def _tool() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing; scripts/setup-test-deps.sh installs systemd")
    return tool


def install_units(root: Path, cfg: str) -> subprocess.CompletedProcess[str]:
    (root / "oem").mkdir(parents=True, exist_ok=True)
    (root / "oem/90.yaml").write_text(cfg)
    return bk(
        "install-units", "--root", str(root), "--exe", f"{sys.executable} -m bootkeeper", "--python", sys.executable
    )


@pytest.mark.parametrize("value", GOOD, ids=str)
def test_each_accepted_value_is_a_systemd_time_span(value: object) -> None:
    got = _timespan(value, "f: sysext.timeout")
    p = subprocess.run([_tool(), "timespan", got], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_hostile_values_are_refused_naming_the_field(value: object) -> None:
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as ei:
        _timespan(value, "/oem/90.yaml: sysext.timeout")
    assert time.monotonic() - t0 < 1
    msg = str(ei.value)
    assert msg.startswith("/oem/90.yaml: sysext.timeout: ") and "\n" not in msg and "systemd time span" in msg


def test_the_timeout_lands_in_the_unit_and_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    assert install_units(tmp_path / "a", "sysext: {}\n").returncode == 0
    default = (tmp_path / "a" / UNIT_DIR / "bootkeeper-sysext.service").read_text()
    assert "\nTimeoutSec=5min\n" in default  # the default: a hung activation does not hang the boot
    r = install_units(tmp_path / "b", "sysext:\n  timeout: 1h 30min\n")
    assert r.returncode == 0, r.stderr
    units = tmp_path / "b" / UNIT_DIR
    service = (units / "bootkeeper-sysext.service").read_text()
    assert [ln for ln in service.splitlines() if ln.startswith("Timeout")] == ["TimeoutSec=1h 30min"]
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:", "SYSTEMD_LOG_COLOR": "0"}
    v = subprocess.run([_tool(), "verify", "--man=no", "bootkeeper-sysext.service"], capture_output=True, text=True,
                       env=env, check=False)  # fmt: skip
    assert v.returncode == 0 and v.stderr == "", v.stderr
    # the control: systemd-analyze verify reads this line (a span it cannot parse is reported)
    (units / "bootkeeper-sysext.service").write_text(service.replace("TimeoutSec=1h 30min", "TimeoutSec=1 fortnight"))
    v = subprocess.run([_tool(), "verify", "--man=no", "bootkeeper-sysext.service"], capture_output=True, text=True,
                       env=env, check=False)  # fmt: skip
    assert "TimeoutSec" in v.stderr, v.stderr


def test_a_hostile_value_never_reaches_a_unit(tmp_path: Path) -> None:
    r = install_units(tmp_path, 'sysext:\n  timeout: "5s\\nExecStartPre=/bin/sh -c id"\n')
    one_line_error(r, 4, f"{tmp_path}/oem/90.yaml: sysext.timeout", "not a systemd time span")
    assert not (tmp_path / UNIT_DIR).exists()


def test_systemd_sysext_is_ordered_after_activation_without_requiring_it(tmp_path: Path) -> None:
    """What lets systemd-sysext run after a timed-out (failed) activation: systemd.unit(5) fails a
    unit with its dependency only through Requires=, Requisite=, BindsTo= (or PartOf= for stops); the
    drop-in orders it After= ours and names ours in nothing else, and ours only Wants= it."""
    assert install_units(tmp_path, "sysext: {}\n").returncode == 0
    units = tmp_path / UNIT_DIR
    dropin = (units / "systemd-sysext.service.d/10-bootkeeper.conf").read_text().splitlines()
    ours = (units / "bootkeeper-sysext.service").read_text().splitlines()
    assert "After=bootkeeper-sysext.service" in dropin
    strong = ("Requires=", "Requisite=", "BindsTo=", "PartOf=", "Upholds=")
    assert not [ln for ln in dropin if ln.startswith(strong)]
    assert "Wants=systemd-sysext.service" in ours and not [ln for ln in ours if ln.startswith(strong)]


def test_on_timeout_what_was_placed_stays_and_systemd_sysext_sees_only_it(tmp_path: Path) -> None:
    """systemd stops a service that runs out of TimeoutSec= with SIGTERM (KillMode=control-group: activate
    and its workers). In a fork of this process, activate is made to hang on the second image (a stand-in
    for a slow one; one image per round); SIGTERM lands once the first is placed and the second staged."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from bootkeeper.sysext import activate as act
    from bootkeeper.sysext import image

    root = tmp_path / "root"
    (root / ".extra/sysext").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text("ID=kairos\nVERSION_ID=1\n")
    for n in ("a.sysext.raw", "b.sysext.raw"):
        signed_extension(tmp_path / "img" / n, KEY, CERT)
        shutil.copyfile(tmp_path / "img" / n, root / ".extra/sysext" / n)
    a, b = (os.path.getsize(root / ".extra/sysext" / n) for n in ("a.sysext.raw", "b.sysext.raw"))
    assert a <= b  # a is taken first (smallest, then by name)
    cfg = Sysext(certificates=(Certificate(CERT.public_bytes(Encoding.PEM).decode(), "test"),), firmware=(),
                 verity_dirs=())  # fmt: skip
    dest = root / act.DEST_DIR
    pid = os.fork()
    if pid == 0:  # the service's process
        try:
            real = image.validate

            def validate(path: Path, *args: object, **kw: object) -> image.Validation:
                if str(kw.get("name", "")).startswith("b"):
                    time.sleep(3600)
                return real(path, *args, **kw)  # type: ignore[arg-type]

            image.validate = validate
            act.MAX_BATCH = 1
            act.activate(root, cfg, SysextMode.ENFORCED)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 120  # a bound on the wait, not an assertion about speed
    while time.monotonic() < deadline:
        names = os.listdir(dest) if dest.is_dir() else []
        if "a.sysext.raw" in names and any(n.startswith(".bootkeeper-") for n in names):
            break
        time.sleep(0.02)
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    names = sorted(os.listdir(dest))
    assert [n for n in names if not n.startswith(".")] == ["a.sysext.raw"]
    temps = [n for n in names if n.startswith(".")]
    assert len(temps) == 1 and temps[0].startswith(".bootkeeper-") and temps[0].endswith(".tmp"), names
    assert (dest / "a.sysext.raw").read_bytes() == (root / ".extra/sysext/a.sysext.raw").read_bytes()
    assert not (root / act.REPORT).exists()  # the report is written at the end: status says none
    # the real systemd-sysext (252 on this machine) finds the placed image and not the temporary
    sx = shutil.which("systemd-sysext")
    if sx is None:
        pytest.fail("systemd-sysext is missing; scripts/setup-test-deps.sh installs systemd")
    p = subprocess.run([sx, "list", f"--root={root}", "--json=short"], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
    import json

    assert [x["name"] for x in json.loads(p.stdout)] == ["a.sysext"]
