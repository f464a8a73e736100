"""The boot history's boot lines carry every entry as the ESP showed it (docs/services.md: "every entry's
state"); that part is read and shown by ``history show --json``, typed, and a malformed one costs
the boot line nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bootkeeper.assess import history
from bootkeeper.esp import scratch
from bootkeeper.esp.store import EspStore
from helpers import bk, fake_efivars


def test_history_show_has_every_entry_as_recorded(tmp_path: Path) -> None:
    root = tmp_path / "root"
    esp = scratch.make(tmp_path / "esp")
    (esp / "loader/entries/active+3.conf").rename(esp / "loader/entries/active+0-3.conf")
    ev = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\passive+2-1.conf")
    (esp / "loader/entries/passive+3.conf").rename(esp / "loader/entries/passive+2-1.conf")
    r = bk("history", "record", "--root", str(root), "--esp", str(esp), "--efivars", str(ev), "--boot-id", "b1")
    assert r.returncode == 0, r.stderr
    (boot,) = json.loads(bk("history", "show", "--root", str(root), "--json").stdout)["boots"]
    want = [
        {"path": e.path, "state": e.state.value, "tries_left": e.name.tries_left, "tries_done": e.name.tries_done}
        for e in EspStore(esp).snapshot().entries
    ]
    assert boot["entries"] == want
    assert {"path": "loader/entries/active+0-3.conf", "state": "bad", "tries_left": 0, "tries_done": 3} in want


@pytest.mark.parametrize(
    "entries",
    [
        5,
        "abc",
        None,
        {"path": "x"},
        [{"path": 1, "state": "good"}],
        [{"path": "x", "state": "great"}],
        [{"path": "x", "state": "bad", "left": -1}],
        [{"path": "x", "state": "bad", "left": True}],
    ],
)
def test_a_malformed_entries_field_keeps_the_boot(tmp_path: Path, entries: object) -> None:
    """Older and foreign lines: whatever ``entries`` holds, the boot is read (it used to be skipped
    as malformed when ``entries`` was a number), with no entry from the bad items."""
    line = {"type": "boot", "boot_id": "b", "time": 1.0, "entry": "loader/entries/active+2-1.conf", "entries": entries}
    ok = {"path": "loader/entries/passive+3.conf", "state": "indeterminate", "left": 3, "done": 0}
    both = {**line, "boot_id": "c", "entries": [ok, *(entries if isinstance(entries, list) else [entries])]}
    boots, warnings = history.parse(json.dumps(line) + "\n" + json.dumps(both) + "\n", "boots.jsonl")
    assert warnings == []
    assert [b.boot_id for b in boots] == ["b", "c"]
    assert boots[0].entries == []
    assert [e.as_json() for e in boots[1].entries] == [
        {"path": ok["path"], "state": "indeterminate", "tries_left": 3, "tries_done": 0}
    ]
