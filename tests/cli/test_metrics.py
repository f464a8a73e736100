"""``bootkeeper metrics`` on scratch nodes: a node that fell back to passive with an extension refused
by the real activation, then the same node after a good boot. The file is read back with
``prometheus_client``'s parser and accepted by the real ``promtool check metrics``; the shipped rules
pass ``promtool check rules`` and their unit tests (``promtool test rules``). The scenario builders are
shared with tests/cli/test_fleet_prometheus.py, which scrapes the same files with a real Prometheus."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from bootkeeper.assess.simulate import BootOutcome, Fault, simulate
from bootkeeper.config import BootAssessment, RebootOnFailure
from bootkeeper.esp import scratch
from bootkeeper.esp.entries import Role
from bootkeeper.esp.store import EspStore
from bootkeeper.sysext import signature
from helpers import bk, fake_efivars, signed_extension

HERE = Path(__file__).resolve().parents[1]
RULES = HERE.parent / "src/bootkeeper/data/alerts.yml"
RULE_TESTS = HERE / "data/fleet/alerts_test.yml"
TRUSTED = signature.self_signed("rsa", "fleet-db")
UNTRUSTED = signature.self_signed("rsa", "someone else")
STEP = 90.0


def promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is missing; scripts/setup-test-deps.sh installs prometheus")
    return tool


@dataclass(frozen=True)
class Node:
    root: Path
    esp: Path
    efivars: Path

    def args(self) -> list[str]:
        return ["--root", str(self.root), "--esp", str(self.esp), "--efivars", str(self.efivars)]


def _pem(obj: Any) -> bytes:
    return bytes(obj.public_bytes(serialization.Encoding.PEM))


def fallen_back(tmp: Path, start: float) -> Node:
    """Active's service fails its three tries (rebooting each time), passive boots, fails too and the
    node stays up on passive, unblessed (tests/assess/test_status.py's node), boots from ``start`` on; then
    the real ``sysext activate`` (enforced) places good.raw (signed by the trusted key) and refuses
    rogue.raw (signed by a key the node does not trust)."""
    root = tmp / "root"
    esp = scratch.make(tmp / "esp")
    assert bk("service", "enroll", "k3s", "--reboot-on-failure", "active", "--root", str(root)).returncode == 0
    recs = simulate(
        EspStore(esp),
        BootAssessment(),
        [Fault(r, None, BootOutcome.SERVICE) for r in Role],
        10,
        reboot_on_failure=RebootOnFailure.ACTIVE,
        history_root=root,
        start_time=start,
        seconds_per_boot=STEP,
    )
    assert [r.role for r in recs] == ["active", "active", "active", "passive"]
    assert recs[-1].boot_count_path is not None
    ev = fake_efivars(tmp / "efivars", LoaderBootCountPath=recs[-1].boot_count_path)
    (root / "etc/bootkeeper").mkdir(parents=True, exist_ok=True)
    (root / "etc/bootkeeper/db.pem").write_bytes(_pem(TRUSTED[1]))
    (root / "oem").mkdir()
    (root / "oem/90_sysext.yaml").write_text(
        "sysext:\n  mode: enforced\n  certificates: [/etc/bootkeeper/db.pem]\n  firmware: []\n"
    )
    extra = root / ".extra/sysext"
    signed_extension(tmp / "images/good.raw", *TRUSTED)
    signed_extension(tmp / "images/rogue.raw", *UNTRUSTED)
    extra.mkdir(parents=True)
    for n in ("good.raw", "rogue.raw"):
        shutil.copyfile(tmp / "images" / n, extra / n)
    r = bk("sysext", "activate", "--root", str(root), "--no-refresh")
    assert r.returncode == 0, r.stderr
    return Node(root, esp, ev)


def good_boot(node: Node, tmp: Path, at: float) -> Node:
    """The node after its operator fixed it: a fresh ESP (active first choice), one good boot
    recorded and blessed, and an activation with only good.raw."""
    esp = scratch.make(tmp / "esp-fixed")
    recs = simulate(EspStore(esp), BootAssessment(), [], 1, history_root=node.root, start_time=at)
    assert [(r.role, r.verdict) for r in recs] == [("active", "good")]
    ev = fake_efivars(tmp / "efivars-fixed", LoaderBootCountPath="\\loader\\entries\\active+2-1.conf")
    (node.root / ".extra/sysext/rogue.raw").unlink()
    r = bk("sysext", "activate", "--root", str(node.root), "--no-refresh")
    assert r.returncode == 0, r.stderr
    return Node(node.root, esp, ev)


SAME_NAMES = ("good.raw", "rogue.raw", "a.confext.raw", "bad name.raw")


def same_names(tmp: Path) -> Node:
    """A hostile but legal node where one name is in many places (issue 27, class 4): the images of
    SAME_NAMES both in /.extra/sysext and /.extra/global_sysext (activation judges or skips each file:
    the second of a name is skipped), two used-up active entry files (active+0-3.conf and
    active+0-2.conf, each a bad entry history names) beside passive+2-1.conf that booted, and what
    /run holds read back as written by hand: an activation report listing its trust anchor twice,
    a tpm verify result listing a PCR twice."""
    from helpers import entry_body, esp_with

    root = tmp / "root"
    bodies = {n: entry_body(n.partition("+")[0]) for n in ("active+0-3.conf", "active+0-2.conf", "passive+2-1.conf")}
    esp = esp_with(tmp / "esp", bodies)
    ev = fake_efivars(tmp / "efivars", LoaderEntrySelected="passive+2-1.conf")
    (root / "etc/bootkeeper").mkdir(parents=True)
    (root / "etc/bootkeeper/db.pem").write_bytes(_pem(TRUSTED[1]))
    (root / "oem").mkdir()
    (root / "oem/90_sysext.yaml").write_text(
        "sysext:\n  mode: enforced\n  certificates: [/etc/bootkeeper/db.pem]\n  firmware: []\n"
    )
    signed_extension(tmp / "images/good.raw", *TRUSTED)
    signed_extension(tmp / "images/rogue.raw", *UNTRUSTED)
    for folder in (".extra/sysext", ".extra/global_sysext"):
        (root / folder).mkdir(parents=True)
        for n in SAME_NAMES:
            shutil.copyfile(tmp / "images" / ("rogue.raw" if n == "rogue.raw" else "good.raw"), root / folder / n)
    r = bk("sysext", "activate", "--root", str(root), "--no-refresh")
    assert r.returncode == 0, r.stderr
    report = root / "run/bootkeeper/sysext.json"
    doc = json.loads(report.read_text())
    doc["trust"]["trusted"] *= 2
    report.write_text(json.dumps(doc))
    pcrs = [{"bank": "sha256", "pcr": 11, "agree": True}, {"bank": "sha256", "pcr": 11, "agree": False}]
    (root / "run/bootkeeper/tpm-verify.json").write_text(json.dumps({"agree": False, "pcrs": pcrs}))
    return Node(root, esp, ev)


def series_twice(text: str) -> list[tuple[str, dict[str, str]]]:
    """Every (name, labels) that is more than one sample of ``text``, as Prometheus's own parser reads
    them: one identity written twice is one series node_exporter keeps one of (or refuses)."""
    from collections import Counter

    from prometheus_client.parser import text_string_to_metric_families

    seen = Counter(
        (s.name, tuple(sorted(s.labels.items()))) for fam in text_string_to_metric_families(text) for s in fam.samples
    )
    return [(name, dict(labels)) for (name, labels), n in seen.items() if n > 1]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def value(got: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return got.get((name, frozenset(labels.items())))


def names(got: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> list[dict[str, str]]:
    return sorted((dict(k[1]) for k in got if k[0] == name), key=lambda d: sorted(d.items()))


@pytest.fixture(scope="module")
def fell(tmp_path_factory: pytest.TempPathFactory) -> tuple[Node, float]:
    start = time.time() - 3600
    return fallen_back(tmp_path_factory.mktemp("fleet"), start), start


def test_metrics_of_a_node_that_fell_back(fell: tuple[Node, float], tmp_path: Path) -> None:
    node, start = fell
    (tmp_path / "tf").mkdir()
    before = time.time()
    r = bk("metrics", *node.args(), "--textfile-dir", str(tmp_path / "tf"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"wrote {tmp_path / 'tf/bootkeeper.prom'}\n"
    assert sorted(p.name for p in (tmp_path / "tf").iterdir()) == ["bootkeeper.prom"]  # no temporary left
    text = (tmp_path / "tf/bootkeeper.prom").read_text()
    got = samples(text)
    active, passive = "loader/entries/active.conf", "loader/entries/passive.conf"
    # the series of an entry name its file too (issue 27: a stale twin has the same entry label)
    af, pf = "loader/entries/active+0-3.conf", "loader/entries/passive+2-1.conf"
    # the scenario: active used 3 tries and is bad, passive used 1 of 3
    assert value(got, "bootkeeper_entry_tries_left", entry=active, file=af, role="active") == 0
    assert value(got, "bootkeeper_entry_tries_done", entry=active, file=af, role="active") == 3
    assert value(got, "bootkeeper_entry_tries_left", entry=passive, file=pf, role="passive") == 2
    assert value(got, "bootkeeper_entry_tries_done", entry=passive, file=pf, role="passive") == 1
    assert value(got, "bootkeeper_entry_state", entry=active, file=af, role="active", state="bad") == 1
    assert value(got, "bootkeeper_entry_state", entry=active, file=af, role="active", state="good") == 0
    assert value(got, "bootkeeper_entry_state", entry=passive, file=pf, role="passive", state="indeterminate") == 1
    assert value(got, "bootkeeper_entry_files", entry=active, role="active") == 1
    assert names(got, "bootkeeper_booted_info") == [{"entry": passive, "role": "passive"}]
    assert value(got, "bootkeeper_boot_blessed", role="passive") == 0
    assert value(got, "bootkeeper_boot_state", state="indeterminate") == 1
    assert value(got, "bootkeeper_boot_state", state="good") == 0
    assert value(got, "bootkeeper_boot_fallback", role="passive") == 1
    assert names(got, "bootkeeper_boot_fallback_from") == [{"role": "active"}]
    # the fourth boot (passive) followed three of active
    assert value(got, "bootkeeper_last_fallback_timestamp_seconds") == start + 3 * STEP
    assert value(got, "bootkeeper_boot_timestamp_seconds") == start + 3 * STEP
    good, rogue = {"extension": "good.raw", "file": "/.extra/sysext/good.raw"}, {"extension": "rogue.raw"}
    assert value(got, "bootkeeper_extension_placed", **good, verdict="passed", reason="none") == 1
    rogue["file"] = "/.extra/sysext/rogue.raw"
    assert value(got, "bootkeeper_extension_placed", **rogue, verdict="refused", reason="signature") == 0
    assert len(names(got, "bootkeeper_extension_placed")) == 2
    der = TRUSTED[1].public_bytes(serialization.Encoding.DER)
    info = names(got, "bootkeeper_trust_anchor_info")
    assert info == [{"fingerprint": hashlib.sha256(der).hexdigest(), "source": "config"}]
    assert value(got, "bootkeeper_trust_anchors", source="config") == 1
    assert names(got, "bootkeeper_trust_anchors") == [{"source": "config"}]
    assert value(got, "bootkeeper_activation_info", mode="enforced") == 1
    assert value(got, "bootkeeper_upgrade_failed") == 0  # no upgrade recorded: none undone
    assert names(got, "bootkeeper_last_upgrade_info") == []
    assert names(got, "bootkeeper_tpm_verify_agree") == []  # tpm verify has not run
    stamp = value(got, "bootkeeper_metrics_timestamp_seconds")
    assert stamp is not None and before <= stamp <= time.time()
    # the real checker of the exposition format
    p = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def test_after_a_good_boot_the_fallback_and_refusal_are_gone(fell: tuple[Node, float], tmp_path: Path) -> None:
    node, _ = fell
    now = time.time()
    fixed = good_boot(node, tmp_path, now - 60)
    got = samples(bk("metrics", *fixed.args()).stdout)
    assert value(got, "bootkeeper_boot_fallback", role="active") == 1 - 1
    assert names(got, "bootkeeper_boot_fallback_from") == []
    assert value(got, "bootkeeper_boot_blessed", role="active") == 1
    assert value(got, "bootkeeper_boot_state", state="good") == 1
    assert names(got, "bootkeeper_extension_placed") == [
        {"extension": "good.raw", "file": "/.extra/sysext/good.raw", "reason": "none", "verdict": "passed"}
    ]
    a = "loader/entries/active.conf"
    assert names(got, "bootkeeper_entry_tries_left") == [] or all(
        x["entry"] != a for x in names(got, "bootkeeper_entry_tries_left")
    )
    assert value(got, "bootkeeper_entry_state", entry=a, file=a, role="active", state="good") == 1
    # going back up the chain is no fallback: the last one is still the passive boot of the scenario
    assert value(got, "bootkeeper_last_fallback_timestamp_seconds") == fell[1] + 3 * STEP


def test_upgrade_and_tpm_verify_series(tmp_path: Path) -> None:
    """The last upgrade's time and versions (an upgrade record as ``upgrade`` writes it), and the
    result ``tpm verify --json`` left in run/bootkeeper/tpm-verify.json."""
    from bootkeeper.assess import history

    root = tmp_path / "root"
    esp = scratch.make(tmp_path / "esp")
    simulate(EspStore(esp), BootAssessment(), [], 1, history_root=root, start_time=1795000000.0)
    before = history.role_os({"PRETTY_NAME": "Kairos v3.4.1", "IMAGE_VERSION": "v3.4.1"}, [])
    after = history.role_os({"PRETTY_NAME": "Kairos v3.4.2", "IMAGE_VERSION": "v3.4.2"}, [])
    history.append(root, history.upgrade_record("sim-1", 1795000500.0, Role.ACTIVE, before, after, "ok", False))
    (root / "run/bootkeeper").mkdir(parents=True)
    verify = {
        "booted": {"entry": "loader/entries/active.conf", "uki": None, "found_by": "LoaderBootCountPath"},
        "agree": False,
        "pcrs": [
            {"bank": "sha256", "pcr": 11, "agree": False},
            {"bank": "sha256", "pcr": 12, "agree": True},
        ],
        "findings": ["PCR 11 (sha256): live differs from the prediction"],
        "notes": [],
    }
    (root / "run/bootkeeper/tpm-verify.json").write_text(json.dumps(verify))
    ev = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\active+2-1.conf")
    got = samples(bk("metrics", "--root", str(root), "--esp", str(esp), "--efivars", str(ev)).stdout)
    assert value(got, "bootkeeper_last_upgrade_timestamp_seconds", role="active") == 1795000500.0
    assert names(got, "bootkeeper_last_upgrade_info") == [
        {"role": "active", "from": "v3.4.1", "to": "v3.4.2", "result": "ok"}
    ]
    assert value(got, "bootkeeper_tpm_verify_agree") == 0
    assert value(got, "bootkeeper_tpm_verify_findings") == 1
    assert value(got, "bootkeeper_tpm_pcr_agree", bank="sha256", pcr="11") == 0
    assert value(got, "bootkeeper_tpm_pcr_agree", bank="sha256", pcr="12") == 1
    j = json.loads(bk("metrics", "--root", str(root), "--esp", str(esp), "--efivars", str(ev), "--json").stdout)
    assert j["bootkeeper_tpm_pcr_agree"] == [
        {"labels": {"bank": "sha256", "pcr": "11"}, "value": 0.0},
        {"labels": {"bank": "sha256", "pcr": "12"}, "value": 1.0},
    ]
    assert value(got, "bootkeeper_tpm_verify_incomplete", reason="entry") == 0
    # a result that cannot be read is a failed verification (issue 27): exported, not a metrics run
    # that stops and freezes the last file (it used to exit 4 and write nothing)
    for bad in (
        '{"agree": "yes"}',
        '{"agree": true, "complete": false}',
        "[" * 100000,
        '{"agree": true, "unverified": [{"kind": "x"}]}',
    ):
        (root / "run/bootkeeper/tpm-verify.json").write_text(bad)
        r = bk("metrics", "--root", str(root), "--esp", str(esp), "--efivars", str(ev))
        assert r.returncode == 0, r.stderr
        assert "tpm-verify.json: not the output of 'tpm verify --json'" in r.stderr, r.stderr
        got = samples(r.stdout)
        assert value(got, "bootkeeper_tpm_verify_agree") == 0, bad
        assert value(got, "bootkeeper_tpm_verify_incomplete", reason="result") == 1, bad
        assert value(got, "bootkeeper_status_warnings") == 1, bad


@pytest.mark.parametrize(
    ("reasons", "cls"),
    [
        (["no trusted certificate"], "signature"),
        (["root: no signature partition"], "signature"),
        (["root-verity: data block 3 does not match its hash"], "verity"),
        (["extension-release: ID=fedora, this host is ID=kairos"], "release"),
        (["root partition is for arm64, this machine is x86-64"], "architecture"),
        (["/.extra/sysext/x.raw: a symbolic link; not followed"], "storage"),
        (["validation stopped (its worker process died)"], "validation"),
        (["not a GPT disk image"], "structure"),
        # as tests/sysext/test_hostile.py's images are refused
        (["root is unprotected, the policy allows signed+absent"], "policy"),
        (["root is verity, the policy allows signed+absent; no signature partition"], "signature"),
        (["root is verity, the policy allows signed+absent; no trusted certificate"], "signature"),
        (["root-verity superblock: salt size 300 is over 256"], "verity"),
        (["root-verity: root hash does not match the top of the hash tree"], "verity"),
        (["two root partitions (numbers 1 and 4)"], "structure"),
        (["/x/img.raw: GPT header CRC32 mismatch at LBA 1"], "structure"),
        ([], "none"),
    ],
)
def test_reason_classes_are_a_closed_vocabulary(reasons: list[str], cls: str) -> None:
    from bootkeeper.node.metrics import ReasonClass

    assert ReasonClass.of(reasons).value == cls


@pytest.mark.parametrize(
    ("where", "label"),
    [
        ("/oem/90.yaml: sysext.certificates[0] (/etc/bootkeeper/db.pem)", "config"),
        ("/oem/90.yaml: sysext.certificates[1]", "config"),
        ("firmware db #3", "firmware-db"),
        ("/etc/verity.d/fleet.crt", "verity.d"),
    ],
)
def test_trust_anchor_sources_are_labels_not_paths(where: str, label: str) -> None:
    from bootkeeper.node.metrics import anchor_source

    assert anchor_source(where) == label


def test_rules_are_shipped_printed_and_pass_promtool(tmp_path: Path) -> None:
    r = bk("metrics", "--rules")
    assert r.returncode == 0 and r.stdout == RULES.read_text()
    (tmp_path / "alerts.yml").write_text(r.stdout)
    p = subprocess.run(
        [promtool(), "check", "rules", str(tmp_path / "alerts.yml")], capture_output=True, text=True, check=False
    )
    rules = sum(len(g["rules"]) for g in yaml.safe_load(r.stdout)["groups"])
    assert p.returncode == 0 and f"SUCCESS: {rules} rules found" in p.stdout, p.stdout + p.stderr
    p = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout


def test_promtool_rule_tests_can_fail(tmp_path: Path) -> None:
    """The control: the same unit tests against rules whose fallback alert never fires fail."""
    broken = tmp_path / "src/bootkeeper/data"
    broken.mkdir(parents=True)
    (broken / "alerts.yml").write_text(
        RULES.read_text().replace("bootkeeper_boot_fallback == 1", "bootkeeper_boot_fallback == 2")
    )
    (tmp_path / "tests/data/fleet").mkdir(parents=True)
    shutil.copyfile(RULE_TESTS, tmp_path / "tests/data/fleet/alerts_test.yml")
    p = subprocess.run(
        [promtool(), "test", "rules", str(tmp_path / "tests/data/fleet/alerts_test.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode != 0 and "BootkeeperFallbackBoot" in p.stdout + p.stderr


def test_crash_safe_write_leaves_the_old_file_when_the_folder_is_gone(fell: tuple[Node, float], tmp_path: Path) -> None:
    node, _ = fell
    r = bk("metrics", *node.args(), "-o", str(tmp_path / "missing/bootkeeper.prom"))
    assert r.returncode == 6 and r.stderr.startswith("bootkeeper: error: "), r.stderr
    assert f"{tmp_path / 'missing'}: no such folder" in r.stderr
    r = bk("metrics", "--rules", "-o", str(tmp_path / "x"))
    assert r.returncode == 2


def test_the_metrics_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """The service, the path unit (a boot, a verdict, an upgrade, an activation, tpm verify) and the
    timer install-units writes, enabled, and accepted by the real systemd-analyze verify; the control
    shows verify reads the path unit."""
    from bootkeeper.assess import history
    from bootkeeper.node import metrics
    from bootkeeper.sysext import report

    r = bk(
        "install-units", "--root", str(tmp_path), "--exe", f"{sys.executable} -m bootkeeper", "--python", sys.executable
    )
    assert r.returncode == 0, r.stderr
    d = tmp_path / "etc/systemd/system"
    service = (d / "bootkeeper-metrics.service").read_text()
    assert (
        f"ExecStart={sys.executable} -m bootkeeper metrics --textfile-dir /var/lib/prometheus/node-exporter\n"
        in service
    )
    assert "ConditionPathIsDirectory=/var/lib/prometheus/node-exporter\n" in service
    assert "After=local-fs.target bootkeeper-sysext.service bootkeeper-boot.service\n" in service
    path = (d / "bootkeeper-metrics.path").read_text()
    watched = [ln.removeprefix("PathChanged=") for ln in path.splitlines() if ln.startswith("PathChanged=")]
    assert watched == [f"/{history.HISTORY}", f"/{report.REPORT}", f"/{metrics.TPM_VERIFY}"]
    timer = (d / "bootkeeper-metrics.timer").read_text()
    assert "OnUnitActiveSec=15min\n" in timer and "Unit=bootkeeper-metrics.service\n" in timer
    for target, unit in (
        ("multi-user.target", "bootkeeper-metrics.service"),
        ("paths.target", "bootkeeper-metrics.path"),
        ("timers.target", "bootkeeper-metrics.timer"),
    ):
        assert (d / f"{target}.wants" / unit).resolve(strict=False).name == unit
    tool = shutil.which("systemd-analyze")
    assert tool is not None, "scripts/setup-test-deps.sh installs systemd"
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{d}:", "SYSTEMD_LOG_COLOR": "0"}
    names = ["bootkeeper-metrics.service", "bootkeeper-metrics.path", "bootkeeper-metrics.timer"]
    v = subprocess.run([tool, "verify", "--man=no", *names], capture_output=True, text=True, env=env, check=False)
    assert v.returncode == 0 and v.stderr == "", v.stderr
    (d / "bootkeeper-metrics.path").write_text(path.replace("PathChanged=", "PathChangd=", 1))
    v = subprocess.run([tool, "verify", "--man=no", names[1]], capture_output=True, text=True, env=env, check=False)
    assert "PathChangd" in v.stderr


def test_names_that_are_not_utf8_are_exported_escaped(tmp_path: Path) -> None:
    """Issue 27, defect 3: an entry file and an extension image named with the byte 0xff (and one with a
    newline) made metrics die with exit 70 (the label could not be encoded), freezing the file. Each is
    a label escaped as the activation log escapes names, and the file passes promtool check metrics."""
    root = tmp_path / "root"
    esp = scratch.make(tmp_path / "esp")
    simulate(EspStore(esp), BootAssessment(), [], 1, history_root=root, start_time=1795000000.0)
    entries = esp / "loader/entries"
    shutil.copyfile(entries / "passive+3.conf", os.fsencode(entries) + b"/\xffodd+3.conf")
    extra = root / ".extra/sysext"
    extra.mkdir(parents=True)
    (extra / "x\udcff.raw").write_bytes(b"not an image" * 100)
    (extra / "two\nlines.raw").write_bytes(b"not an image" * 100)
    r = bk("sysext", "activate", "--root", str(root), "--no-refresh")
    assert r.returncode in (0, 1), r.stderr
    ev = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\active+2-1.conf")
    out = tmp_path / "tf"
    out.mkdir()
    r = bk("metrics", "--root", str(root), "--esp", str(esp), "--efivars", str(ev), "--textfile-dir", str(out))
    assert r.returncode == 0, r.stderr
    text = (out / "bootkeeper.prom").read_bytes().decode("utf-8")  # valid UTF-8, as Prometheus requires
    got = samples(text)
    odd = "loader/entries/\\xffodd+3.conf"
    assert value(got, "bootkeeper_entry_tries_left", entry="loader/entries/\\xffodd.conf", file=odd, role="") == 3
    placed = {x["extension"] for x in names(got, "bootkeeper_extension_placed")}
    assert placed == {"x\\xff.raw", "two\\x0alines.raw"}, placed
    p = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    j = bk("metrics", "--root", str(root), "--esp", str(esp), "--efivars", str(ev), "--json")
    assert j.returncode == 0, j.stderr
    assert {x["labels"]["extension"] for x in json.loads(j.stdout)["bootkeeper_extension_placed"]} == placed


def test_a_source_that_cannot_be_read_sets_a_series(tmp_path: Path) -> None:
    """Issue 27, defect 1's class: each file metrics reads, when it is at fault, sets
    bootkeeper_source_unreadable{source} (BootkeeperSourceUnreadable) instead of only removing the series
    it feeds (an unreadable activation report took extension_required with it, and its alert)."""
    root = tmp_path / "root"
    esp = scratch.make(tmp_path / "esp")
    simulate(EspStore(esp), BootAssessment(), [], 1, history_root=root, start_time=1795000000.0)
    ev = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\active+2-1.conf")
    args = ("metrics", "--root", str(root), "--esp", str(esp), "--efivars", str(ev))
    r = bk(*args)
    assert r.returncode == 0, r.stderr
    got = samples(r.stdout)
    sources = ("status", "efivars", "history", "activation", "handbacks", "tpm_verify")
    assert {x["source"] for x in names(got, "bootkeeper_source_unreadable")} == set(sources)
    assert all(value(got, "bootkeeper_source_unreadable", source=s) == 0 for s in sources)
    (root / "run/bootkeeper").mkdir(parents=True)
    (root / "run/bootkeeper/sysext.json").write_text("{not json")
    with (root / "var/lib/bootkeeper/boots.jsonl").open("a") as f:
        f.write("{half a record\n")
    (esp / "loader/bootkeeper-handbacks").write_bytes(b"\xff" * 4000)
    (root / "run/bootkeeper/tpm-verify.json").write_text("[]")
    r = bk(*args)
    assert r.returncode == 0, r.stderr
    got = samples(r.stdout)
    for s in ("activation", "history", "handbacks", "tpm_verify"):
        assert value(got, "bootkeeper_source_unreadable", source=s) == 1, s
    assert value(got, "bootkeeper_source_unreadable", source="status") == 0
    # LoaderBootCountPath names an entry the ESP does not have: the booted entry's state is unknown
    gone = fake_efivars(tmp_path / "gone", LoaderBootCountPath="\\loader\\entries\\gone+1-1.conf")
    got = samples(bk("metrics", "--root", str(root), "--esp", str(esp), "--efivars", str(gone)).stdout)
    assert value(got, "bootkeeper_source_unreadable", source="efivars") == 1
    assert value(got, "bootkeeper_boot_state", state="unknown") == 1


def test_a_status_that_cannot_be_gathered_still_writes_the_failure(tmp_path: Path) -> None:
    """A config at fault stopped metrics before it wrote, leaving the last file in place and current
    looking for an hour: now the failure is written (source_unreadable{source="status"}), then the
    error's one line and exit code."""
    root = tmp_path / "root"
    esp = scratch.make(tmp_path / "esp")
    simulate(EspStore(esp), BootAssessment(), [], 1, history_root=root, start_time=1795000000.0)
    ev = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\active+2-1.conf")
    tf = tmp_path / "tf"
    tf.mkdir()
    args = ("metrics", "--root", str(root), "--esp", str(esp), "--efivars", str(ev), "--textfile-dir", str(tf))
    assert bk(*args).returncode == 0
    assert value(samples((tf / "bootkeeper.prom").read_text()), "bootkeeper_source_unreadable", source="status") == 0
    (root / "oem").mkdir()
    (root / "oem/90_bad.yaml").write_text("boot_assessment:\n  handbacks: lots\n")
    r = bk(*args)
    assert r.returncode == 4 and r.stderr.startswith("bootkeeper: error: ") and "90_bad.yaml" in r.stderr, r.stderr
    got = samples((tf / "bootkeeper.prom").read_text())
    assert value(got, "bootkeeper_source_unreadable", source="status") == 1
    assert value(got, "bootkeeper_status_warnings") == 1
    assert (value(got, "bootkeeper_metrics_timestamp_seconds") or 0) >= time.time() - 60


def _twin(tmp: Path) -> Node:
    node = fallen_back(tmp, time.time() - 3600)
    entries = node.esp / "loader/entries"
    shutil.copyfile(entries / "active+0-3.conf", entries / "active+3.conf")
    return node


def _good(tmp: Path) -> Node:
    return good_boot(fallen_back(tmp / "node", time.time() - 3600), tmp / "fixed", time.time() - 60)


def _unread(tmp: Path) -> Node:
    node = same_names(tmp)
    (node.root / "oem/90_sysext.yaml").write_text("sysext: [\n")  # the status cannot be gathered
    return node


SCENARIOS: dict[str, Any] = {
    "fell back": lambda tmp: fallen_back(tmp, time.time() - 3600),
    "good boot": _good,
    "stale twin": _twin,
    "same names": same_names,
    "status unread": _unread,
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_no_series_is_written_twice(scenario: str, tmp_path: Path) -> None:
    """Issue 27, class 4, for every family: whatever the node holds, no (name, labels) is two samples
    of one file (node_exporter keeps one of them, and which one decides whether an alert fires)."""
    node = SCENARIOS[scenario](tmp_path)
    r = bk("metrics", *node.args())
    assert r.stdout.startswith("# HELP"), r.stderr
    assert series_twice(r.stdout) == []
    assert len(samples(r.stdout)) > 5  # the check saw the file


def test_one_name_in_many_places_is_one_series_per_file(tmp_path: Path) -> None:
    """The review of issue 27: an image name in /.extra/sysext and /.extra/global_sysext is two files,
    judged or skipped each (the ``file`` label, where activation found it); two used-up active files
    are one role fallen back from (``count by (role)`` over a fleet counts nodes); a trust anchor or a
    PCR a file in /run lists twice is one series."""
    node = same_names(tmp_path)
    got = samples(bk("metrics", *node.args()).stdout)
    placed = names(got, "bootkeeper_extension_placed")
    assert sorted((x["file"], x["verdict"]) for x in placed) == sorted(
        [
            (f"/.extra/sysext/{n}", v)
            for n, v in zip(SAME_NAMES, ("passed", "refused", "skipped", "skipped"), strict=True)
        ]
        + [(f"/.extra/global_sysext/{n}", "skipped") for n in SAME_NAMES]
    )
    assert all(x["file"].endswith("/" + x["extension"]) for x in placed), placed
    assert names(got, "bootkeeper_boot_fallback_from") == [{"role": "active"}]
    assert value(got, "bootkeeper_boot_fallback", role="passive") == 1
    assert len(names(got, "bootkeeper_trust_anchor_info")) == 1
    assert value(got, "bootkeeper_trust_anchors", source="config") == 1
    assert names(got, "bootkeeper_tpm_pcr_agree") == [{"bank": "sha256", "pcr": "11"}]
    assert value(got, "bootkeeper_tpm_pcr_agree", bank="sha256", pcr="11") == 0  # one of its rows disagrees


AS_LIMIT = "--as=1500000000"  # bytes of address space: reading a 2 GiB file whole cannot fit


def bk_limited(*args: str) -> subprocess.CompletedProcess[str]:
    """A verb under a 1.5 GB address-space limit (prlimit, util-linux): a whole read of a 2 GiB file
    is MemoryError, exit 70, where the file is bounded before it is read."""
    return subprocess.run(
        ["prlimit", AS_LIMIT, sys.executable, "-m", "bootkeeper", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_a_sparse_2_gib_tpm_verify_result_is_a_failed_verification_not_a_read(tmp_path: Path) -> None:
    """tpm-verify.json is read through the bounded reader: a 2 GiB file (sparse: it costs nothing to
    make) is refused before it is read, and the metrics file is written with the failure exported
    (it was read whole: MemoryError, exit 70, no file written)."""
    from bootkeeper.node.metrics import TPM_VERIFY_LIMIT

    root = tmp_path / "root"
    esp = scratch.make(tmp_path / "esp")
    simulate(EspStore(esp), BootAssessment(), [], 1, history_root=root, start_time=1795000000.0)
    result = root / "run/bootkeeper/tpm-verify.json"
    result.parent.mkdir(parents=True)
    with result.open("wb") as f:
        f.truncate(2 << 30)
    ev = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\active+2-1.conf")
    out = tmp_path / "bootkeeper.prom"
    r = bk_limited("metrics", "--root", str(root), "--esp", str(esp), "--efivars", str(ev), "-o", str(out))
    assert r.returncode == 0, (r.returncode, r.stderr[-1000:])
    assert "Traceback" not in r.stderr
    assert f"{result}: {2 << 30} bytes, more than the {TPM_VERIFY_LIMIT} bytes" in r.stderr, r.stderr
    got = samples(out.read_text())
    assert value(got, "bootkeeper_tpm_verify_agree") == 0
    assert value(got, "bootkeeper_tpm_verify_incomplete", reason="result") == 1
    # a FIFO there is not waited on (read_bytes() blocked in open() until some writer came)
    result.unlink()
    os.mkfifo(result)
    r = bk_limited("metrics", "--root", str(root), "--esp", str(esp), "--efivars", str(ev), "-o", str(out))
    assert r.returncode == 0, (r.returncode, r.stderr[-1000:])
    assert f"{result}: not a regular file (a FIFO); not read" in r.stderr, r.stderr
    assert value(samples(out.read_text()), "bootkeeper_tpm_verify_agree") == 0


def test_a_sparse_2_gib_boot_history_is_read_from_its_tail(tmp_path: Path) -> None:
    """boots.jsonl is kept near 256 KiB by its own compaction; one of 2 GiB was not written by it: its
    newest 4 MiB are read (with a warning), never the whole file (MemoryError, exit 70, under the
    limit; 20 s for status without it)."""
    from bootkeeper.assess import history

    root = tmp_path / "root"
    esp = scratch.make(tmp_path / "esp")
    simulate(EspStore(esp), BootAssessment(), [], 1, history_root=root, start_time=1795000000.0)
    boots = root / history.HISTORY
    tail = boots.read_bytes()
    with boots.open("r+b") as f:
        f.truncate(2 << 30)
        f.seek((2 << 30) - len(tail) - 1)
        f.write(b"\n" + tail)  # the real lines at its end, 2 GiB of NULs before them
    ev = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\active+2-1.conf")
    out = tmp_path / "bootkeeper.prom"
    r = bk_limited("metrics", "--root", str(root), "--esp", str(esp), "--efivars", str(ev), "-o", str(out))
    assert r.returncode == 0, (r.returncode, r.stderr[-1000:])
    got = samples(out.read_text())
    assert value(got, "bootkeeper_boot_timestamp_seconds") == 1795000000.0  # from the tail's boot line
    s = bk_limited("status", "--root", str(root), "--esp", str(esp), "--efivars", str(ev))
    assert s.returncode in (0, 1), (s.returncode, s.stderr[-1000:])
    assert f"{boots}: {2 << 30} bytes, more than the {history.READ_LIMIT} read" in s.stdout + s.stderr
