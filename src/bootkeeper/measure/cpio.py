"""The cpio archives systemd-stub builds from files on the ESP and hands to the kernel as extra
initrds, measured whole (src/boot/cpio.c, v257.9, ``pack_cpio()``).

The stub reads a folder, keeps the names that do not start with ``.``, are not directories, end in
the suffix (case-insensitively) and not in the excluded one, are ASCII and at most 255 characters;
sorts them with ``strcmp16`` (code units: byte order for ASCII); and writes newc: the leading folders
of the target prefix (0555, the last one ``dir_mode``), then each file (``access_mode``), inode
numbers counting from 1, uid, gid and mtime 0, nlink 1, every header and body padded to 4 bytes,
then the trailer. No files: no archive and no measurement. A file the stub cannot read is skipped;
one over 4 GiB makes it give up on the whole archive (``EFI_LOAD_ERROR``).

Archives can be large (extensions of hundreds of MiB): they are streamed into the hashes, never
held in memory."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bootkeeper import fsutil
from bootkeeper.errors import MalformedError, UnreadableError
from bootkeeper.measure.events import FileRef

__all__ = ["TRAILER", "Member", "members", "write"]

MAX_NAME = 255
MAX_SIZE = 0xFFFFFFFF
# pack_cpio_trailer(): note the upper-case B in the name size, unlike every other header field
TRAILER = (
    b"070701" + b"00000000" * 4 + b"00000001" + b"00000000" * 6 + b"0000000B" + b"00000000" + b"TRAILER!!!\0\0\0\0"
)


@dataclass(frozen=True)
class Member:
    name: str
    path: Path


def _is_ascii(name: str) -> bool:
    return all(0 < ord(c) <= 0x7F for c in name)


def members(folder: Path | None, suffix: str, exclude: str | None, what: str) -> list[Member]:
    """What the stub's ``pack_cpio()`` picks from ``folder`` (None or absent: nothing), in order."""
    if folder is None:
        return []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        return []  # open_directory() fails: the stub packs nothing
    except OSError as exc:
        raise UnreadableError(f"{what}: {exc.strerror or exc}") from exc
    names = []
    for e in entries:
        n = e.name
        if n.startswith(".") or not _is_ascii(n) or len(n) > MAX_NAME:
            continue
        low = n.lower()
        if not low.endswith(suffix) or (exclude is not None and low.endswith(exclude)):
            continue
        try:
            if e.is_dir():
                continue
        except OSError:
            continue
        names.append(n)
    # strcmp16 on ASCII: Python's str order is code point order, the same
    return [Member(n, folder / n) for n in sorted(names)]


def _word(v: int) -> bytes:
    return b"%08x" % v


def _pad(n: int) -> bytes:
    return bytes(-n % 4)


def _header(inode: int, mode: int, size: int, name: bytes) -> bytes:
    fields = (inode, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name) + 1, 0)
    h = b"070701" + b"".join(_word(f) for f in fields) + name + b"\0"
    return h + _pad(len(h))


def write(
    prefix: str,
    dir_mode: int,
    access_mode: int,
    files: list[Member],
    sink: Callable[[bytes], object],
    what: str,
    literal: dict[str, bytes] | None = None,
) -> list[FileRef]:
    """Stream the archive of ``files`` (or of ``literal`` name -> bytes) into ``sink``; return what
    went in. Nothing is written for no files."""
    import hashlib

    if not files and not literal:
        return []
    inode = 1
    parts = prefix.split("/")
    for i in range(len(parts)):
        path = "/".join(parts[: i + 1])
        if not parts[i]:
            continue
        mode = dir_mode if i == len(parts) - 1 else 0o555
        sink(_header(inode, 0o040000 | mode, 0, path.encode()))
        inode += 1
    refs = []
    for name, data in (literal or {}).items():
        sink(_header(inode, 0o100000 | access_mode, len(data), f"{prefix}/{name}".encode()))
        inode += 1
        sink(data + _pad(len(data)))
        refs.append(FileRef(name, len(data), hashlib.sha256(data).hexdigest()))
    for m in files:
        try:
            # never blocking, never a link: a FIFO named *.raw would hang the reader (stub: not a file)
            with fsutil.open_regular(m.path, f"{what}/{m.name}") as f:
                size = os.fstat(f.fileno()).st_size
                if size > MAX_SIZE:
                    raise MalformedError(
                        f"{what}/{m.name}: {size} bytes; systemd-stub packs no file over 4 GiB "
                        "and gives up on the whole archive"
                    )
                sink(_header(inode, 0o100000 | access_mode, size, f"{prefix}/{m.name}".encode()))
                inode += 1
                h = hashlib.sha256()
                left = size
                while left:
                    chunk = f.read(min(left, 1 << 20))
                    if not chunk:
                        raise UnreadableError(f"{what}/{m.name}: changed while it was read")
                    h.update(chunk)
                    sink(chunk)
                    left -= len(chunk)
                sink(_pad(size))
        except OSError as exc:
            raise UnreadableError(f"{what}/{m.name}: {exc.strerror or exc}") from exc
        refs.append(FileRef(m.name, size, h.hexdigest()))
    sink(TRAILER)
    return refs
