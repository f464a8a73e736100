"""Staging a round's images: each opened (never through a symbolic link, regular files only) with a
temporary file for its copy in the destination, then all copied in one pass that hashes their data
areas as it goes (:mod:`bootkeeper.sysext.stage`), in the round's worker processes when there are
any; a worker that dies has the pieces of its images copied again image by image, alone."""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from bootkeeper import fsutil
from bootkeeper.sysext.activation.found import Job
from bootkeeper.sysext.activation.outcome import Outcome, fault, refused
from bootkeeper.sysext.activation.pool import WorkerDied, Workers
from bootkeeper.sysext.activation.space import does_not_fit

if TYPE_CHECKING:
    from bootkeeper.sysext import verity
    from bootkeeper.sysext.stage import Piece

# by image, by data area (its byte offset): the data blocks' hashes taken as the copy was written
Leaves = dict[str, dict[int, "verity.Leaves"]]


@dataclass(frozen=True)
class OpenCopy:
    """A copy of ``src`` (open as ``sfd``, ``size`` bytes) to be made at ``tmp`` in the
    destination (open as ``fd``), judged, then placed; ``areas``: its verity data areas, hashed
    while it is copied (:mod:`bootkeeper.sysext.stage`)."""

    name: str
    src: Path
    fd: int
    tmp: Path
    sfd: int
    size: int
    areas: tuple[tuple[int, verity.Superblock], ...]


class _Work(NamedTuple):
    """Piece ``number`` of image ``name``: (source, copy, piece) for :func:`stage.copy_pieces`."""

    name: str
    number: int
    args: tuple[int, int, Piece]


_Copied = bytes | BaseException  # a piece's data blocks' hashes, or what copying it raised


def open_all(
    batch: list[Job], dest: Path, temps: contextlib.ExitStack, free: int, hashing: bool
) -> tuple[list[OpenCopy], dict[str, Outcome]]:
    """Open each image and a temporary file for its copy in the destination (both live as long
    as ``temps``), and, with ``hashing``, find the data areas to hash while copying; the opened and
    the refused."""
    opened: list[OpenCopy] = []
    out: dict[str, Outcome] = {}
    for job in batch:
        try:
            c = _open(job.name, job.src, dest, temps, free, hashing)
        except Exception as exc:  # one image's fault, never the run's
            c = refused(job.name, job.src, f"{job.src}: cannot stage a copy ({fault(exc)})")
        if isinstance(c, Outcome):
            out[job.name] = c
        else:
            opened.append(c)
    return opened, out


def _open(
    name: str, src: Path, dest: Path, temps: contextlib.ExitStack, free: int, hashing: bool
) -> OpenCopy | Outcome:
    """``src`` opened (never through a symbolic link, regular files only) with a temporary file in
    ``dest`` for its copy; or the reason it was refused."""
    try:
        sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        why = "a symbolic link; not followed" if os.path.islink(src) else f"cannot open ({exc.strerror})"
        return refused(name, src, f"{src}: {why}")
    temps.callback(os.close, sfd)
    st = os.fstat(sfd)
    if not stat.S_ISREG(st.st_mode):
        return refused(name, src, f"{src}: not a regular file")
    if st.st_size > free:  # grew since it was measured
        return refused(name, src, f"{src}: {does_not_fit(name, st.st_size, dest, free)}")
    fd, tmp = temps.enter_context(fsutil.temp_file(dest / name))
    areas: list[tuple[int, verity.Superblock]] = []
    if hashing:
        from bootkeeper.sysext.image import data_areas

        try:
            areas = data_areas(sfd, st.st_size)
        except Exception:  # nothing to hash while copying: the copy's validation reads it all
            areas = []
    return OpenCopy(name, src, fd, tmp, sfd, st.st_size, tuple(areas))


def copy_all(opened: list[OpenCopy], dest: Path, free: int, pool: Workers | None) -> tuple[Leaves, dict[str, Outcome]]:
    """Copy every opened image in one pass, hashing its data areas as it goes (see
    :mod:`bootkeeper.sysext.stage`), in ``pool`` if there is one: the pieces of every image,
    batched up to a piece's size, spread over its workers. The data blocks' hashes by image (for
    judging), and the images whose copy failed."""
    from bootkeeper.sysext import stage

    pieces = {c.name: stage.pieces(c.size, list(c.areas)) for c in opened}
    work = [_Work(c.name, i, (c.sfd, c.fd, piece)) for c in opened for i, piece in enumerate(pieces[c.name])]
    results = _in_pool(work, pool) if pool is not None else {}
    for w in work:
        if (w.name, w.number) not in results:
            results[(w.name, w.number)] = _copy_one(w.args)
    leaves: Leaves = {}
    failed: dict[str, Outcome] = {}
    for c in opened:
        parts: dict[int, list[bytes]] = {}
        for i, piece in enumerate(pieces[c.name]):
            got = results[(c.name, i)]
            if isinstance(got, BaseException):
                failed[c.name] = refused(c.name, c.src, _copy_failed(c, got, dest, free))
                break
            parts.setdefault(piece.area, []).append(got)
        else:
            leaves[c.name] = stage.leaves(list(c.areas), parts)
    return leaves, failed


def _in_pool(work: list[_Work], pool: Workers) -> dict[tuple[str, int], _Copied]:
    """The pieces copied in ``pool``, by (image, piece); those of the images whose pool broke are
    copied again image by image, alone. What is missing is left to this process."""
    from bootkeeper.sysext import stage

    batches = _batches(work)
    done: dict[int, list[_Copied] | Exception] = {}
    broken = pool.run(stage.copy_pieces, {k: ([w.args for w in b],) for k, b in batches.items()}, done)
    results: dict[tuple[str, int], _Copied] = {}
    for k, got in done.items():
        for w, r in zip(batches[k], got if isinstance(got, list) else [got] * len(batches[k]), strict=True):
            results[(w.name, w.number)] = r
    # as in judging: a pool that broke (a worker killed) is tried again image by image, alone
    for name in dict.fromkeys(w.name for k in broken for w in batches[k]):
        results.update(_alone([w for w in work if w.name == name]))
    return results


def _batches(work: list[_Work]) -> dict[int, list[_Work]]:
    """The pieces in order, a task's worth each: many small images' pieces to a task, a large
    image's one each (up to :data:`stage.PIECE` bytes)."""
    from bootkeeper.sysext import stage

    batches: dict[int, list[_Work]] = {}
    size = 0
    for w in work:
        if not batches or size + w.args[2].length > stage.PIECE:
            batches[len(batches)] = []
            size = 0
        batches[len(batches) - 1].append(w)
        size += w.args[2].length
    return batches


def _alone(work: list[_Work]) -> dict[tuple[str, int], _Copied]:
    """One image's pieces copied in a pool of its own: a worker that dies there is its own fault."""
    again = {(w.name, w.number): (w.args,) for w in work}
    redo: dict[tuple[str, int], _Copied | Exception] = {}
    with Workers(1) as alone:
        lost = alone.run(_copy_one, again, redo)
    results: dict[tuple[str, int], _Copied] = dict(redo)
    for k in lost:
        results[k] = WorkerDied()
    return results


def _copy_one(args: tuple[int, int, Piece]) -> _Copied:
    """One piece copied (:func:`stage.copy_piece`); what it raised is its result, as in a batch."""
    from bootkeeper.sysext import stage

    return stage.copy_pieces([args])[0]


def _copy_failed(c: OpenCopy, exc: BaseException, dest: Path, free: int) -> str:
    if isinstance(exc, WorkerDied):
        return f"{c.src}: copy stopped (its worker process died)"
    if isinstance(exc, OSError):
        return f"copy to {dest} failed ({exc.strerror or exc}; {c.name} is {c.size} bytes, {free} bytes were free)"
    return f"{c.src}: cannot stage a copy ({fault(exc)})"
