"""Operator files nested deeper than a parser's stack (YAML for lint, services.json for service list
and status): a one-line error or finding naming the file, never a RecursionError traceback."""

from __future__ import annotations

import json
from pathlib import Path

from bootkeeper.esp import scratch
from helpers import bk, fake_efivars

DEEP = 100_000


def test_service_list_with_a_deeply_nested_record(tmp_path: Path) -> None:
    record = tmp_path / "etc/bootkeeper/services.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"version": 1, "services": ' + "[" * DEEP + "]" * DEEP + "}")
    r = bk("service", "list", "--root", str(tmp_path))
    assert r.returncode == 4, r.stderr
    assert "Traceback" not in r.stderr and f"{record}: not JSON (" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2  # the error line (and a hint at most)


def test_status_with_deeply_nested_records_warns_and_shows_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/bootkeeper").mkdir(parents=True)
    (root / "etc/bootkeeper/services.json").write_text("[" * DEEP)
    (root / "run/bootkeeper").mkdir(parents=True)
    (root / "run/bootkeeper/sysext.json").write_text("{" + '"a":{' * DEEP)
    esp = scratch.make(tmp_path / "esp")
    ev = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\active+3.conf")
    r = bk("status", "--root", str(root), "--esp", str(esp), "--efivars", str(ev), "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    j = json.loads(r.stdout)
    assert any("etc/bootkeeper/services.json: not JSON (" in w for w in j["warnings"])
    assert any(w.startswith("run/bootkeeper/sysext.json: RecursionError") for w in j["warnings"])
    assert "error" not in j["extensions"]
    assert j["booted"]["entry"] == "loader/entries/active+3.conf"


def test_lint_with_deeply_nested_yaml(tmp_path: Path) -> None:
    f = tmp_path / "90_deep.yaml"
    f.write_text("stages:\n  initramfs:\n    - " + "[" * 20_000 + "]" * 20_000 + "\n")
    r = bk("lint", str(f), "--json")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    (finding,) = json.loads(r.stdout)["findings"]
    assert (finding["code"], finding["severity"], finding["file"]) == ("BK100", "error", str(f))
    assert "nested too deeply" in finding["message"]
