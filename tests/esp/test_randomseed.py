"""``bootkeeper random-seed`` (issue 15, item 11; seed 002): the real bootctl refreshes loader/random-seed on
a real read-only mount (tmpfs in a private mount namespace), under the ESP lock, and the mount is
read-only again afterwards, also when bootctl fails.

bootctl is Debian 12's own (systemd 252, unpacked by scripts/setup-test-deps.sh into
``$VM_CACHE/host-tools``; the node test runs trixie's 257 on a real vfat ESP). A tmpfs is not a FAT
partition: bootctl refuses it unless ``SYSTEMD_RELAX_ESP_CHECKS=1`` (systemd's ``find-esp.c``
``verify_esp()``), which bootkeeper passes through to it; without it, that refusal is the failure tested.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bootkeeper.errors import BusyError
from bootkeeper.esp import randomseed
from bootkeeper.esp.store import EspStore
from bootkeeper.run import _BASE_ENV
from helpers import one_line_error

ROOT = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("VM_CACHE", ROOT / ".cache" / "vm")) / "host-tools"
RELAX = {"SYSTEMD_RELAX_ESP_CHECKS": "1"}

pytestmark = pytest.mark.integration


def _bootctl() -> Path:
    b = TOOLS / "bootctl"
    if not b.exists():
        pytest.fail(f"{b} is missing: scripts/setup-test-deps.sh unpacks Debian 12's bootctl there")
    return b


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in randomseed.PASSED_ENV}
    env["PATH"] = f"{_bootctl().parent}:{os.environ.get('PATH', '')}"
    env.update(extra or {})
    return env


def _ns(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``script`` in a private mount namespace; ``$BK`` runs this checkout's bootkeeper."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is missing; scripts/setup-test-deps.sh installs it")
    env = {**env, "BK": f"{sys.executable} -m bootkeeper"}
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def _read_only_esp(mnt: Path, then: str, *, read_only: bool = True) -> str:
    """A tmpfs ESP at ``mnt`` (mode 0700: bootctl warns about a world-readable one), read-only, then ``then``;
    ``@@@ MOUNT`` lines give the mount's flags (per mount, file system) after each step."""
    ro = f"mount -o remount,ro {mnt}\n" if read_only else ""
    return f"""
set -e
mount -t tmpfs -o size=1m,mode=0700 tmpfs {mnt}
mkdir {mnt}/loader {mnt}/EFI
{ro}flags() {{
  awk -v m={mnt} '$5 == m {{ for (i = 7; $i != "-"; i++); print "@@@ MOUNT", $6, $(i + 3) }}' /proc/self/mountinfo
}}
{then}
"""


def _mounts(out: str) -> list[tuple[bool, bool]]:
    """(per-mount read-only, file-system read-only) of every ``@@@ MOUNT`` line."""
    lines = [x.split()[2:] for x in out.splitlines() if x.startswith("@@@ MOUNT ")]
    return [("ro" in a.split(","), "ro" in b.split(",")) for a, b in lines]


def _seed(out: str, label: str) -> str:
    return next(x.split()[2] for x in out.splitlines() if x.startswith(f"@@@ SEED{label} "))


@pytest.mark.root
def test_refreshes_the_seed_on_a_read_only_esp_and_leaves_it_read_only(tmp_path: Path) -> None:
    """Two runs on a read-only ESP: the first writes a 32-byte seed, the second refreshes it (other
    bytes); each prints one line, and the mount is read-only again after each."""
    mnt = tmp_path / "efi"
    mnt.mkdir()
    seed = mnt / "loader/random-seed"
    script = _read_only_esp(
        mnt,
        f"""touch {mnt}/probe 2>/dev/null && {{ echo "not read-only"; exit 9; }}
flags
$BK random-seed --esp {mnt}
flags
echo "@@@ SEED1 $(od -An -tx1 {seed} | tr -d ' \\n') $(stat -c %s {seed})"
$BK random-seed --esp {mnt} --json > {tmp_path}/second.json
flags
echo "@@@ SEED2 $(od -An -tx1 {seed} | tr -d ' \\n')"
""",
    )
    p = _ns(script, _env(RELAX))
    assert p.returncode == 0, p.stdout + p.stderr
    lines = [x for x in p.stdout.splitlines() if not x.startswith("@@@ ")]
    assert lines == [f"{seed}: written (32 bytes); {mnt} read-only again"], p.stdout
    assert p.stderr.strip().splitlines() == [f"bootctl: Random seed file {seed} successfully written (32 bytes)."]
    assert _mounts(p.stdout) == [(True, True)] * 3
    first, second = _seed(p.stdout, "1"), _seed(p.stdout, "2")
    assert len(bytes.fromhex(first)) == len(bytes.fromhex(second)) == 32 and first != second
    out = json.loads((tmp_path / "second.json").read_text())
    assert out["seed"] == str(seed) and out["action"] == "refreshed" and out["size"] == 32
    assert out["remounted"] is True and out["read_only_after"] is True
    assert any("Random seed file" in x for x in out["bootctl"])


@pytest.mark.root
def test_a_writable_esp_is_not_remounted(tmp_path: Path) -> None:
    mnt = tmp_path / "efi"
    mnt.mkdir()
    then = f"$BK --debug random-seed --esp {mnt} --root {tmp_path}\nflags"
    p = _ns(_read_only_esp(mnt, then, read_only=False), _env(RELAX))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines()[0] == f"{mnt}/loader/random-seed: written (32 bytes)"
    assert _mounts(p.stdout) == [(False, False)]
    # no mount command ran; under a --root that is not /, bootctl leaves the EFI variables alone
    assert [x for x in p.stderr.splitlines() if x.startswith("+ ")] == [
        f"+ {_bootctl()} --graceful --no-variables --esp-path={mnt} random-seed"
    ]


@pytest.mark.root
def test_bootctl_failing_is_an_error_and_the_esp_is_read_only_again(tmp_path: Path) -> None:
    """Without SYSTEMD_RELAX_ESP_CHECKS the real bootctl refuses a tmpfs (not FAT): it ran after the
    remount, so this proves the way back: exit 8, one line naming bootctl and its reason, ro again."""
    mnt = tmp_path / "efi"
    mnt.mkdir()
    then = f'$BK random-seed --esp {mnt} || echo "@@@ RC $?"\nflags\nls -A {mnt}/loader'
    p = _ns(_read_only_esp(mnt, then), _env())
    assert "@@@ RC 8" in p.stdout, p.stdout + p.stderr
    one_line_error(
        subprocess.CompletedProcess(p.args, 8, "", p.stderr),
        8,
        "bootctl --graceful",
        f"--esp-path={mnt} random-seed failed with exit status 1",
        "not a FAT EFI System Partition",
    )
    assert _mounts(p.stdout) == [(True, True)]
    assert "random-seed" not in p.stdout


@pytest.mark.root
def test_missing_bootctl_is_one_line_before_anything_is_touched(tmp_path: Path) -> None:
    if shutil.which("bootctl", path=_BASE_ENV["PATH"]) is not None:
        pytest.fail(f"bootctl is on {_BASE_ENV['PATH']} here: the test needs a machine without it (Debian 12 has none)")
    mnt = tmp_path / "efi"
    mnt.mkdir()
    then = f'PATH=/nonexistent $BK random-seed --esp {mnt} || echo "@@@ RC $?"\nflags'
    p = _ns(_read_only_esp(mnt, then), _env())
    assert "@@@ RC 8" in p.stdout, p.stdout + p.stderr
    one_line_error(
        subprocess.CompletedProcess(p.args, 8, "", p.stderr),
        8,
        "required tool 'bootctl' not found",
        "random seed",
    )
    assert _mounts(p.stdout) == [(True, True)]


def test_lock_held_by_another_run_is_busy_and_bootctl_never_runs(tmp_path: Path) -> None:
    """Another bootkeeper run holds the ESP lock (a flock of another open file of the ESP's root): the
    library gives up with BusyError before it remounts or runs bootctl."""
    esp = tmp_path / "esp"
    (esp / "loader").mkdir(parents=True)
    fd = os.open(esp, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(BusyError, match="another bootkeeper run holds the ESP lock"):
            randomseed.refresh(EspStore(esp, lock_timeout=0.2), str(_bootctl()), environ=RELAX)
    finally:
        os.close(fd)
    assert not (esp / randomseed.SEED).exists()


def test_the_cli_exits_busy_while_another_run_holds_the_lock(tmp_path: Path) -> None:
    """The verb as the unit runs it: it waits for the lock (10 s), then exit 5 and one line."""
    esp = tmp_path / "esp"
    (esp / "loader").mkdir(parents=True)
    fd = os.open(esp, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        p = subprocess.run(
            [sys.executable, "-m", "bootkeeper", "random-seed", "--esp", str(esp)],
            capture_output=True,
            text=True,
            env=_env(RELAX),
            check=False,
        )
    finally:
        os.close(fd)
    one_line_error(p, 5, str(esp), "another bootkeeper run holds the ESP lock")
    assert not (esp / randomseed.SEED).exists()


def test_the_command_is_the_real_units_and_a_root_keeps_off_the_efi_variables() -> None:
    esp = Path("/efi")
    assert randomseed.command("/usr/bin/bootctl", esp) == [
        "/usr/bin/bootctl",
        "--graceful",
        "--esp-path=/efi",
        "random-seed",
    ]
    assert "--no-variables" in randomseed.command("/usr/bin/bootctl", esp, variables=False)
