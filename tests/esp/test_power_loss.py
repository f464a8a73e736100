"""A crash at any write step of bless, arm and rotate leaves an ESP that still boots per the model
(some non-bad entry is chosen, loader.conf parses) and no temporary file the boot loader reads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bootkeeper.assess import bless, bootloader, chain
from bootkeeper.config import BootAssessment
from bootkeeper.esp import entries as entries_mod
from bootkeeper.esp import loader
from bootkeeper.esp.store import EspStore, is_temporary
from helpers import entry_body, esp_with

CFG = BootAssessment(tries=3, recovery_tries=3)


class Crash(OSError):
    pass


def _steps(make: Callable[[Path], Path], act: Callable[[EspStore], object], tmp: Path) -> list[str]:
    seen: list[str] = []
    root = make(tmp / "count")
    act(EspStore(root, fault=seen.append))
    return seen


def _check_bootable(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            # a leftover may only carry a name that neither systemd-boot nor systemd-stub loads
            assert not p.name.lower().endswith((".conf", ".efi", ".raw")) or not p.name.startswith(".bootkeeper"), p
            if is_temporary(p.name):
                assert not entries_mod.valid_type1_filename(p.name) and not entries_mod.valid_type2_filename(p.name)
    lc = root / "loader" / "loader.conf"
    if lc.exists():
        loader.parse(lc.read_text())
    for v in (252, 257):
        c = bootloader.choose(EspStore(root).snapshot(v))
        assert c is not None, f"nothing to boot on {v}"
        assert c.entry.state is not entries_mod.EntryState.BAD, f"{v} boots a bad entry: {c.entry.path}"


def _make_counted(root: Path) -> Path:
    return esp_with(
        root,
        {
            "active+2-1.conf": entry_body("active"),
            "active.conf": entry_body("active"),
            "passive+3.conf": entry_body("passive"),
            "recovery+1-2.conf": entry_body("recovery"),
            "statereset+2-1.conf": entry_body("statereset"),
        },
        "timeout 0\ndefault active+3.conf\n",
    )


def _make_all_bad(root: Path) -> Path:
    """Nothing but statereset boots (issue 26 item 9): its good bless hands back."""
    return esp_with(
        root,
        {
            "active+0-3.conf": entry_body("active"),
            "passive+0-3.conf": entry_body("passive"),
            "recovery+0-3.conf": entry_body("recovery"),
            "statereset+2-1.conf": entry_body("statereset"),
        },
        "timeout 0\n",
    )


def _make_rotatable(root: Path) -> Path:
    return esp_with(
        root,
        {
            "active+1-2.conf": entry_body("active"),
            "passive.conf": entry_body("passive"),
            "recovery+3.conf": entry_body("recovery"),
        },
        "timeout 0\n",
    )


def _make_plain(root: Path) -> Path:
    return esp_with(
        root,
        {f"{r}.conf": entry_body(r, sort_key=False) for r in ("active", "passive", "recovery", "statereset")},
        "timeout 0\ndefault active.conf\n",
    )


def _new_entry(tmp: Path) -> Path:
    p = tmp / "new-active.conf"
    p.write_text("title new\nlinux /EFI/kairos/vmlinuz\n")
    return p


CASES: dict[str, tuple[Callable[[Path], Path], Callable[[EspStore, Path], object]]] = {
    "bless-good": (
        _make_counted,
        lambda s, t: bless.bless(
            s, bless.parse_entry_path("loader/entries/active+2-1.conf", "t"), bless.Verdict.GOOD, CFG
        ),
    ),
    "bless-bad": (
        _make_counted,
        lambda s, t: bless.bless(
            s, bless.parse_entry_path("loader/entries/active+2-1.conf", "t"), bless.Verdict.BAD, CFG
        ),
    ),
    "bless-statereset-hands-back": (
        _make_all_bad,
        lambda s, t: bless.bless(
            s, bless.parse_entry_path("loader/entries/statereset+2-1.conf", "t"), bless.Verdict.GOOD, CFG
        ),
    ),
    "arm": (_make_plain, lambda s, t: chain.arm(s, CFG)),
    "rotate": (_make_rotatable, lambda s, t: chain.rotate(s, CFG, _new_entry(t))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_crash_at_every_step(case: str, tmp_path: Path) -> None:
    make, act = CASES[case]
    steps = _steps(make, lambda s: act(s, tmp_path), tmp_path)
    assert len(steps) >= 2, steps
    for k in range(len(steps)):
        root = make(tmp_path / f"crash-{k}")

        def fault(name: str, k: int = k, count: list[int] = [0]) -> None:  # noqa: B006
            if count[0] == k:
                count[0] += 1
                raise Crash(f"injected power loss at {name}")
            count[0] += 1

        with pytest.raises(Crash):
            act(EspStore(root, fault=fault), tmp_path)
        _check_bootable(root)
        shutil.rmtree(root)
    # and with no fault at all the end state boots too
    root = make(tmp_path / "whole")
    act(EspStore(root), tmp_path)
    _check_bootable(root)


def test_step_pause_hook_announces_each_write(tmp_path: Path) -> None:
    """BOOTKEEPER_TEST_STEP_PAUSE (the node tests cut the power on these lines) names every step that
    changes the ESP, before it happens; a value that is not a number of seconds is refused with a warning."""
    root = esp_with(tmp_path / "esp", {"active+2-1.conf": entry_body("active")})
    cmd = [sys.executable, "-m", "bootkeeper", "bless", "good", "--esp", str(root)]
    cmd += ["--entry", "loader/entries/active+2-1.conf"]

    def bless_with(value: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "BOOTKEEPER_TEST_STEP_PAUSE": value}
        return subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)

    p = bless_with("0")
    assert p.returncode == 0, p.stderr
    pauses = [line for line in p.stderr.splitlines() if line.startswith("bootkeeper: test pause before ")]
    assert pauses[0] == "bootkeeper: test pause before rename:active+2-1.conf->active.conf (0 s)"
    assert [line.split()[4] for line in pauses[1:3]] == ["fsync-renamed:active.conf", "fsync-dir:entries"]
    assert (root / "loader/entries/active.conf").exists()
    for bad in ("soon", "-1", "1e9"):
        p = bless_with(bad)
        assert f"ignoring BOOTKEEPER_TEST_STEP_PAUSE={bad!r}" in p.stderr
        assert "test pause before" not in p.stderr
