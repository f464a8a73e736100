"""Absurd lines in boots.jsonl are skipped like torn ones, with a note; ``history show`` never fails."""

from __future__ import annotations

import json
from pathlib import Path

from bootkeeper.assess import history
from helpers import bk

HOSTILE = [
    '{"type":"boot","boot_id":"huge","time":' + "9" * 400 + "}",  # float() overflows
    '{"type":"boot","boot_id":"inf","time":1e400}',  # float() says inf, gmtime() overflows
    '{"type":"boot","boot_id":"neg","time":-1e18}',
    '{"type":"boot","boot_id":"nan","time":NaN}',
    '{"type":"boot","boot_id":"bool","time":true}',
    "[" * 100_000 + "]" * 100_000,  # deeper than the JSON parser's stack
    '{"type":"verdict","boot_id":"good","time":' + "9" * 400 + ',"verdict":"bad"}',
]


def _write(root: Path) -> None:
    good = history.boot_record("good", 1795000000.0, "\\loader\\entries\\active+2-1.conf", None)
    (root / history.HISTORY).parent.mkdir(parents=True)
    (root / history.HISTORY).write_text(json.dumps(good) + "\n" + "\n".join(HOSTILE) + "\n")


def test_absurd_times_and_nesting_are_skipped(tmp_path: Path) -> None:
    _write(tmp_path)
    boots, warnings = history.read(tmp_path)
    assert [(b.boot_id, b.verdict) for b in boots] == [("good", None)]
    assert len(warnings) == len(HOSTILE)
    assert all("skipped a malformed line" in w and len(w) < 300 for w in warnings)


def test_history_show_lists_the_good_boot_and_notes_the_rest(tmp_path: Path) -> None:
    _write(tmp_path)
    r = bk("history", "show", "--root", str(tmp_path))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "2026-11-18" in r.stdout and "loader/entries/active+2-1.conf" in r.stdout
    assert r.stderr.count("warning:") == len(HOSTILE)
    j = json.loads(bk("history", "show", "--root", str(tmp_path), "--json").stdout)
    assert [b["boot_id"] for b in j["boots"]] == ["good"] and len(j["warnings"]) == len(HOSTILE)
