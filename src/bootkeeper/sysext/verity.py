"""dm-verity (hash format 1) as ``veritysetup format``/``verify`` write and check it.

On-disk superblock (512 bytes, little-endian, at the start of the hash area, padded to one hash
block): ``verity\\0\\0``, version, hash type, UUID, algorithm name, data and hash block sizes, data
block count, salt size and salt. The hash tree follows it: level 0 holds the hash of every data
block, level i+1 the hash of every block of level i, each level padded to whole hash blocks with
zeros; the levels are laid out top level first (as cryptsetup's ``hash_levels()`` places them).
A hash is ``H(salt || block)`` for format 1. The root hash is the hash of the top level's block.

Leaf hashing runs on several threads, or forked worker processes for large data (which die with
their parent: :func:`worker_init`). Verification reads the hash area from the file as it goes, each
block once: memory stays bounded whatever the size of the partition.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import struct
import uuid as uuid_mod
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from bootkeeper.errors import MalformedError

SB_SIGNATURE = b"verity\0\0"
SB_SIZE = 512
SB_FORMAT = "<8sII16s32sIIQH6s256s168s"
MAX_SALT = 256
_CHUNK_BLOCKS = 256  # data blocks per hashing task (1 MiB at 4 KiB blocks)


@dataclass(frozen=True)
class Superblock:
    version: int
    hash_type: int
    uuid: bytes
    algorithm: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    salt: bytes

    def pack(self) -> bytes:
        if len(self.salt) > MAX_SALT:
            raise ValueError(f"salt of {len(self.salt)} bytes, more than {MAX_SALT}")
        return struct.pack(
            SB_FORMAT,
            SB_SIGNATURE,
            self.version,
            self.hash_type,
            self.uuid,
            self.algorithm.encode().ljust(32, b"\0"),
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            len(self.salt),
            b"\0" * 6,
            self.salt.ljust(MAX_SALT, b"\0"),
            b"\0" * 168,
        )

    @classmethod
    def unpack(cls, raw: bytes, what: str = "verity superblock") -> Superblock:
        if len(raw) < SB_SIZE:
            raise MalformedError(f"{what}: {len(raw)} bytes, shorter than the {SB_SIZE}-byte superblock")
        (sig, version, hash_type, uid, alg, dbs, hbs, blocks, salt_size, _p1, salt, _p2) = struct.unpack(
            SB_FORMAT, raw[:SB_SIZE]
        )
        if sig != SB_SIGNATURE:
            raise MalformedError(f"{what}: no 'verity' signature")
        if version != 1:
            raise MalformedError(f"{what}: version {version}, only version 1 is supported")
        if hash_type != 1:
            raise MalformedError(f"{what}: hash type {hash_type}, only type 1 (salt first) is supported")
        if salt_size > MAX_SALT:
            raise MalformedError(f"{what}: salt size {salt_size} is over {MAX_SALT}")
        name = alg.split(b"\0", 1)[0].decode("ascii", "replace")
        if name not in hashlib.algorithms_available or name not in ("sha256", "sha512", "sha1"):
            raise MalformedError(f"{what}: hash algorithm {name!r} is not one of sha256, sha512, sha1")
        for label, size in (("data block size", dbs), ("hash block size", hbs)):
            if size < 512 or size > 512 * 1024 or size & (size - 1):
                raise MalformedError(f"{what}: {label} {size} is not a power of two from 512 to 524288")
        if blocks == 0:
            raise MalformedError(f"{what}: zero data blocks")
        return cls(version, hash_type, uid, name, dbs, hbs, blocks, salt[:salt_size])


@dataclass(frozen=True)
class Levels:
    """Where each level of the tree sits, in hash blocks from the start of the tree."""

    offsets: tuple[int, ...]  # index 0 = leaf level
    sizes: tuple[int, ...]

    @property
    def total_blocks(self) -> int:
        return sum(self.sizes)


def levels(data_blocks: int, hash_block_size: int, digest_size: int) -> Levels:
    per_block_bits = (hash_block_size // _digest_slot(digest_size)).bit_length() - 1
    n = 0
    while per_block_bits * n < 64 and (data_blocks - 1) >> (per_block_bits * n):
        n += 1
    offsets = [0] * n
    sizes = [0] * n
    pos = 0
    for i in range(n - 1, -1, -1):
        offsets[i] = pos
        shift = (i + 1) * per_block_bits
        sizes[i] = (data_blocks + (1 << shift) - 1) >> shift
        pos += sizes[i]
    return Levels(tuple(offsets), tuple(sizes))


def _digest_slot(digest_size: int) -> int:
    slot = 1
    while slot < digest_size:
        slot <<= 1
    return slot


def hash_blocks(alg: str, salt: bytes, data: bytes | bytearray | memoryview, block_size: int) -> bytes:
    """The salted hash (format 1: ``H(salt || block)``) of each ``block_size`` block of ``data``, joined."""
    # copy() of a salted hash and memoryview slices: no per-block bytes copies, fewer lookups
    copy = hashlib.new(alg, salt).copy
    mv = memoryview(data)
    out: list[bytes] = []
    append = out.append
    for off in range(0, len(data), block_size):
        h = copy()
        h.update(mv[off : off + block_size])
        append(h.digest())
    return b"".join(out)


def _pack_level(digests: bytes, digest_size: int, hash_block_size: int) -> bytes:
    slot = _digest_slot(digest_size)
    if slot != digest_size:
        digests = b"".join(digests[i : i + digest_size].ljust(slot, b"\0") for i in range(0, len(digests), digest_size))
    pad = (-len(digests)) % hash_block_size
    return digests + b"\0" * pad


@dataclass(frozen=True)
class Tree:
    superblock: Superblock
    root_hash: bytes
    tree: bytes  # the hash blocks, top level first (without the superblock)

    def hash_area(self, with_superblock: bool = True) -> bytes:
        if not with_superblock:
            return self.tree
        sb = self.superblock.pack()
        return sb + b"\0" * (self.superblock.hash_block_size - len(sb)) + self.tree


_PROCESS_THRESHOLD = 64 << 20  # below this, starting worker processes costs more than it saves
_PROCESS_SLICE = 32 << 20  # bytes per task handed to a worker process


def _hash_range(fd: int, start: int, n: int, alg: str, salt: bytes, block_size: int) -> bytes:
    """Worker: hash ``n`` bytes at ``start`` of ``fd`` block by block (runs in a forked process,
    which inherits the descriptor)."""
    out = []
    chunk = _CHUNK_BLOCKS * block_size
    for off in range(0, n, chunk):
        m = min(chunk, n - off)
        data = os.pread(fd, m, start + off)
        if len(data) < m:
            raise MalformedError(f"data area ends at byte {start + off + len(data)}, before the end of the data")
        out.append(hash_blocks(alg, salt, data, block_size))
    return b"".join(out)


def worker_init(parent: int | None = None) -> None:
    """Initializer of every forked worker process: die with the parent. A worker orphaned by a
    kill -9 of its parent would go on hashing (and holding the image open) for nobody;
    PR_SET_PDEATHSIG(SIGKILL) has the kernel kill it when its parent thread exits. The parent may
    already be gone by the time this runs (the signal is then never sent): ``parent`` is its pid,
    taken *before* the fork (``initargs=(os.getpid(),)``); a getppid() read here would already name
    the reaper that adopted an orphan."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1 (linux/prctl.h)
    except (OSError, AttributeError):
        return  # not Linux: nothing to ask the kernel for
    if parent is not None and os.getppid() != parent:
        os._exit(1)


_WINDOW = 2  # tasks in flight per worker: results wait in memory only this long


def _leaf_parts(
    fd: int, base: int, sb: Superblock, threads: int, progress: Callable[[int], None] | None
) -> Generator[bytes, None, None]:
    """The hash of every data block, in order, a part at a time (never all at once). Large inputs
    are split across worker processes: per-block hashing of 4 KiB buffers holds the GIL too often
    for threads to scale."""
    total = sb.data_blocks * sb.data_block_size
    workers = max(1, threads)
    if workers > 1 and total >= _PROCESS_THRESHOLD:
        import multiprocessing
        from concurrent.futures import Executor, ProcessPoolExecutor

        ctx = multiprocessing.get_context("fork")
        pool: Executor = ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=worker_init, initargs=(os.getpid(),)
        )
        step, chunk = _PROCESS_SLICE, _PROCESS_SLICE

        def submit(off: int) -> Future[bytes]:
            return pool.submit(
                _hash_range, fd, base + off, min(step, total - off), sb.algorithm, sb.salt, sb.data_block_size
            )
    else:
        pool = ThreadPoolExecutor(max_workers=workers)
        step = chunk = _CHUNK_BLOCKS * sb.data_block_size

        def submit(off: int) -> Future[bytes]:
            return pool.submit(
                _hash_range, fd, base + off, min(chunk, total - off), sb.algorithm, sb.salt, sb.data_block_size
            )

    with pool:
        offsets = iter(range(0, total, step))
        pending: deque[tuple[int, Future[bytes]]] = deque()
        try:
            for off in itertools.islice(offsets, workers * _WINDOW):
                pending.append((off, submit(off)))
            while pending:
                off, fut = pending.popleft()
                part = fut.result()
                nxt = next(offsets, None)
                if nxt is not None:
                    pending.append((nxt, submit(nxt)))
                if progress:
                    progress(min(step, total - off))
                yield part
        finally:
            for _, fut in pending:
                fut.cancel()


def _leaf_digests(fd: int, base: int, sb: Superblock, threads: int, progress: Callable[[int], None] | None) -> bytes:
    return b"".join(_leaf_parts(fd, base, sb, threads, progress))


def build(
    f: BinaryIO,
    *,
    data_blocks: int | None = None,
    salt: bytes | None = None,
    uuid: bytes | None = None,
    algorithm: str = "sha256",
    data_block_size: int = 4096,
    hash_block_size: int = 4096,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Tree:
    """Build the hash tree of the data in ``f`` (the first ``data_blocks`` blocks, by default all)."""
    if data_blocks is None:
        size = os.fstat(f.fileno()).st_size
        if size % data_block_size:
            raise MalformedError(f"data size {size} is not a multiple of the block size {data_block_size}")
        data_blocks = size // data_block_size
    if data_blocks == 0:
        raise MalformedError("no data to protect")
    sb = Superblock(
        1,
        1,
        uuid if uuid is not None else uuid_mod.uuid4().bytes,
        algorithm,
        data_block_size,
        hash_block_size,
        data_blocks,
        salt if salt is not None else os.urandom(32),
    )
    digest_size = hashlib.new(algorithm).digest_size
    lv = levels(data_blocks, hash_block_size, digest_size)
    digests = _leaf_digests(f.fileno(), 0, sb, threads or (os.cpu_count() or 1), progress)
    if not lv.sizes:  # a single data block: its hash is the root
        return Tree(sb, digests, b"")
    blocks: list[bytes] = [b""] * len(lv.sizes)
    for i in range(len(lv.sizes)):
        level = _pack_level(digests, digest_size, hash_block_size)
        assert len(level) == lv.sizes[i] * hash_block_size
        blocks[i] = level
        digests = hash_blocks(algorithm, sb.salt, level, hash_block_size)
    root = digests  # the hash of the top level's single block
    tree = b"".join(reversed(blocks))  # top level first
    return Tree(sb, root, tree)


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    reason: str | None = None


class HashSource(Protocol):
    @property
    def size(self) -> int: ...

    def read(self, off: int, n: int) -> bytes: ...


@dataclass(frozen=True)
class HashArea:
    """A hash area (superblock first) of ``size`` bytes at ``offset`` of ``fd``: read as needed,
    never whole (a crafted image may declare a verity partition of any size)."""

    fd: int
    offset: int
    size: int

    def read(self, off: int, n: int) -> bytes:
        n = max(0, min(n, self.size - off))
        return os.pread(self.fd, n, self.offset + off) if n else b""


@dataclass(frozen=True)
class _Bytes:
    raw: bytes

    @property
    def size(self) -> int:
        return len(self.raw)

    def read(self, off: int, n: int) -> bytes:
        return self.raw[off : off + n]


class _Mismatch(Exception):
    pass


_READ_BLOCKS = 256  # hash blocks read at a time while a level is checked


def _check_level(
    area: HashSource,
    start: int,
    nblocks: int,
    upper: bytes,
    sb: Superblock,
    slot: int,
    mismatch: str,
    keep: bool,
    leaves: Iterator[bytes] | None = None,
) -> bytes:
    """Read one level (``nblocks`` hash blocks at byte ``start`` of the area) once, in order, and
    check each block's hash against its entry in ``upper``, the level above, already checked. With
    ``leaves`` (the hashes of the data blocks, in order) also check each entry against the data.
    Returns the level if ``keep`` (the levels above the leaves are small), else b""."""
    hbs = sb.hash_block_size
    copy = hashlib.new(sb.algorithm, sb.salt).copy
    pad = b"\0" * (slot - copy().digest_size)
    kept: list[bytes] = []
    pending = b""  # leaf hashes not yet compared
    entry = 0  # next data block to compare
    for first in range(0, nblocks, _READ_BLOCKS):
        n = min(_READ_BLOCKS, nblocks - first)
        raw = area.read(start + first * hbs, n * hbs)
        if len(raw) < n * hbs:
            raise _Mismatch("hash area ends inside the tree")
        mv = memoryview(raw)
        for k in range(n):
            h = copy()
            h.update(mv[k * hbs : (k + 1) * hbs])
            at = (first + k) * slot
            if upper[at : at + slot] != h.digest() + pad:
                raise _Mismatch(mismatch)
        if keep:
            kept.append(raw)
        if leaves is None:
            continue
        # the leaf hashes of the data blocks this read covers
        end_entry = min(sb.data_blocks, (first + n) * hbs // slot)
        while len(pending) < (end_entry - entry) * (slot - len(pad)):
            part = next(leaves, None)
            if part is None:
                break
            pending += part
        ds = slot - len(pad)
        got = pending[: (end_entry - entry) * ds]
        if pad:  # digests shorter than their slot: each entry is the digest, then zeros
            got = b"".join(got[i : i + ds] + pad for i in range(0, len(got), ds))
        stored = raw[entry * slot - first * hbs : end_entry * slot - first * hbs]
        if got != stored:  # one comparison for the whole read; the block only to name it
            b = next(
                b
                for b in range(entry, end_entry)
                if got[(b - entry) * slot : (b - entry + 1) * slot]
                != stored[(b - entry) * slot : (b - entry + 1) * slot]
            )
            raise _Mismatch(f"data block {b} (byte {b * sb.data_block_size}) does not match its hash")
        pending = pending[(end_entry - entry) * ds :]
        entry = end_entry
        # entries past the last data block are padding: zero
        if end_entry == sb.data_blocks:
            tail = raw[end_entry * slot - first * hbs :]
            if tail.strip(b"\0"):
                raise _Mismatch(mismatch)
    if upper[nblocks * slot :].strip(b"\0"):
        raise _Mismatch(mismatch)
    return b"".join(kept)


def verify(
    data: BinaryIO, hash_area: bytes, root_hash: bytes, *, full: bool = True, threads: int | None = None
) -> VerifyResult:
    """Check the superblock, the tree against ``root_hash`` and (``full``) every data block of the
    file ``data``; ``hash_area`` starts with the superblock."""
    return verify_at(
        data.fileno(), 0, os.fstat(data.fileno()).st_size, hash_area, root_hash, full=full, threads=threads
    )


@dataclass(frozen=True)
class Leaves:
    """The hash of every data block of the data area at byte ``base``, as ``superblock`` says to
    hash them, computed from the bytes as they were written to the copy being checked
    (:mod:`bootkeeper.sysext.stage`): the leaf level is then checked against these instead of
    reading the data again. Used only when the copy's own superblock and partition say the same."""

    base: int
    superblock: Superblock
    digests: bytes


_LEAF_PART = 1 << 18  # bytes of precomputed leaf hashes handed to the level check at a time


def _given_parts(digests: bytes) -> Iterator[bytes]:
    for off in range(0, len(digests), _LEAF_PART):
        yield digests[off : off + _LEAF_PART]


def verify_at(
    fd: int,
    base: int,
    size: int,
    hash_area: bytes | HashSource,
    root_hash: bytes,
    *,
    full: bool = True,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
    leaves: Leaves | None = None,
) -> VerifyResult:
    """Like :func:`verify` for data that starts at byte ``base`` of ``fd`` and spans ``size`` bytes;
    ``hash_area`` is the bytes or a :class:`HashArea`, read level by level (each block once, so
    what is checked is what was read); ``progress(n)`` is called as data bytes are hashed (``full`` only).
    ``leaves``: the data blocks' hashes taken while the data was copied to ``fd``; used in place of
    reading the data again when they are of this area, with this superblock, else ignored."""
    area: HashSource = _Bytes(hash_area) if isinstance(hash_area, bytes) else hash_area
    sb = Superblock.unpack(area.read(0, SB_SIZE))
    digest_size = hashlib.new(sb.algorithm).digest_size
    if len(root_hash) != digest_size:
        return VerifyResult(False, f"root hash is {len(root_hash)} bytes, {sb.algorithm} gives {digest_size}")
    if sb.data_blocks * sb.data_block_size > size:
        return VerifyResult(
            False,
            f"superblock says {sb.data_blocks} data blocks, more than the "
            f"{size // sb.data_block_size} the data area holds",
        )
    lv = levels(sb.data_blocks, sb.hash_block_size, digest_size)
    hbs = sb.hash_block_size
    have = max(0, min(area.size - hbs, lv.total_blocks * hbs))
    if have < lv.total_blocks * hbs:
        return VerifyResult(False, f"hash area holds {have} bytes of tree, {lv.total_blocks} blocks needed")
    if not lv.sizes:
        top = os.pread(fd, sb.data_block_size, base)
        ok = hash_blocks(sb.algorithm, sb.salt, top, sb.data_block_size) == root_hash
        return VerifyResult(ok, None if ok else "root hash does not match the data")
    slot = _digest_slot(digest_size)
    # the top level is one block; its hash is the root hash: checked like an entry of a level above
    upper = root_hash + b"\0" * (slot - digest_size)
    parts: Iterator[bytes] | None = None
    if not full:
        pass
    elif (
        leaves is not None
        and leaves.base == base
        and leaves.superblock == sb
        and len(leaves.digests) == sb.data_blocks * digest_size
    ):
        parts = _given_parts(leaves.digests)
        if progress:
            progress(sb.data_blocks * sb.data_block_size)
    else:
        parts = _leaf_parts(fd, base, sb, threads or (os.cpu_count() or 1), progress)
    try:
        for i in range(len(lv.sizes) - 1, -1, -1):
            is_top = i == len(lv.sizes) - 1
            what = (
                "root hash does not match the top of the hash tree"
                if is_top
                else f"hash tree level {i} does not match level {i + 1}"
            )
            upper = _check_level(
                area,
                hbs + lv.offsets[i] * hbs,
                lv.sizes[i],
                upper,
                sb,
                slot,
                what,
                keep=i > 0,
                leaves=parts if i == 0 else None,
            )
    except _Mismatch as exc:
        return VerifyResult(False, str(exc))
    finally:
        if isinstance(parts, Generator):
            parts.close()  # stops the workers at a mismatch
    return VerifyResult(True)
