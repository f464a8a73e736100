"""A small read-only EROFS reader: enough to read one file (the extension-release) from an image.

Why a reader and not a loop mount: validation runs before any image is trusted, in the boot path,
and in containers and build pipelines without root or without the erofs module; mounting an
unverified file system would also hand the kernel untrusted metadata. Uncompressed layouts only
(FLAT_PLAIN, FLAT_INLINE), which is what mkfs.erofs and systemd-repart write unless compression is
asked for; a compressed or chunked file gives a :class:`MalformedError` saying so. Format: Linux
``fs/erofs/erofs_fs.h``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from bootkeeper.errors import MalformedError

MAGIC = 0xE0F5E1E2
SB_OFFSET = 1024
FLAT_PLAIN, COMPRESSED_FULL, FLAT_INLINE, COMPRESSED_COMPACT, CHUNK_BASED = range(5)
S_IFMT, S_IFDIR, S_IFREG, S_IFLNK = 0o170000, 0o040000, 0o100000, 0o120000
MAX_READ = 1 << 20
MAX_DEPTH = 40


@dataclass(frozen=True)
class Inode:
    nid: int
    mode: int
    size: int
    layout: int
    raw_blkaddr: int
    inline_at: int  # byte offset of inline data (tail), for FLAT_INLINE


class Erofs:
    def __init__(self, read: Callable[[int, int], bytes], size: int, what: str = "erofs") -> None:
        """``read(offset, n)`` gives bytes of the file system; ``size`` is its length."""
        self._read, self.size, self.what = read, size, what
        if size < SB_OFFSET + 128:
            raise MalformedError(f"{what}: too small for an erofs superblock")
        data = self._slice(0, SB_OFFSET + 128)
        (magic,) = struct.unpack_from("<I", data, SB_OFFSET)
        if magic != MAGIC:
            raise MalformedError(f"{what}: not erofs (magic {magic:#x})")
        self.blkszbits = data[SB_OFFSET + 12]
        if not 9 <= self.blkszbits <= 16:
            raise MalformedError(f"{what}: block size 2^{self.blkszbits} out of range")
        self.blksz = 1 << self.blkszbits
        (self.root_nid,) = struct.unpack_from("<H", data, SB_OFFSET + 14)
        (self.meta_blkaddr,) = struct.unpack_from("<I", data, SB_OFFSET + 40)

    def _slice(self, off: int, n: int) -> bytes:
        if off < 0 or n < 0 or off + n > self.size:
            raise MalformedError(f"{self.what}: reference to bytes {off}..{off + n} beyond the image ({self.size})")
        return self._read(off, n)

    def inode(self, nid: int) -> Inode:
        off = self.meta_blkaddr * self.blksz + nid * 32
        head = self._slice(off, 32)
        fmt, xcount, mode = struct.unpack_from("<HHH", head, 0)
        extended = fmt & 1
        layout = (fmt >> 1) & 0x7
        if extended:
            ext = self._slice(off, 64)
            (size,) = struct.unpack_from("<Q", ext, 8)
            (raw,) = struct.unpack_from("<I", ext, 16)
            isize = 64
        else:
            (size,) = struct.unpack_from("<I", head, 8)
            (raw,) = struct.unpack_from("<I", head, 16)  # after i_size and a reserved word
            isize = 32
        xsize = 0 if xcount == 0 else 12 + (xcount - 1) * 4
        return Inode(nid, mode, size, layout, raw, off + isize + xsize)

    def read(self, ino: Inode) -> bytes:
        if ino.size > MAX_READ:
            raise MalformedError(f"{self.what}: inode {ino.nid} is {ino.size} bytes, more than this reader reads")
        if ino.layout == FLAT_PLAIN:
            return self._slice(ino.raw_blkaddr * self.blksz, ino.size)
        if ino.layout == FLAT_INLINE:
            full = ino.size // self.blksz * self.blksz
            head = self._slice(ino.raw_blkaddr * self.blksz, full) if full else b""
            return head + self._slice(ino.inline_at, ino.size - full)
        kind = {COMPRESSED_FULL: "compressed", COMPRESSED_COMPACT: "compressed", CHUNK_BASED: "chunk-based"}
        raise MalformedError(
            f"{self.what}: inode {ino.nid} is {kind.get(ino.layout, f'layout {ino.layout}')}; "
            "this reader handles uncompressed erofs only"
        )

    def listdir(self, ino: Inode) -> dict[str, int]:
        if ino.mode & S_IFMT != S_IFDIR:
            raise MalformedError(f"{self.what}: inode {ino.nid} is not a directory")
        raw = self.read(ino)
        out: dict[str, int] = {}
        for boff in range(0, len(raw), self.blksz):
            block = raw[boff : boff + self.blksz]
            if len(block) < 12:
                break
            (first_nameoff,) = struct.unpack_from("<H", block, 8)
            n = first_nameoff // 12
            if n == 0 or first_nameoff % 12 or first_nameoff > len(block):
                raise MalformedError(f"{self.what}: directory inode {ino.nid} is corrupt")
            for i in range(n):
                nid, nameoff = struct.unpack_from("<QH", block, i * 12)
                end = struct.unpack_from("<H", block, (i + 1) * 12 + 8)[0] if i + 1 < n else len(block)
                if not nameoff <= end <= len(block):
                    raise MalformedError(f"{self.what}: directory inode {ino.nid} has a bad name offset")
                name = block[nameoff:end].split(b"\0", 1)[0].decode("utf-8", "replace")
                out[name] = nid
        return out

    def lookup(self, path: str) -> Inode | None:
        ino = self.inode(self.root_nid)
        for depth, part in enumerate(p for p in path.split("/") if p):
            if depth > MAX_DEPTH:
                raise MalformedError(f"{self.what}: path {path} too deep")
            if ino.mode & S_IFMT != S_IFDIR:
                return None
            nid = self.listdir(ino).get(part)
            if nid is None:
                return None
            ino = self.inode(nid)
        return ino
