"""The boot history: one JSON line per event in ``/var/lib/bootkeeper/boots.jsonl``, so that status can
say *why* this entry booted and *when* the entries before it used their tries.

* ``boot`` (written early in every boot by ``bootkeeper history record``): boot id, time, the booted
  entry as systemd-boot renamed it (``LoaderBootCountPath``, else ``LoaderEntrySelected``), its counter,
  and every entry's name and state as the ESP showed them then;
* ``verdict`` (written by ``bootkeeper bless``): good / bad / indeterminate / withheld for that boot id.

A boot without a verdict did not reach boot-complete.target (or bless failed). Lines are appended with
``O_APPEND`` and fsynced; a torn last line after a power cut is skipped with a warning. The file is
bounded: past :data:`LIMIT` bytes it is rewritten (temporary file, fsync, rename) with the newest
:data:`KEEP` boots.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootkeeper import fsutil
from bootkeeper.errors import StoreIOError
from bootkeeper.esp import counter as counter_mod
from bootkeeper.esp.counter import EntryState
from bootkeeper.esp.entries import Role
from bootkeeper.esp.store import Snapshot

HISTORY = "var/lib/bootkeeper/boots.jsonl"
LIMIT = 256 * 1024
KEEP = 200
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


@dataclass
class Boot:
    boot_id: str
    time: float
    entry: str | None  # ESP path as booted (with the counter systemd-boot gave it)
    role: str | None
    left: int | None
    done: int | None
    entries: list[dict[str, Any]] = field(default_factory=list)
    verdict: str | None = None
    verdict_time: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "boot_id": self.boot_id,
            "time": self.time,
            "entry": self.entry,
            "role": self.role,
            "tries_left": self.left,
            "tries_done": self.done,
            "verdict": self.verdict,
            "verdict_time": self.verdict_time,
        }


def boot_record(boot_id: str, now: float, booted: str | None, snap: Snapshot | None) -> dict[str, Any]:
    left = done = None
    role = None
    if booted:
        file_name = booted.replace("\\", "/").rsplit("/", 1)[-1]
        name = counter_mod.parse(file_name, ".efi" if file_name.lower().endswith(".efi") else ".conf")
        left, done = name.tries_left, name.tries_done
        r = Role.from_stem(name.stem)
        role = r.value if r else None
    entries = [
        {"path": e.path, "state": e.state.value, "left": e.name.tries_left, "done": e.name.tries_done}
        for e in (snap.entries if snap else ())
    ]
    return {
        "type": "boot",
        "boot_id": boot_id,
        "time": now,
        "entry": booted.replace("\\", "/").lstrip("/") if booted else None,
        "role": role,
        "tries_left": left,
        "tries_done": done,
        "entries": entries,
    }


def verdict_record(boot_id: str, now: float, verdict: str) -> dict[str, Any]:
    return {"type": "verdict", "boot_id": boot_id, "time": now, "verdict": verdict}


def parse(text: str, source: str) -> tuple[list[Boot], list[str]]:
    """Boots in the order recorded; malformed lines are skipped and reported."""
    boots: dict[str, Boot] = {}
    warnings: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            kind, boot_id, t = rec["type"], rec["boot_id"], _time(rec["time"])
            if not isinstance(boot_id, str):
                raise TypeError("boot_id")
            if kind == "boot":
                boots[boot_id] = Boot(
                    boot_id,
                    t,
                    rec.get("entry"),
                    rec.get("role"),
                    rec.get("tries_left"),
                    rec.get("tries_done"),
                    list(rec.get("entries") or []),
                )
            elif kind == "verdict" and boot_id in boots:
                boots[boot_id].verdict = str(rec["verdict"])
                boots[boot_id].verdict_time = t
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
            # RecursionError: JSON nested deeper than the parser's stack; OverflowError: float()
            warnings.append(f"{source}:{n}: skipped a malformed line ({type(exc).__name__}: {str(exc)[:120]})")
    return list(boots.values()), warnings


def read(root: Path) -> tuple[list[Boot], list[str]]:
    p = root / HISTORY
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        return [], [f"{p}: cannot read ({exc.strerror})"]
    return parse(raw.decode("utf-8", "replace"), str(p))


def append(root: Path, record: dict[str, Any]) -> None:
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
        raise StoreIOError(f"{p}: cannot append to the boot history ({exc.strerror})") from exc


def _compact(p: Path) -> None:
    lines = p.read_bytes().splitlines(keepends=True)
    starts = [i for i, ln in enumerate(lines) if b'"type":"boot"' in ln]
    if len(starts) > KEEP:
        fsutil.write_atomic(p, b"".join(lines[starts[-KEEP] :]))


def recorded(boots: list[Boot], boot_id: str) -> bool:
    return any(b.boot_id == boot_id for b in boots)


@dataclass(frozen=True)
class Why:
    first_choice: bool
    text: str
    fallbacks: tuple[dict[str, Any], ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"first_choice": self.first_choice, "text": self.text, "fallback_from": list(self.fallbacks)}


def _stamp(t: float) -> str:
    import time as _time

    return _time.strftime("%Y-%m-%d %H:%M:%S UTC", _time.gmtime(t))


def explain(snap: Snapshot, booted_role: Role | None, booted_path: str | None, boots: list[Boot]) -> Why:
    """Why this entry booted: the first choice, or a fallback because the roles before it are bad."""
    if booted_role is None:
        return Why(False, f"booted {booted_path or 'an unknown entry'}, which has no role")
    bad_before = [
        e for e in snap.entries if e.role is not None and e.role.rank < booted_role.rank and e.state is EntryState.BAD
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
    fallbacks = []
    for e in sorted(bad_before, key=lambda x: x.role.rank if x.role else 99):
        assert e.role is not None
        tries = e.name.tries_done
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
        parts.append(f"{e.role.value} used its {tries} tries{when}")
        fallbacks.append(
            {
                "role": e.role.value,
                "entry": e.path,
                "tries_used": tries,
                "last_try": last,
                "last_try_text": _stamp(last) if last is not None else None,
                "boots": [b.time for b in since_good],
            }
        )
    return Why(False, f"{booted_role.value} booted as a fallback: " + "; ".join(parts), tuple(fallbacks))
