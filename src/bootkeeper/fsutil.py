"""Crash-safe file writes shared by the ESP store, ``/run/verity.d`` and ``/run/extensions``.

A temporary name in the destination's own folder that no loader picks up (``.bootkeeper-*.tmp``:
dot-prefixed, and neither ``.conf``, ``.efi``, ``.raw`` nor ``.crt``), fsync, rename, fsync the folder.
``step`` is called before every mutating step so tests can inject a crash at each of them.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

TMP_PREFIX = ".bootkeeper-"
TMP_SUFFIX = ".tmp"
COPY_CHUNK = 8 << 20

Step = Callable[[str], None]


INPUT_LIMIT = 64 << 20  # bytes: the largest file a user names that bootkeeper reads whole (keys, JSON)


def read_input(path: Path, what: str = "", limit: int = INPUT_LIMIT) -> bytes:
    """A file the user named, whole, through :func:`read_bounded` (regular, a link followed, at most
    ``limit`` bytes); anything that stops it being read is an :class:`UnreadableError` naming the
    file (and ``what`` it was to be), so every verb gives the same line and exit code."""
    from bootkeeper.errors import UnreadableError

    try:
        return read_bounded(path, limit, what, follow=True)  # a link the user names is followed (/etc/os-release)
    except FileNotFoundError as exc:
        raise UnreadableError(f"{path}: cannot read{' ' + what if what else ''} ({exc.strerror})") from exc


def read_input_text(path: Path, what: str = "", limit: int = INPUT_LIMIT) -> str:
    """:func:`read_input` as UTF-8 text; bytes that are not UTF-8 are malformed input."""
    from bootkeeper.errors import MalformedError

    data = read_input(path, what, limit)
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise MalformedError(f"{path}: not UTF-8 text (byte {exc.start})") from exc


def no_step(name: str) -> None:
    return None


def under(root: Path, path: str) -> Path:
    """An absolute path of the node, inside ``root`` (``--root`` for tests; ``/`` on a node)."""
    return root / path.lstrip("/")


def is_temporary(name: str) -> bool:
    return name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX)


def clear_temporaries(folder: Path, step: Step = no_step) -> list[str]:
    """Remove the temporaries an interrupted run left in ``folder`` (only names :func:`is_temporary`
    accepts, never a directory, never through a link); return the names removed.

    Call it only while holding the lock of whatever owns ``folder`` (the ESP lock): a temporary of a
    run in progress is indistinguishable from a stale one except by that lock."""
    try:
        names = sorted(n for n in os.listdir(folder) if is_temporary(n))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for n in names:
        p = folder / n
        try:
            if not stat.S_ISREG(os.lstat(p).st_mode):
                continue
            step(f"unlink:{n}")
            p.unlink()
        except FileNotFoundError:
            continue
        removed.append(n)
    if removed:
        fsync_dir(folder, step)
    return removed


def temp_path(folder: Path) -> Path:
    return folder / f"{TMP_PREFIX}{os.urandom(6).hex()}{TMP_SUFFIX}"


def _fsync_path(path: Path, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(d: Path, step: Step = no_step) -> None:
    step(f"fsync-dir:{d.name}")
    _fsync_path(d, os.O_DIRECTORY)


@contextlib.contextmanager
def temp_file(dest: Path, step: Step = no_step, mode: int = 0o644) -> Iterator[tuple[int, Path]]:
    """An open descriptor on a fresh temporary file beside ``dest``; removed unless the caller
    renamed it away (see :func:`commit`)."""
    tmp = temp_path(dest.parent)
    step(f"write:{dest.name}")
    # read-write: a staged copy is validated and then copied on from this descriptor (sysext install)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        yield fd, tmp
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def commit(fd: int, tmp: Path, dest: Path, step: Step = no_step) -> None:
    step(f"fsync:{dest.name}")
    os.fsync(fd)
    step(f"rename:{tmp.name}->{dest.name}")
    os.rename(tmp, dest)
    step(f"fsync-renamed:{dest.name}")
    os.fsync(fd)  # the entry, in full (see fsync_renamed)
    fsync_dir(dest.parent, step)


def fsync_renamed(path: Path, step: Step = no_step) -> None:
    """fsync a file just renamed, before its directory. On vfat (the ESP) a rename writes the new
    directory entry with no first cluster and size 0; the real ones go to disk only with the file's
    inode. fsync of the directory alone persists the empty entry: a power cut then leaves a 0-byte
    UKI (seen on the node, tests/node/test_node.py). fsync of the file writes the entry in full."""
    step(f"fsync-renamed:{path.name}")
    _fsync_path(path, os.O_NOFOLLOW)


def write_atomic(dest: Path, data: bytes, step: Step = no_step, mode: int = 0o644) -> None:
    with temp_file(dest, step, mode) as (fd, tmp):
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        commit(fd, tmp, dest, step)


def symlink_atomic(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` (as ``systemctl enable`` links units): a temporary link renamed
    over it, then the folder fsynced; nothing is done when it already points there."""
    if link.is_symlink() and os.readlink(link) == target:
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(link.parent)
    os.symlink(target, tmp)
    os.rename(tmp, link)
    fsync_dir(link.parent)


def copy_into(
    src_fd: int, dst_fd: int, size: int, progress: Callable[[int, int], None] | None = None, start: int = 0
) -> None:
    """Copy ``size`` bytes at ``start`` of ``src_fd`` to the same offset of ``dst_fd`` (in the kernel
    where it can). Positional on both sides, never through the descriptors' offsets: processes that
    share the descriptors (forked workers, sysext activate) may copy other ranges at the same time."""
    done = 0
    while done < size:
        want = min(COPY_CHUNK, size - done)
        at = start + done
        try:
            n = os.copy_file_range(src_fd, dst_fd, want, at, at)
        except OSError:
            n = 0
        if n <= 0:  # not supported across these file systems: plain read/write
            chunk = os.pread(src_fd, want, at)
            if not chunk:
                raise OSError(f"source ended after {at} of {start + size} bytes")
            n = os.pwrite(dst_fd, chunk, at)
        done += n
        if progress is not None:
            progress(n, size)


def sha256_fd(fd: int, size: int | None = None) -> str:
    """SHA-256 of the first ``size`` bytes of ``fd`` (all of it by default), read with pread: the
    descriptor's offset is left alone. The one digest of what is judged and what lands."""
    import hashlib  # not at import time: the boot path imports this module

    h = hashlib.sha256()
    done = 0
    while size is None or done < size:
        chunk = os.pread(fd, 1 << 20 if size is None else min(1 << 20, size - done), done)
        if not chunk:
            break
        h.update(chunk)
        done += len(chunk)
    return h.hexdigest()


def open_input(path: Path, what: str | None = None, follow: bool = False) -> int:
    """A file bootkeeper reads, opened never through a symbolic link and never blocking: a link there,
    a FIFO, socket or device (opened ``O_NONBLOCK``, then refused unless ``fstat`` says a regular
    file: a FIFO named ``*.raw`` would otherwise hang the reader until some writer came), or any
    other failure to open it, is an :class:`~bootkeeper.errors.UnreadableError` naming it (``what``,
    or the path; exit 7, unreadable input), not the bare ``OSError`` (ELOOP) the CLI would report as
    a failed write (exit 6). ``follow``: a link is followed (to a regular file, all the same)."""
    from bootkeeper.errors import UnreadableError

    name = what or str(path)
    nofollow = 0 if follow else os.O_NOFOLLOW
    try:
        fd = os.open(path, os.O_RDONLY | nofollow | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        if not follow and os.path.islink(path):
            raise UnreadableError(f"{name}: a symbolic link; not followed") from exc
        raise UnreadableError(f"{name}: cannot read ({exc.strerror or exc})") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableError(f"{name}: not a regular file ({_kind(mode)}); not read")
        os.set_blocking(fd, True)  # a regular file: reads never wait anyway
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return f"mode {mode:o}"


def open_regular(path: Path, what: str | None = None, follow: bool = False) -> BinaryIO:
    """:func:`open_input` as a binary file object (``with fsutil.open_regular(p) as f``)."""
    return os.fdopen(open_input(path, what, follow), "rb")


def open_nonblocking(path: Path) -> BinaryIO:
    """A file opened as ``path.open("rb")`` does (links followed), but never blocking: anything but a
    regular file is the ``OSError`` its callers already turn into "cannot be read" (``EINVAL``, "not a
    regular file (a FIFO)"), never an open() that waits for a writer."""
    import errno

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"not a regular file ({_kind(mode)})", str(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_bounded(path: Path, limit: int, what: str = "", name: str | None = None, follow: bool = False) -> bytes:
    """A file read whole through :func:`open_input`, but never more than ``limit`` bytes: at most
    ``limit + 1`` are read, and a file that has more is an :class:`~bootkeeper.errors.UnreadableError`
    naming it and the limit, before anything is held in memory (a sparse 2 GiB file costs nothing
    to make and everything to read). ``name`` replaces the path in messages; a missing file is the
    ``FileNotFoundError`` the caller may want to tell apart."""
    from bootkeeper.errors import UnreadableError

    label = name or str(path)
    if not os.path.lexists(path):
        raise FileNotFoundError(2, "No such file or directory", str(path))
    fd = open_input(path, label, follow)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise UnreadableError(
                f"{label}: {size} bytes, more than the {limit} bytes {what or 'it'} may have; not read"
            )
        chunks = []
        got = 0
        while got <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except OSError as exc:
        raise UnreadableError(f"{label}: cannot read{' ' + what if what else ''} ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
    if got > limit:
        raise UnreadableError(f"{label}: more than the {limit} bytes {what or 'it'} may have; not read")
    return b"".join(chunks)


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, never through a symbolic link (:func:`open_input`)."""
    fd = open_input(path)
    try:
        return sha256_fd(fd)
    finally:
        os.close(fd)
