"""One pass from an image to its staged copy: each chunk is read from the source once, written to
the copy, and, where it lies in a verity-protected data area, hashed as data blocks from the very
bytes written. The copy's validation then checks the hash levels (read from the copy) against these
hashes and the signed root hash, and never reads the data again (:class:`verity.Leaves`).

An image is cut into pieces (:func:`pieces`) at the edges of its data areas and every
:data:`PIECE` bytes within, so that one large image spreads across worker processes as well as
many small ones do; each piece is copied and hashed on its own (:func:`copy_piece`) at explicit
offsets of both descriptors, so pieces may run in any order, in any process that has the two
descriptors. Outside the data areas (the GPT, the hash tree, the signature) the kernel copies
(``copy_file_range``, :func:`fsutil.copy_into`).

The areas come from the source's GPT and verity superblock read before copying
(:func:`image.data_areas`); the copy's validation uses the hashes only when the copy's own GPT and
superblock say the same area and the same salt, block size and count, so a source changed between
the two reads is hashed again from the copy: never trusted, only slower.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bootkeeper import fsutil
from bootkeeper.sysext import verity

PIECE = 32 << 20  # bytes of one piece: a worker's unit of work
_CHUNK = 1 << 20  # bytes read, written and hashed at a time within a piece


@dataclass(frozen=True)
class Piece:
    """``length`` bytes at ``start`` of the image; inside the data area that ``area`` starts at
    (hashed as it is copied, with the superblock ``sb``), or outside any (``sb`` None)."""

    start: int
    length: int
    area: int = -1
    sb: verity.Superblock | None = None


def pieces(size: int, areas: list[tuple[int, verity.Superblock]], step: int = PIECE) -> list[Piece]:
    """The pieces of an image of ``size`` bytes whose data areas are ``areas`` (in order, apart,
    within the image: :func:`image.data_areas`). Pieces inside an area are whole data blocks."""
    out: list[Piece] = []

    def cut(start: int, end: int, area: int = -1, sb: verity.Superblock | None = None) -> None:
        span = step if sb is None else max(sb.data_block_size, step - step % sb.data_block_size)
        for off in range(start, end, span):
            out.append(Piece(off, min(span, end - off), area, sb))

    pos = 0
    for start, sb in areas:
        end = start + sb.data_blocks * sb.data_block_size
        cut(pos, start)
        cut(start, end, start, sb)
        pos = end
    cut(pos, size)
    return out


def copy_piece(src: int, dst: int, piece: Piece) -> bytes:
    """Copy ``piece`` from descriptor ``src`` to the same offsets of ``dst``; the hashes of its data
    blocks, in order (b"" outside a data area). OSError when the source ends before the piece does
    or the copy cannot be written (a full /run)."""
    if piece.sb is None:
        fsutil.copy_into(src, dst, piece.length, start=piece.start)
        return b""
    sb = piece.sb
    buf = bytearray(min(max(sb.data_block_size, _CHUNK - _CHUNK % sb.data_block_size), piece.length))
    view = memoryview(buf)
    out: list[bytes] = []
    done = 0
    while done < piece.length:
        want = min(len(buf), piece.length - done)
        at = piece.start + done
        got = os.preadv(src, [view[:want]], at)
        if got < want:  # hash whole blocks only: read on until the chunk is full, or fail
            got = _read_on(src, view, got, want, at, piece.start + piece.length)
        _write_all(dst, view[:want], at)
        out.append(verity.hash_blocks(sb.algorithm, sb.salt, view[:want], sb.data_block_size))
        done += want
    return b"".join(out)


def copy_pieces(work: list[tuple[int, int, Piece]]) -> list[bytes | BaseException]:
    """:func:`copy_piece` of each (source, copy, piece), in order: a worker process's task. What one
    raises is its result, so a failing image leaves the others' pieces in the task alone."""
    out: list[bytes | BaseException] = []
    for src, dst, piece in work:
        try:
            out.append(copy_piece(src, dst, piece))
        except Exception as exc:  # the caller refuses that image with it
            out.append(exc)
    return out


def _read_on(src: int, view: memoryview, got: int, want: int, at: int, end: int) -> int:
    while got < want:
        n = os.preadv(src, [view[got:want]], at + got)
        if n == 0:
            raise OSError(f"source ended after {at + got} of {end} bytes")
        got += n
    return got


def _write_all(dst: int, data: memoryview, at: int) -> None:
    while data:
        n = os.pwrite(dst, data, at)
        data = data[n:]
        at += n


def leaves(areas: list[tuple[int, verity.Superblock]], parts: dict[int, list[bytes]]) -> dict[int, verity.Leaves]:
    """The :class:`verity.Leaves` of each area from its pieces' hashes (``parts``: by area, in
    piece order), for :func:`image.validate`."""
    return {start: verity.Leaves(start, sb, b"".join(parts.get(start, []))) for start, sb in areas}
