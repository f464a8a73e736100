"""The ESP on disk: the only module of esp/ that touches it.

* An exclusive ``flock`` on the ESP's root directory, so two runs cannot interleave (no lock file
  is written: the ESP may be read-only).
* ``writable()``: on a read-only mount, remount rw and always back to ro (through ``run()``).
* Crash-safe writes: a temporary name in the same directory that neither systemd-boot nor
  systemd-stub would load (``.bootkeeper-*.tmp``: dot-prefixed, no .conf/.efi/.raw suffix),
  fsync, rename, fsync the directory.
* ``snapshot()``: the entry files as values for the pure model in assess/.

Every mutating step calls ``self.step(name)`` first: tests pass a ``fault`` callback that raises
``OSError`` at a chosen step to prove the ESP stays bootable after a crash at any point.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bootkeeper import fsutil
from bootkeeper.errors import BusyError, EspError, ParseError, StoreIOError
from bootkeeper.esp import entries as entries_mod
from bootkeeper.esp import loader as loader_mod
from bootkeeper.esp import pe
from bootkeeper.esp.entries import TYPE1_DIR, TYPE2_DIR, Entry
from bootkeeper.fsutil import TMP_PREFIX, TMP_SUFFIX, is_temporary

__all__ = ["TMP_PREFIX", "TMP_SUFFIX", "EspStore", "Snapshot", "is_temporary"]

LOADER_CONF = "loader/loader.conf"
SDBOOT_PATHS = ("EFI/systemd/systemd-bootx64.efi", "EFI/BOOT/BOOTX64.EFI")
MAX_ENTRY_SIZE = 64 * 1024  # a .conf larger than this is not an entry file


@dataclass(frozen=True)
class Snapshot:
    """The ESP as data: everything the boot loader model needs."""

    entries: tuple[Entry, ...]
    loader_conf: loader_mod.LoaderConf | None
    sdboot_version: int
    sdboot_version_source: str  # "BOOTX64.EFI 252.38-1~deb12u1", "--systemd-boot-version", "assumed"
    problems: tuple[str, ...] = ()


def _mount_point(path: Path) -> tuple[str, bool]:
    """The mount point holding ``path`` and whether it is mounted read-only (/proc/self/mountinfo)."""
    real = os.path.realpath(path)
    best, ro = "/", False
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(" ")
        if len(parts) < 6:
            continue
        mnt = parts[4].replace("\\040", " ")
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, ro = mnt, "ro" in parts[5].split(",")
    return best, ro


TEST_PAUSE_ENV = "BOOTKEEPER_TEST_STEP_PAUSE"


def _pause_hook() -> Callable[[str], None] | None:
    """A test hook for cutting the power in the middle of a write (tests/test_node.py): with
    ``BOOTKEEPER_TEST_STEP_PAUSE=SECONDS`` every step that changes the ESP is announced on stderr
    and then waits that long, so a test can kill the machine between two steps."""
    raw = os.environ.get(TEST_PAUSE_ENV)
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600:
        sys.stderr.write(f"bootkeeper: ignoring {TEST_PAUSE_ENV}={raw!r} (expected seconds, 0 to 3600)\n")
        return None

    def pause(step: str) -> None:
        sys.stderr.write(f"bootkeeper: test pause before {step} ({seconds:g} s)\n")
        sys.stderr.flush()
        time.sleep(seconds)

    return pause


class EspStore:
    def __init__(
        self,
        root: Path,
        *,
        fault: Callable[[str], None] | None = None,
        lock_timeout: float = 10.0,
    ) -> None:
        self.root = root
        self._fault = fault if fault is not None else _pause_hook()
        self._lock_timeout = lock_timeout
        self._lock_fd: int | None = None
        if not root.is_dir():
            raise EspError(f"{root}: not a directory")
        if not (root / "loader").is_dir() and not (root / "EFI").is_dir():
            raise EspError(f"{root}: not an ESP (it has neither loader/ nor EFI/)")

    # -- locking and remounting -------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        deadline = time.monotonic() + self._lock_timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                    if time.monotonic() >= deadline:
                        raise BusyError(
                            f"{self.root}: another bootkeeper run holds the ESP lock "
                            f"(waited {self._lock_timeout:.0f} s)"
                        ) from exc
                    time.sleep(0.05)
            self._lock_fd = fd
            yield
        finally:
            self._lock_fd = None
            os.close(fd)  # closing the descriptor releases the lock

    @contextlib.contextmanager
    def writable(self) -> Iterator[None]:
        """Remount a read-only ESP rw for the duration, and always back to ro afterwards."""
        from bootkeeper.run import run

        if not os.statvfs(self.root).f_flag & os.ST_RDONLY:
            yield
            return
        mnt, _ = _mount_point(self.root)
        self.step("remount-rw")
        run(["mount", "-o", "remount,rw", mnt])
        try:
            yield
        finally:
            self.step("remount-ro")
            run(["mount", "-o", "remount,ro", mnt])

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self.locked(), self.writable():
            yield

    # -- fault injection -------------------------------------------------------------------

    def step(self, name: str) -> None:
        if self._fault is not None:
            self._fault(name)

    # -- primitives ------------------------------------------------------------------------

    def path(self, rel: str) -> Path:
        return self.root / rel

    def _fsync_dir(self, d: Path) -> None:
        fsutil.fsync_dir(d, self.step)

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def rename(self, old_rel: str, new_rel: str) -> None:
        """Atomic rename inside one directory, then fsync the file (vfat) and the directory."""
        old, new = self.path(old_rel), self.path(new_rel)
        if old.parent != new.parent:
            raise ValueError("rename across directories")
        self.step(f"rename:{old.name}->{new.name}")
        try:
            os.rename(old, new)
        except OSError as exc:
            raise StoreIOError(f"{old}: rename to {new.name} failed ({exc.strerror})") from exc
        fsutil.fsync_renamed(new, self.step)
        self._fsync_dir(new.parent)

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Write ``rel`` so that a crash leaves either the old or the new content, and no file
        the boot loader would read."""
        fsutil.write_atomic(self.path(rel), data, self.step)

    def makedirs(self, rel: str) -> None:
        d = self.path(rel)
        missing = []
        while not d.exists():
            missing.append(d)
            d = d.parent
        for m in reversed(missing):
            self.step(f"mkdir:{m.name}")
            try:
                m.mkdir()
            except OSError as exc:
                raise StoreIOError(f"{m}: mkdir failed ({exc.strerror})") from exc
            fsutil.fsync_dir(m.parent, self.step)

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def unlink(self, rel: str) -> None:
        p = self.path(rel)
        self.step(f"unlink:{p.name}")
        try:
            p.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreIOError(f"{p}: unlink failed ({exc.strerror})") from exc
        self._fsync_dir(p.parent)

    def read_text(self, rel: str) -> str:
        p = self.path(rel)
        try:
            size = p.stat().st_size
            if size > MAX_ENTRY_SIZE:
                raise EspError(f"{p}: {size} bytes, larger than the {MAX_ENTRY_SIZE} an entry file may be")
            return p.read_bytes().decode("utf-8", "replace")
        except OSError as exc:
            raise EspError(f"{p}: cannot read ({exc.strerror})") from exc

    def list_dir(self, rel: str) -> list[str]:
        d = self.path(rel)
        try:
            return sorted(x.name for x in d.iterdir() if x.is_file())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise EspError(f"{d}: cannot list ({exc.strerror})") from exc

    def find_ci(self, esp_path: str) -> Path | None:
        """Resolve a path as FAT would: case-insensitively, '/' or '\\' separated."""
        cur = self.root
        for part in esp_path.replace("\\", "/").strip("/").split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                return None
            try:
                names = {x.name.lower(): x.name for x in cur.iterdir()}
            except OSError:
                return None
            hit = names.get(part.lower())
            if hit is None:
                return None
            cur = cur / hit
        return cur

    def _is_file(self, esp_path: str) -> bool:
        hit = self.find_ci(esp_path)
        return hit is not None and hit.is_file()

    # -- snapshot --------------------------------------------------------------------------

    def sdboot_version(self, override: int | None = None) -> tuple[int, str]:
        if override is not None:
            return override, "--systemd-boot-version"
        for rel in SDBOOT_PATHS:
            p = self.find_ci(rel)
            if p is None or not p.is_file():
                continue
            v = pe.sdboot_version(p)
            if v:
                major = pe.major_version(v)
                if major is not None:
                    return major, f"{rel} ({v})"
        return entries_mod.DEFAULT_SDBOOT_VERSION, "assumed (no systemd-boot binary on the ESP)"

    def snapshot(self, sdboot_version: int | None = None) -> Snapshot:
        version, source = self.sdboot_version(sdboot_version)
        found: list[Entry] = []
        problems: list[str] = []
        for name in self.list_dir(TYPE2_DIR):
            if not entries_mod.valid_type2_filename(name):
                continue
            path = self.path(f"{TYPE2_DIR}/{name}")
            try:
                found.append(entries_mod.parse_type2(name, pe.read_osrel(path)))
            except (OSError, ParseError) as exc:  # systemd-boot skips a UKI it cannot read
                found.append(entries_mod.parse_type2(name, None, problem=str(exc)))
        for name in self.list_dir(TYPE1_DIR):
            if not entries_mod.valid_type1_filename(name):
                continue
            text = self.read_text(f"{TYPE1_DIR}/{name}")
            found.append(entries_mod.parse_type1(name, text, loader_exists=self._is_file, sdboot_version=version))
        conf = None
        if self.path(LOADER_CONF).is_file():
            conf = loader_mod.parse(self.read_text(LOADER_CONF))
            problems.extend(f"{LOADER_CONF}: {p}" for p in conf.problems)
        for e in found:
            problems.extend(f"{e.path}: {p}" for p in e.problems)
        bases: dict[tuple[str, str], list[str]] = {}
        for e in found:
            bases.setdefault((e.directory, e.name.base.lower()), []).append(e.file_name)
        for (d, _), files in bases.items():
            if len(files) > 1:
                problems.append(
                    f"{d}: {', '.join(sorted(files))} are the same entry; the next 'bootkeeper bless' of the "
                    "booted one removes the other"
                )
        return Snapshot(tuple(found), conf, version, source, tuple(problems))
