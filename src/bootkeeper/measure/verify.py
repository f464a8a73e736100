"""``tpm verify``: does what the TPM saw agree with what the ESP says should boot?

Three comparisons, all pure (the CLI reads the machine and hands the values in):

* log integrity: the firmware's event log (and systemd-pcrextend's userspace log, when there is one)
  replayed gives the live PCR values; a log that does not is a finding, since nothing else in it can
  then be trusted;
* the stub's events: PCR 11 (the UKI's sections), 12 (command lines, credentials, addons) and 13 (the
  system extensions) as logged, event by event (type, event data, digest), against
  :func:`bootkeeper.measure.predict.predict` for the booted entry;
* live PCR 11 against the predicted value after the boot phases the userspace log names (without
  that log: after any prefix of ``enter-initrd:leave-initrd:sysinit:ready``).

When a cpio event differs (PCR 13's extensions, PCR 12's credentials), the files are named: the
prediction's (name, size, sha256) against the copies the machine booted, and against a saved
prediction (``--expect``), as "added x.raw", "removed y.raw", "changed z.raw (sha256 a… → b…)"."""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bootkeeper.errors import MalformedError
from bootkeeper.esp import counter
from bootkeeper.measure import uki
from bootkeeper.measure.banks import BANKS, Bank, extend
from bootkeeper.measure.eventlog import EV_NO_ACTION, EventLog, LogEvent, UserLog
from bootkeeper.measure.events import EV_EVENT_TAG, EV_IPL, EVENT_TYPE_NAMES, Event, FileRef
from bootkeeper.measure.predict import Prediction, Unpredictable

__all__ = ["Expected", "PcrRow", "Report", "Unverified", "booted_files", "failed", "parse_expected", "verify"]

STUB_PCRS = (11, 12, 13)
SYSEXT = "System extension initrd"  # predict's PCR 13 cpio event
SKIPPED = {10: "PCR 10 is IMA's, with its own log"}


@dataclass(frozen=True)
class ExpectedEvent:
    pcr: int
    type_name: str
    description: str
    digests: dict[str, bytes]
    files: tuple[FileRef, ...]


@dataclass(frozen=True)
class Expected:
    """One entry of a saved ``tpm predict --json``."""

    entry: str
    uki: str
    events: tuple[ExpectedEvent, ...]


@dataclass(frozen=True)
class PcrRow:
    bank: str
    pcr: int
    live: bytes | None
    replayed: bytes
    predicted: bytes | None
    agree: bool
    phases: tuple[str, ...] | None = None  # PCR 11: the phase words after the handover

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "bank": self.bank,
            "pcr": self.pcr,
            "live": None if self.live is None else self.live.hex(),
            "replayed": self.replayed.hex(),
            "predicted": None if self.predicted is None else self.predicted.hex(),
            "agree": self.agree,
        }
        if self.phases is not None:
            out["phases"] = list(self.phases)
        return out


# why a part of the verification could not be done (``unverified[].kind`` in the JSON, the ``reason``
# label of ``bootkeeper_tpm_verify_incomplete``): an entry on the ESP whose measurements cannot be
# predicted, or an input verify reads (the event log, the live PCRs, the efivars, the ESP, the
# config, --expect) that stopped it before any verdict
INCOMPLETE = ("entry", "input")


@dataclass(frozen=True)
class Unverified:
    """What could not be verified, and why (one line)."""

    kind: str  # one of INCOMPLETE
    reason: str
    entry: str | None = None
    uki: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "entry": self.entry, "uki": self.uki, "reason": self.reason}


@dataclass(frozen=True)
class Report:
    entry: str | None
    uki: str | None
    found_by: str  # how the booted entry was found
    rows: tuple[PcrRow, ...]
    findings: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())
    unverified: tuple[Unverified, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """Everything was verified and agrees: a verification that could not complete is failed
        (each :class:`Unverified` is a finding too)."""
        return not self.findings and not self.unverified

    def to_json(self) -> dict[str, object]:
        return {
            "booted": {"entry": self.entry, "uki": self.uki, "found_by": self.found_by},
            "agree": self.ok,
            "complete": not self.unverified,
            "unverified": [u.to_json() for u in self.unverified],
            "pcrs": [r.to_json() for r in self.rows],
            "findings": list(self.findings),
            "notes": list(self.notes),
        }


def failed(reason: str) -> Report:
    """The report of a verification an input stopped before any verdict (the CLI leaves it for
    ``metrics`` before it exits with the error's code): failed, not absent."""
    u = Unverified("input", reason)
    return Report(None, None, "nothing (verify stopped)", (), (f"not verified: {reason}",), (), (u,))


# -- inputs ---------------------------------------------------------------------------------------


def _files_of(raw: object, where: str) -> tuple[FileRef, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise MalformedError(f"{where}: files: expected a list")
    out = []
    for i, f in enumerate(raw):
        name, size, sha256 = (f.get(k) for k in ("name", "size", "sha256")) if isinstance(f, dict) else (None,) * 3
        if not isinstance(name, str) or not isinstance(size, int) or not isinstance(sha256, str):
            raise MalformedError(f"{where}: files[{i}]: expected {{name, size, sha256}}")
        out.append(FileRef(name, size, sha256))
    return tuple(out)


def parse_expected(obj: object, what: str) -> list[Expected]:
    """The ``entries`` of ``tpm predict --json``."""
    entries = obj.get("entries") if isinstance(obj, dict) else None
    if not isinstance(entries, list):
        raise MalformedError(f"{what}: not the output of tpm predict --json (no entries list)")
    out = []
    for i, e in enumerate(entries):
        where = f"{what}: entries[{i}]"
        entry, events = (e.get("entry"), e.get("events")) if isinstance(e, dict) else (None, None)
        if not isinstance(entry, str) or not isinstance(events, list):
            raise MalformedError(f"{where}: expected an object with entry and events")
        parsed = tuple(_expected_event(ev, f"{where}: events[{j}]") for j, ev in enumerate(events))
        out.append(Expected(entry, str(e.get("uki", "")), parsed))
    return out


def _expected_event(ev: object, where: str) -> ExpectedEvent:
    """One event of a saved prediction."""
    pcr, digests = (ev.get("pcr"), ev.get("digests")) if isinstance(ev, dict) else (None, None)
    if not isinstance(ev, dict) or not isinstance(pcr, int) or not isinstance(digests, dict):
        raise MalformedError(f"{where}: expected an object with pcr and digests")
    try:
        values = {str(k): bytes.fromhex(str(v)) for k, v in digests.items()}
    except ValueError as exc:
        raise MalformedError(f"{where}: digests: not hex") from exc
    return ExpectedEvent(
        pcr, str(ev.get("type", "")), str(ev.get("description", "")), values, _files_of(ev.get("files"), where)
    )


def booted_files(folder: Path, suffix: str = ".raw", exclude: str | None = ".confext.raw") -> tuple[FileRef, ...]:
    """(name, size, sha256) of the copies the machine booted (the stub's /.extra/sysext, or a folder the
    initrd kept them in), as the stub would have picked them."""
    from bootkeeper import fsutil
    from bootkeeper.errors import UnreadableError
    from bootkeeper.measure import cpio

    out = []
    for m in cpio.members(folder, suffix, exclude, str(folder)):
        h = hashlib.sha256()
        size = 0
        try:
            # a FIFO here must not hang the verdict; a link is followed (a folder the initrd kept)
            with fsutil.open_regular(m.path, follow=True) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    size += len(chunk)
        except OSError as exc:
            raise UnreadableError(f"{m.path}: cannot read ({exc.strerror or exc})") from exc
        out.append(FileRef(m.name, size, h.hexdigest()))
    return tuple(out)


# -- comparing ------------------------------------------------------------------------------------


def _text(event_type: int, data: bytes) -> str:
    """The UTF-16 description systemd puts in an event's data (behind the tag header for EV_EVENT_TAG)."""
    body = data[8:] if event_type == EV_EVENT_TAG else data
    try:
        return body.decode("utf-16-le").rstrip("\0")
    except UnicodeDecodeError:
        return data[:32].hex()


def _type_name(t: int) -> str:
    return EVENT_TYPE_NAMES.get(t, f"0x{t:08x}")


def diff_files(before: Sequence[FileRef], after: Sequence[FileRef]) -> list[str]:
    """What changed from ``before`` to ``after``: "added x", "removed y", "changed z (sha256 a… → b…)"."""
    old = {f.name: f for f in before}
    new = {f.name: f for f in after}
    out = [f"added {n}" for n in new if n not in old]
    out += [f"removed {n}" for n in old if n not in new]
    for n, f in new.items():
        o = old.get(n)
        if o is not None and (o.sha256 != f.sha256 or o.size != f.size):
            out.append(f"changed {n} (sha256 {o.sha256[:12]}… → {f.sha256[:12]}…)")
    return out


def _short(v: bytes) -> str:
    return v.hex()[:16] + "…"


def _match_events(
    logged: list[LogEvent], predicted: list[Event], banks: tuple[Bank, ...]
) -> tuple[list[str], list[tuple[int, Event | None]]]:
    """Findings, and the predicted cpio events whose log record differs or is missing (with the PCR)."""
    findings: list[str] = []
    bad_cpio: list[tuple[int, Event | None]] = []
    lk = [(e.pcr, e.event_type, e.data) for e in logged]
    pk = [(e.pcr, e.event_type, e.event_data()) for e in predicted]
    sm = difflib.SequenceMatcher(None, lk, pk, autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            for le, pe in zip(logged[i1:i2], predicted[j1:j2], strict=True):
                for b in banks:
                    got, want = le.digests.get(b.name), pe.digests.get(b.name)
                    if got is not None and want is not None and got != want:
                        findings.append(
                            f"PCR {le.pcr}: {pe.type_name} '{pe.description}' ({pe.what}): logged {b.name} "
                            f"{_short(got)}, predicted {_short(want)}"
                        )
                        if pe.files:
                            bad_cpio.append((pe.pcr, pe))
                        break
            continue
        for le in logged[i1:i2]:
            findings.append(
                f"PCR {le.pcr}: logged {_type_name(le.event_type)} '{_text(le.event_type, le.data)}' "
                f"(offset {le.offset}), not predicted"
            )
        for pe in predicted[j1:j2]:
            findings.append(f"PCR {pe.pcr}: predicted {pe.type_name} '{pe.description}' ({pe.what}), not logged")
            if pe.files:
                bad_cpio.append((pe.pcr, pe))
        if any(le.pcr in (12, 13) and le.event_type != EV_EVENT_TAG for le in logged[i1:i2]) and not any(
            pe.files for pe in predicted[j1:j2]
        ):
            bad_cpio.append((logged[i1].pcr, None))  # a cpio the ESP no longer has
    return findings, bad_cpio


def _pick(
    predictions: list[Prediction],
    log: EventLog,
    stub_image: str | None,
    selected: str | None,
    broken: Sequence[Unpredictable] = (),
) -> tuple[Prediction | Unpredictable | None, str]:
    """The booted entry and how it was found: the one the EFI variables name, else the prediction
    that has most of its events in the log."""
    # an entry that cannot be predicted is still a candidate when an EFI variable names it: the
    # booted entry is then unverifiable, not silently another one
    candidates, how = _named(predictions, broken, stub_image, selected)
    if not candidates:
        candidates = list(predictions)
        how = "the log (no EFI variable names an entry on the ESP)" if (selected or stub_image) else "the log"
    if not candidates:
        return None, how
    scored = [p for p in candidates if isinstance(p, Prediction)]
    if not scored:
        return candidates[0], how
    seen = {(e.pcr, e.event_type, e.data, k, v) for e in log.events for k, v in e.digests.items()}
    best = max(scored, key=lambda p: _score(p, log, seen))
    if len(candidates) > 1:
        how += f" (best of {len(candidates)} by the logged events)"
    return best, how


def _named(
    predictions: list[Prediction], broken: Sequence[Unpredictable], stub_image: str | None, selected: str | None
) -> tuple[list[Prediction | Unpredictable], str]:
    """The entries the EFI variables name (LoaderEntrySelected, narrowed by StubImageIdentifier, or
    the latter alone), and the words saying so."""
    everyone: list[Prediction | Unpredictable] = [*predictions, *broken]
    candidates: list[Prediction | Unpredictable] = []
    how = ""
    if selected:
        # a UKI's profile N >= 1 is "FILE@ID" or "FILE@N" (src/boot/boot.c, v257.9), as predict names it
        name, at, profile = selected.partition("@")
        suffix = ".efi" if name.lower().endswith(".efi") else ".conf"
        key = counter.parse(name, suffix).stem + at + profile
        candidates = [p for p in everyone if p.entry.lower() == key.lower()]
        how = f"LoaderEntrySelected={selected}"
    if stub_image and (not candidates):
        candidates = [p for p in everyone if _norm(p.uki) == _norm(stub_image)]
        how = f"StubImageIdentifier={stub_image}"
    elif stub_image and candidates:
        same = [p for p in candidates if _norm(p.uki) == _norm(stub_image)]
        candidates = same or candidates
        how += f", StubImageIdentifier={stub_image}"
    return candidates, how


def _score(p: Prediction, log: EventLog, seen: set[tuple[int, int, bytes, str, bytes]]) -> int:
    """How many of the prediction's events the log has (``seen``), digests and all."""
    common = [b.name for b in p.banks if b in log.banks]
    return sum(
        bool(common) and all((e.pcr, e.event_type, e.event_data(), k, e.digests[k]) in seen for k in common)
        for e in p.events
    )


def _norm(path: str) -> str:
    """An ESP path without case or boot counter: the stub ran ``active+1-1.efi``, a bless renamed it."""
    folder, _, base = path.replace("\\", "/").strip("/").rpartition("/")
    return f"{folder}/{counter.parse(base, '.efi').stem}".lower()


def _phase_prefix(start: bytes, live: bytes, b: Bank) -> tuple[str, ...] | None:
    """The prefix of the phase path after which PCR 11 is ``live``, or None."""
    v = start
    if v == live:
        return ()
    for n, p in enumerate(uki.PHASES, 1):
        v = extend(b, v, b.digest(p.encode()))
        if v == live:
            return uki.PHASES[:n]
    return None


def verify(
    log: EventLog,
    user: UserLog | None,
    live: dict[str, dict[int, bytes]],
    predictions: list[Prediction],
    *,
    stub_image: str | None = None,
    selected: str | None = None,
    booted: tuple[FileRef, ...] | None = None,
    booted_where: str | None = None,
    expected: list[Expected] | None = None,
    expect_what: str = "--expect",
    unpredictable: Sequence[Unpredictable] = (),
) -> Report:
    """``unpredictable``: the entries :func:`bootkeeper.measure.predict.predict_each` could not
    predict. Each is unverified (a finding); the booted entry, when it is another, is verified all
    the same; when it is one of them, its log and live PCRs still are."""
    picked, how = _pick(predictions, log, stub_image, selected, unpredictable)
    v = _Verifying(log, user, live, picked if isinstance(picked, Prediction) else None)
    unverified = _unpredictable(v, unpredictable, picked)
    if picked is None:
        v.findings.append("no boot entry on the ESP runs a UKI: nothing to compare the log with")
    banks = _banks(v)
    if user is not None:
        v.notes += user.notes
        if user.aborted:
            v.findings.append(
                f"{user.what}: a writer was cut off mid-record (sticky bit set): it may lack a measurement"
            )
    # log integrity, and what is predicted
    _replay(v, banks)
    if user is not None and v.pred is not None:
        odd = [e for e in user.of_pcr(11) if e.event_type != "phase"]
        for e in odd:
            v.findings.append(f"{user.what}: record {e.index}: PCR 11 extended with {e.string!r}, not a boot phase")
    # event by event, and the files behind a cpio event that differs
    if v.pred is not None and banks:
        against = _Against(booted, booted_where, expected, expect_what)
        v.findings += _event_findings(log, v.pred, banks, against)
    return Report(
        picked.entry if picked else None,
        picked.uki if picked else None,
        how,
        tuple(v.rows),
        tuple(v.findings),
        tuple(v.notes),
        tuple(unverified),
    )


@dataclass
class _Verifying:
    """One verification: what it compares (the log, the userspace log, the live PCRs, the booted
    entry's prediction) and what it found so far, in the order the report lists it."""

    log: EventLog
    user: UserLog | None
    live: dict[str, dict[int, bytes]]
    pred: Prediction | None
    findings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rows: list[PcrRow] = field(default_factory=list)


@dataclass(frozen=True)
class _Against:
    """What the files behind a cpio event are compared with: the copies the machine booted (and
    where they are) and a saved prediction (and how it was named)."""

    booted: tuple[FileRef, ...] | None
    booted_where: str | None
    expected: list[Expected] | None
    expect_what: str


def _unpredictable(
    v: _Verifying, unpredictable: Sequence[Unpredictable], picked: Prediction | Unpredictable | None
) -> list[Unverified]:
    """Each entry that cannot be predicted: unverified, and a finding (saying so when it is the booted one)."""
    unverified: list[Unverified] = []
    for u in unpredictable:
        booted_one = u is picked
        unverified.append(Unverified("entry", u.reason, u.entry, u.uki))
        v.findings.append(
            f"entry {u.entry} ({u.uki}) cannot be predicted: {u.reason}"
            + (": it is the booted entry, its PCRs 11, 12 and 13 are not verified" if booted_one else "")
        )
    return unverified


def _banks(v: _Verifying) -> tuple[Bank, ...]:
    """The banks both the log and the prediction have (any the log has, without a prediction)."""
    pred_banks = {b.name for b in v.pred.banks} if v.pred is not None else set(BANKS)
    banks = tuple(b for b in v.log.banks if b.name in pred_banks)
    if not banks:
        have = ", ".join(b.name for b in v.log.banks) or "none"
        v.findings.append(f"{v.log.what}: the log has no bank the prediction has ({have})")
    return banks


def _replay(v: _Verifying, banks: tuple[Bank, ...]) -> None:
    """A row for each PCR the logs touch (and the stub's), in each bank: replayed, live, predicted."""
    predicted = v.pred.pcrs() if v.pred is not None else {}
    touched = {e.pcr for e in v.log.events if e.event_type != EV_NO_ACTION} | set(STUB_PCRS)
    if v.user is not None:
        touched |= {e.pcr for e in v.user.events}
    for n, why in SKIPPED.items():
        if n in touched:
            v.notes.append(why + ": not checked")
    for b in banks:
        replayed = v.log.replay(b)
        live_b = v.live.get(b.name)
        if live_b is None:
            v.notes.append(f"no live {b.name} PCRs (ROOT/sys/class/tpm/tpm0/pcr-{b.name}/): log integrity not checked")
        for n in sorted(touched - set(SKIPPED)):
            _row(v, b, n, replayed[n], None if live_b is None else live_b.get(n), predicted)


def _row(
    v: _Verifying, b: Bank, n: int, value: bytes, got: bytes | None, predicted: dict[str, dict[int, bytes]]
) -> None:
    """PCR ``n`` of bank ``b``: the firmware log's ``value`` extended by what came after it (the
    userspace log's records, or the boot phases that make it the live value), against ``got``
    (live) and the prediction."""
    phases: tuple[str, ...] | None = None
    if v.user is not None:
        value = _user_extends(v, v.user, b, n, value)
        if n == 11:
            phases = v.user.phases()
    elif n == 11 and got is not None:
        phases = _phase_prefix(value, got, b)
        for p in phases or ():
            value = extend(b, value, b.digest(p.encode()))
    elif n == 15 and got is not None and got != value:
        v.notes.append(f"PCR 15 ({b.name}) is extended from userspace and there is no userspace log: not checked")
        return
    want = _want(v.pred, predicted, b, n, phases)
    agree = (got is None or got == value) and (want is None or want == value)
    v.rows.append(PcrRow(b.name, n, got, value, want, agree, phases))
    if got is not None and got != value:
        v.findings.append(_not_the_tpms(b, n, got, value, v.user is None))
    elif want is not None and want != value:
        v.findings.append(f"PCR {n} ({b.name}): {_short(value)}, predicted {_short(want)}")


def _user_extends(v: _Verifying, user: UserLog, b: Bank, n: int, value: bytes) -> bytes:
    """``value`` extended by the userspace log's records of PCR ``n`` (a record without this bank's
    digest is a finding)."""
    for ue in user.of_pcr(n):
        d = ue.digests.get(b.name)
        if d is None:
            v.findings.append(f"{user.what}: record {ue.index}: no {b.name} digest for PCR {n}")
            continue
        value = extend(b, value, d)
    return value


def _want(
    pred: Prediction | None,
    predicted: dict[str, dict[int, bytes]],
    b: Bank,
    n: int,
    phases: tuple[str, ...] | None,
) -> bytes | None:
    """The predicted value of one of the stub's PCRs (PCR 11 after ``phases``); None for the others."""
    if n not in STUB_PCRS or pred is None:
        return None
    want = predicted[b.name][n]
    if n == 11 and phases:
        want = uki.phase_values({b.name: want}, (b,), phases)[b.name][phases[-1]]
    return want


def _not_the_tpms(b: Bank, n: int, got: bytes, value: bytes, no_user_log: bool) -> str:
    """The finding for a live PCR the logs do not replay to."""
    if n == 11 and no_user_log:
        return (
            f"PCR 11 ({b.name}): the TPM holds {_short(got)}, which is the logged handover value after no "
            f"prefix of the boot phases {':'.join(uki.PHASES)} (and there is no userspace log)"
        )
    return (
        f"PCR {n} ({b.name}): the log replays to {_short(value)}, the TPM holds {_short(got)}: the log is not the TPM's"
    )


def _event_findings(log: EventLog, pred: Prediction, banks: tuple[Bank, ...], against: _Against) -> list[str]:
    """The stub's events as logged against the prediction, and the files behind each cpio event that
    differs (from the prediction, or from ``--expect``)."""
    logged = [e for n in STUB_PCRS for e in log.of_pcr(n)]
    predicted = [e for n in STUB_PCRS for e in pred.events if e.pcr == n]
    findings, bad_cpio = _match_events(logged, predicted, banks)
    if against.expected is not None:
        # what was meant to boot is compared with the log even where the log and the ESP agree
        # (the ESP may have been changed before the boot): each cpio the two disagree on
        exp = _expected_for(against.expected, pred)
        known = {(n, ev.description if ev is not None else SYSEXT) for n, ev in bad_cpio}
        for n, ev in _differs_from_expected(log, exp, banks) if exp is not None else []:
            if (n, ev.description if ev is not None else SYSEXT) not in known:
                bad_cpio.append((n, ev))
    return findings + _name_files(bad_cpio, pred, against, log)


def _expected_for(expected: list[Expected], pred: Prediction) -> Expected | None:
    """The saved prediction's entry for the booted one: by entry name, else by UKI path."""
    exp = next((x for x in expected if x.entry.lower() == pred.entry.lower()), None)
    return exp if exp is not None else next((x for x in expected if x.uki.lower() == pred.uki.lower()), None)


def _differs_from_expected(log: EventLog, exp: Expected, banks: tuple[Bank, ...]) -> list[tuple[int, Event | None]]:
    """The cpio events (PCR 12 and 13) where the log and ``--expect`` disagree: a digest, or one of
    them without the event. The logged event stands in as an :class:`Event` (its description)."""
    out: list[tuple[int, Event | None]] = []
    for n in (12, 13):
        meant = {e.description: e for e in exp.events if e.pcr == n and e.files}
        logged = {le.data: le for le in log.of_pcr(n) if le.event_type == EV_IPL}
        names = set(meant) | ({SYSEXT} if n == 13 and _event_data(SYSEXT) in logged else set())
        for d in sorted(names):
            rec = logged.get(_event_data(d))
            theirs = meant.get(d)
            same = (
                rec is not None
                and theirs is not None
                and all(
                    rec.digests.get(b.name) == theirs.digests.get(b.name) for b in banks if b.name in theirs.digests
                )
            )
            if not same:
                out.append((n, Event(n, EV_IPL, d, d, {})))
    return out


def _name_files(bad: list[tuple[int, Event | None]], pred: Prediction, against: _Against, log: EventLog) -> list[str]:
    out: list[str] = []
    pcrs = sorted({n for n, _ in bad})
    if not pcrs:
        return out
    exp = None
    if against.expected is not None:
        exp = _expected_for(against.expected, pred)
        if exp is None:
            out.append(f"{against.expect_what}: has no entry {pred.entry}")
    for n in pcrs:
        # the cpio events of this PCR, by description ("System extension initrd", "Credentials initrd", ...)
        descs = list(dict.fromkeys([e.description for m, e in bad if m == n and e is not None]))
        if not descs:
            descs = [SYSEXT] if n == 13 else []
        if exp is not None:
            descs += [e.description for e in exp.events if e.pcr == n and e.files and e.description not in descs]
        for d in descs:
            out += _name_cpio(n, d, pred, log, against.booted if n == 13 and d == SYSEXT else None, against, exp)
    return out


def _name_cpio(
    n: int,
    d: str,
    pred: Prediction,
    log: EventLog,
    booted: tuple[FileRef, ...] | None,
    against: _Against,
    exp: Expected | None,
) -> list[str]:
    """The files behind one cpio event: the ESP's against what booted, what booted against ``--expect``."""
    out: list[str] = []
    esp = next((e.files for e in pred.events if e.pcr == n and e.description == d), ())
    what = f"PCR {n} '{d}'"
    if booted is not None:
        changes = diff_files(booted, esp)
        if changes:
            out.append(f"{what}: the ESP against what booted ({against.booted_where}): {', '.join(changes)}")
        else:
            out.append(f"{what}: the ESP holds what booted ({against.booted_where})")
    if exp is None:
        return out
    theirs = next((e for e in exp.events if e.pcr == n and e.description == d), None)
    meant = theirs.files if theirs is not None else ()
    if booted is not None:
        changes = diff_files(meant, booted)
        out.append(
            f"{what}: what booted against {against.expect_what}: {', '.join(changes)}"
            if changes
            else f"{what}: what booted is what {against.expect_what} names"
        )
    else:
        out.append(f"{what}: {_logged_against(n, d, pred, log, theirs, against.expect_what)}")
    changes = diff_files(meant, esp)
    if changes:
        out.append(f"{what}: the ESP against {against.expect_what}: {', '.join(changes)}")
    return out


def _logged_against(
    n: int, d: str, pred: Prediction, log: EventLog, theirs: ExpectedEvent | None, expect_what: str
) -> str:
    """Which of ``--expect`` and the ESP the logged cpio event ``d`` matches."""
    rec = next((le for le in log.of_pcr(n) if le.data == _event_data(d)), None)
    if rec is None:
        return f"the log matches neither the ESP nor {expect_what}"
    if theirs is not None and _has(rec, theirs.digests):
        return f"the log matches {expect_what}"
    ours = next((e for e in pred.events if e.pcr == n and e.description == d), None)
    if ours is not None and _has(rec, ours.digests):
        return f"the log matches the ESP, not {expect_what}"
    return f"the log matches neither the ESP nor {expect_what}"


def _has(rec: LogEvent, digests: dict[str, bytes]) -> bool:
    """The logged record has ``digests`` in every bank it was logged in."""
    return all(rec.digests.get(k) == v for k, v in digests.items() if k in rec.digests)


def _event_data(description: str) -> bytes:
    return (description + "\0").encode("utf-16-le")


def live_pcrs(folder: Path, banks: Iterable[Bank]) -> dict[str, dict[int, bytes]]:
    """``/sys/class/tpm/tpm0/pcr-<bank>/<n>`` (Linux 5.12+): one hex value a file."""
    from bootkeeper import fsutil
    from bootkeeper.errors import UnreadableError

    out: dict[str, dict[int, bytes]] = {}
    for b in banks:
        d = folder / f"pcr-{b.name}"
        if not d.is_dir():
            continue
        values: dict[int, bytes] = {}
        for n in range(24):
            p = d / str(n)
            if not os.path.lexists(p):
                continue
            try:
                # sysfs: one hex line; a fake root's file may be anything, a FIFO too (refused, not read)
                with fsutil.open_regular(p) as f:
                    text = f.read(2 * b.size + 2).decode("ascii", "replace").strip()
            except OSError as exc:
                raise UnreadableError(f"{p}: cannot read ({exc.strerror or exc})") from exc
            try:
                v = bytes.fromhex(text)
            except ValueError:
                raise MalformedError(f"{p}: {text[:20]!r} is not a hex PCR value") from None
            if len(v) != b.size:
                raise MalformedError(f"{p}: {len(v)} bytes, a {b.name} PCR has {b.size}")
            values[n] = v
        out[b.name] = values
    return out
