"""dm-verity (hash format 1) as ``veritysetup format``/``verify`` write and check it.

On-disk superblock (512 bytes, little-endian, at the start of the hash area, padded to one hash
block): ``verity\\0\\0``, version, hash type, UUID, algorithm name, data and hash block sizes, data
block count, salt size and salt. The hash tree follows it: level 0 holds the hash of every data
block, level i+1 the hash of every block of level i, each level padded to whole hash blocks with
zeros; the levels are laid out top level first (as cryptsetup's ``hash_levels()`` places them).
A hash is ``H(salt || block)`` for format 1. The root hash is the hash of the top level's block.

Leaf hashing runs on several threads: hashlib releases the GIL for buffers this size.
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid as uuid_mod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from bootkeeper.errors import ParseError

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
            raise ParseError(f"{what}: {len(raw)} bytes, shorter than the {SB_SIZE}-byte superblock")
        (sig, version, hash_type, uid, alg, dbs, hbs, blocks, salt_size, _p1, salt, _p2) = struct.unpack(
            SB_FORMAT, raw[:SB_SIZE]
        )
        if sig != SB_SIGNATURE:
            raise ParseError(f"{what}: no 'verity' signature")
        if version != 1:
            raise ParseError(f"{what}: version {version}, only version 1 is supported")
        if hash_type != 1:
            raise ParseError(f"{what}: hash type {hash_type}, only type 1 (salt first) is supported")
        if salt_size > MAX_SALT:
            raise ParseError(f"{what}: salt size {salt_size} is over {MAX_SALT}")
        name = alg.split(b"\0", 1)[0].decode("ascii", "replace")
        if name not in hashlib.algorithms_available or name not in ("sha256", "sha512", "sha1"):
            raise ParseError(f"{what}: hash algorithm {name!r} is not one of sha256, sha512, sha1")
        for label, size in (("data block size", dbs), ("hash block size", hbs)):
            if size < 512 or size > 512 * 1024 or size & (size - 1):
                raise ParseError(f"{what}: {label} {size} is not a power of two from 512 to 524288")
        if blocks == 0:
            raise ParseError(f"{what}: zero data blocks")
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


def _hash_blocks(alg: str, salt: bytes, data: bytes, block_size: int) -> bytes:
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
            raise ParseError(f"data area ends at byte {start + off + len(data)}, before the end of the data")
        out.append(_hash_blocks(alg, salt, data, block_size))
    return b"".join(out)


def _leaf_digests(fd: int, base: int, sb: Superblock, threads: int, progress: Callable[[int], None] | None) -> bytes:
    """The hash of every data block. Large inputs are split across worker processes: per-block
    hashing of 4 KiB buffers holds the GIL too often for threads to scale."""
    total = sb.data_blocks * sb.data_block_size
    digest_size = hashlib.new(sb.algorithm).digest_size
    workers = max(1, threads)
    if workers > 1 and total >= _PROCESS_THRESHOLD:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        step = _PROCESS_SLICE
        offsets = list(range(0, total, step))
        ctx = multiprocessing.get_context("fork")
        out = bytearray()
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [
                pool.submit(
                    _hash_range, fd, base + off, min(step, total - off), sb.algorithm, sb.salt, sb.data_block_size
                )
                for off in offsets
            ]
            for fut in futures:
                part = fut.result()
                out += part
                if progress:
                    progress(len(part) // digest_size * sb.data_block_size)
        return bytes(out)
    chunk = _CHUNK_BLOCKS * sb.data_block_size

    def task(off: int) -> bytes:
        return _hash_range(fd, base + off, min(chunk, total - off), sb.algorithm, sb.salt, sb.data_block_size)

    out2 = bytearray()
    with ThreadPoolExecutor(max_workers=workers) as tpool:
        for part in tpool.map(task, range(0, total, chunk)):
            out2 += part
            if progress:
                progress(len(part) // digest_size * sb.data_block_size)
    return bytes(out2)


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
            raise ParseError(f"data size {size} is not a multiple of the block size {data_block_size}")
        data_blocks = size // data_block_size
    if data_blocks == 0:
        raise ParseError("no data to protect")
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
        digests = _hash_blocks(algorithm, sb.salt, level, hash_block_size)
    root = digests  # the hash of the top level's single block
    tree = b"".join(reversed(blocks))  # top level first
    return Tree(sb, root, tree)


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    reason: str | None = None


def verify(
    data: BinaryIO, hash_area: bytes, root_hash: bytes, *, full: bool = True, threads: int | None = None
) -> VerifyResult:
    """Check the superblock, the tree against ``root_hash`` and (``full``) every data block of the
    file ``data``; ``hash_area`` starts with the superblock."""
    return verify_at(
        data.fileno(), 0, os.fstat(data.fileno()).st_size, hash_area, root_hash, full=full, threads=threads
    )


def verify_at(
    fd: int,
    base: int,
    size: int,
    hash_area: bytes,
    root_hash: bytes,
    *,
    full: bool = True,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyResult:
    """Like :func:`verify` for data that starts at byte ``base`` of ``fd`` and spans ``size`` bytes;
    ``progress(n)`` is called as data bytes are hashed (``full`` only)."""
    sb = Superblock.unpack(hash_area[:SB_SIZE])
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
    tree = hash_area[hbs : hbs + lv.total_blocks * hbs]
    if len(tree) < lv.total_blocks * hbs:
        return VerifyResult(False, f"hash area holds {len(tree)} bytes of tree, {lv.total_blocks} blocks needed")
    if not lv.sizes:
        top = os.pread(fd, sb.data_block_size, base)
        ok = _hash_blocks(sb.algorithm, sb.salt, top, sb.data_block_size) == root_hash
        return VerifyResult(ok, None if ok else "root hash does not match the data")
    top = tree[lv.offsets[-1] * hbs : (lv.offsets[-1] + 1) * hbs]
    if _hash_blocks(sb.algorithm, sb.salt, top, hbs) != root_hash:
        return VerifyResult(False, "root hash does not match the top of the hash tree")
    for i in range(len(lv.sizes) - 1, 0, -1):
        upper = tree[lv.offsets[i] * hbs : (lv.offsets[i] + lv.sizes[i]) * hbs]
        lower = tree[lv.offsets[i - 1] * hbs : (lv.offsets[i - 1] + lv.sizes[i - 1]) * hbs]
        expect = _pack_level(_hash_blocks(sb.algorithm, sb.salt, lower, hbs), digest_size, hbs)
        if expect != upper:
            return VerifyResult(False, f"hash tree level {i - 1} does not match level {i}")
    if not full:
        return VerifyResult(True)
    leaves = _pack_level(_leaf_digests(fd, base, sb, threads or (os.cpu_count() or 1), progress), digest_size, hbs)
    stored = tree[lv.offsets[0] * hbs : (lv.offsets[0] + lv.sizes[0]) * hbs]
    if leaves != stored:
        slot = _digest_slot(digest_size)
        for b in range(sb.data_blocks):
            if leaves[b * slot : (b + 1) * slot] != stored[b * slot : (b + 1) * slot]:
                return VerifyResult(False, f"data block {b} (byte {b * sb.data_block_size}) does not match its hash")
    return VerifyResult(True)
