"""bless against what the real systemd-bless-boot 252/257 did (reference NOTES.md, section 5),
plus bootkeeper's additions (loader.conf, duplicates, recovery, re-arm)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootkeeper.assess import bless
from bootkeeper.assess.bless import Verdict
from bootkeeper.config import BootAssessment
from bootkeeper.errors import MalformedError, NotApplicableError
from bootkeeper.esp.store import EspStore
from helpers import entry_body, esp_with, names

CFG = BootAssessment()


def _bless(root: Path, path: str, verdict: Verdict, cfg: BootAssessment = CFG) -> bless.BlessResult:
    return bless.bless(EspStore(root), bless.parse_entry_path(path, "test"), verdict, cfg)


@pytest.mark.parametrize(
    ("start", "steps", "end"),
    [
        ("active+2-1.conf", [Verdict.GOOD], "active.conf"),
        ("active+2-1.conf", [Verdict.BAD], "active+0-1.conf"),
        ("active+2-1.conf", [Verdict.GOOD, Verdict.INDETERMINATE], "active+2-1.conf"),
        ("active+2-1.conf", [Verdict.BAD, Verdict.GOOD], "active.conf"),
        ("active+0-3.conf", [Verdict.GOOD], "active.conf"),
        ("active+1.conf", [Verdict.GOOD], "active.conf"),
    ],
)
def test_renames_match_systemd_bless_boot(tmp_path: Path, start: str, steps: list[Verdict], end: str) -> None:
    root = esp_with(tmp_path, {start: entry_body("active")})
    for v in steps:
        _bless(root, f"\\loader\\entries\\{start}", v)
    assert names(root) == [end]


def test_type2(tmp_path: Path) -> None:
    root = esp_with(tmp_path, {})
    (root / "EFI" / "Linux").mkdir(parents=True)
    (root / "EFI" / "Linux" / "active+2-1.efi").write_bytes(b"uki")
    _bless(root, "\\EFI\\Linux\\active+2-1.efi", Verdict.BAD)
    assert [p.name for p in (root / "EFI" / "Linux").iterdir()] == ["active+0-1.efi"]


def test_status_and_already_good(tmp_path: Path) -> None:
    root = esp_with(tmp_path, {"active.conf": entry_body("active")})
    b = bless.parse_entry_path("\\loader\\entries\\active+2-1.conf", "LoaderBootCountPath")
    assert bless.status(EspStore(root), b) == "good"
    r = bless.bless(EspStore(root), b, Verdict.GOOD, CFG)
    assert r.actions == [] and r.note and "already good" in r.note
    assert names(root) == ["active.conf"]


def test_refusals(tmp_path: Path) -> None:
    root = esp_with(tmp_path, {"passive+3.conf": entry_body("passive")})
    with pytest.raises(NotApplicableError, match="does not contain a boot counter"):
        bless.parse_entry_path("\\loader\\entries\\active.conf", "LoaderBootCountPath")
    with pytest.raises(NotApplicableError, match="can't find"):
        _bless(root, "loader/entries/active+2-1.conf", Verdict.GOOD)
    for bad in (
        "../loader/entries/a+1.conf",
        "loader/entries/../../x+1.conf",
        "etc/passwd+1.conf",
        "loader/entries/sub/a+1.conf",
        "loader/entries/a\n+1.conf",
        "",
    ):
        with pytest.raises(MalformedError):
            bless.parse_entry_path(bad, "--entry")
    assert names(root) == ["passive+3.conf"]


def test_loader_conf_default_follows_the_rename(tmp_path: Path) -> None:
    root = esp_with(
        tmp_path, {"active+2-1.conf": entry_body("active")}, "timeout 0\ndefault active+3.conf\neditor no\n"
    )
    r = _bless(root, "loader/entries/active+2-1.conf", Verdict.GOOD)
    assert (root / "loader" / "loader.conf").read_text() == "timeout 0\ndefault active.conf\neditor no\n"
    assert any("loader.conf" in a for a in r.actions)


def test_duplicate_is_repaired_booted_file_wins(tmp_path: Path) -> None:
    root = esp_with(
        tmp_path,
        {
            "active.conf": "title stale\nlinux /EFI/kairos/vmlinuz\n",
            "active+1-2.conf": "title booted\nlinux /EFI/kairos/vmlinuz\n",
        },
    )
    _bless(root, "loader/entries/active+1-2.conf", Verdict.GOOD)
    assert names(root) == ["active.conf"]
    assert "booted" in (root / "loader" / "entries" / "active.conf").read_text()


def test_recovery_is_never_blessed_and_is_rearmed_by_a_good_active(tmp_path: Path) -> None:
    root = esp_with(
        tmp_path,
        {
            "active+2-1.conf": entry_body("active"),
            "recovery+1-2.conf": entry_body("recovery"),
            "statereset+0-3.conf": entry_body("statereset"),
        },
    )
    r = _bless(root, "loader/entries/recovery+1-2.conf", Verdict.GOOD)
    assert r.note and "never blessed" in r.note
    assert "recovery+1-2.conf" in names(root)
    _bless(root, "loader/entries/active+2-1.conf", Verdict.GOOD, BootAssessment(recovery_tries=4))
    assert names(root) == ["active.conf", "recovery+4.conf", "statereset+4.conf"]


def test_rearm_gives_the_booted_entry_fresh_tries(tmp_path: Path) -> None:
    root = esp_with(tmp_path, {"active+1-2.conf": entry_body("active")})
    _bless(root, "loader/entries/active+1-2.conf", Verdict.GOOD, BootAssessment(tries=5, rearm=True))
    assert names(root) == ["active+5.conf"]


@pytest.mark.parametrize(
    ("entry", "booted", "last"),
    [
        ("recovery+1-2.conf", "recovery+1-2.conf", "loader/entries/recovery+1-2.conf: not marked good; left as it is"),
        ("active+2-1.conf", "active+2-1.conf", "marked loader/entries/active+2-1.conf as good"),
        ("passive.conf", "passive+1-1.conf", "already good: loader/entries/passive.conf"),
    ],
)
def test_the_last_line_of_bless_good_says_what_happened(tmp_path: Path, entry: str, booted: str, last: str) -> None:
    """What bootkeeper-bless.service leaves in the journal (issue 15, item 1: a recovery boot printed
    "marked ...recovery+3.conf as good" although nothing was renamed)."""
    import subprocess
    import sys

    root = esp_with(tmp_path / "esp", {entry: entry_body(entry.split("+")[0].split(".")[0])})
    (tmp_path / "c.yaml").write_text("boot_assessment: {tries: 3}\n")
    p = subprocess.run(
        [sys.executable, "-m", "bootkeeper", "bless", "good", "--esp", str(root), "--entry", f"loader/entries/{booted}",
         "--config", str(tmp_path / "c.yaml"), "--root", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1] == last
    assert last.startswith("marked ") or not [ln for ln in p.stdout.splitlines() if ln.startswith("marked ")]
