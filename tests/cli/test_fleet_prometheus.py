"""The fleet view with the real engines (issue 17, item 4): Debian's ``prometheus-node-exporter`` on
127.0.0.1 with only the textfile collector, reading the folder ``bootkeeper metrics --textfile-dir``
writes, and a real ``prometheus`` scraping it every second with the shipped rules (``metrics
--rules``). A scratch node falls back to passive with an extension refused by the real activation
(tests/cli/test_metrics.py's scenario): the series and four alerts appear in Prometheus's HTTP API; after a
good boot they clear. Both servers run in their own process groups, killed in ``finally``; every wait
is bounded."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from helpers import bk
from test_metrics import SAME_NAMES, STEP, fallen_back, good_boot, same_names

pytestmark = pytest.mark.integration
T = TypeVar("T")
WAIT = 60.0  # seconds: at a 1 s scrape and evaluation interval, a change shows within a few
FALLBACK_ALERTS = {
    "BootkeeperFallbackBoot",
    "BootkeeperBootNotBlessed",
    "BootkeeperActiveNoTriesLeft",
    "BootkeeperExtensionRefused",
}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing; scripts/setup-test-deps.sh installs it")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _server(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _until(what: str, probe: Callable[[], T | None], log: Path) -> T:
    deadline = time.monotonic() + WAIT
    last: Any = None
    while time.monotonic() < deadline:
        try:
            got = probe()
        except OSError as exc:  # not listening yet
            last = exc
        else:
            if got is not None:
                return got
            last = got
        time.sleep(0.25)
    pytest.fail(f"{what}: not within {WAIT:.0f} s (last: {last!r}); server log:\n{log.read_text()[-3000:]}")


@dataclass(frozen=True)
class Fleet:
    """A running node_exporter (textfile collector on ``textfiles``) and Prometheus scraping it with the
    shipped rules."""

    textfiles: Path
    api: str
    log: Path  # Prometheus's

    def query(self, q: str) -> list[dict[str, Any]]:
        doc = _get(f"{self.api}/query?query={urllib.parse.quote(q)}")
        assert doc["status"] == "success", doc
        return list(doc["data"]["result"])

    def firing(self) -> dict[str, dict[str, str]]:
        doc = _get(f"{self.api}/alerts")
        return {a["labels"]["alertname"]: a["labels"] for a in doc["data"]["alerts"] if a["state"] == "firing"}

    def firing_all(self) -> list[dict[str, str]]:
        doc = _get(f"{self.api}/alerts")
        return [a["labels"] for a in doc["data"]["alerts"] if a["state"] == "firing"]


@contextlib.contextmanager
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Both servers on 127.0.0.1 (free ports), in their own process groups, killed on the way out
    whatever happened."""
    exporter, prometheus = _tool("prometheus-node-exporter"), _tool("prometheus")
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    rules = tmp_path / "alerts.yml"
    r = bk("metrics", "--rules")
    assert r.returncode == 0, r.stderr
    rules.write_text(r.stdout)
    exp_port, prom_port = _free_port(), _free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {rules}\n"
        "scrape_configs:\n  - job_name: node\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exp_port}']\n        labels: {{instance: edge-17}}\n"
    )
    exp_log, prom_log = tmp_path / "exporter.log", tmp_path / "prometheus.log"
    with (
        _server(
            [
                exporter,
                f"--web.listen-address=127.0.0.1:{exp_port}",
                "--collector.disable-defaults",
                "--collector.textfile",
                f"--collector.textfile.directory={textfiles}",
            ],
            exp_log,
        ),
        _server(
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            prom_log,
        ),
    ):
        yield Fleet(textfiles, f"http://127.0.0.1:{prom_port}/api/v1", prom_log)


def test_series_and_alerts_appear_in_prometheus_and_clear_after_a_good_boot(tmp_path: Path) -> None:
    start = time.time() - 3600  # the fallen-back boot was recorded 55 minutes ago: not blessed for long
    node = fallen_back(tmp_path / "node", start)
    with fleet(tmp_path) as f:
        textfiles, query, firing, prom_log = f.textfiles, f.query, f.firing, f.log
        r = bk("metrics", *node.args(), "--textfile-dir", str(textfiles))
        assert r.returncode == 0, r.stderr
        # the fallback: the series as Prometheus returns them
        got = _until("bootkeeper_boot_fallback == 1", lambda: query("bootkeeper_boot_fallback == 1") or None, prom_log)
        assert [(s["metric"]["instance"], s["metric"]["role"], s["value"][1]) for s in got] == [
            ("edge-17", "passive", "1")
        ]
        assert query("node_textfile_scrape_error") and query("node_textfile_scrape_error")[0]["value"][1] == "0"
        series = query('{__name__=~"bootkeeper_.+"}')
        print("@@@ FALLBACK SERIES", json.dumps([[s["metric"], s["value"][1]] for s in series]))
        by = {(s["metric"]["__name__"], s["metric"].get("role"), s["metric"].get("extension")): s for s in series}
        assert by[("bootkeeper_boot_fallback_from", "active", None)]["value"][1] == "1"
        last = float(by[("bootkeeper_last_fallback_timestamp_seconds", None, None)]["value"][1])
        assert last == pytest.approx(start + 3 * STEP, abs=0.001)
        assert by[("bootkeeper_entry_tries_left", "active", None)]["value"][1] == "0"
        assert by[("bootkeeper_extension_placed", None, "rogue.raw")]["metric"]["reason"] == "signature"
        # fleet aggregation works on these labels
        assert [s["value"][1] for s in query("sum by (role) (bootkeeper_boot_fallback)")] == ["1"]

        alerts = _until(
            "the four alerts", lambda: (a if set(a) >= FALLBACK_ALERTS else None) if (a := firing()) else None, prom_log
        )
        assert set(alerts) == FALLBACK_ALERTS, alerts
        assert alerts["BootkeeperExtensionRefused"]["extension"] == "rogue.raw"
        assert alerts["BootkeeperFallbackBoot"]["instance"] == "edge-17"
        print("@@@ FALLBACK ALERTS", json.dumps(alerts, sort_keys=True))

        # a good boot: everything clears
        fixed = good_boot(node, tmp_path / "fixed", time.time() - 30)
        r = bk("metrics", *fixed.args(), "--textfile-dir", str(textfiles))
        assert r.returncode == 0, r.stderr
        _until(
            "bootkeeper_boot_blessed == 1 on active",
            lambda: query('bootkeeper_boot_blessed{role="active"} == 1') or None,
            prom_log,
        )
        _until("no alert firing", lambda: True if not firing() else None, prom_log)
        assert query("bootkeeper_boot_fallback == 1") == []
        assert query('bootkeeper_extension_placed{verdict="refused"}') == []


def test_a_stale_twin_keeps_its_own_series_and_the_used_up_entry_alerts(tmp_path: Path) -> None:
    """Issue 27, defect 4: a stale ``active+3.conf`` beside the used-up ``active+0-3.conf`` (the node
    that fell back). Each file is its own series (the ``file`` label), node_exporter reads the file
    without a scrape error and Prometheus holds both values, BootkeeperActiveNoTriesLeft fires for the
    used-up file, and the twin is a finding of its own (BootkeeperEntryTwin)."""
    node = fallen_back(tmp_path / "node", time.time() - 3600)
    entries = node.esp / "loader/entries"
    shutil.copyfile(entries / "active+0-3.conf", entries / "active+3.conf")
    with fleet(tmp_path) as f:
        r = bk("metrics", *node.args(), "--textfile-dir", str(f.textfiles))
        assert r.returncode == 0, r.stderr
        got = _until(
            "two active series",
            lambda: q if len(q := f.query('bootkeeper_entry_tries_left{role="active"}')) >= 2 else None,
            f.log,
        )
        assert sorted((s["metric"]["entry"], s["metric"]["file"], s["value"][1]) for s in got) == [
            ("loader/entries/active.conf", "loader/entries/active+0-3.conf", "0"),
            ("loader/entries/active.conf", "loader/entries/active+3.conf", "3"),
        ]
        assert f.query("node_textfile_scrape_error")[0]["value"][1] == "0"
        states = f.query('bootkeeper_entry_state{role="active"} == 1')
        assert sorted((s["metric"]["file"], s["metric"]["state"]) for s in states) == [
            ("loader/entries/active+0-3.conf", "bad"),
            ("loader/entries/active+3.conf", "indeterminate"),
        ]
        alerts = _until(
            "the two alerts",
            lambda: (
                (a if {"BootkeeperActiveNoTriesLeft", "BootkeeperEntryTwin"} <= {x["alertname"] for x in a} else None)
                if (a := f.firing_all())
                else None
            ),
            f.log,
        )
        no_tries = [a for a in alerts if a["alertname"] == "BootkeeperActiveNoTriesLeft"]
        assert [a["file"] for a in no_tries] == ["loader/entries/active+0-3.conf"], no_tries
        twin = [a for a in alerts if a["alertname"] == "BootkeeperEntryTwin"]
        assert [(a["entry"], a["role"]) for a in twin] == [("loader/entries/active.conf", "active")], twin
        print("@@@ TWIN ALERTS", json.dumps(alerts, sort_keys=True))


def test_one_name_in_many_places_is_one_series_per_file_in_prometheus(tmp_path: Path) -> None:
    """The review of issue 27 (class 4): images of one name in /.extra/sysext and /.extra/global_sysext,
    two used-up active entry files, a trust anchor and a PCR listed twice in /run. node_exporter reads
    the file without a scrape error, and Prometheus holds one series per image file (the ``file``
    label), one fallback_from for active, one series per PCR; the refused image alerts once, for the
    file that was judged."""
    node = same_names(tmp_path / "node")
    with fleet(tmp_path) as f:
        r = bk("metrics", *node.args(), "--textfile-dir", str(f.textfiles))
        assert r.returncode == 0, r.stderr
        want = 2 * len(SAME_NAMES)
        got = _until(
            "every extension file",
            lambda: q if len(q := f.query("bootkeeper_extension_placed")) >= want else None,
            f.log,
        )
        assert f.query("node_textfile_scrape_error")[0]["value"][1] == "0"
        assert sorted(s["metric"]["file"] for s in got) == sorted(
            f"/.extra/{d}/{n}" for d in ("sysext", "global_sysext") for n in SAME_NAMES
        )
        assert [(s["metric"]["role"], s["value"][1]) for s in f.query("bootkeeper_boot_fallback_from")] == [
            ("active", "1")
        ]
        assert [s["value"][1] for s in f.query("bootkeeper_tpm_pcr_agree")] == ["0"]
        assert len(f.query("bootkeeper_trust_anchor_info")) == 1
        alerts = _until(
            "the refusal",
            lambda: (
                (a if any(x["alertname"] == "BootkeeperExtensionRefused" for x in a) else None)
                if (a := f.firing_all())
                else None
            ),
            f.log,
        )
        refused = [a for a in alerts if a["alertname"] == "BootkeeperExtensionRefused"]
        assert [(a["extension"], a["file"]) for a in refused] == [("rogue.raw", "/.extra/sysext/rogue.raw")], refused
        print("@@@ SAME NAMES SERIES", json.dumps([[s["metric"], s["value"][1]] for s in got]))
