"""Copy, check, commit: the one way bootkeeper lands a file it judged, on the ESP or in the persistent
extension store (an upgrade's copies, ``LinkStore.put``, ``sysext install`` to either).

Each destination first gets a complete copy under a temporary name beside it that no loader reads
(:func:`fsutil.temp_file`), fsynced; the first copy is judged (``check``, and the SHA-256 of the bytes
judged earlier, when the caller has one); only then is every copy renamed into place, the file and its
folder synced. A failure before the renames removes every temporary: the folder is as it was. And the
one room rule: a write needs its bytes plus :data:`SPACE_MARGIN` free, counting what the transaction
frees before it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from bootkeeper import fsutil
from bootkeeper.errors import WriteError
from bootkeeper.esp.store import SPACE_MARGIN, FolderStore

V = TypeVar("V")


def _nothing(_: object) -> None:
    return None


def put_checked(
    folder: FolderStore,
    src_fd: int,
    dests: Sequence[Path],
    check: Callable[[Path], V],
    *,
    size: int | None = None,
    digest: str | None = None,
    changed: str = "",
    progress: Callable[[int, int], None] | None = None,
    before: Callable[[Path], None] = _nothing,
    doing: Callable[[str], None] = _nothing,
) -> V:
    """Copy the open source ``src_fd`` (its first ``size`` bytes; all of it by default) to every one of
    ``dests`` (files of ``folder``, at least one) and return ``check``'s verdict on the first staged copy.

    The first copy comes from the source, the others from that copy once judged: a source rewritten
    meanwhile never lands. ``check`` raises to refuse; a first copy whose SHA-256 is not ``digest`` is a
    :class:`WriteError` saying ``changed``. ``before(dest)`` runs before each copy (the caller makes its
    folder); ``doing`` hears what is being done, for the caller's failure message. OSErrors pass on."""
    size = os.fstat(src_fd).st_size if size is None else size
    staged: list[tuple[int, Path, Path]] = []
    with contextlib.ExitStack() as temps:
        for dest in dests:
            before(dest)
            doing(f"{dest}: writing")
            fd, tmp = temps.enter_context(fsutil.temp_file(dest, folder.step))
            fsutil.copy_into(staged[0][0] if staged else src_fd, fd, size, progress)
            folder.step(f"fsync:{dest.name}")
            os.fsync(fd)
            if not staged:
                verdict = check(tmp)
                if digest is not None and fsutil.sha256_fd(fd, size) != digest:
                    raise WriteError(changed)
            staged.append((fd, tmp, dest))
        for fd, tmp, dest in staged:
            doing(f"{dest}: renaming {tmp.name} to it")
            folder.step(f"rename:{tmp.name}->{dest.name}")
            os.rename(tmp, dest)
            folder.step(f"fsync-renamed:{dest.name}")
            os.fsync(fd)  # the renamed file in full before its folder (fsutil.fsync_renamed says why)
            fsutil.fsync_dir(dest.parent, folder.step)
    return verdict


def require_room(folder: FolderStore, need: int, say: Callable[[int, int], str], *, freed: int = 0) -> None:
    """Refuse, before anything is written, a write of ``need`` bytes that does not fit with
    :data:`SPACE_MARGIN` in ``folder``'s free space plus the ``freed`` bytes the transaction removes
    first. ``say(need with the margin, free)`` is the message (the :class:`WriteError`, exit 6)."""
    free = folder.free_bytes()
    if free + freed < need + SPACE_MARGIN:
        raise WriteError(say(need + SPACE_MARGIN, free))
