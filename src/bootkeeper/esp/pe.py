"""Just enough of the PE/COFF format to read named sections, as systemd-boot does for UKIs.

systemd-boot reads the section table of ``EFI/Linux/*.efi`` and takes ``.osrel`` (an os-release
file) from it; the boot loader's own version sits in its ``.sdmagic`` section as
``#### LoaderInfo: systemd-boot VERSION ####``. Reads are bounded: a hostile file gives a
:class:`ParseError` naming the file and what is wrong, never a huge allocation.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bootkeeper.errors import ParseError

MAX_SECTIONS = 96  # the PE spec allows 96 sections at most
MAX_SECTION_READ = 1 << 20  # .osrel/.sdmagic/.cmdline are tiny; refuse to read more than 1 MiB


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
        raise ParseError(f"{what}: not a PE file (no MZ header)")
    (pe_off,) = struct.unpack_from("<I", dos, 0x3C)
    f.seek(pe_off)
    hdr = f.read(24)
    if len(hdr) < 24 or hdr[:4] != b"PE\0\0":
        raise ParseError(f"{what}: not a PE file (no PE signature at offset {pe_off})")
    (n_sections,) = struct.unpack_from("<H", hdr, 6)
    (opt_size,) = struct.unpack_from("<H", hdr, 20)
    if n_sections > MAX_SECTIONS:
        raise ParseError(f"{what}: {n_sections} PE sections, more than the {MAX_SECTIONS} allowed")
    f.seek(pe_off + 24 + opt_size)
    table = f.read(40 * n_sections)
    if len(table) < 40 * n_sections:
        raise ParseError(f"{what}: PE section table is truncated")
    out = []
    for i in range(n_sections):
        raw_name, vsize, _vaddr, rsize, roff = struct.unpack_from("<8sIIII", table, 40 * i)
        name = raw_name.rstrip(b"\0").decode("ascii", "replace")
        out.append(Section(name=name, virtual_size=vsize, file_offset=roff, file_size=rsize))
    return out


def read_section(f: BinaryIO, sections: list[Section], name: str, what: str) -> bytes | None:
    for s in sections:
        if s.name != name:
            continue
        size = min(s.virtual_size, s.file_size) if s.virtual_size else s.file_size
        if size > MAX_SECTION_READ:
            raise ParseError(f"{what}: section {name} is {size} bytes, more than {MAX_SECTION_READ}")
        f.seek(s.file_offset)
        data = f.read(size)
        if len(data) < size:
            raise ParseError(f"{what}: section {name} extends past the end of the file")
        return data
    return None


def read_osrel(path: Path) -> bytes | None:
    """The ``.osrel`` section of a UKI, or None if it has none."""
    with path.open("rb") as f:
        return read_section(f, read_sections(f, str(path)), ".osrel", str(path))


_MAGIC = re.compile(rb"#### LoaderInfo: systemd-boot ([^ #\0]+) ####")


def sdboot_version(path: Path) -> str | None:
    """The version string systemd-boot embeds in ``.sdmagic`` (e.g. ``252.38-1~deb12u1``)."""
    with path.open("rb") as f:
        try:
            data = read_section(f, read_sections(f, str(path)), ".sdmagic", str(path))
        except ParseError:
            data = None
        if data is None:  # older builds: the magic string lives in .data; scan the file
            f.seek(0)
            data = f.read(8 << 20)
    m = _MAGIC.search(data)
    return m.group(1).decode("ascii", "replace") if m else None


def major_version(version: str) -> int | None:
    m = re.match(r"v?(\d+)", version)
    return int(m.group(1)) if m else None
