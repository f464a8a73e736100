"""The systemd-boot EFI variables bootkeeper reads and writes, in efivarfs or a directory laid out like it.

An efivarfs file is 4 bytes of attributes followed by the value; systemd-boot's string variables
are NUL-terminated UTF-16LE. Vendor GUID 4a67b082-0a4c-41cf-b6c7-440b29bb8c4f (Boot Loader Interface).

Writing follows systemd's ``efi_set_variable()`` (src/basic/efivars.c): skip a write that would
change nothing; drop ``FS_IMMUTABLE_FL`` first (efivarfs makes every variable that is not on the
kernel's allow list immutable, which the Boot Loader Interface variables are not); write the
attributes and the value with one ``write()`` (efivarfs takes a variable in one call, never in
parts); then put the flag back as it was. Deleting is an ``unlink()`` after dropping the flag.
"""

from __future__ import annotations

import errno
import fcntl
import os
import platform
import struct
from dataclasses import dataclass
from pathlib import Path

from bootkeeper.errors import InputError, MalformedError, UnreadableError, WriteError

LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
EFIVARFS = Path("/sys/firmware/efi/efivars")  # the one spelling; a --root holds it under itself (under())
NON_VOLATILE, BOOTSERVICE_ACCESS, RUNTIME_ACCESS = 0x1, 0x2, 0x4
VOLATILE_ATTRS = BOOTSERVICE_ACCESS | RUNTIME_ACCESS  # what systemd-boot's own exports carry
# What bootctl writes for LoaderEntryOneShot/LoaderEntryDefault: a volatile one is gone at the reboot
PERSISTENT_ATTRS = NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS
FS_IMMUTABLE_FL = 0x10


def under(root: Path) -> Path:
    """efivarfs under ``root``: every verb reads it there, so a test root never reads the host's."""
    return root / EFIVARFS.relative_to("/")


def var_path(efivars: Path, name: str) -> Path:
    return efivars / f"{name}-{LOADER_GUID}"


def decode_string(raw: bytes, what: str) -> str:
    if len(raw) < 4:
        raise MalformedError(f"{what}: {len(raw)} bytes, shorter than the 4-byte attribute header")
    data = raw[4:]
    if len(data) % 2:
        raise MalformedError(f"{what}: odd length {len(data)}, not UTF-16")
    try:
        text = data.decode("utf-16-le")
    except UnicodeDecodeError as exc:
        raise MalformedError(f"{what}: not valid UTF-16LE ({exc.reason})") from exc
    return text.split("\0", 1)[0]


def encode_string(value: str, attrs: int = VOLATILE_ATTRS) -> bytes:
    return attrs.to_bytes(4, "little") + (value + "\0").encode("utf-16-le")


def read_raw(p: Path) -> bytes | None:
    """An efivarfs file as it is (4 attribute bytes, then the data), or None when it is absent."""
    try:
        return p.read_bytes()
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        try:
            os.stat(p)
        except PermissionError:  # the folder itself cannot be searched: name it, not a variable it may not hold
            raise UnreadableError(f"{p.parent}: cannot read the folder ({exc.strerror})") from exc
        except OSError:
            pass
        raise UnreadableError(f"{p}: cannot read ({exc.strerror})") from exc
    except OSError as exc:
        raise UnreadableError(f"{p}: cannot read ({exc.strerror})") from exc


def read_string(efivars: Path, name: str) -> str | None:
    p = var_path(efivars, name)
    raw = read_raw(p)
    return None if raw is None else decode_string(raw, str(p))


@dataclass(frozen=True)
class LoaderVars:
    """What systemd-boot reads (default/one-shot/saved) and what it tells the OS."""

    entry_default: str | None = None
    entry_oneshot: str | None = None
    entry_last_booted: str | None = None
    entry_selected: str | None = None
    boot_count_path: str | None = None
    loader_info: str | None = None
    entry_preferred: str | None = None  # 260: bootctl set-preferred
    entry_sysfail: str | None = None  # 258: bootctl set-sysfail

    @classmethod
    def read(cls, efivars: Path = EFIVARFS, *, skip: frozenset[str] = frozenset()) -> LoaderVars:
        """``skip``: variable names read as absent (a caller about to replace or delete one that
        does not decode)."""
        if not efivars.is_dir():
            return cls()

        def get(name: str) -> str | None:
            return None if name in skip else read_string(efivars, name)

        return cls(
            entry_default=get("LoaderEntryDefault"),
            entry_oneshot=get("LoaderEntryOneShot"),
            entry_last_booted=get("LoaderEntryLastBooted"),
            entry_selected=get("LoaderEntrySelected"),
            boot_count_path=get("LoaderBootCountPath"),
            loader_info=get("LoaderInfo"),
            entry_preferred=get("LoaderEntryPreferred"),
            entry_sysfail=get("LoaderEntrySysFail"),
        )


# -- writing -----------------------------------------------------------------------------------


def _ioc(direction: str, nr: int) -> int:
    """``_IOR('f', nr, long)`` / ``_IOW(...)``: FS_IOC_GETFLAGS and FS_IOC_SETFLAGS (linux/fs.h),
    encoded as asm-generic/ioctl.h does, or as the few architectures with their own layout do."""
    size = struct.calcsize("l")
    if platform.machine().startswith(("ppc", "powerpc", "mips", "sparc", "alpha")):
        bits = {"r": 2, "w": 4}[direction]
        return (bits << 29) | (size << 16) | (ord("f") << 8) | nr
    bits = {"r": 2, "w": 1}[direction]
    return (bits << 30) | (size << 16) | (ord("f") << 8) | nr


FS_IOC_GETFLAGS = _ioc("r", 1)
FS_IOC_SETFLAGS = _ioc("w", 2)
_NO_FLAGS = (errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)  # a file system without inode flags


def _get_flags(fd: int) -> int | None:
    try:
        raw = fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 4)  # the kernel reads and writes an int
    except OSError as exc:
        if exc.errno in _NO_FLAGS:
            return None
        raise
    return int(struct.unpack("=I", raw)[0])


def _set_flags(fd: int, flags: int) -> None:
    fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("=I", flags))


def _drop_immutable(p: Path) -> int | None:
    """Clear FS_IMMUTABLE_FL on ``p``; return the flags it had when they included it (to put back),
    else None (no such file, no inode flags on this file system, or not immutable)."""
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None  # absent, or not openable: the write or unlink itself says what is wrong (as systemd)
    try:
        flags = _get_flags(fd)
        if flags is None or not flags & FS_IMMUTABLE_FL:
            return None
        _set_flags(fd, flags & ~FS_IMMUTABLE_FL)
        return flags
    except OSError as exc:
        raise WriteError(f"{p}: cannot clear the immutable flag (chattr -i: {exc.strerror})", hint=_hint(exc)) from exc
    finally:
        os.close(fd)


def _restore_flags(p: Path, flags: int | None, fd: int | None = None) -> None:
    """Put the immutable flag back "just in case", as systemd does; a failure is not the write's."""
    if flags is None:
        return
    try:
        if fd is not None:
            _set_flags(fd, flags)
            return
        fd2 = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            _set_flags(fd2, flags)
        finally:
            os.close(fd2)
    except OSError:
        pass


def _hint(exc: OSError) -> str | None:
    if exc.errno == errno.ENOENT:
        return "is efivarfs mounted (not an EFI boot?); --efivars DIR names another folder"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "writing EFI variables needs root (CAP_LINUX_IMMUTABLE for the flag)"
    if exc.errno == errno.EROFS:
        return "efivarfs is mounted read-only: mount -o remount,rw /sys/firmware/efi/efivars"
    return None


def write_variable(efivars: Path, name: str, data: bytes, attrs: int = PERSISTENT_ATTRS) -> bool:
    """Set ``name`` (Boot Loader Interface vendor) to ``data``; False when it already held exactly
    that (no write: NVRAM wears)."""
    p = var_path(efivars, name)
    payload = attrs.to_bytes(4, "little") + data
    try:
        if p.read_bytes() == payload:
            return False
    except OSError:
        pass  # absent or unreadable: write it (systemd ignores a failed comparison too)
    saved = _drop_immutable(p)
    fd: int | None = None
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY, 0o644)
        n = os.write(fd, payload)  # one call: efivarfs sets the whole variable from one write
        if n != len(payload):
            raise WriteError(f"{p}: short write ({n} of {len(payload)} bytes)")
        # efivarfs replaces the variable without a truncate; a plain folder keeps a longer old tail
        if os.fstat(fd).st_size > len(payload):
            os.ftruncate(fd, len(payload))
        os.utime(fd)  # efivarfs does not update mtime itself (systemd: futimens)
    except OSError as exc:
        raise WriteError(f"{p}: cannot write ({exc.strerror})", hint=_hint(exc)) from exc
    finally:
        if fd is not None:
            _restore_flags(p, saved, fd)
            os.close(fd)
        else:
            _restore_flags(p, saved)
    return True


def write_string(efivars: Path, name: str, value: str, attrs: int = PERSISTENT_ATTRS) -> bool:
    """A NUL-terminated UTF-16LE string variable, as ``efi_set_variable_string()`` writes it."""
    return write_variable(efivars, name, (value + "\0").encode("utf-16-le"), attrs)


def delete_variable(efivars: Path, name: str) -> bool:
    """Remove ``name``; False when it was not there."""
    p = var_path(efivars, name)
    if not os.path.lexists(p):
        return False
    saved = _drop_immutable(p)
    try:
        os.unlink(p)
    except FileNotFoundError:
        return False
    except OSError as exc:
        _restore_flags(p, saved)
        raise WriteError(f"{p}: cannot delete ({exc.strerror})", hint=_hint(exc)) from exc
    return True


def loader_info(efivars: Path) -> str | None:
    """The LoaderInfo variable (the booted boot loader's version, ``systemd-boot 257.13-1~deb13u1``),
    or None when it is absent or unreadable: it only fills in for an ESP without a systemd-boot binary."""
    try:
        return read_string(efivars, "LoaderInfo")
    except (InputError, OSError):
        return None
