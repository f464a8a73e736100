"""bless at the limits (issue 12, items 10 and 11): everything it needs is read and checked before the
first write, so a loader.conf it cannot read, a full ESP or an absurd ``--entry`` leaves the ESP as it
was, with one line naming the file; or bless is done in full."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import bk, entry_body, esp_with, names, tree


def _error_line(p: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if not ln.startswith("hint:")]
    assert len(lines) == 1, p.stderr
    return lines[0]


def _esp(tmp_path: Path, loader_conf: str) -> Path:
    return esp_with(
        tmp_path / "esp",
        {"active+2-1.conf": entry_body("active"), "recovery+1-2.conf": entry_body("recovery")},
        loader_conf,
    )


def test_oversized_loader_conf_refuses_before_any_write(tmp_path: Path) -> None:
    # Before: active+2-1.conf was renamed to active.conf, then reading loader.conf failed (exit 4)
    # and recovery was never re-armed.
    padding = "".join(f"# line {i}\n" for i in range(8000))
    root = _esp(tmp_path, f"timeout 0\ndefault active+2-1.conf\n{padding}")
    size = (root / "loader/loader.conf").stat().st_size
    before = tree(root)
    p = bk("bless", "good", "--esp", str(root), "--entry", "loader/entries/active+2-1.conf", "--root", str(tmp_path))
    assert p.returncode == 4
    line = _error_line(p)
    assert "loader/loader.conf" in line and str(size) in line and "nothing changed" in line
    assert tree(root) == before


def test_oversized_loader_conf_is_not_read_when_nothing_is_renamed(tmp_path: Path) -> None:
    root = esp_with(tmp_path / "esp", {"active.conf": entry_body("active")}, "# x\n" * 20000)
    p = bk("bless", "good", "--esp", str(root), "--entry", "loader/entries/active+2-1.conf", "--root", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert "already good" in p.stdout


def _on_a_full_esp(
    tmp_path: Path, esp: Path, entry: str = "loader/entries/active+2-1.conf"
) -> tuple[subprocess.CompletedProcess[str], str, str, str]:
    """Copy ``esp`` to a real 1 MiB tmpfs (private mount namespace), fill it, run bless good; returns
    bless's result and the tree (names and checksums) before and after."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is missing; scripts/setup-test-deps.sh installs it")
    mnt = tmp_path / "efi"
    mnt.mkdir()
    listing = f"(cd {mnt} && find . -path ./fill -prune -o -type f -print0 | sort -z | xargs -0 md5sum)"
    script = f"""
set -e
mount -t tmpfs -o size=1m tmpfs {mnt}
cp -a {esp}/. {mnt}/
dd if=/dev/zero of={mnt}/fill bs=4096 2>/dev/null || true
echo "@@@ free $(stat -f -c '%a' {mnt})"
{listing} > {tmp_path}/before
set +e
{sys.executable} -m bootkeeper bless good --esp {mnt} --entry {entry} --root {tmp_path} \
  2> {tmp_path}/stderr
echo "@@@ rc $?"
{listing} > {tmp_path}/after
"""
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0 and "@@@ rc" in r.stdout, r.stdout + r.stderr
    assert "@@@ free 0" in r.stdout, r.stdout  # really full
    rc = int(r.stdout.split("@@@ rc ")[1].split()[0])
    p = subprocess.CompletedProcess(["bless"], rc, "", (tmp_path / "stderr").read_text())
    return p, (tmp_path / "before").read_text(), (tmp_path / "after").read_text(), r.stdout


@pytest.mark.root
@pytest.mark.integration
def test_full_esp_with_loader_conf_to_rewrite_is_left_unchanged(tmp_path: Path) -> None:
    # Before: the entry was renamed, then writing loader.conf failed for space (the ESP half done).
    esp = _esp(tmp_path, "timeout 0\ndefault active+2-1.conf\n")
    p, before, after, _ = _on_a_full_esp(tmp_path, esp)
    assert p.returncode == 6
    line = _error_line(p)
    assert "loader/loader.conf" in line and "bytes free" in line and "nothing changed" in line
    assert after == before


@pytest.mark.root
@pytest.mark.integration
def test_full_esp_with_renames_only_is_done_in_full(tmp_path: Path) -> None:
    esp = _esp(tmp_path, "timeout 0\n")
    p, before, after, _ = _on_a_full_esp(tmp_path, esp)
    assert p.returncode == 0, p.stderr
    assert "active+2-1.conf" in before and "recovery+1-2.conf" in before
    assert "./loader/entries/active.conf" in after and "./loader/entries/recovery+3.conf" in after
    assert "+2-1" not in after and "+1-2" not in after


@pytest.mark.root
@pytest.mark.integration
def test_full_esp_with_a_hand_back_to_write_is_left_unchanged(tmp_path: Path) -> None:
    """Issue 26 item 9: a good statereset boot writes the hand-back count first; no room for it: one
    line naming it, and nothing changed (statereset is not half blessed, nothing re-armed)."""
    esp = esp_with(
        tmp_path / "esp",
        {
            "active+0-3.conf": entry_body("active"),
            "recovery+0-3.conf": entry_body("recovery"),
            "statereset+2-1.conf": entry_body("statereset"),
        },
    )
    p, before, after, _ = _on_a_full_esp(tmp_path, esp, "loader/entries/statereset+2-1.conf")
    assert p.returncode == 6
    line = _error_line(p)
    assert "loader/bootkeeper-handbacks" in line and "bytes free" in line and "nothing changed" in line
    assert after == before


def test_entry_with_a_5000_digit_counter_is_one_line(tmp_path: Path) -> None:
    # Before: int() of more than 4300 digits raised ValueError in esp/counter.py: a traceback, exit 1.
    root = _esp(tmp_path, "timeout 0\n")
    before = tree(root)
    entry = f"loader/entries/active+{'7' * 5000}.conf"
    p = bk("bless", "good", "--entry", entry, "--esp", str(root), "--root", str(tmp_path))
    assert p.returncode not in (0, 1)
    line = _error_line(p)
    assert "--entry" in line and "does not contain a boot counter" in line
    assert len(line) < 400  # the value is cut short, its length given
    assert f"({len(entry)} characters)" in line
    assert tree(root) == before
    assert names(root) == ["active+2-1.conf", "recovery+1-2.conf"]
