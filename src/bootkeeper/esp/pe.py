"""Just enough of the PE/COFF format to read named sections, as systemd-boot does for UKIs.

systemd-boot reads the section table of ``EFI/Linux/*.efi`` and takes ``.osrel`` (an os-release
file) from it; the boot loader's own version sits in its ``.sdmagic`` section as
``#### LoaderInfo: systemd-boot VERSION ####``. A multi-profile UKI (systemd-boot 257+, 382e4da4a5)
splits its section table at each ``.profile`` section: :func:`read_profiles` reads them as
``pe_locate_profile_sections()`` (src/boot/pe.c) does. Reads are bounded: a hostile file gives a
:class:`MalformedError` naming the file and what is wrong, never a huge allocation.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bootkeeper import fsutil
from bootkeeper.errors import InputError, MalformedError
from bootkeeper.esp.keyvalue import KeyValue, split_lines

MAX_SECTIONS = 96  # the PE spec allows 96 sections at most
MAX_SECTION_READ = 1 << 20  # .osrel/.sdmagic/.cmdline are tiny; refuse to read more than 1 MiB
MAX_PROFILE_READ = 64 << 10  # a .profile (ID=, TITLE=) or a profile's own .osrel: a few lines


@dataclass(frozen=True)
class Section:
    name: str
    virtual_size: int
    file_offset: int
    file_size: int


def read_sections(f: BinaryIO, what: str) -> list[Section]:
    f.seek(0)
    dos = f.read(64)
    if len(dos) < 64 or dos[:2] != b"MZ":
        raise MalformedError(f"{what}: not a PE file (no MZ header)")
    (pe_off,) = struct.unpack_from("<I", dos, 0x3C)
    f.seek(pe_off)
    hdr = f.read(24)
    if len(hdr) < 24 or hdr[:4] != b"PE\0\0":
        raise MalformedError(f"{what}: not a PE file (no PE signature at offset {pe_off})")
    (n_sections,) = struct.unpack_from("<H", hdr, 6)
    (opt_size,) = struct.unpack_from("<H", hdr, 20)
    if n_sections > MAX_SECTIONS:
        raise MalformedError(f"{what}: {n_sections} PE sections, more than the {MAX_SECTIONS} allowed")
    f.seek(pe_off + 24 + opt_size)
    table = f.read(40 * n_sections)
    if len(table) < 40 * n_sections:
        raise MalformedError(f"{what}: PE section table is truncated")
    out = []
    for i in range(n_sections):
        raw_name, vsize, _vaddr, rsize, roff = struct.unpack_from("<8sIIII", table, 40 * i)
        name = raw_name.rstrip(b"\0").decode("ascii", "replace")
        out.append(Section(name=name, virtual_size=vsize, file_offset=roff, file_size=rsize))
    return out


def read_section(
    f: BinaryIO, sections: list[Section], name: str, what: str, limit: int = MAX_SECTION_READ
) -> bytes | None:
    """The first section called ``name`` (systemd-boot: "first matching section wins")."""
    for s in sections:
        if s.name != name:
            continue
        return _read(f, s, what, limit)
    return None


def _read(f: BinaryIO, s: Section, what: str, limit: int) -> bytes:
    size = min(s.virtual_size, s.file_size) if s.virtual_size else s.file_size
    if size > limit:
        raise MalformedError(f"{what}: section {s.name} is {size} bytes, more than {limit}")
    f.seek(s.file_offset)
    data = f.read(size)
    if len(data) < size:
        raise MalformedError(f"{what}: section {s.name} extends past the end of the file")
    return data


@dataclass(frozen=True)
class Profile:
    """One profile of a UKI as systemd-boot 257+ sees it: ``number`` counts the ``.profile``
    sections from 0; ``osrel`` is the profile's own ``.osrel`` if it has one, else the base's."""

    number: int
    id: str | None  # ID= of its .profile section
    title: str | None  # TITLE= of its .profile section
    osrel: bytes | None


def _profile_keys(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in split_lines(data.decode("utf-8", "replace"), "="):
        if isinstance(item, KeyValue) and item.key in ("ID", "TITLE"):
            out[item.key] = item.value  # the last one wins, as in boot.c
    return out


def read_profiles(path: Path) -> tuple[Profile, ...]:
    """The profiles of a UKI, as systemd-boot's ``boot_entry_add_type2()`` (src/boot/boot.c,
    382e4da4a5, v257) and ``pe_locate_profile_sections()`` (src/boot/pe.c) find them.

    The base is every section before the first ``.profile``. Profile 0 is the base followed by the
    sections after the *first* ``.profile`` (up to the next); profile N those after the (N+1)-th.
    A UKI without ``.profile`` has only profile 0 (the base). Sections of a profile override the
    base's, first match wins. Empty for a file that is not a PE."""
    what = str(path)
    with fsutil.open_nonblocking(path) as f:  # a FIFO must not hang the reader
        sections = read_sections(f, what)
        starts = [i for i, s in enumerate(sections) if s.name == ".profile"]
        base = sections[: starts[0]] if starts else sections
        base_osrel = read_section(f, base, ".osrel", what)
        if not starts:
            return (Profile(0, None, None, base_osrel),)
        out = []
        for n, start in enumerate(starts):
            end = starts[n + 1] if n + 1 < len(starts) else len(sections)
            own = sections[start + 1 : end]
            keys = _profile_keys(_read(f, sections[start], what, MAX_PROFILE_READ))
            osrel = read_section(f, own, ".osrel", what, MAX_PROFILE_READ)
            out.append(Profile(n, keys.get("ID"), keys.get("TITLE"), osrel if osrel is not None else base_osrel))
        return tuple(out)


def read_osrel(path: Path) -> bytes | None:
    """The ``.osrel`` section of a UKI, or None if it has none."""
    with fsutil.open_nonblocking(path) as f:  # a FIFO must not hang the reader
        return read_section(f, read_sections(f, str(path)), ".osrel", str(path))


_MAGIC = re.compile(rb"#### LoaderInfo: systemd-boot ([^ #\0]+) ####")


def sdboot_version(path: Path) -> str | None:
    """The version string systemd-boot embeds in ``.sdmagic`` (e.g. ``252.38-1~deb12u1``)."""
    with fsutil.open_nonblocking(path) as f:  # a FIFO must not hang the reader
        try:
            data = read_section(f, read_sections(f, str(path)), ".sdmagic", str(path))
        except InputError:
            data = None
        if data is None:  # older builds: the magic string lives in .data; scan the file
            f.seek(0)
            data = f.read(8 << 20)
    m = _MAGIC.search(data)
    return m.group(1).decode("ascii", "replace") if m else None
