"""The systemd-boot EFI variables bootkeeper reads, from efivarfs or a directory laid out like it.

An efivarfs file is 4 bytes of attributes followed by the value; systemd-boot's string variables
are NUL-terminated UTF-16LE. Vendor GUID 4a67b082-0a4c-41cf-b6c7-440b29bb8c4f (Boot Loader Interface).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bootkeeper.errors import ParseError

LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
EFIVARFS = Path("/sys/firmware/efi/efivars")
VOLATILE_ATTRS = 0x6


def var_path(efivars: Path, name: str) -> Path:
    return efivars / f"{name}-{LOADER_GUID}"


def decode_string(raw: bytes, what: str) -> str:
    if len(raw) < 4:
        raise ParseError(f"{what}: {len(raw)} bytes, shorter than the 4-byte attribute header")
    data = raw[4:]
    if len(data) % 2:
        raise ParseError(f"{what}: odd length {len(data)}, not UTF-16")
    try:
        text = data.decode("utf-16-le")
    except UnicodeDecodeError as exc:
        raise ParseError(f"{what}: not valid UTF-16LE ({exc.reason})") from exc
    return text.split("\0", 1)[0]


def encode_string(value: str, attrs: int = VOLATILE_ATTRS) -> bytes:
    return attrs.to_bytes(4, "little") + (value + "\0").encode("utf-16-le")


def read_raw(p: Path) -> bytes | None:
    """An efivarfs file as it is (4 attribute bytes, then the data), or None when it is absent."""
    try:
        return p.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ParseError(f"{p}: cannot read ({exc.strerror})") from exc


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
    def read(cls, efivars: Path = EFIVARFS) -> LoaderVars:
        if not efivars.is_dir():
            return cls()
        return cls(
            entry_default=read_string(efivars, "LoaderEntryDefault"),
            entry_oneshot=read_string(efivars, "LoaderEntryOneShot"),
            entry_last_booted=read_string(efivars, "LoaderEntryLastBooted"),
            entry_selected=read_string(efivars, "LoaderEntrySelected"),
            boot_count_path=read_string(efivars, "LoaderBootCountPath"),
            loader_info=read_string(efivars, "LoaderInfo"),
            entry_preferred=read_string(efivars, "LoaderEntryPreferred"),
            entry_sysfail=read_string(efivars, "LoaderEntrySysFail"),
        )
