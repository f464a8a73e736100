"""The boot history: one JSON line per event in ``/var/lib/bootkeeper/boots.jsonl``, so that status can
say *why* this entry booted and *when* the entries before it used their tries.

* ``boot`` (written early in every boot by ``bootkeeper history record``): boot id, time, the booted
  entry as systemd-boot renamed it (``LoaderBootCountPath``, else ``LoaderEntrySelected``), its counter,
  and every entry's name and state as the ESP showed them then;
* ``verdict`` (written by ``bootkeeper bless``): good / bad / indeterminate / withheld for that boot id;
* ``not-good`` (written by a unit that fails the boot assessment, ``bootkeeper sysext required
  --record``): the unit and why, for that boot id (a boot may have several); no verdict follows, as
  boot-complete.target is not reached;
* ``handback`` (written by ``bootkeeper bless`` on a good statereset boot, assess/handback.py): whether it
  handed back to active, passive and recovery or stayed (the budget spent), the count and the budget;
* ``upgrade`` (written by ``bootkeeper upgrade`` after the transaction): the role replaced (active or
  recovery), the OS before and after (``PRETTY_NAME``, ``VERSION_ID``, ``IMAGE_VERSION`` of the two UKIs'
  ``.osrel``) and both extension sets (name, size, sha256). Readers that predate it skip it without a
  word (neither ``boot`` nor ``verdict``), so a history with upgrades stays readable by them;
* ``repair`` (written by ``bootkeeper repair``, docs/updates.md, "Repair"): one attempt from recovery or
  statereset: the role it ran on, the source, the release's version, ``repaired`` or ``failed`` and why.

A boot without a verdict did not reach boot-complete.target (or bless failed). Lines are appended with
``O_APPEND`` and fsynced; a torn last line after a power cut is skipped with a warning. The file is
bounded: past :data:`LIMIT` bytes it is rewritten (temporary file, fsync, rename) with the newest
:data:`KEEP` boots and at most :data:`KEEP_UPGRADES` upgrades; an upgrade record holds at most
:data:`MAX_EXTENSIONS` images per set and :data:`MAX_FIELD` characters per field. Readers read only
its newest :data:`READ_LIMIT` bytes (a larger file was not written by :func:`append`; the older part is
dropped by the next compaction), never the whole file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootkeeper import fsutil
from bootkeeper.errors import WriteError
from bootkeeper.esp import counter as counter_mod
from bootkeeper.esp.counter import EntryState
from bootkeeper.esp.entries import Role
from bootkeeper.esp.store import Snapshot

HISTORY = "var/lib/bootkeeper/boots.jsonl"
LIMIT = 256 * 1024
KEEP = 200
KEEP_UPGRADES = 10  # with MAX_EXTENSIONS and MAX_FIELD: at most ~200 KiB of upgrades
KEEP_REPAIRS = 20  # repair attempts kept by a compaction (each line well under 2 KiB)
REPAIR_RESULTS = ("repaired", "failed")  # a repair record's result: the metrics' closed vocabulary
MAX_EXTENSIONS = 32
MAX_FIELD = 200
MAX_WHY = 800  # a not-good record's reason: activate's reasons for a refused image can be long
OS_FIELDS = ("PRETTY_NAME", "VERSION_ID", "IMAGE_VERSION")
# Times are POSIX seconds that time.gmtime() can show: 1970 to the end of year 9999. A line with
# any other time is as torn as one that is not JSON (a 400-digit number overflows float()).
LATEST = 253402300799.0


def _time(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("time is not a number")
    t = float(value)
    if not (math.isfinite(t) and 0 <= t <= LATEST):
        raise ValueError(f"time {str(value)[:40]!r} is not between 1970 and 9999")
    return t


@dataclass(frozen=True)
class RecordedEntry:
    """One entry as the ESP showed it when a boot was recorded."""

    path: str
    state: str  # good, indeterminate, bad
    left: int | None
    done: int | None

    @classmethod
    def parse(cls, item: object) -> RecordedEntry | None:
        """One item of a boot line's ``entries``, or None when it is not one (the line still counts)."""
        if not isinstance(item, dict):
            return None
        path, state, left, done = item.get("path"), item.get("state"), item.get("left"), item.get("done")
        if not isinstance(path, str) or state not in {s.value for s in EntryState}:
            return None
        if any(v is not None and (type(v) is not int or not 0 <= v <= counter_mod.INT_MAX) for v in (left, done)):
            return None
        return cls(path[:MAX_FIELD], state, left, done)

    def as_json(self) -> dict[str, object]:
        return {"path": self.path, "state": self.state, "tries_left": self.left, "tries_done": self.done}

    def as_record(self) -> dict[str, object]:
        """The item as a boot line holds it (what :meth:`parse` reads)."""
        return {"path": self.path, "state": self.state, "left": self.left, "done": self.done}


@dataclass(frozen=True)
class Handback:
    """A good statereset boot's hand-back, as bless recorded it."""

    decision: str  # handed-back | stayed | nothing (assess/handback.py's Decision)
    count: int | None
    budget: int
    time: float

    @property
    def text(self) -> str:
        used = f"{self.count if self.count is not None else '?'} of {self.budget}"
        return {
            "handed-back": f"handed back to active ({used})",
            "stayed": f"stays on statereset: hand-back budget spent ({used})",
        }.get(self.decision, "nothing to hand back to")

    def as_json(self) -> dict[str, object]:
        return {"decision": self.decision, "count": self.count, "budget": self.budget, "time": self.time}


def _handback(rec: dict[str, Any], t: float) -> Handback:
    from bootkeeper.assess.handback import Decision

    decision, count, budget = rec["decision"], rec.get("count"), rec["budget"]
    if decision not in {d.value for d in Decision}:
        raise ValueError(f"decision {str(decision)[:40]!r} is not one of {', '.join(d.value for d in Decision)}")
    for name, v in (("count", count), ("budget", budget)):
        if v is not None and (type(v) is not int or not 0 <= v <= counter_mod.INT_MAX):
            raise TypeError(f"{name} is not a count")
    if budget is None:
        raise TypeError("budget is not a count")
    return Handback(decision, count, budget, t)


@dataclass
class Boot:
    boot_id: str
    time: float
    entry: str | None  # ESP path as booted (with the counter systemd-boot gave it)
    role: str | None
    left: int | None
    done: int | None
    entries: list[RecordedEntry] = field(default_factory=list)  # every entry when it was recorded
    verdict: str | None = None
    verdict_time: float | None = None
    not_good: list[str] = field(default_factory=list)  # "UNIT: why" of each not-good record
    handback: Handback | None = None  # a good statereset boot: handed back, or stayed

    def as_json(self) -> dict[str, object]:
        return {
            "boot_id": self.boot_id,
            "time": self.time,
            "entry": self.entry,
            "role": self.role,
            "tries_left": self.left,
            "tries_done": self.done,
            "verdict": self.verdict,
            "verdict_time": self.verdict_time,
            "not_good": list(self.not_good),
            "entries": [e.as_json() for e in self.entries],
            "handback": self.handback.as_json() if self.handback is not None else None,
        }


def boot_record(boot_id: str, now: float, booted: str | None, snap: Snapshot | None) -> dict[str, object]:
    """The ``boot`` line of this boot: the entry systemd-boot booted (``booted``) and every entry of ``snap``."""
    left = done = None
    role = None
    if booted:
        file_name = booted.replace("\\", "/").rsplit("/", 1)[-1]
        name = counter_mod.parse(file_name, ".efi" if file_name.lower().endswith(".efi") else ".conf")
        left, done = name.tries_left, name.tries_done
        r = Role.from_stem(name.stem)
        role = r.value if r else None
    entries = tuple(
        RecordedEntry(e.path, e.state.value, e.name.tries_left, e.name.tries_done)
        for e in (snap.entries if snap else ())
    )
    entry = booted.replace("\\", "/").lstrip("/") if booted else None
    return Record(
        "boot", boot_id, now, entry=entry, role=role, tries_left=left, tries_done=done, entries=entries
    ).to_json()


def verdict_record(boot_id: str, now: float, verdict: str) -> dict[str, object]:
    return Record("verdict", boot_id, now, verdict=verdict).to_json()


def not_good_record(boot_id: str, now: float, unit: str, why: str) -> dict[str, object]:
    return Record("not-good", boot_id, now, unit=unit[:MAX_FIELD], why=why[:MAX_WHY]).to_json()


def handback_record(boot_id: str, now: float, decision: str, count: int | None, budget: int) -> dict[str, object]:
    return Record("handback", boot_id, now, handback=Handback(decision, count, budget, now)).to_json()


def os_fields(osrel: Mapping[str, str]) -> dict[str, str]:
    """The fields of an os-release that name an OS version for the operator (each cut to MAX_FIELD)."""
    return {k: str(osrel[k])[:MAX_FIELD] for k in OS_FIELDS if k in osrel}


def os_version(fields: Mapping[str, str] | None) -> str:
    """``IMAGE_VERSION``, else ``VERSION_ID``, else ``PRETTY_NAME``: what "the upgrade to vN" names."""
    fields = fields or {}
    return fields.get("IMAGE_VERSION") or fields.get("VERSION_ID") or fields.get("PRETTY_NAME") or "an unknown OS"


def os_text(fields: Mapping[str, str] | None) -> str:
    """``Kairos 2 (VERSION_ID=2, IMAGE_VERSION=2.0)``; ``no .osrel`` for None."""
    if fields is None:
        return "no .osrel"
    if not fields:
        return f"no {', '.join(OS_FIELDS)} in .osrel"
    ids = ", ".join(f"{k}={fields[k]}" for k in OS_FIELDS[1:] if k in fields)
    name = fields.get("PRETTY_NAME")
    return f"{name} ({ids})" if name and ids else (name or ids)


@dataclass(frozen=True)
class Image:
    """One extension of a set as an upgrade found it."""

    name: str
    size: int | None
    sha256: str | None

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class RoleOs:
    """A role's set at an upgrade: the OS of its UKI and its extensions (``left_off``: past MAX_EXTENSIONS)."""

    os: dict[str, str]
    extensions: tuple[Image, ...]
    left_off: int = 0

    def as_json(self) -> dict[str, object]:
        return {"os": self.os, "extensions": [x.as_json() for x in self.extensions], "left_off": self.left_off}


@dataclass(frozen=True)
class Upgrade:
    boot_id: str  # the boot during which the upgrade ran
    time: float
    role: Role  # ACTIVE (A/B) or RECOVERY
    before: RoleOs
    after: RoleOs
    result: str
    forced: bool

    def as_json(self) -> dict[str, object]:
        return {
            "boot_id": self.boot_id,
            "time": self.time,
            "time_text": _stamp(self.time),
            "role": self.role.value,
            "from": self.before.as_json(),
            "to": self.after.as_json(),
            "result": self.result,
            "forced": self.forced,
        }


def role_os(osrel: Mapping[str, str] | None, images: list[Image]) -> RoleOs:
    cut = [Image(x.name[:MAX_FIELD], x.size, x.sha256) for x in images[:MAX_EXTENSIONS]]
    return RoleOs(os_fields(osrel or {}), tuple(cut), max(0, len(images) - MAX_EXTENSIONS))


def upgrade_record(
    boot_id: str, now: float, role: Role, before: RoleOs, after: RoleOs, result: str, forced: bool
) -> dict[str, object]:
    return Record("upgrade", boot_id, now, upgrade=Upgrade(boot_id, now, role, before, after, result, forced)).to_json()


@dataclass(frozen=True)
class Repair:
    """One ``bootkeeper repair`` attempt: the boot and role it ran on, where the release came from, its
    version (None: not known, the fetch failed first), ``repaired`` or ``failed`` and why."""

    boot_id: str
    time: float
    role: str | None
    source: str | None
    version: str | None
    result: str  # of REPAIR_RESULTS
    reason: str | None
    forced: bool = False

    def as_json(self) -> dict[str, object]:
        return {
            "boot_id": self.boot_id,
            "time": self.time,
            "time_text": _stamp(self.time),
            "role": self.role,
            "source": self.source,
            "version": self.version,
            "result": self.result,
            "reason": self.reason,
            "forced": self.forced,
        }

    @property
    def text(self) -> str:
        """``2026-12-07 23:50:00 UTC repair on recovery from oci:…: repaired (v2)``."""
        where = f" from {self.source}" if self.source else ""
        what = f"repaired ({self.version or 'an unknown version'})" if self.result == "repaired" else self.result
        why = f": {self.reason}" if self.reason else ""
        forced = " (forced)" if self.forced else ""
        return f"{_stamp(self.time)} repair on {self.role or 'an unknown role'}{where}{forced}: {what}{why}"


def repair_record(
    boot_id: str, now: float, role: str | None, source: str | None, version: str | None, result: str,
    reason: str | None, forced: bool = False,
) -> dict[str, object]:  # fmt: skip
    role, source, version = (None if v is None else v[:MAX_FIELD] for v in (role, source, version))
    rep = Repair(boot_id, now, role, source, version, result, None if reason is None else reason[:MAX_WHY], forced)
    return Record("repair", boot_id, now, repair=rep).to_json()


def _repair(rec: dict[str, Any], boot_id: str, t: float) -> Repair:
    result = rec["result"]
    if result not in REPAIR_RESULTS:
        raise ValueError(f"result {str(result)[:40]!r} is not one of {', '.join(REPAIR_RESULTS)}")
    opt = {k: (None if rec.get(k) is None else _str(rec[k], k)) for k in ("role", "source", "version")}
    reason = rec.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise TypeError("reason is not a string")
    forced = rec.get("forced", False)
    if not isinstance(forced, bool):
        raise TypeError("forced is not true or false")
    return Repair(boot_id, t, opt["role"], opt["source"], opt["version"], result,
                  None if reason is None else reason[:MAX_WHY], forced)  # fmt: skip


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} is not a string")
    if len(value) > MAX_FIELD:
        raise ValueError(f"{what} is longer than {MAX_FIELD} characters")
    return value


def _side(value: object, what: str) -> RoleOs:
    if not isinstance(value, dict):
        raise TypeError(f"{what} is not an object")
    osrel, exts, left = value.get("os"), value.get("extensions"), value.get("left_off", 0)
    if not isinstance(osrel, dict) or not isinstance(exts, list):
        raise TypeError(f"{what}: os is not an object or extensions not a list")
    if len(exts) > MAX_EXTENSIONS:
        raise ValueError(f"{what}: more than {MAX_EXTENSIONS} extensions")
    if isinstance(left, bool) or not isinstance(left, int) or left < 0:
        raise TypeError(f"{what}: left_off is not a count")
    images = []
    for x in exts:
        if not isinstance(x, dict):
            raise TypeError(f"{what}: an extension is not an object")
        size, digest = x.get("size"), x.get("sha256")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise TypeError(f"{what}: size is not a count")
        images.append(
            Image(_str(x.get("name"), f"{what} name"), size, None if digest is None else _str(digest, "sha256"))
        )
    fields = {k: _str(osrel[k], f"{what} {k}") for k in OS_FIELDS if k in osrel}
    return RoleOs(fields, tuple(images), left)


def _upgrade(rec: dict[str, Any], boot_id: str, t: float) -> Upgrade:
    role = Role(_str(rec["role"], "role"))
    if role not in (Role.ACTIVE, Role.RECOVERY):
        raise ValueError(f"role {role.value!r} is not active or recovery")
    forced = rec.get("forced", False)
    if not isinstance(forced, bool):
        raise TypeError("forced is not true or false")
    return Upgrade(
        boot_id, t, role, _side(rec["from"], "from"), _side(rec["to"], "to"), _str(rec["result"], "result"), forced
    )


@dataclass(frozen=True)
class History:
    boots: list[Boot]
    upgrades: list[Upgrade]
    warnings: list[str]
    repairs: list[Repair] = field(default_factory=list)


@dataclass(frozen=True)
class Record:
    """One line of the history file, of any type: every writer builds one (:meth:`to_json`) and every
    reader gets one (:meth:`from_json`, which checks it). Only the fields of its ``kind`` are set."""

    kind: str  # boot | verdict | not-good | handback | upgrade | repair
    boot_id: str
    time: float
    # boot: the booted entry (as systemd-boot renamed it), its role and counter, every entry then
    entry: str | None = None
    role: str | None = None
    tries_left: int | None = None
    tries_done: int | None = None
    entries: tuple[RecordedEntry, ...] = ()
    verdict: str | None = None  # verdict
    unit: str | None = None  # not-good: the unit and why
    why: str | None = None
    handback: Handback | None = None  # handback
    upgrade: Upgrade | None = None  # upgrade
    repair: Repair | None = None  # repair

    def to_json(self) -> dict[str, object]:
        """The line's object, its keys in the order every bootkeeper wrote them."""
        head: dict[str, object] = {"type": self.kind, "boot_id": self.boot_id, "time": self.time}
        if self.kind == "boot":
            return head | {
                "entry": self.entry,
                "role": self.role,
                "tries_left": self.tries_left,
                "tries_done": self.tries_done,
                "entries": [e.as_record() for e in self.entries],
            }
        if self.kind == "verdict":
            return head | {"verdict": self.verdict}
        if self.kind == "not-good":
            return head | {"unit": self.unit, "why": self.why}
        if self.kind == "handback":
            assert self.handback is not None
            hb = self.handback
            return head | {"decision": hb.decision, "count": hb.count, "budget": hb.budget}
        if self.kind == "repair":
            assert self.repair is not None
            rp = self.repair
            return head | {
                "role": rp.role,
                "source": rp.source,
                "version": rp.version,
                "result": rp.result,
                "reason": rp.reason,
                "forced": rp.forced,
            }
        assert self.kind == "upgrade" and self.upgrade is not None
        up = self.upgrade
        return head | {
            "role": up.role.value,
            "from": up.before.as_json(),
            "to": up.after.as_json(),
            "result": up.result,
            "forced": up.forced,
        }

    @classmethod
    def from_json(cls, rec: Any, boots: Container[str]) -> Record | None:
        """The record of one decoded line, or None when readers pass over it: a type they do not know,
        or a verdict, not-good or handback line of a boot not in ``boots``. A malformed line raises
        ValueError, KeyError, TypeError or OverflowError."""
        kind, boot_id, t = rec["type"], rec["boot_id"], _time(rec["time"])
        if not isinstance(boot_id, str):
            raise TypeError("boot_id")
        if kind == "boot":
            return cls(
                kind,
                boot_id,
                t,
                entry=rec.get("entry"),
                role=rec.get("role"),
                tries_left=rec.get("tries_left"),
                tries_done=rec.get("tries_done"),
                entries=tuple(_recorded_entries(rec.get("entries"))),
            )
        if kind == "upgrade":
            return cls(kind, boot_id, t, upgrade=_upgrade(rec, boot_id, t))
        if kind == "repair":
            return cls(kind, boot_id, t, repair=_repair(rec, boot_id, t))
        if boot_id not in boots:
            return None
        if kind == "verdict":
            return cls(kind, boot_id, t, verdict=str(rec["verdict"]))
        if kind == "not-good":
            why = rec["why"]
            if not isinstance(why, str):
                raise TypeError("why is not a string")
            return cls(kind, boot_id, t, unit=_str(rec["unit"], "unit"), why=why[:MAX_WHY])
        if kind == "handback":
            return cls(kind, boot_id, t, handback=_handback(rec, t))
        return None


def _recorded_entries(raw: object) -> list[RecordedEntry]:
    """A boot line's ``entries``; what is not a list of entries is read as none (the boot still counts)."""
    if not isinstance(raw, list):
        return []
    return [e for e in map(RecordedEntry.parse, raw[:1000]) if e is not None]


def _fold(r: Record, boots: dict[str, Boot], upgrades: list[Upgrade], repairs: list[Repair]) -> None:
    """A record onto the boots read so far (a boot line starts one), the upgrades or the repairs."""
    if r.kind == "repair":
        assert r.repair is not None
        repairs.append(r.repair)
    elif r.kind == "boot":
        entries = list(r.entries)
        boots[r.boot_id] = Boot(r.boot_id, r.time, r.entry, r.role, r.tries_left, r.tries_done, entries)
    elif r.kind == "upgrade":
        assert r.upgrade is not None
        upgrades.append(r.upgrade)
    elif r.kind == "verdict":
        boots[r.boot_id].verdict = r.verdict
        boots[r.boot_id].verdict_time = r.time
    elif r.kind == "not-good":
        boots[r.boot_id].not_good.append(f"{r.unit}: {r.why}")
    elif r.kind == "handback":
        boots[r.boot_id].handback = r.handback


def parse_all(text: str, source: str) -> History:
    """Boots and upgrades in the order recorded; malformed lines are skipped and reported."""
    boots: dict[str, Boot] = {}
    upgrades: list[Upgrade] = []
    repairs: list[Repair] = []
    warnings: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = Record.from_json(json.loads(line), boots)
            if r is not None:
                _fold(r, boots, upgrades, repairs)
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
            # RecursionError: JSON nested deeper than the parser's stack; OverflowError: float()
            warnings.append(f"{source}:{n}: skipped a malformed line ({type(exc).__name__}: {str(exc)[:120]})")
    return History(list(boots.values()), upgrades, warnings, repairs)


def parse(text: str, source: str) -> tuple[list[Boot], list[str]]:
    """Boots in the order recorded; malformed lines are skipped and reported."""
    h = parse_all(text, source)
    return h.boots, h.warnings


# What is read of the history: its newest READ_LIMIT bytes. append() keeps it near LIMIT; a file
# larger than this was not written by it (or its compaction failed): the older part is left unread
# (and dropped by the next compaction) instead of read whole, however large the file claims to be.
READ_LIMIT = 16 * LIMIT


def _tail(p: Path) -> tuple[bytes, str | None]:
    """The newest :data:`READ_LIMIT` bytes of ``p``, starting at a line; with a warning when older
    lines were left unread. Never a FIFO, device or link (:func:`fsutil.open_input`)."""
    fd = fsutil.open_input(p)
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - READ_LIMIT)
        chunks = []
        got = 0
        while got < READ_LIMIT:
            chunk = os.pread(fd, min(1 << 20, READ_LIMIT - got), start + got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    if not start:
        return raw, None
    cut = raw.find(b"\n") + 1  # the first line is likely cut: from the next one
    return raw[cut:], f"{p}: {size} bytes, more than the {READ_LIMIT} read; only its newest lines were read"


def read_all(root: Path) -> History:
    from bootkeeper.errors import UnreadableError

    p = root / HISTORY
    try:
        raw, cut = _tail(p)
    except UnreadableError as exc:
        if not os.path.lexists(p):
            return History([], [], [])
        return History([], [], [str(exc)])
    except OSError as exc:
        return History([], [], [f"{p}: cannot read ({exc.strerror})"])
    h = parse_all(raw.decode("utf-8", "replace"), str(p))
    if cut is not None:
        h.warnings.insert(0, cut)
    return h


def read(root: Path) -> tuple[list[Boot], list[str]]:
    h = read_all(root)
    return h.boots, h.warnings


def append(root: Path, record: Mapping[str, object]) -> None:
    """One line at the end of the history, fsynced; past :data:`LIMIT` bytes the file is compacted."""
    p = root / HISTORY
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > LIMIT:
            _compact(p)
    except OSError as exc:
        raise WriteError(f"{p}: cannot append to the boot history ({exc.strerror})") from exc


def _compact(p: Path) -> None:
    lines = _tail(p)[0].splitlines(keepends=True)
    starts = [i for i, ln in enumerate(lines) if b'"type":"boot"' in ln]
    first = starts[-KEEP] if len(starts) > KEEP else 0
    upgrades = [i for i in range(first, len(lines)) if b'"type":"upgrade"' in lines[i]]
    repairs = [i for i in range(first, len(lines)) if b'"type":"repair"' in lines[i]]
    dropped = set(upgrades[:-KEEP_UPGRADES]) | set(repairs[:-KEEP_REPAIRS])
    if first or dropped:
        fsutil.write_atomic(p, b"".join(ln for i, ln in enumerate(lines[first:], first) if i not in dropped))


def recorded(boots: list[Boot], boot_id: str) -> bool:
    return any(b.boot_id == boot_id for b in boots)


@dataclass(frozen=True)
class Why:
    first_choice: bool
    text: str
    fallbacks: tuple[dict[str, object], ...] = ()

    def as_json(self) -> dict[str, object]:
        return {"first_choice": self.first_choice, "text": self.text, "fallback_from": list(self.fallbacks)}


def _stamp(t: float) -> str:
    import time as _time

    return _time.strftime("%Y-%m-%d %H:%M:%S UTC", _time.gmtime(t))


@dataclass(frozen=True)
class _Seen:
    """An entry as it stood when this boot started: from the boot's own record, else the ESP now."""

    role: Role
    path: str
    state: str
    done: int | None


def _entries_at_boot(snap: Snapshot, booted_path: str | None, boots: list[Boot]) -> list[_Seen]:
    """The entries as ``history record`` saw them at the start of this boot (the last record, when it is
    this boot's entry): a good statereset boot hands back and re-arms the entries before it, and the
    reason it booted is what they were then."""
    last = boots[-1] if boots else None
    here = (booted_path or "").replace("\\", "/").lstrip("/")
    if last is not None and here and last.entry == here and last.entries:
        out = []
        for r in last.entries:
            name = r.path.rsplit("/", 1)[-1]
            role = Role.from_stem(counter_mod.parse(name, ".efi" if name.lower().endswith(".efi") else ".conf").stem)
            if role is not None:
                out.append(_Seen(role, r.path, r.state, r.done))
        return out
    return [_Seen(e.role, e.path, e.state.value, e.name.tries_done) for e in snap.entries if e.role is not None]


def explain(snap: Snapshot, booted_role: Role | None, booted_path: str | None, boots: list[Boot]) -> Why:
    """Why this entry booted: the first choice, or a fallback because the roles before it are bad."""
    if booted_role is None:
        return Why(False, f"booted {booted_path or 'an unknown entry'}, which has no role")
    bad_before = [
        e
        for e in _entries_at_boot(snap, booted_path, boots)
        if e.role.rank < booted_role.rank and e.state == EntryState.BAD.value
    ]
    if not bad_before:
        if booted_role is Role.ACTIVE:
            return Why(True, "active is the first choice")
        return Why(
            False,
            f"{booted_role.value} booted although the entries before it are not bad "
            f"(picked from the menu, by a one-shot or default, or they were missing)",
        )
    parts = []
    fallbacks: list[dict[str, object]] = []
    for e in sorted(bad_before, key=lambda x: x.role.rank):
        tries = e.done
        own = [b for b in boots if b.role == e.role.value]
        since_good: list[Boot] = []
        for b in own:  # the boots of that role since it was last good
            since_good = [] if b.verdict == "good" else [*since_good, b]
        last = since_good[-1].time if since_good else None
        when = (
            f", last try {_stamp(last)} ({len(since_good)} boot(s) of it without a good verdict)"
            if last is not None
            else " (no history of when)"
        )
        reasons = since_good[-1].not_good if since_good else []
        if reasons:
            when += f", not good because {'; '.join(reasons)}"
        parts.append(f"{e.role.value} used its {tries} tries{when}")
        fallbacks.append(
            {
                "role": e.role.value,
                "entry": e.path,
                "tries_used": tries,
                "last_try": last,
                "last_try_text": _stamp(last) if last is not None else None,
                "boots": [b.time for b in since_good],
                "last_try_not_good": list(reasons),
            }
        )
    return Why(False, f"{booted_role.value} booted as a fallback: " + "; ".join(parts), tuple(fallbacks))


@dataclass(frozen=True)
class FailedUpgrade:
    """After a fallback to passive: the last upgrade of active installed an OS that is not the one running."""

    upgrade: Upgrade
    running: dict[str, str] | None  # the booted passive's .osrel fields (None: unreadable)

    @property
    def text(self) -> str:
        running = os_version(self.running if self.running is not None else self.upgrade.before.os)
        return (
            f"the upgrade to {os_version(self.upgrade.after.os)} ({_stamp(self.upgrade.time)}) failed: "
            f"running {running} on passive"
        )

    def as_json(self) -> dict[str, object]:
        return {
            "text": self.text,
            "time": self.upgrade.time,
            "to": self.upgrade.after.os,
            "from": self.upgrade.before.os,
            "running": self.running,
        }


def failed_upgrade(
    upgrades: list[Upgrade], booted_role: Role | None, why: Why | None, running: dict[str, str] | None
) -> FailedUpgrade | None:
    """The upgrade that a fallback undid: passive booted because active used its tries (:func:`explain`),
    and the last upgrade of active installed an OS other than the one passive runs."""
    if booted_role is not Role.PASSIVE or why is None or not any(f["role"] == "active" for f in why.fallbacks):
        return None
    last = next((u for u in reversed(upgrades) if u.role is Role.ACTIVE), None)
    if last is None or (running is not None and running == last.after.os):
        return None
    return FailedUpgrade(last, running)
