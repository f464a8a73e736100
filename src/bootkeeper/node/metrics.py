"""The status as Prometheus metrics, for node_exporter's textfile collector (``bootkeeper metrics``).

The boot half (assess/status.py) and the extension half (sysext/status.py) meet here, in node/, the
layer that joins them. :func:`build` is pure: status in, metric families out (name, help, label
names, samples); :func:`exposition` renders them with ``prometheus_client`` (the text format 0.0.4
the textfile collector reads), imported only there. Names and labels are made for a fleet:
every label is a closed vocabulary (role, state, verdict, reason class) or an identifier that stays
the same from boot to boot (the entry without its counter, the extension's file name), never free
text, so ``sum by (role) (...)`` over hundreds of nodes stays a handful of series.

``tpm verify`` leaves its result (``bootkeeper tpm verify --json``) in :data:`TPM_VERIFY` under the
root; when the file is there its ``agree`` and per-PCR ``agree`` become series.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from bootkeeper.errors import InputError, MalformedError, UnreadableError

if TYPE_CHECKING:
    from bootkeeper.assess.history import Boot
    from bootkeeper.assess.status import NodeStatus
    from bootkeeper.node.status import Status
    from bootkeeper.sysext.report import Activation

TEXTFILE = "bootkeeper.prom"  # the name in the textfile collector's folder (it reads *.prom)
TPM_VERIFY = "run/bootkeeper/tpm-verify.json"  # `bootkeeper tpm verify --json`, as tpm verify leaves it
RULES = "alerts.yml"  # in bootkeeper/data/: the alert rules `metrics --rules` prints
BOOT_STATES = ("good", "indeterminate", "bad", "not counted", "unknown")
ENTRY_STATES = ("good", "indeterminate", "bad")


class ReasonClass(StrEnum):
    """Why an extension was not placed, as a label: the class of activate's first reason. Each class
    names the check that said no (sysext/image.py's validate, sysext/activate.py's staging)."""

    NONE = "none"  # placed, or skipped without a reason
    SIGNATURE = "signature"  # no trusted certificate, a bad or missing signature
    VERITY = "verity"  # the hash tree or root hash does not match
    POLICY = "policy"  # the image policy refused a partition
    RELEASE = "release"  # extension-release does not match the host
    ARCHITECTURE = "architecture"
    STRUCTURE = "structure"  # not an image, a partition table systemd-dissect refuses
    STORAGE = "storage"  # could not be opened, copied or did not fit in /run
    VALIDATION = "validation"  # validation itself stopped (a crash, a dead worker)

    @classmethod
    def of(cls, reasons: Sequence[str]) -> ReasonClass:
        if not reasons:
            return cls.NONE
        text = reasons[0].lower()
        if "the policy allows" in text:  # policy.evaluate(): "root is verity, the policy allows …; <why not better>"
            detail = text.partition("; ")[2]
            return cls._match(detail, cls.POLICY) if detail else cls.POLICY
        return cls._match(text, cls.STRUCTURE)

    @classmethod
    def _match(cls, text: str, otherwise: ReasonClass) -> ReasonClass:
        return next((c for words, c in _REASON_WORDS if any(w in text for w in words)), otherwise)


# first match wins: the more specific words first (a verity reason may name the signature partition)
_REASON_WORDS: tuple[tuple[tuple[str, ...], ReasonClass], ...] = (
    (("validation stopped",), ReasonClass.VALIDATION),
    (("extension-release",), ReasonClass.RELEASE),
    (("partition is for",), ReasonClass.ARCHITECTURE),
    (
        ("cannot stage", "copy to", "does not fit", "not a regular file", "symbolic link", "cannot open"),
        ReasonClass.STORAGE,
    ),
    (("-verity", "root hash", "hash tree", "does not match its hash"), ReasonClass.VERITY),
    (("signature", "signed", "certificate", "trust", "pkcs#7", "signer"), ReasonClass.SIGNATURE),
    (("policy",), ReasonClass.POLICY),
)


def _label(value: str) -> str:
    from bootkeeper.sysext.activate import printable

    return printable(value)


@dataclass(frozen=True)
class Family:
    """One metric family: every sample carries a value for each of ``labels``, in that order."""

    name: str
    help: str
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)

    def add(self, value: float, *labels: str) -> None:
        """Every label value escaped as the activation log escapes names (sysext/activate.py's
        :func:`printable`): a name is bytes until shown, and a file name that is not UTF-8 (``\xff``,
        os.listdir's surrogate) is a label value Prometheus can hold (``\\xff``), never an encoding
        error that stops ``metrics`` and freezes its file (docs/fleet.md, "Writing the metrics")."""
        assert len(labels) == len(self.labels), (self.name, labels)
        self.samples.append((tuple(_label(v) for v in labels), value))


# why tpm verify could not complete, the ``reason`` label of bootkeeper_tpm_verify_incomplete:
# measure/verify.py's INCOMPLETE (an entry that cannot be predicted, an input that stopped verify),
# and ``result``: the result file itself cannot be read (metrics exports that as a failure too)
TPM_INCOMPLETE = ("entry", "input", "result")


@dataclass(frozen=True)
class TpmResult:
    """What ``tpm verify --json`` said, as far as metrics need it."""

    agree: bool
    pcrs: tuple[tuple[str, int, bool], ...]  # bank, PCR, agree
    findings: int
    time: float  # the file's modification time: when verify ran
    incomplete: frozenset[str] = frozenset()  # of TPM_INCOMPLETE: what verify could not do
    problem: str | None = None  # the result could not be read: why (a status warning)


TPM_VERIFY_LIMIT = 4 << 20  # bytes: a result lists 24 PCRs of a few banks and the ESP's entries


def read_tpm(root: Path) -> TpmResult | None:
    """The result :data:`TPM_VERIFY` holds; None when verify has not run (no file)."""
    p = root / TPM_VERIFY
    try:
        from bootkeeper import fsutil

        # bounded before it is read: a sparse 2 GiB file must not be read whole (docs/fleet.md, "Writing the
        # metrics"; docs/design.md, "Trust")
        raw = fsutil.read_bounded(p, TPM_VERIFY_LIMIT, "the output of 'tpm verify --json'")
        mtime = p.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UnreadableError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    from bootkeeper.measure import untrusted

    try:
        doc = untrusted.load_json(raw, str(p), TPM_VERIFY_LIMIT, "the output of 'tpm verify --json'")
        agree = doc["agree"]
        if not isinstance(agree, bool):
            raise TypeError("agree is not true or false")
        pcrs = tuple((str(r["bank"]), int(r["pcr"]), r["agree"] is True) for r in doc.get("pcrs") or ())
        kinds = frozenset(str(u["kind"]) for u in doc.get("unverified") or ())
        if not kinds <= set(TPM_INCOMPLETE):
            raise ValueError(f"unverified kind {sorted(kinds - set(TPM_INCOMPLETE))[0]!r} is not one of entry, input")
        if doc.get("complete", True) is False and not kinds:
            raise ValueError("complete is false and unverified names nothing")
        # a result that is not complete is not agreement, whatever else it says
        return TpmResult(agree and not kinds, pcrs, len(doc.get("findings") or ()), mtime, kinds)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise MalformedError(f"{p}: not the output of 'tpm verify --json' ({type(exc).__name__}: {exc})") from exc


def tpm_state(root: Path, now: float) -> TpmResult | None:
    """:func:`read_tpm`, where a result that cannot be read is a failed verification (agree 0,
    incomplete ``result``), never a metrics run that stops and leaves the last file (a fault
    must set a series, not remove it: docs/fleet.md, "Writing the metrics")."""
    from bootkeeper.errors import InputError

    try:
        return read_tpm(root)
    except InputError as exc:
        try:
            when = (root / TPM_VERIFY).stat().st_mtime
        except OSError:
            when = now
        return TpmResult(False, (), 0, when, frozenset({"result"}), str(exc))


def entry_id(path: str) -> str:
    """An entry's path without its boot counter (``loader/entries/active+2-1.conf`` →
    ``loader/entries/active.conf``): the label stays the same while the tries are used."""
    from bootkeeper.esp import counter

    folder, _, name = path.rpartition("/")
    suffix = ".efi" if name.lower().endswith(".efi") else ".conf"
    parsed = counter.parse(name, suffix)
    if not parsed.counted:
        return path
    return f"{folder}/{parsed.stem}{suffix}" if folder else f"{parsed.stem}{suffix}"


def anchor_source(where: str | None) -> str:
    """Where a trust anchor came from, as a label (sysext/trust.py's sources, without the file and
    position that make each node's text its own): ``config``, ``firmware-db`` (or another variable),
    ``verity.d``."""
    w = where or ""
    if "sysext.certificates" in w:
        return "config"
    if w.startswith("firmware "):
        return "firmware-" + w.split()[1]
    return "verity.d" if w else "unknown"


def last_fallback(boots: Sequence[Boot]) -> float | None:
    """When the node last fell back: the last recorded boot whose role comes later in the chain
    (active, passive, recovery, statereset) than the boot recorded before it."""
    from bootkeeper.esp.entries import Role

    ranks = {r.value: r.rank for r in Role}
    found = None
    for before, after in itertools.pairwise(boots):
        if before.role in ranks and after.role in ranks and ranks[after.role] > ranks[before.role]:
            found = after.time
    return found


class _Families:
    """The families of one exposition, in the order they are made (the order of the file)."""

    def __init__(self) -> None:
        self.out: list[Family] = []

    def __call__(self, name: str, help_: str, *labels: str) -> Family:
        f = Family(f"bootkeeper_{name}", help_, labels)
        self.out.append(f)
        return f


def build(shown: Status, tpm: TpmResult | None, now: float, unread_activation: bool = False) -> list[Family]:
    """The families for one node's status (pure: the values come from ``shown`` and ``tpm``;
    ``unread_activation``: :func:`activation_unread`)."""
    fam = _Families()
    node = shown.node
    _entry_families(fam, node)
    _boot_families(fam, node)
    _extension_families(fam, shown.extensions.activation)
    _upgrade_families(fam, node)
    _repair_families(fam, node)
    _tpm_families(fam, tpm)
    fam("status_warnings", "Sources status could not read (see bootkeeper status).").add(
        len(node.problems) + len(shown.problems) + (1 if tpm is not None and tpm.problem else 0)
    )
    bad = set(node.unreadable)
    if unread_activation:
        bad.add("activation")
    if tpm is not None and tpm.problem:
        bad.add("tpm_verify")
    _sources(fam, bad)
    fam("metrics_timestamp_seconds", "When bootkeeper metrics wrote this file.").add(now)
    return fam.out


def _entry_families(fam: _Families, node: NodeStatus) -> None:
    from bootkeeper.esp.entries import same_entry

    # one series per entry FILE: a stale twin (active+3.conf beside a used-up active+0-3.conf) has the
    # entry label of the other, and the file label keeps the two apart (node_exporter keeps one of two
    # series with one identity, and could hide the used-up one's 0 tries: docs/fleet.md, "The metrics and
    # their labels")
    tries_left = fam("entry_tries_left", "Tries left on a counted boot entry file.", "entry", "file", "role")
    tries_done = fam("entry_tries_done", "Tries used on a counted boot entry file.", "entry", "file", "role")
    state = fam(
        "entry_state",
        "1 for the state a boot entry file is in (good, indeterminate, bad).",
        "entry",
        "file",
        "role",
        "state",
    )
    files = fam(
        "entry_files",
        "Files on the ESP for one entry: more than 1 is a stale twin (the same entry with another counter).",
        "entry",
        "role",
    )
    twins = {p: len(g) for g in same_entry(e.path for e in node.entries) for p in g}
    for e in node.entries:
        labels = (entry_id(e.path), e.path, e.role.value if e.role else "")
        if e.tries_left is not None:
            tries_left.add(e.tries_left, *labels)
        if e.tries_done is not None:
            tries_done.add(e.tries_done, *labels)
        for s in ENTRY_STATES:
            state.add(1.0 if e.state == s else 0.0, *labels, s)
    counted: dict[tuple[str, str], int] = {}
    for e in node.entries:
        counted.setdefault((entry_id(e.path), e.role.value if e.role else ""), twins.get(e.path, 1))
    for (eid, r), n in counted.items():
        files.add(n, eid, r)


def _boot_families(fam: _Families, node: NodeStatus) -> None:
    from bootkeeper.assess.status import Unavailable

    b = node.booted
    role = b.role.value if b.role else ""
    booted = fam("booted_info", "1: the entry this boot came from and its role.", "entry", "role")
    if b.entry:
        booted.add(1, entry_id(b.entry), role)
    boot_state = fam("boot_state", "1 for the state of the booted entry.", "state")
    current = "unknown" if isinstance(b.blessed, Unavailable) or b.blessed is None else b.blessed
    for s in BOOT_STATES:
        boot_state.add(1.0 if current == s else 0.0, s)
    blessed = fam("boot_blessed", "1 if this boot is blessed good, 0 if not yet (counted boots only).", "role")
    if current in ENTRY_STATES:
        blessed.add(1.0 if current == "good" else 0.0, role)
    fallbacks = b.why.fallbacks if b.why else ()
    fam("boot_fallback", "1 if this boot is a fallback: an entry before it in the chain is bad.", "role").add(
        1.0 if fallbacks else 0.0, role
    )
    skipped = fam("boot_fallback_from", "1 for each role this fallback boot fell back from.", "role")
    # one series per role: history names each bad entry FILE of a role (a used-up twin is a second one),
    # but what an operator counts is the roles a node fell back from (count by (role) over the fleet);
    # the files are bootkeeper_entry_state's (one identity, never written twice: docs/fleet.md, "The metrics
    # and their labels")
    for r in dict.fromkeys(str(f.get("role")) for f in fallbacks):
        skipped.add(1, r)
    recorded = fam("boot_timestamp_seconds", "When this boot was recorded in the history (history record).")
    if node.history:
        recorded.add(node.history[-1].time)
    when = last_fallback(node.history)
    last = fam("last_fallback_timestamp_seconds", "When the node last fell back to a later role (boot history).")
    if when is not None:
        last.add(when)


def _extension_families(fam: _Families, act: Activation | None) -> None:
    # one series per image FILE: one name can be in .extra/sysext and .extra/global_sysext (or a store
    # folder), each judged or skipped on its own; ``file`` (where it was found) keeps them apart
    # (the name alone would write one identity twice: docs/fleet.md, "The metrics and their labels")
    placed = fam(
        "extension_placed",
        "Per extension file at the last activation: 1 placed, 0 not; its verdict and the class of its reason.",
        "extension",
        "file",
        "verdict",
        "reason",
    )
    anchors = fam("trust_anchors", "Trust anchors the last activation judged signatures with.", "source")
    anchor_info = fam("trust_anchor_info", "1 per trust anchor in use, by fingerprint.", "fingerprint", "source")
    revoked = fam("trust_anchors_revoked", "Trust anchors found but revoked at the last activation.")
    if act is not None:
        fam("activation_info", "1: the mode of the last activation.", "mode").add(1, act.mode or "")
        for i in act.images:
            if i.name is not None:
                placed.add(
                    1.0 if i.placed else 0.0, i.name, i.file or "", i.verdict or "", ReasonClass.of(i.reasons).value
                )
        by_source: dict[str, int] = {}
        # one series per (fingerprint, source class): activation keeps one anchor per fingerprint, but
        # two files of one class (two verity.d certificates) would be one identity if a report said so
        for fp, src in dict.fromkeys((a.fingerprint or "", anchor_source(a.source)) for a in act.anchors):
            by_source[src] = by_source.get(src, 0) + 1
            anchor_info.add(1, fp, src)
        for src, n in sorted(by_source.items()):
            anchors.add(n, src)
        revoked.add(act.revoked)
    _required_family(fam, act)


def _required_family(fam: _Families, act: Activation | None) -> None:
    required = fam(
        "extension_required",
        "Per extension of sysext.required at the last activation: 1 merged, 0 not (the boot is not good).",
        "extension",
        "problem",
    )
    if act is not None and act.required is not None and act.required.enforced:
        refused = {n for n, _ in act.required.refused}
        for name in dict.fromkeys(act.required.names):  # the config refuses a name twice; a report may not
            problem = "refused" if name in refused else "missing" if name in act.required.missing else "none"
            required.add(1.0 if problem == "none" else 0.0, name, problem)


def _upgrade_families(fam: _Families, node: NodeStatus) -> None:
    from bootkeeper.assess import history

    if node.upgrades:
        u = node.upgrades[-1]
        fam("last_upgrade_timestamp_seconds", "When the last upgrade ran.", "role").add(u.time, u.role.value)
        fam(
            "last_upgrade_info", "1: the last upgrade's role, versions and result.", "role", "from", "to", "result"
        ).add(1, u.role.value, history.os_version(u.before.os), history.os_version(u.after.os), u.result)
    fam("upgrade_failed", "1 if this fallback undid the last upgrade of active.").add(
        1.0 if node.failed_upgrade else 0.0
    )
    hb = node.handback
    if hb is not None and hb.count is not None:
        fam("statereset_handbacks", "Statereset hand-backs since the last good active or passive boot.").add(hb.count)
    if hb is not None:
        fam("statereset_handback_budget", "boot_assessment.handbacks: hand-backs allowed in a row.").add(hb.budget)
    fam(
        "statereset_stays",
        "1 if the node stays on statereset: its hand-back budget is spent and active and passive cannot boot.",
    ).add(1.0 if hb is not None and hb.staying else 0.0)


def _repair_families(fam: _Families, node: NodeStatus) -> None:
    """``bootkeeper repair``'s attempts from the boot history (docs/updates.md, "Repair"): when the last
    ran and how it ended (one series per result, always written: a node that never repaired reports 0s),
    and how many the history holds."""
    from bootkeeper.assess.history import REPAIR_RESULTS

    last = node.repairs[-1] if node.repairs else None
    when = fam(
        "repair_last_attempt_timestamp_seconds", "When bootkeeper repair last tried to repair active and passive."
    )
    if last is not None:
        when.add(last.time)
    result = fam(
        "repair_last_result", "1 for how the last repair attempt ended (repaired, failed); 0s: none recorded.", "result"
    )
    for r in REPAIR_RESULTS:
        result.add(1.0 if last is not None and last.result == r else 0.0, r)
    fam("repair_attempts", "Repair attempts in the boot history (the newest 5 are read).").add(len(node.repairs))


def _tpm_families(fam: _Families, tpm: TpmResult | None) -> None:
    if tpm is not None:
        fam("tpm_verify_agree", "1 if tpm verify found the live PCRs as predicted, 0 if not.").add(
            1.0 if tpm.agree else 0.0
        )
        fam("tpm_verify_timestamp_seconds", "When tpm verify last ran.").add(tpm.time)
        fam("tpm_verify_findings", "What tpm verify found wrong.").add(tpm.findings)
        incomplete = fam(
            "tpm_verify_incomplete",
            "1 for each reason tpm verify could not verify everything (then agree is 0): entry (an ESP entry "
            "cannot be predicted), input (an input stopped verify), result (its result file cannot be read).",
            "reason",
        )
        for why in TPM_INCOMPLETE:
            incomplete.add(1.0 if why in tpm.incomplete else 0.0, why)
        pcr = fam("tpm_pcr_agree", "1 if this PCR replays and matches the prediction.", "bank", "pcr")
        # one series per (bank, PCR): verify writes one row each, but the file is read back from /run;
        # a PCR listed twice agrees only if every row does
        agrees: dict[tuple[str, int], bool] = {}
        for bank, n, ok in tpm.pcrs:
            agrees[bank, n] = agrees.get((bank, n), True) and ok
        for (bank, n), ok in agrees.items():
            pcr.add(1.0 if ok else 0.0, bank, str(n))


# every file or variable metrics reads, as the ``source`` label of bootkeeper_source_unreadable: a fault
# in one sets that series (and BootkeeperSourceUnreadable fires) instead of only removing the series
# it feeds (docs/fleet.md, "The metrics and their labels"). ``status``: the status could not be gathered
# at all (the ESP, the config).
SOURCES = ("status", "efivars", "history", "activation", "handbacks", "tpm_verify")


def _sources(fam: _Families, bad: set[str]) -> None:
    f = fam(
        "source_unreadable",
        "1 for each source bootkeeper metrics could not read (its series are missing or partial): status, "
        "efivars, history, activation, handbacks, tpm_verify.",
        "source",
    )
    for s in SOURCES:
        f.add(1.0 if s in bad else 0.0, s)


def activation_unread(root: Path, shown: Status) -> bool:
    """An activation report is there (a file, or a name that is not one), but none was read."""
    from bootkeeper.sysext import report

    return shown.extensions.activation is None and os.path.lexists(root / report.REPORT)


def collect(
    root: Path, tpm: TpmResult | None, now: float, status: Callable[[], Status]
) -> tuple[list[Family], InputError | None]:
    """The families of ``status()``; when the status cannot be gathered (an ESP or config at fault), the
    failure written as series (source_unreadable{source="status"}) and the error, for its exit code once
    the file is written: never the last file left in place looking current."""
    try:
        shown = status()
        return build(shown, tpm, now, activation_unread(root, shown)), None
    except InputError as exc:
        return build_unread(tpm, now), exc


def build_unread(tpm: TpmResult | None, now: float) -> list[Family]:
    """The families when the status could not be gathered at all: the failure as series
    (status_warnings, source_unreadable{source="status"}, the TPM result, the time), written in place of
    the last file, which would otherwise stay and look current until BootkeeperMetricsStale."""
    fam = _Families()
    _tpm_families(fam, tpm)
    fam("status_warnings", "Sources status could not read (see bootkeeper status).").add(
        1 + (1 if tpm is not None and tpm.problem else 0)
    )
    _sources(fam, {"status", *(("tpm_verify",) if tpm is not None and tpm.problem else ())})
    fam("metrics_timestamp_seconds", "When bootkeeper metrics wrote this file.").add(now)
    return fam.out


def write_textfile(dest: Path, data: bytes) -> None:
    """Crash-safe: a temporary file in the same folder, then a rename (the collector never reads
    half a file)."""
    from bootkeeper import fsutil
    from bootkeeper.errors import WriteError

    if not dest.parent.is_dir():
        raise WriteError(f"{dest.parent}: no such folder (the textfile collector's folder must exist)")
    try:
        fsutil.write_atomic(dest, data)
    except OSError as exc:
        raise WriteError(f"{dest}: cannot write ({exc.strerror or exc})") from exc


def exposition(families: Iterable[Family]) -> bytes:
    """The text format, written by ``prometheus_client`` (imported here only: ``metrics`` pays
    for it, no boot-path verb does); the textfile collector reads format 0.0.4."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily, Metric

    fams = list(families)

    class _Collector:
        def collect(self) -> Iterable[Metric]:
            for f in fams:
                g = GaugeMetricFamily(f.name, f.help, labels=list(f.labels))
                for labels, value in f.samples:
                    g.add_metric(list(labels), value)
                yield g

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return bytes(generate_latest(registry))


def rules_text() -> str:
    """The alert rules the package ships (bootkeeper/data/alerts.yml)."""
    from importlib.resources import files

    return files("bootkeeper").joinpath("data", RULES).read_text(encoding="utf-8")


def as_dict(families: Iterable[Family]) -> dict[str, list[dict[str, object]]]:
    """``--json``: name → list of {labels, value}."""
    return {
        f.name: [{"labels": dict(zip(f.labels, ls, strict=True)), "value": v} for ls, v in f.samples] for f in families
    }
