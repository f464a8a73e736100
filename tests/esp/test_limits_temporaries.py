"""Temporaries a killed write left on the ESP are reported: ``lint --esp`` (BK206, with path and size)
and ``entries --json`` (under ``unlisted``, with their size). Removing them is the write verbs' work."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import bk, entry_body, esp_with, fake_efivars

GOOD = {r + "+3.conf": entry_body(r) for r in ("active", "passive", "recovery", "statereset")}
LEFT = {  # where a kill -9 of each write verb leaves one
    "loader/entries/.bootkeeper-0a1b2c3d4e5f.tmp": 93,
    "EFI/kairos/active.efi.extra.d/.bootkeeper-a1a1a1a1a1a1.tmp": 1 << 20,
}


def twins(tmp_path: Path) -> tuple[Path, Path]:
    bad, fixed = esp_with(tmp_path / "bad", GOOD), esp_with(tmp_path / "fixed", GOOD)
    for rel, size in LEFT.items():
        (bad / rel).parent.mkdir(parents=True, exist_ok=True)
        (bad / rel).write_bytes(b"\0" * size)
    # names that only look alike are not bootkeeper's temporaries
    (bad / "loader/entries/bootkeeper-x.tmp").write_text("")
    (fixed / "loader/entries/bootkeeper-x.tmp").write_text("")
    return bad, fixed


def lint(esp: Path, tmp_path: Path) -> tuple[int, list[dict[str, object]]]:
    ev = fake_efivars(tmp_path / "ev")
    r = bk("lint", "--esp", str(esp), "--efivars", str(ev), "--systemd-boot-version", "257", "--json")
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout)["findings"]


def test_lint_reports_stale_temporaries_and_its_fixed_twin_is_clean(tmp_path: Path) -> None:
    bad, fixed = twins(tmp_path)
    rc, findings = lint(bad, tmp_path)
    assert rc == 0  # a warning: the ESP still boots
    assert [(f["code"], f["severity"], f["file"]) for f in findings] == [
        ("BK206", "warning", f"{bad}/{rel}") for rel in sorted(LEFT)
    ]
    for f, rel in zip(findings, sorted(LEFT), strict=True):
        assert f"{LEFT[rel]} bytes" in str(f["message"])
    assert all("any bootkeeper write verb" in str(f["fix"]) and "delete it" in str(f["fix"]) for f in findings)
    assert lint(fixed, tmp_path) == (0, [])


def test_entries_lists_stale_temporaries_with_their_size(tmp_path: Path) -> None:
    bad, fixed = twins(tmp_path)
    ev = fake_efivars(tmp_path / "ev")
    r = bk("entries", "--esp", str(bad), "--efivars", str(ev), "--json")
    assert r.returncode == 0, r.stderr
    view = json.loads(r.stdout)
    assert [(u["path"], u["size"]) for u in view["unlisted"]] == sorted(LEFT.items())
    assert all("interrupted bootkeeper run" in u["why"] for u in view["unlisted"])
    assert len(view["entries"]) == 4
    r = bk("entries", "--esp", str(fixed), "--efivars", str(ev), "--json")
    assert json.loads(r.stdout)["unlisted"] == []
    human = bk("entries", "--esp", str(bad), "--efivars", str(ev)).stdout
    assert "not listed by systemd-boot: loader/entries/.bootkeeper-0a1b2c3d4e5f.tmp: a temporary" in human
