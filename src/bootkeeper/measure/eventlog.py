"""The TPM event logs of a booted machine, read and replayed into PCR values.

The firmware's log (``/sys/kernel/security/tpm0/binary_bios_measurements``) is the crypto-agile
format of the TCG PC Client Platform Firmware Profile (1.05, 10.2 and 10.4): a first record in the
old SHA-1 layout (``TCG_PCR_EVENT``: pcrIndex u32, eventType u32, a 20-byte digest, eventSize u32,
event) whose EV_NO_ACTION data is the ``TCG_EfiSpecIdEvent`` "Spec ID Event03" (the algorithms the
log carries and their digest sizes), then ``TCG_PCR_EVENT2`` records: pcrIndex u32, eventType u32,
a ``TPML_DIGEST_VALUES`` (count u32, then per digest an algId u16 and the digest, of the size the
header gave), eventSize u32, event. All little-endian. EV_NO_ACTION records are not extended; a
"StartupLocality" one sets PCR 0's value at reset (10.4.5.3).

systemd-pcrextend's own log (``/run/log/systemd/tpm2-measure.log``) is RFC 7464 JSON text sequences of
a subset of TCG CEL-JSON records (src/shared/tpm2-util.c, v257.9, ``tpm2_userspace_log()``):
``{"pcr": N, "digests": [{"hashAlg": "sha256", "digest": HEX}], "content_type": "systemd",
"content": {"string": WORD, "bootId": ..., "timestamp": ..., "eventType": "phase"}}``.

Both are input from the machine: every length is checked against what is left before anything is
allocated, and a fault is one :class:`MalformedError` naming the offset and the field."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootkeeper.errors import MalformedError, UnreadableError
from bootkeeper.measure.banks import BANKS, BY_ALG, Bank, extend

__all__ = [
    "EV_NO_ACTION",
    "EventLog",
    "LogEvent",
    "UserEvent",
    "UserLog",
    "parse",
    "parse_user_log",
    "read_log",
    "read_user_log",
]

EV_NO_ACTION = 0x00000003
EV_SEPARATOR = 0x00000004
NUM_PCRS = 24
SPEC_ID = b"Spec ID Event03\0"
SPEC_ID_SHA1 = b"Spec ID Event00\0"  # the TPM 1.2 (SHA-1 only) header
STARTUP_LOCALITY = b"StartupLocality\0"
MAX_LOG = 16 << 20  # real logs are tens of KiB; the kernel's ACPI/EFI table holds at most a few MiB
MAX_USER_LOG = 16 << 20
MAX_ALGS = 16  # the spec's TPML_DIGEST_VALUES has one per implemented bank: a handful
HEADER_DIGEST = 20


@dataclass(frozen=True)
class LogEvent:
    """One TCG_PCR_EVENT2 record; ``digests`` by bank name (algorithms bootkeeper does not know are
    kept by their id, ``alg-0x0012``)."""

    offset: int
    pcr: int
    event_type: int
    digests: dict[str, bytes]
    data: bytes

    def to_json(self) -> dict[str, object]:
        return {
            "offset": self.offset,
            "pcr": self.pcr,
            "type": f"0x{self.event_type:08x}",
            "digests": {k: v.hex() for k, v in self.digests.items()},
            "data": self.data.hex(),
        }


@dataclass(frozen=True)
class EventLog:
    what: str
    algorithms: tuple[tuple[int, int], ...]  # (algId, digest size) as the header lists them
    events: tuple[LogEvent, ...]
    locality: int = 0

    @property
    def banks(self) -> tuple[Bank, ...]:
        """The header's banks that bootkeeper can replay, in the header's order."""
        return tuple(BY_ALG[a] for a, _ in self.algorithms if a in BY_ALG)

    def start(self, bank: Bank, pcr: int) -> bytes:
        """A PCR's value at TPM reset: 0, except PCR 0 under a StartupLocality event (its last byte is
        the locality) and PCRs 17-22 (the dynamic-launch ones, all ones until a DRTM resets them)."""
        if pcr == 0:
            return bytes(bank.size - 1) + bytes([self.locality])
        if 17 <= pcr <= 22:
            return b"\xff" * bank.size
        return bytes(bank.size)

    def replay(self, bank: Bank) -> dict[int, bytes]:
        """Every PCR in one bank, from its start value through the log's extends."""
        values = {n: self.start(bank, n) for n in range(NUM_PCRS)}
        for e in self.events:
            if e.event_type == EV_NO_ACTION:
                continue
            values[e.pcr] = extend(bank, values[e.pcr], e.digests[bank.name])
        return values

    def of_pcr(self, pcr: int) -> list[LogEvent]:
        return [e for e in self.events if e.pcr == pcr and e.event_type != EV_NO_ACTION]


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.what = what
        self.pos = 0

    def fail(self, at: int, field_name: str, why: str) -> MalformedError:
        return MalformedError(f"{self.what}: offset {at}: {field_name}: {why}")

    def take(self, n: int, field_name: str) -> bytes:
        left = len(self.data) - self.pos
        if n > left:
            raise self.fail(self.pos, field_name, f"needs {n} bytes, the log ends after {left}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, field_name: str) -> int:
        return self.take(1, field_name)[0]

    def u16(self, field_name: str) -> int:
        return int(struct.unpack("<H", self.take(2, field_name))[0])

    def u32(self, field_name: str) -> int:
        return int(struct.unpack("<I", self.take(4, field_name))[0])


def _alg_name(alg: int) -> str:
    b = BY_ALG.get(alg)
    return b.name if b is not None else f"alg-0x{alg:04x}"


def _spec_id(r: _Reader) -> tuple[tuple[int, int], ...]:
    """The first record: TCG_PCR_EVENT with the TCG_EfiSpecIdEvent (10.4.5.1)."""
    at = r.pos
    pcr = r.u32("first record: pcrIndex")
    etype = r.u32("first record: eventType")
    r.take(HEADER_DIGEST, "first record: digest")
    size = r.u32("first record: eventSize")
    body_at = r.pos
    body = r.take(size, "first record: event")
    if etype != EV_NO_ACTION or pcr != 0 or not body.startswith(SPEC_ID):
        if etype == EV_NO_ACTION and body.startswith(SPEC_ID_SHA1):
            raise r.fail(at, "first record", "a TPM 1.2 log (Spec ID Event00, SHA-1 only), not crypto-agile")
        raise r.fail(
            at,
            "first record",
            f"not the crypto-agile header (EV_NO_ACTION 'Spec ID Event03' in PCR 0; found type 0x{etype:08x} "
            f"in PCR {pcr}): a SHA-1-only log of the old format is not supported",
        )
    h = _Reader(body, r.what)
    h.take(len(SPEC_ID), "signature")
    h.u32("platformClass")
    h.u8("specVersionMinor")
    major = h.u8("specVersionMajor")
    h.u8("specErrata")
    h.u8("uintnSize")
    n = h.u32("numberOfAlgorithms")
    if major != 2:
        raise r.fail(body_at + 21, "specVersionMajor", f"{major}, expected 2")
    if not 1 <= n <= MAX_ALGS:
        raise r.fail(body_at + 24, "numberOfAlgorithms", f"{n}, expected 1 to {MAX_ALGS}")
    algs: list[tuple[int, int]] = []
    for i in range(n):
        where = body_at + h.pos
        alg = h.u16(f"digestSizes[{i}].algorithmId")
        dsize = h.u16(f"digestSizes[{i}].digestSize")
        known = BY_ALG.get(alg)
        if known is not None and dsize != known.size:
            raise r.fail(where, f"digestSizes[{i}]", f"{known.name} with digest size {dsize}, expected {known.size}")
        if not 1 <= dsize <= 512:
            raise r.fail(where, f"digestSizes[{i}].digestSize", f"{dsize}, expected 1 to 512")
        if any(a == alg for a, _ in algs):
            raise r.fail(where, f"digestSizes[{i}].algorithmId", f"{_alg_name(alg)} listed twice")
        algs.append((alg, dsize))
    vendor = h.u8("vendorInfoSize")
    h.take(vendor, "vendorInfo")
    return tuple(algs)


def _digests(r: _Reader, n: int, algs: tuple[tuple[int, int], ...]) -> dict[str, bytes]:
    """Record ``n``'s TPML_DIGEST_VALUES: at least one digest, each of a header algorithm, none twice."""
    sizes = dict(algs)
    count_at = r.pos
    count = r.u32(f"record {n}: digests.count")
    if count == 0:
        raise r.fail(count_at, f"record {n}: digests.count", "zero digests")
    if count > len(algs):
        raise r.fail(
            count_at, f"record {n}: digests.count", f"{count}, more than the {len(algs)} algorithms of the header"
        )
    digests: dict[str, bytes] = {}
    for i in range(count):
        alg_at = r.pos
        alg = r.u16(f"record {n}: digests[{i}].hashAlg")
        dsize = sizes.get(alg)
        if dsize is None:
            raise r.fail(
                alg_at, f"record {n}: digests[{i}].hashAlg", f"0x{alg:04x} is not among the header's algorithms"
            )
        name = _alg_name(alg)
        if name in digests:
            raise r.fail(alg_at, f"record {n}: digests[{i}].hashAlg", f"{name} twice in one record")
        digests[name] = r.take(dsize, f"record {n}: digests[{i}].digest")
    return digests


def _record(r: _Reader, n: int, algs: tuple[tuple[int, int], ...]) -> LogEvent:
    """Record ``n``, a TCG_PCR_EVENT2; a measurement must carry a digest for every header algorithm."""
    at = r.pos
    pcr = r.u32(f"record {n}: pcrIndex")
    if pcr >= NUM_PCRS:
        raise r.fail(at, f"record {n}: pcrIndex", f"{pcr}, expected 0 to {NUM_PCRS - 1}")
    etype = r.u32(f"record {n}: eventType")
    count_at = r.pos
    digests = _digests(r, n, algs)
    size_at = r.pos
    size = r.u32(f"record {n}: eventSize")
    left = len(r.data) - r.pos
    if size > left:
        raise r.fail(size_at, f"record {n}: eventSize", f"{size}, more than the {left} bytes left in the log")
    body = r.take(size, f"record {n}: event")
    if etype != EV_NO_ACTION:
        missing = [_alg_name(a) for a, _ in algs if _alg_name(a) not in digests]
        if missing:
            raise r.fail(count_at, f"record {n}: digests", f"no {', '.join(missing)} digest (the header lists it)")
    return LogEvent(at, pcr, etype, digests, body)


def parse(data: bytes, what: str) -> EventLog:
    """A crypto-agile firmware event log; ``what`` names it in messages."""
    r = _Reader(data, what)
    if not data:
        raise r.fail(0, "first record", "the log is empty")
    algs = _spec_id(r)
    events: list[LogEvent] = []
    locality = 0
    seen_locality = False
    while r.pos < len(data):
        e = _record(r, len(events) + 1, algs)
        if e.event_type == EV_NO_ACTION and e.data.startswith(STARTUP_LOCALITY):
            at, n = e.offset, len(events) + 1
            if e.pcr != 0 or len(e.data) != len(STARTUP_LOCALITY) + 1:
                raise r.fail(at, f"record {n}: StartupLocality", "expected PCR 0 and one locality byte")
            if seen_locality or any(x.pcr == 0 and x.event_type != EV_NO_ACTION for x in events):
                raise r.fail(at, f"record {n}: StartupLocality", "must come once, before any PCR 0 extend")
            locality = e.data[-1]
            seen_locality = True
        events.append(e)
    return EventLog(what, algs, tuple(events), locality)


def read_log(path: Path, limit: int = MAX_LOG) -> EventLog:
    """Read and parse at most ``limit`` bytes (more is malformed: no firmware keeps such a log)."""
    data = _read_bounded(path, limit, "the TPM event log")
    return parse(data, str(path))


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    import stat

    try:
        # never blocking, never a link: a FIFO there (a fake root's) must not hang tpm verify
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnreadableError(f"{path}: cannot read {what} (not a regular file)")
            data = f.read(limit + 1)  # securityfs reports size 0: read, do not stat
    except OSError as exc:
        hint = "the TPM logs are readable by root only" if isinstance(exc, PermissionError) else None
        raise UnreadableError(f"{path}: cannot read {what} ({exc.strerror or exc})", hint=hint) from exc
    if len(data) > limit:
        raise MalformedError(f"{path}: offset {limit}: {what} is larger than {limit} bytes")
    return data


# -- systemd-pcrextend's userspace log -------------------------------------------------------------


@dataclass(frozen=True)
class UserEvent:
    index: int  # the record's number in the file, from 1
    pcr: int
    digests: dict[str, bytes]
    string: str | None
    event_type: str | None  # "phase", "filesystem", "volume-key", "machine-id"


@dataclass(frozen=True)
class UserLog:
    what: str
    events: tuple[UserEvent, ...]
    aborted: bool = False  # S_ISVTX set: a writer died in the middle of a record (tpm2_userspace_log_open())
    notes: tuple[str, ...] = field(default=())

    def of_pcr(self, pcr: int) -> list[UserEvent]:
        return [e for e in self.events if e.pcr == pcr]

    def phases(self) -> tuple[str, ...]:
        return tuple(e.string or "" for e in self.events if e.pcr == 11 and e.event_type == "phase")


def _user_record(obj: Any, n: int, what: str) -> UserEvent:
    where = f"{what}: record {n}"
    if not isinstance(obj, dict):
        raise MalformedError(f"{where}: not a JSON object")
    pcr = obj.get("pcr")
    if not isinstance(pcr, int) or isinstance(pcr, bool) or not 0 <= pcr < NUM_PCRS:
        raise MalformedError(f"{where}: pcr: {pcr!r}, expected 0 to {NUM_PCRS - 1}")
    raw = obj.get("digests")
    if not isinstance(raw, list) or not raw:
        raise MalformedError(f"{where}: digests: expected a non-empty list")
    digests: dict[str, bytes] = {}
    for i, d in enumerate(raw):
        if not isinstance(d, dict) or not isinstance(d.get("hashAlg"), str) or not isinstance(d.get("digest"), str):
            raise MalformedError(f"{where}: digests[{i}]: expected {{hashAlg, digest}} strings")
        alg = d["hashAlg"].lower()
        try:
            value = bytes.fromhex(d["digest"])
        except ValueError as exc:
            raise MalformedError(f"{where}: digests[{i}].digest: not hex") from exc
        b = BANKS.get(alg)
        if b is not None and len(value) != b.size:
            raise MalformedError(f"{where}: digests[{i}].digest: {len(value)} bytes, {alg} has {b.size}")
        digests[alg] = value
    content = obj.get("content")
    string = etype = None
    if isinstance(content, dict):
        s, t = content.get("string"), content.get("eventType")
        string = s if isinstance(s, str) else None
        etype = t if isinstance(t, str) else None
    return UserEvent(n, pcr, digests, string, etype)


def parse_user_log(data: bytes, what: str, aborted: bool = False) -> UserLog:
    """RFC 7464: each record is RS (0x1e), JSON text, LF. A record that does not parse is malformed,
    except a last one without its LF in a log whose writer was cut off (``aborted``)."""
    events: list[UserEvent] = []
    notes: list[str] = []
    chunks = data.split(b"\x1e")
    if chunks[0].strip():
        raise MalformedError(f"{what}: offset 0: does not start with a record separator (0x1e)")
    offset = len(chunks[0])
    for i, chunk in enumerate(chunks[1:], 1):
        at = offset
        offset += 1 + len(chunk)
        if not chunk.strip():
            continue
        try:
            obj = json.loads(chunk)
        except (ValueError, RecursionError) as exc:
            if aborted and i == len(chunks) - 1:
                notes.append(f"{what}: record {i} was cut off by a writer that died; ignored")
                continue
            raise MalformedError(f"{what}: offset {at}: record {i}: not JSON ({exc})") from None
        events.append(_user_record(obj, i, what))
    return UserLog(what, tuple(events), aborted, tuple(notes))


def read_user_log(path: Path, limit: int = MAX_USER_LOG) -> UserLog | None:
    """None when there is no such log (no systemd-pcrextend ran, or an older systemd)."""
    try:
        aborted = bool(os.stat(path).st_mode & 0o1000)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UnreadableError(f"{path}: cannot read the userspace TPM log ({exc.strerror or exc})") from exc
    return parse_user_log(_read_bounded(path, limit, "the userspace TPM log"), str(path), aborted)
