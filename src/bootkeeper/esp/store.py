"""The ESP on disk: the only module of esp/ that touches it.

* An exclusive ``flock`` on the ESP's root directory, so two runs cannot interleave (no lock file
  is written: the ESP may be read-only).
* ``writable()``: on a read-only mount, remount rw and always back to ro (through ``run()``);
  a read-only bind mount only for itself (``remount,bind``), never the file system under it.
* Crash-safe writes: a temporary name in the same directory that neither systemd-boot nor
  systemd-stub would load (``.bootkeeper-*.tmp``: dot-prefixed, no .conf/.efi/.raw suffix),
  fsync, rename, fsync the directory. Temporaries a killed run left are removed by the next
  ``transaction()``, under the lock (a live run's temporaries are safe: it holds the lock).
* Every ``OSError`` of a write becomes a :class:`WriteError` naming the file.
* ``snapshot()``: the entry files as values for the pure model in assess/ (one :class:`Entry` per
  file in ``entries``; the extra menu entries of multi-profile UKIs apart, in ``profiles``).

Every mutating step calls ``self.step(name)`` first: tests pass a ``fault`` callback that raises
``OSError`` at a chosen step to prove the ESP stays bootable after a crash at any point.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bootkeeper import fsutil
from bootkeeper.errors import BootkeeperError, BusyError, EspError, InputError, UnreadableError, UsageError, WriteError
from bootkeeper.esp import entries as entries_mod
from bootkeeper.esp import loader as loader_mod
from bootkeeper.esp import pe, stephook
from bootkeeper.esp import sdboot as sdboot_mod
from bootkeeper.esp.entries import TYPE1_DIR, TYPE2_DIR, Entry, same_entry
from bootkeeper.fsutil import TMP_PREFIX, TMP_SUFFIX, is_temporary

__all__ = ["TMP_PREFIX", "TMP_SUFFIX", "EspStore", "Snapshot", "is_temporary"]

LOADER_CONF = "loader/loader.conf"
SDBOOT_PATHS = ("EFI/systemd/systemd-bootx64.efi", "EFI/BOOT/BOOTX64.EFI")
MAX_ENTRY_SIZE = 64 * 1024  # a .conf larger than this is not an entry file
SPACE_MARGIN = 1 << 20  # left free on the ESP by every install: the boot loader's renames and random seed
Listings = dict[Path, dict[str, str] | None]  # folder -> {lower-case name: name}; None: not listable


@dataclass(frozen=True)
class Snapshot:
    """The ESP as data: everything the boot loader model needs."""

    entries: tuple[Entry, ...]
    loader_conf: loader_mod.LoaderConf | None
    sdboot: sdboot_mod.SdBoot
    sdboot_version_source: str  # "EFI/BOOT/BOOTX64.EFI (252.38-1~deb12u1)", "--systemd-boot-version", "assumed"
    problems: tuple[str, ...] = ()
    # UKI profiles ≥ 1 (systemd-boot 257+): more menu entries of files that are in ``entries``.
    # Kept apart because most consumers (arm, rotate, lint, bless, status) want one Entry per file.
    profiles: tuple[Entry, ...] = ()

    @property
    def menu_entries(self) -> tuple[Entry, ...]:
        """Everything systemd-boot may list: the files and their UKI profiles."""
        return self.entries + self.profiles

    @property
    def sdboot_version(self) -> int:
        """The major version (what most messages need; behaviours come from :attr:`sdboot`)."""
        return self.sdboot.major


def _unescape(field: str) -> str:
    """A /proc/self/mountinfo field: space, tab, newline and backslash are octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class Mount:
    """The mount holding the ESP, from /proc/self/mountinfo (proc(5)): the per-mount read-only
    flag (the mount options, field 6) and the file system's own (the super options after ``-``).
    A read-only bind of a writable file system has only the first; ``mount -o remount,ro`` of a
    plain mount sets both."""

    point: str
    mount_ro: bool
    super_ro: bool


def _mount_of(path: Path) -> Mount | None:
    """The mount point holding ``path`` (the last, i.e. top, of those mounted there), or None."""
    real = os.path.realpath(path)
    best: Mount | None = None
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(" ")
        if "-" not in parts[6:]:
            continue
        sep = parts.index("-", 6)
        if len(parts) < sep + 4:
            continue
        mnt = _unescape(parts[4])
        inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
        if inside and (best is None or len(mnt) >= len(best.point)):
            best = Mount(mnt, "ro" in parts[5].split(","), "ro" in parts[sep + 3].split(","))
    return best


FSTAB = "etc/fstab"
# systemd's unit search path, system scope, highest priority first: src/basic/path-lookup.c,
# lookup_paths_init() (control, transient, generator.early, /etc, attached, /run, attached, generator,
# /usr/local/lib, /usr/lib, generator.late), as `systemd-analyze unit-paths` prints it (Debian 12's 252
# adds /lib/systemd/system, a split-usr build; the same folder on a merged /usr).
UNIT_PATH = (
    "etc/systemd/system.control",
    "run/systemd/system.control",
    "run/systemd/transient",
    "run/systemd/generator.early",
    "etc/systemd/system",
    "etc/systemd/system.attached",
    "run/systemd/system",
    "run/systemd/system.attached",
    "run/systemd/generator",
    "usr/local/lib/systemd/system",
    "lib/systemd/system",
    "usr/lib/systemd/system",
    "run/systemd/generator.late",
)
# where systemd-fstab-generator writes the mount units of /etc/fstab (src/fstab-generator/fstab-generator.c:
# the normal generator folder, arg_dest)
FSTAB_GENERATOR = "run/systemd/generator"


def _mount_unit_name(point: str) -> str:
    """``/efi`` → ``efi.mount``, as systemd-escape --path --suffix=mount (src/basic/unit-name.c,
    unit_name_from_path(): '/' becomes '-', bytes other than [A-Za-z0-9:_.] (and a leading '.') \\xNN)."""
    trimmed = "/".join(x for x in point.split("/") if x)
    if not trimmed:
        return "-.mount"
    out = []
    for i, ch in enumerate(trimmed.encode()):
        c = chr(ch)
        if c == "/":
            out.append("-")
        elif (c.isascii() and (c.isalnum() or c in ":_.")) and not (i == 0 and c == "."):
            out.append(c)
        else:
            out.append(f"\\x{ch:02x}")
    return "".join(out) + ".mount"


def _options_read_only(options: str) -> tuple[bool, bool]:
    """(read-only, bind) from mount options: the last of ro/rw counts (``defaults`` is rw)."""
    ro = False
    bind = False
    for o in options.split(","):
        if o == "ro":
            ro = True
        elif o in ("rw", "defaults"):
            ro = False
        elif o in ("bind", "rbind"):
            bind = True
    return ro, bind


def _unit_options(path: Path) -> str | None:
    """``Options=`` of a unit file or drop-in's [Mount] section (the last assignment; an empty one
    resets it to none), or None when it has none (or cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    section = ""
    found: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line
        elif section == "[Mount]" and "=" in line and line.split("=", 1)[0].strip() == "Options":
            found = line.split("=", 1)[1].strip()
    return found


def _fstab_options(fstab: Path, point: str) -> str | None:
    """The options of the last fstab line mounting ``point`` (fstab(5): octal escapes), or None."""
    try:
        lines = fstab.read_text(errors="replace").splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        f = line.split()
        if len(f) >= 4 and not f[0].startswith("#") and os.path.normpath(_unescape(f[1])) == point:
            found = f[3]
    return found


def _masked(path: Path) -> bool:
    """A unit file linked to /dev/null or empty: masked (systemd loads no unit from it)."""
    try:
        return os.path.realpath(path) == "/dev/null" or path.stat().st_size == 0
    except OSError:
        return False


def _dropin_dirs(name: str) -> list[str]:
    """The drop-in folder names of a unit, most specific first: ``boot-efi.mount.d``, the dash prefixes
    (``boot-.mount.d``) and the unit type's top-level ``mount.d`` (systemd 244, systemd/systemd#13942):
    src/shared/dropin.c, unit_file_find_dirs()."""
    stem, _, suffix = name.rpartition(".")
    out = [f"{name}.d"]
    while True:  # "a-b-c" → "a-b-" → "a-": cut after the last dash; a trailing dash is cut once first
        chopped = False
        while True:
            dash = stem.rfind("-")
            if dash <= 0:
                break
            if dash + 1 < len(stem) or chopped:
                break
            stem, chopped = stem[:dash], True
        if dash <= 0:
            break
        stem = stem[: dash + 1]
        out.append(f"{stem}.{suffix}.d")
    out.append(f"{suffix}.d")
    return out


def _mount_unit_sources(point: str, root: Path = Path("/")) -> list[tuple[Path, str | None]] | None:
    """What systemd reads for the mount unit of ``point``, in the order it applies them: the unit file
    found first on :data:`UNIT_PATH` (/etc/fstab where systemd-fstab-generator would write it and has
    not), then every ``*.conf`` drop-in, sorted by file name, a name in a higher-priority folder hiding
    the same name in a lower one (src/shared/dropin.c, unit_file_find_dropin_paths(); conf_files_list_strv()).
    Each with its ``Options=`` (None: it sets none). None when the unit is masked."""
    name = _mount_unit_name(point)
    out: list[tuple[Path, str | None]] = []
    for d in UNIT_PATH:
        unit = root / d / name
        if d == FSTAB_GENERATOR and not os.path.lexists(unit):
            options = _fstab_options(root / FSTAB, point)
            if options is not None:
                out.append((root / FSTAB, options))
                break
        if os.path.lexists(unit):
            if _masked(unit):
                return None
            out.append((unit, _unit_options(unit)))
            break
    dropins: dict[str, Path] = {}
    for d in UNIT_PATH:
        for sub in _dropin_dirs(name):
            with contextlib.suppress(OSError):
                for f in (root / d / sub).iterdir():
                    if f.name.endswith(".conf") and f.name not in dropins:
                        dropins[f.name] = f
    out += [(dropins[n], _unit_options(dropins[n])) for n in sorted(dropins)]
    return out


def _meant_read_only(point: str, root: Path = Path("/")) -> tuple[str, bool] | None:
    """(the file that says it, bind) when the mount unit systemd mounts ``point`` from (its unit file
    or /etc/fstab line, and its drop-ins: the last ``Options=`` counts) gives ``ro``; None when it says
    rw or nothing does."""
    where: Path | None = None
    options = ""
    for path, opts in _mount_unit_sources(point, root) or []:
        if opts is not None:
            where, options = path, opts
    if where is None:
        return None
    ro, bind = _options_read_only(options)
    shown = "/" + where.relative_to(root).as_posix() if root != Path("/") else str(where)
    return (shown, bind) if ro else None


# How often the way back to ro is tried: the mount child may be killed with bootkeeper (systemd's default
# KillMode=control-group sends SIGTERM to every process of the unit, systemd.kill(5)); the retry's child
# is spawned after that signal, so it runs. A mount that fails for its own reason fails every time.
WAY_BACK_ATTEMPTS = 3
WAY_BACK_DELAY = 0.2  # seconds between attempts


def _has_flags(root: Path, mount_ro: bool, super_ro: bool | None) -> bool:
    """Whether the mount holding ``root`` now has these read-only flags (``super_ro`` None: either),
    read from the kernel (statvfs, then /proc/self/mountinfo), not from what mount(8) answered."""
    try:
        statvfs_ro = bool(os.statvfs(root).f_flag & os.ST_RDONLY)
    except OSError:
        return False
    now = _mount_of(root)
    if now is None or statvfs_ro != (now.mount_ro or now.super_ro):
        return False
    return now.mount_ro == mount_ro and (super_ro is None or now.super_ro == super_ro)


LOCK_TIMEOUT_ENV = "BOOTKEEPER_LOCK_TIMEOUT"
LOCK_TIMEOUT = 10.0


def lock_timeout_from_env() -> float:
    """How long a verb waits for another run's lock before it is busy (exit 5):
    ``BOOTKEEPER_LOCK_TIMEOUT=SECONDS`` (0 to 3600; 0 does not wait), else 10 s."""
    raw = os.environ.get(LOCK_TIMEOUT_ENV)
    if raw is None or raw == "":
        return LOCK_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600:  # NaN too
        raise UsageError(f"{LOCK_TIMEOUT_ENV}={raw[:40]!r}: expected seconds, 0 to 3600")
    return seconds


def _subdirs(d: Path) -> list[Path]:
    try:
        return sorted(x for x in d.iterdir() if x.is_dir() and not x.is_symlink())
    except OSError:
        return []


class FolderStore:
    """A folder bootkeeper writes crash-safely under an exclusive lock: the ESP (:class:`EspStore`) and
    the persistent extension store (:class:`bootkeeper.esp.linkstore.LinkStore`) share these steps."""

    what = "folder"  # in messages: "another bootkeeper run holds the ESP lock"

    def __init__(
        self,
        root: Path,
        *,
        fault: Callable[[str], None] | None = None,
        lock_timeout: float | None = None,
        log: Callable[[str], None] = stephook.warn_stderr,
    ) -> None:
        """``fault``: called with each step's name before it (tests raise there); None: the step hook of
        :func:`bootkeeper.esp.stephook.pause_from_env`. ``log``: where warnings go (stderr by default).
        ``lock_timeout``: seconds to wait for the lock; None: :func:`lock_timeout_from_env`."""
        self.root = root
        self._fault = fault if fault is not None else stephook.pause_from_env()
        self._lock_timeout = lock_timeout if lock_timeout is not None else lock_timeout_from_env()
        self._lock_fd: int | None = None
        self._log = log
        self._injected: BaseException | None = None  # the fault a test raised: passed on unchanged
        self.cleared: list[str] = []  # stale temporaries removed by this store's transactions
        self._check_root()

    def _check_root(self) -> None:
        """What the folder must be before anything is read (the ESP: a folder with loader/ or EFI/)."""

    # -- locking -------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self.naming(self.root, "cannot open for the lock"):
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        deadline = time.monotonic() + self._lock_timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise WriteError(f"{self.root}: cannot lock ({exc.strerror})") from exc
                    if time.monotonic() >= deadline:
                        raise BusyError(
                            f"{self.root}: another bootkeeper run holds the {self.what} lock "
                            f"(waited {self._lock_timeout:g} s)"
                        ) from exc
                    time.sleep(0.05)
            self._lock_fd = fd
            yield
        finally:
            self._lock_fd = None
            os.close(fd)  # closing the descriptor releases the lock

    def temporary_folders(self) -> list[Path]:
        """The folders whose stale temporaries :meth:`clear_temporaries` removes."""
        return [self.root]

    def clear_temporaries(self) -> list[str]:
        """Remove stale ``.bootkeeper-*.tmp`` files (call with the lock held: a live run's
        temporaries are protected by it); return their ESP paths. A file that cannot be removed is
        a warning: a verb is not refused for housekeeping."""
        removed: list[str] = []
        for d in self.temporary_folders():
            rel = d.relative_to(self.root).as_posix()
            try:
                gone = fsutil.clear_temporaries(d, self.step)
            except OSError as exc:
                if exc is self._injected:
                    raise
                self._log(f"{d}: cannot remove stale temporaries ({exc.strerror or exc})")
                continue
            removed.extend(f"{rel}/{n}" for n in gone)
        for r in removed:
            self._log(f"removed {r}, a temporary left by an interrupted bootkeeper run")
        self.cleared.extend(removed)
        return removed

    # -- fault injection -------------------------------------------------------------------

    def step(self, name: str) -> None:
        if self._fault is not None:
            try:
                self._fault(name)
            except BaseException as exc:
                self._injected = exc
                raise

    @contextlib.contextmanager
    def naming(self, path: Path, what: str) -> Iterator[None]:
        """An OSError of the file system becomes a WriteError naming ``path`` and what failed
        (a full ESP: "…/loader/entries/active.conf: cannot write (No space left on device)")."""
        try:
            yield
        except OSError as exc:
            if exc is self._injected:
                raise
            raise WriteError(f"{path}: {what} ({exc.strerror or exc})") from exc

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
            raise WriteError(f"{old}: rename to {new.name} failed ({exc.strerror})") from exc
        with self.naming(new, "renamed, but cannot sync it to disk"):
            fsutil.fsync_renamed(new, self.step)
        with self.naming(new.parent, f"{new.name} renamed, but cannot sync the folder to disk"):
            self._fsync_dir(new.parent)

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Write ``rel`` so that a crash leaves either the old or the new content, and no file
        the boot loader would read."""
        with self.naming(self.path(rel), "cannot write"):
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
                raise WriteError(f"{m}: mkdir failed ({exc.strerror})") from exc
            with self.naming(m.parent, f"{m.name} made, but cannot sync the folder to disk"):
                fsutil.fsync_dir(m.parent, self.step)

    def free_bytes(self) -> int:
        with self.naming(self.root, "cannot read the free space"):
            st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def rmdir(self, rel: str) -> None:
        """Remove an empty folder (gone already: nothing to do), then sync its parent."""
        self._remove(rel, "rmdir", "cannot remove the folder")

    def unlink(self, rel: str) -> None:
        self._remove(rel, "unlink", "unlink failed")

    def _remove(self, rel: str, how: str, failed: str) -> None:
        p = self.path(rel)
        self.step(f"{how}:{p.name}")
        try:
            p.rmdir() if how == "rmdir" else p.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise WriteError(f"{p}: {failed} ({exc.strerror})") from exc
        with self.naming(p.parent, f"{p.name} removed, but cannot sync the folder to disk"):
            self._fsync_dir(p.parent)


def _other_booted_loader(loader_info: str, version: sdboot_mod.SdBoot, source: str) -> list[str]:
    """A problem when LoaderInfo names another systemd-boot than the ESP's binary."""
    try:
        booted = sdboot_mod.SdBoot.parse(loader_info)
    except BootkeeperError:
        return []
    if booted == version:
        return []
    return [
        f"this boot was started by systemd-boot {booted} (LoaderInfo), but the ESP's binary is {source}: "
        "the next boot runs the ESP's binary, which is what bootkeeper models"
    ]


class EspStore(FolderStore):
    what = "ESP"

    def _check_root(self) -> None:
        if not self.root.exists():
            raise UnreadableError(f"{self.root}: does not exist")
        if not self.root.is_dir():
            raise UnreadableError(f"{self.root}: not a directory")
        if not (self.root / "loader").is_dir() and not (self.root / "EFI").is_dir():
            raise EspError(f"{self.root}: not an ESP (it has neither loader/ nor EFI/)")

    # -- remounting

    @contextlib.contextmanager
    def writable(self) -> Iterator[None]:
        """Make a read-only ESP writable for the duration and restore exactly what was read-only.

        A read-only *bind* mount (``/efi`` bound read-only from a writable file system) only has the
        per-mount flag: ``remount,bind,rw`` and back ``remount,bind,ro`` change that mount alone. A
        plain ``remount,ro`` would instead make the file system read-only for every mount of it (the
        root file system, with ``/efi`` bound from ``/``). A read-only file system is remounted rw and
        back ro as before; a plain remount also sets this mount's flag, so a mount that was itself
        writable gets ``remount,bind,rw`` again afterwards.

        Back to ro also when the process is stopped: SIGTERM, SIGINT and SIGHUP unwind through here
        (:mod:`bootkeeper.interrupt`); a signal before the remount leaves the ESP as it was. An ESP found
        read-write where fstab or its mount unit mounts it read-only (a run that was killed, an older
        bootkeeper stopped by systemd) is written as it is and left read-only, said in one line."""
        from bootkeeper.interrupt import guarded, raising
        from bootkeeper.run import run

        with self.naming(self.root, "cannot read the mount's flags"):
            read_only = bool(os.statvfs(self.root).f_flag & os.ST_RDONLY)
        m = _mount_of(self.root)
        back: list[list[str]] = []  # the commands that make it read-only again
        want: tuple[bool, bool | None] = (True, None)  # and the flags they give (see _has_flags)
        if read_only:
            if m is None or not (m.mount_ro or m.super_ro):
                raise WriteError(
                    f"{self.root}: read-only, but /proc/self/mountinfo does not say how it is mounted; "
                    "not remounting what bootkeeper cannot restore"
                )
            if m.super_ro:
                back.append(["mount", "-o", "remount,ro", m.point])
                if not m.mount_ro:
                    back.append(["mount", "-o", "remount,bind,rw", m.point])
            else:
                back.append(["mount", "-o", "remount,bind,ro", m.point])
            want = (m.mount_ro, m.super_ro)  # as found
        elif m is not None and (meant := _meant_read_only(m.point)) is not None:
            source, bind = meant
            self._log(f"{m.point}: read-write, but {source} mounts it read-only; read-only again after this run")
            back.append(["mount", "-o", "remount,bind,ro" if bind else "remount,ro", m.point])
            want = (True, None if bind else True)  # a bind: the mount's flag; remount,ro sets both
        if not back:
            yield
            return
        assert m is not None
        with guarded() as check:
            check()  # stopped before anything changed: nothing to undo
            if read_only:
                self.step("remount-rw")
                check()
                try:
                    run(["mount", "-o", "remount,rw" if m.super_ro else "remount,bind,rw", m.point])
                except BaseException:
                    # mount failed, or was killed with us (systemd's SIGTERM goes to the whole
                    # control group): if the remount happened all the same, it is undone
                    if not os.statvfs(self.root).f_flag & os.ST_RDONLY:
                        with contextlib.suppress(BootkeeperError):
                            self._way_back(back, want)
                    raise
            try:
                with raising():
                    yield
            finally:
                with raising(False):
                    self.step("remount-ro")
                    self._way_back(back, want)

    def _way_back(self, back: list[list[str]], want: tuple[bool, bool | None]) -> None:
        """Run the commands that make the ESP read-only again until the kernel says it is
        (:func:`_has_flags`), at most :data:`WAY_BACK_ATTEMPTS` times; the last failure is raised.
        Call it with signals deferred (:func:`bootkeeper.interrupt.raising` off): a SIGTERM that
        killed the mount child is acted on once the ESP is back."""
        from bootkeeper.run import run

        for attempt in range(1, WAY_BACK_ATTEMPTS + 1):
            try:
                for cmd in back:
                    run(cmd)
                return
            except BootkeeperError as exc:
                if _has_flags(self.root, *want):  # killed after it did its work
                    return
                if attempt == WAY_BACK_ATTEMPTS:
                    raise
                self._log(f"{exc}; trying again ({attempt + 1} of {WAY_BACK_ATTEMPTS})")
                time.sleep(WAY_BACK_DELAY)

    def restore_read_only(self) -> bool:
        """Under the lock: an ESP found read-write where fstab or its mount unit mounts it read-only
        is remounted read-only, said in one line; True if it was. For a verb that may write nothing
        (bless at boot without boot counting); the verbs that write do it in :meth:`writable`. A
        signal meanwhile is acted on once it is read-only (as in :meth:`writable`)."""
        from bootkeeper.interrupt import guarded

        with self.locked(), guarded():
            with self.naming(self.root, "cannot read the mount's flags"):
                if os.statvfs(self.root).f_flag & os.ST_RDONLY:
                    return False
            m = _mount_of(self.root)
            meant = _meant_read_only(m.point) if m is not None else None
            if m is None or meant is None:
                return False
            source, bind = meant
            self._log(f"{m.point}: read-write, but {source} mounts it read-only; remounting it read-only")
            self.step("remount-ro")
            self._way_back(
                [["mount", "-o", "remount,bind,ro" if bind else "remount,ro", m.point]], (True, None if bind else True)
            )
            return True

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """The lock, a writable ESP, and no temporaries left by an earlier run that was killed."""
        with self.locked(), self.writable():
            self.clear_temporaries()
            yield

    def temporary_folders(self) -> list[Path]:
        """Every folder bootkeeper writes to: loader/, loader/entries/, and every folder under EFI/
        at any depth (EFI/Linux/, EFI/<vendor>/, a UKI's ``*.extra.d/`` wherever an ``efi``/``uki``
        key puts the UKI, e.g. EFI/v/sub/x.efi.extra.d/). Links are not followed."""
        out = [self.path("loader"), self.path(TYPE1_DIR)]
        todo = [] if self.path("EFI").is_symlink() else _subdirs(self.path("EFI"))
        while todo:
            d = todo.pop()
            out.append(d)
            todo.extend(_subdirs(d))
        return [d for d in out if d.is_dir() and not d.is_symlink()]

    def read_text(self, rel: str) -> str:
        p = self.path(rel)
        try:
            size = p.stat().st_size
            if size > MAX_ENTRY_SIZE:
                raise EspError(f"{p}: {size} bytes, larger than the {MAX_ENTRY_SIZE} an entry file may be")
            return p.read_bytes().decode("utf-8", "replace")
        except OSError as exc:
            raise UnreadableError(f"{p}: cannot read ({exc.strerror})") from exc

    def list_dir(self, rel: str) -> list[str]:
        d = self.path(rel)
        try:
            return sorted(x.name for x in d.iterdir() if x.is_file())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise UnreadableError(f"{d}: cannot list ({exc.strerror})") from exc

    @staticmethod
    def _folded(d: Path) -> dict[str, str] | None:
        try:
            return {x.name.lower(): x.name for x in d.iterdir()}
        except OSError:
            return None

    def find_ci(self, esp_path: str, listings: Listings | None = None) -> Path | None:
        """Resolve a path as FAT would: case-insensitively, '/' or '\\' separated.

        ``listings`` keeps each folder's listing for one snapshot: listed again for every entry, a
        loader/entries holding the entries' kernels made a snapshot quadratic (42 s at 8,000)."""
        cur = self.root
        for part in esp_path.replace("\\", "/").strip("/").split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                return None
            if listings is None:
                names = self._folded(cur)
            else:
                names = listings[cur] if cur in listings else listings.setdefault(cur, self._folded(cur))
            hit = names.get(part.lower()) if names is not None else None
            if hit is None:
                return None
            cur = cur / hit
        return cur

    def _is_file(self, esp_path: str, listings: Listings | None = None) -> bool:
        hit = self.find_ci(esp_path, listings)
        return hit is not None and hit.is_file()

    # -- snapshot --------------------------------------------------------------------------

    def sdboot_version(
        self, override: sdboot_mod.SdBoot | int | str | None = None, loader_info: str | None = None
    ) -> tuple[sdboot_mod.SdBoot, str]:
        """The boot loader on the ESP, from the full version string in its ``.sdmagic`` (the
        fallback binary EFI/BOOT/BOOTX64.EFI is what the firmware starts when no boot entry names
        systemd-boot itself); without a binary, ``loader_info`` (the ``LoaderInfo`` EFI variable
        of the boot loader that started this boot, ``systemd-boot 257.13-1~deb13u1``)."""
        if override is not None:
            return sdboot_mod.of(override), "--systemd-boot-version"
        for rel in SDBOOT_PATHS:
            p = self.find_ci(rel)
            if p is None or not p.is_file():
                continue
            try:
                v = pe.sdboot_version(p)
            except OSError:
                continue
            if v:
                try:
                    return sdboot_mod.SdBoot.parse(v), f"{rel} ({v})"
                except BootkeeperError:
                    continue
        if loader_info:
            try:
                return sdboot_mod.SdBoot.parse(loader_info), f"EFI variable LoaderInfo ({loader_info[:80]})"
            except BootkeeperError:
                pass
        return sdboot_mod.default(), f"assumed {sdboot_mod.DEFAULT} (no systemd-boot binary on the ESP)"

    def _read_only(self, rel: str) -> bool:
        """The FAT read-only attribute: vfat shows it as a file without any write bit."""
        try:
            return not self.path(rel).stat().st_mode & 0o222
        except OSError:
            return False

    def snapshot(
        self, sdboot_version: sdboot_mod.SdBoot | int | str | None = None, *, loader_info: str | None = None
    ) -> Snapshot:
        """``loader_info``: the LoaderInfo EFI variable, when the caller read it: the version when the
        ESP carries no binary, and a problem when the booted boot loader is not the ESP's."""
        version, source = self.sdboot_version(sdboot_version, loader_info)
        problems: list[str] = []
        found, profiles = self._type2_entries(version, problems)
        found += self._type1_entries(version)
        conf = None
        if self.path(LOADER_CONF).is_file():
            conf = loader_mod.parse(self.read_text(LOADER_CONF))
            problems.extend(f"{LOADER_CONF}: {p}" for p in conf.problems)
        for e in found:
            problems.extend(f"{e.path}: {p}" for p in e.problems)
        if loader_info and sdboot_version is None and not source.startswith("EFI variable"):
            problems += _other_booted_loader(loader_info, version, source)
        for paths in same_entry(e.path for e in found):
            d = paths[0].rpartition("/")[0]
            problems.append(
                f"{d}: {', '.join(p.rpartition('/')[2] for p in paths)} are the same entry; the next "
                "'bootkeeper bless' of the booted one removes the other"
            )
        return Snapshot(tuple(found), conf, version, source, tuple(problems), tuple(profiles))

    def _type2_entries(self, version: sdboot_mod.SdBoot, problems: list[str]) -> tuple[list[Entry], list[Entry]]:
        """The UKIs of ``EFI/Linux`` and, where this systemd-boot has them, their profiles ≥ 1."""
        found: list[Entry] = []
        profiles: list[Entry] = []
        for name in self.list_dir(TYPE2_DIR):
            if not entries_mod.valid_type2_filename(name):
                continue
            path = self.path(f"{TYPE2_DIR}/{name}")
            read_only = self._read_only(f"{TYPE2_DIR}/{name}")
            try:
                base = entries_mod.parse_type2(name, pe.read_osrel(path), read_only=read_only)
            except (OSError, InputError) as exc:  # systemd-boot skips a UKI it cannot read
                found.append(entries_mod.parse_type2(name, None, problem=str(exc)))
                continue
            if version.has_profile_ids:
                try:
                    base, more = self._profiles(name, path, read_only)
                except (OSError, InputError) as exc:
                    problems.append(f"{TYPE2_DIR}/{name}: its UKI profiles are not modelled: {exc}")
                    more = []
                profiles.extend(more)
            found.append(base)
        return found, profiles

    def _type1_entries(self, version: sdboot_mod.SdBoot) -> list[Entry]:
        """The ``.conf`` entries of ``loader/entries``; one too large or unreadable is a finding about it."""
        found: list[Entry] = []
        listings: Listings = {}  # one listing per folder for the whole snapshot: linear, not quadratic
        for name in self.list_dir(TYPE1_DIR):
            if not entries_mod.valid_type1_filename(name):
                continue
            rel = f"{TYPE1_DIR}/{name}"
            try:
                text = self.read_text(rel)
            except InputError as exc:  # too large or unreadable: a finding about this file, not the verb's end
                found.append(entries_mod.unread_type1(name, str(exc).removeprefix(f"{self.path(rel)}: ")))
                continue
            found.append(
                entries_mod.parse_type1(
                    name,
                    text,
                    loader_exists=lambda p: self._is_file(p, listings),
                    sdboot_version=version,
                    read_only=self._read_only(rel),
                )
            )
        return found

    @staticmethod
    def _profiles(name: str, path: Path, read_only: bool) -> tuple[Entry, list[Entry]]:
        """Profile 0 (the file's own entry: base sections and those after the first ``.profile``)
        and the listed profiles ≥ 1 of a UKI; a profile without a usable ``.osrel`` is skipped, as
        boot.c does, without renumbering the others."""
        found = pe.read_profiles(path)
        made = [
            entries_mod.parse_type2(
                name, p.osrel, read_only=read_only, profile=p.number, profile_id=p.id, profile_title=p.title
            )
            for p in found
        ]
        return made[0], [e for e in made[1:] if e.listed]
