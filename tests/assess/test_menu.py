"""assess/menu.py: the menu view as frozen dataclasses whose as_json() is what docs/upgrades.md documents."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bootkeeper.assess import menu
from bootkeeper.esp.efivars import LoaderVars
from bootkeeper.esp.store import EspStore
from helpers import entry_body, esp_with, fake_efivars

KEYS = ["esp", "systemd_boot_version", "default", "efi_variables", "next", "pin", "entries", "unlisted", "problems"]
ROW = ["path", "id", "role", "state", "tries_left", "tries_done", "sort_key", "version", "title", "type", "loader",
       "profile"]  # fmt: skip


def _esp(tmp_path: Path) -> Path:
    esp = esp_with(
        tmp_path / "esp",
        {"active+2-1.conf": entry_body("active"), "passive+3.conf": entry_body("passive"), "junk.conf": "title x\n"},
    )
    (esp / "loader/entries/.bootkeeper-1.tmp").write_bytes(b"half")  # a stale temporary
    return esp


def test_the_view_is_frozen_and_its_json_has_the_documented_keys(tmp_path: Path) -> None:
    esp = _esp(tmp_path)
    ev = fake_efivars(tmp_path / "ev", LoaderEntrySelected="active.conf")
    from bootkeeper.assess.status import stale_temporaries

    m = menu.build(esp, EspStore(esp).snapshot(257), LoaderVars.read(ev), stale_temporaries(esp))
    j = m.as_json()
    assert list(j) == KEYS and [list(r) for r in j["entries"]] == [ROW, ROW]
    assert [r["path"] for r in j["entries"]] == ["loader/entries/active+2-1.conf", "loader/entries/passive+3.conf"]
    assert j["next"]["path"] == "loader/entries/active+2-1.conf" and j["next"]["next_after_boot"].endswith("+1-2.conf")
    assert j["efi_variables"]["LoaderEntrySelected"] == "active.conf"
    assert json.loads(json.dumps(j)) == j
    why = {u["path"]: u for u in j["unlisted"]}
    assert "loader/entries/junk.conf" in why and why["loader/entries/.bootkeeper-1.tmp"]["size"] == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.esp = "elsewhere"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.entries[0].state = "good"  # type: ignore[misc]


def test_entries_json_and_status_json_carry_the_same_menu(tmp_path: Path) -> None:
    esp = _esp(tmp_path)
    (tmp_path / "root").mkdir()

    def run(*a: str) -> dict[str, object]:
        p = subprocess.run([sys.executable, "-m", "bootkeeper", *a, "--json"], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        out: dict[str, object] = json.loads(p.stdout)
        return out

    e = run("entries", "--esp", str(esp), "--efivars", str(tmp_path / "none"))
    s = run("status", "--esp", str(esp), "--root", str(tmp_path / "root"), "--efivars", str(tmp_path / "none"))
    assert list(e) == KEYS
    assert {k: s[k] for k in KEYS} == e
