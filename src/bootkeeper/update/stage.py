"""The staging folder on the persistent partition (``update.staging_dir``; docs/updates.md, Staging):
one folder per release, named by its manifest digest's hex, whose files arrive as ``NAME.part`` and
are renamed to ``NAME`` once their digest is checked; ``release.json`` is written last, with
``complete: true``, crash-safe. An ``flock`` on the staging folder keeps two runs apart. A kill at
any point leaves ``.part`` files the next run resumes (an origin's ``blob`` continues after what a
file holds) or a folder :meth:`Staging.clean` removes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootkeeper import fsutil
from bootkeeper.errors import BusyError, MalformedError, RefusedError, UnreadableError, WriteError

RECORD = "release.json"
LOCK = ".lock"
PART = ".part"
MARGIN = 16 << 20  # bytes kept free beyond a download: the record, the folder, the file system's own
MAX_RECORD = 1 << 20
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Record:
    """What ``release.json`` says of a staged release."""

    source: str
    manifest_digest: str
    version: str | None
    uki: str
    extensions: tuple[str, ...]
    complete: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "manifest_digest": self.manifest_digest,
            "version": self.version,
            "uki": self.uki,
            "extensions": list(self.extensions),
            "complete": self.complete,
        }


class Staging:
    """The staging folder, held under its lock (:meth:`locked`) while a run downloads or reads.
    ``hook``: the crash tests' step hook (:func:`bootkeeper.esp.stephook.pause_from_env`), told of
    each step that changes the folder before it happens; None (the default) costs nothing."""

    def __init__(self, root: Path, hook: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.hook = hook

    def step(self, name: str) -> None:
        if self.hook is not None:
            self.hook(name)

    @contextlib.contextmanager
    def locked(self) -> Iterator[Staging]:
        """The folder made if missing, and an exclusive ``flock`` on it for the block; another run
        holding it is a :class:`BusyError`."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise WriteError(f"{self.root}: cannot make the staging folder ({exc.strerror or exc})") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise BusyError(f"{self.root}: another bootkeeper run is downloading into it") from exc
            yield self
        finally:
            os.close(fd)

    def folder(self, manifest_digest: str) -> Path:
        hexa = manifest_digest.removeprefix("sha256:")
        if not _HEX.fullmatch(hexa):
            raise MalformedError(f"{manifest_digest!r:.80} is not a sha256: digest")
        return self.root / hexa

    def make(self, manifest_digest: str) -> Path:
        path = self.folder(manifest_digest)
        try:
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                path.unlink()  # not ours to follow: a folder is made in its place
            if not path.is_dir():
                self.step(f"staging-mkdir:{path.name[:12]}")
                path.mkdir(mode=0o700)
                fsutil.fsync_dir(self.root)
        except OSError as exc:
            raise WriteError(f"{path}: cannot make the release's folder ({exc.strerror or exc})") from exc
        return path

    def check_space(self, folder: Path, needed: int) -> None:
        """Refuse, before a byte is fetched, a download the file system cannot hold: ``needed`` bytes
        still to come plus :data:`MARGIN`, against what ``statvfs`` says is free to this user."""
        st = os.statvfs(folder)
        free = st.f_bavail * st.f_frsize
        if needed + MARGIN > free:
            raise RefusedError(
                f"{folder}: {free} bytes free, the release needs {needed} more (and {MARGIN} to spare); "
                "nothing downloaded"
            )

    def write_record(self, folder: Path, record: Record) -> None:
        try:
            fsutil.write_atomic(folder / RECORD, json.dumps(record.as_json(), indent=2).encode() + b"\n", mode=0o600)
        except OSError as exc:
            raise WriteError(f"{folder / RECORD}: cannot write ({exc.strerror or exc})") from exc

    def record(self, folder: Path) -> Record | None:
        """``release.json`` of ``folder``, None when it has none; a broken one is a MalformedError."""
        path = folder / RECORD
        try:
            raw = fsutil.read_bounded(path, MAX_RECORD)
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
            rec = Record(
                str(doc["source"]),
                str(doc["manifest_digest"]),
                None if doc["version"] is None else str(doc["version"]),
                str(doc["uki"]),
                tuple(str(x) for x in doc["extensions"]),
                doc["complete"] is True,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedError(f"{path}: not a staged release's record ({exc})".splitlines()[0]) from exc
        return rec

    def releases(self) -> list[Path]:
        try:
            return sorted(p for p in self.root.iterdir() if _HEX.fullmatch(p.name) and p.is_dir())
        except FileNotFoundError:
            return []

    def complete(self) -> list[tuple[Path, Record]]:
        """The staged releases whose record says complete, each with its record."""
        out = []
        for p in self.releases():
            with contextlib.suppress(MalformedError, UnreadableError):
                rec = self.record(p)
                if rec is not None and rec.complete and rec.manifest_digest == f"sha256:{p.name}":
                    out.append((p, rec))
        return out

    def clean(self, keep: str | None) -> list[str]:
        """Remove every release folder but ``keep``'s (a manifest digest), stale temporaries, and the
        ``.part`` files of a complete kept release; return the names removed."""
        kept = self.folder(keep).name if keep else None
        removed = []
        for p in self.releases():
            if p.name == kept:
                removed += self._clean_kept(p)
                continue
            self.step(f"staging-remove:{p.name[:12]}")
            try:
                shutil.rmtree(p)
            except OSError as exc:
                raise WriteError(f"{p}: cannot remove ({exc.strerror or exc})") from exc
            removed.append(p.name)
        for name in os.listdir(self.root) if self.root.is_dir() else []:
            p = self.root / name
            if name not in {LOCK} and not _HEX.fullmatch(name) and not p.is_dir():
                p.unlink()
                removed.append(name)
        if removed:
            fsutil.fsync_dir(self.root)
        return removed

    def _clean_kept(self, folder: Path) -> list[str]:
        rec = None
        with contextlib.suppress(MalformedError, UnreadableError):
            rec = self.record(folder)
        removed = fsutil.clear_temporaries(folder)
        if rec is not None and rec.complete:
            for name in os.listdir(folder):
                if name.endswith(PART):
                    (folder / name).unlink()
                    removed.append(name)
        return removed
