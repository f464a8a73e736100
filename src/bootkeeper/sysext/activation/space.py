"""Room in the destination: which images fit together in a round (statvfs, in whole blocks), the
earlier copy an image may replace to fit, and the reason one that does not fit is refused."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from bootkeeper.sysext.activation.found import Job


@dataclass(frozen=True)
class Fitting:
    """One round: the jobs that fit together in ``free`` bytes (plus ``reclaimed``, the room of
    earlier copies removed for them, named in ``freed``), and the rest for later rounds."""

    batch: list[Job]
    rest: list[Job]
    free: int
    reclaimed: int
    freed: list[str]


def fitting(pending: list[Job], dest: Path, max_batch: int) -> Fitting:
    """Which of ``pending`` (smallest first) fit together in ``dest`` now, ``max_batch`` at most. An
    earlier run's copy of an image that does not fit otherwise is replaced by it: its room counts, and
    it is removed here (the new copy is placed if it passes; if not, the old must go anyway)."""
    free, block = _free(dest)
    room = free
    batch: list[Job] = []
    rest: list[Job] = []
    reclaimed = 0
    freed: list[str] = []
    for job in pending:
        if len(batch) >= max_batch:  # the next round's
            rest.append(job)
            continue
        need = _rounded(job.size, block)
        if need > room:
            held = _earlier_copy(dest / job.name)
            if held and need <= room + held and _remove(dest / job.name):
                freed.append(job.name)
                room += held
                reclaimed += held
        if need <= room:
            batch.append(job)
            room -= need
        else:
            rest.append(job)
    return Fitting(batch, rest, free, reclaimed, freed)


def does_not_fit(name: str, size: int, dest: Path, free: int) -> str:
    return f"does not fit: {name} is {size} bytes, {dest} has {free} bytes free"


def _free(dest: Path) -> tuple[int, int]:
    """Bytes free for us in ``dest`` and its block size."""
    try:
        v = os.statvfs(dest)
    except OSError:
        return 1 << 62, 4096  # not measurable: try, and let a failing copy say so
    return v.f_bavail * v.f_frsize, v.f_frsize or 4096


def _earlier_copy(p: Path) -> int:
    """Bytes held by a regular file at ``p`` (a copy an earlier run placed), else 0."""
    try:
        st = os.lstat(p)
    except OSError:
        return 0
    return st.st_blocks * 512 if stat.S_ISREG(st.st_mode) else 0


def _remove(p: Path) -> bool:
    try:
        p.unlink()
    except OSError:
        return False
    return True


def _rounded(size: int, block: int) -> int:
    return -(-size // block) * block
