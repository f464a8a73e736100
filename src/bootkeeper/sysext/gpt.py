"""GUID Partition Table: protective MBR, primary and backup header, CRC32s, entries — read and write.

UEFI spec 2.10 §5.3. Partition types are those of the Discoverable Partitions Specification for
the designators a system extension uses (root/usr, their -verity and -verity-sig) on x86-64 and
arm64. A reader facing hostile input raises :class:`ParseError` naming what is wrong: bad
signature or CRC, entries beyond the disk or overlapping, too many entries.
"""

from __future__ import annotations

import itertools
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from bootkeeper.errors import ParseError

SECTOR = 512
HEADER_FORMAT = "<8sIIIIQQQQ16sQIII"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)  # 92
ENTRY_FORMAT = "<16s16sQQQ72s"
ENTRY_SIZE = 128
N_ENTRIES = 128
MAX_ENTRIES = 1024
ATTR_READ_ONLY = 1 << 60  # "read-only" flag of the discoverable partitions, as repart sets it
ATTR_NO_AUTO = 1 << 63
ATTR_GROWFS = 1 << 59

# designator -> architecture -> type UUID
TYPES: dict[str, dict[str, str]] = {
    "root": {"x86-64": "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "arm64": "b921b045-1df0-41c3-af44-4c6f280d3fae"},
    "root-verity": {"x86-64": "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5", "arm64": "df3300ce-d69f-4c92-978c-9bfb0f38d820"},
    "root-verity-sig": {
        "x86-64": "41092b05-9fc8-4523-994f-2def0408b176",
        "arm64": "6db69de6-29f4-4758-a7a5-962190f00ce3",
    },
    "usr": {"x86-64": "8484680c-9521-48c6-9c11-b0720656f69e", "arm64": "b0e01050-ee5f-4390-949a-9101b17104e9"},
    "usr-verity": {"x86-64": "77ff5f63-e7b6-4633-acf4-1565b864c0e6", "arm64": "6e11a4e7-fbca-4ded-b9e9-e1a512bb664e"},
    "usr-verity-sig": {
        "x86-64": "e7bb33fb-06cf-4e81-8273-e543b413e2e2",
        "arm64": "c23ce4ff-44bd-4b00-b2d4-b41b3419e02a",
    },
}
BY_TYPE: dict[str, tuple[str, str]] = {t: (d, a) for d, per in TYPES.items() for a, t in per.items()}


@dataclass(frozen=True)
class Partition:
    number: int  # 1-based slot in the entry array
    type_uuid: str
    part_uuid: str
    first_lba: int
    last_lba: int
    attributes: int
    name: str

    @property
    def offset(self) -> int:
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * SECTOR

    @property
    def designator(self) -> str | None:
        hit = BY_TYPE.get(self.type_uuid)
        return hit[0] if hit else None

    @property
    def architecture(self) -> str | None:
        hit = BY_TYPE.get(self.type_uuid)
        return hit[1] if hit else None


@dataclass(frozen=True)
class Table:
    disk_uuid: str
    first_usable: int
    last_usable: int
    backup_lba: int
    partitions: tuple[Partition, ...]
    warnings: tuple[str, ...] = field(default=())


def _guid(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw))


def _guid_bytes(s: str) -> bytes:
    return uuid.UUID(s).bytes_le


def _header(raw: bytes, lba: int, what: str) -> tuple[Any, ...]:
    if len(raw) < HEADER_SIZE:
        raise ParseError(f"{what}: GPT header at LBA {lba} is truncated")
    f = struct.unpack_from(HEADER_FORMAT, raw)
    sig, rev, hsize, hcrc = f[0], f[1], f[2], f[3]
    if sig != b"EFI PART":
        raise ParseError(f"{what}: no GPT header at LBA {lba} (signature {sig!r})")
    if rev != 0x00010000:
        raise ParseError(f"{what}: GPT revision {rev:#x} at LBA {lba}, expected 0x10000")
    if hsize < HEADER_SIZE or hsize > SECTOR:
        raise ParseError(f"{what}: GPT header size {hsize} at LBA {lba} is not within {HEADER_SIZE}..{SECTOR}")
    check = bytearray(raw[:hsize])
    check[16:20] = b"\0\0\0\0"
    if zlib.crc32(check) != hcrc:
        raise ParseError(f"{what}: GPT header CRC32 mismatch at LBA {lba}")
    return f


def read(f: BinaryIO, size: int, what: str = "image") -> Table:
    """Read and check the primary GPT of a disk image of ``size`` bytes."""
    if size < 3 * SECTOR:
        raise ParseError(f"{what}: {size} bytes, too small for a GPT")
    disk_lbas = size // SECTOR
    f.seek(0)
    mbr = f.read(SECTOR)
    warnings = []
    if mbr[510:512] != b"\x55\xaa" or mbr[450] != 0xEE:
        warnings.append("no protective MBR")
    hdr = f.read(SECTOR)
    (_, _, _, _, _, cur, backup, first, last, disk, entries_lba, n, esize, ecrc) = _header(hdr, 1, what)
    if cur != 1:
        raise ParseError(f"{what}: GPT header says it is at LBA {cur}, not 1")
    if esize != ENTRY_SIZE:
        raise ParseError(f"{what}: GPT entry size {esize}, expected {ENTRY_SIZE}")
    if n == 0 or n > MAX_ENTRIES:
        raise ParseError(f"{what}: GPT has {n} entries, expected 1..{MAX_ENTRIES}")
    if not (2 <= entries_lba < disk_lbas) or entries_lba + (n * esize + SECTOR - 1) // SECTOR > disk_lbas:
        raise ParseError(f"{what}: GPT entry array at LBA {entries_lba} lies beyond the disk ({disk_lbas} sectors)")
    if not (first <= last < disk_lbas):
        raise ParseError(
            f"{what}: GPT usable area {first}..{last} does not fit the disk ({disk_lbas} sectors): truncated image?"
        )
    if backup >= disk_lbas:
        raise ParseError(
            f"{what}: GPT backup header at LBA {backup} lies beyond the disk ({disk_lbas} sectors): truncated image?"
        )
    f.seek(entries_lba * SECTOR)
    array = f.read(n * esize)
    if len(array) < n * esize:
        raise ParseError(f"{what}: GPT entry array is truncated")
    if zlib.crc32(array) != ecrc:
        raise ParseError(f"{what}: GPT entry array CRC32 mismatch")
    parts = []
    for i in range(n):
        tguid, pguid, p_first, p_last, attrs, name = struct.unpack_from(ENTRY_FORMAT, array, i * esize)
        if tguid == b"\0" * 16:
            continue
        if p_first > p_last or p_first < first or p_last > last:
            raise ParseError(
                f"{what}: partition {i + 1} spans LBA {p_first}..{p_last}, outside the usable {first}..{last}"
            )
        nm = name.decode("utf-16-le", "replace").split("\0", 1)[0]
        parts.append(Partition(i + 1, _guid(tguid), _guid(pguid), p_first, p_last, attrs, nm))
    ordered = sorted(parts, key=lambda p: p.first_lba)
    for a, b in itertools.pairwise(ordered):
        if b.first_lba <= a.last_lba:
            raise ParseError(f"{what}: partitions {a.number} and {b.number} overlap")
    f.seek(backup * SECTOR)
    try:
        _header(f.read(SECTOR), backup, what)
    except ParseError as exc:
        warnings.append(f"backup GPT header: {exc}")
    return Table(_guid(disk), first, last, backup, tuple(parts), tuple(warnings))


@dataclass(frozen=True)
class NewPartition:
    type_uuid: str
    part_uuid: str
    name: str
    data: bytes
    attributes: int = ATTR_READ_ONLY


def write(f: BinaryIO, parts: list[NewPartition], disk_uuid: str, align: int = 4096) -> Table:
    """Write a whole disk image: protective MBR, primary GPT, partitions (aligned), backup GPT."""
    entry_sectors = N_ENTRIES * ENTRY_SIZE // SECTOR
    first_usable = 2 + entry_sectors
    lba = -(-first_usable * SECTOR // align) * align // SECTOR
    placed = []
    for i, new in enumerate(parts):
        sectors = max(1, -(-len(new.data) // SECTOR))
        sectors = -(-sectors * SECTOR // align) * align // SECTOR
        placed.append(Partition(i + 1, new.type_uuid, new.part_uuid, lba, lba + sectors - 1, new.attributes, new.name))
        lba += sectors
    last_usable = lba - 1
    disk_lbas = last_usable + 1 + entry_sectors + 1
    array = bytearray(N_ENTRIES * ENTRY_SIZE)
    for p in placed:
        name = p.name.encode("utf-16-le")[:72]
        struct.pack_into(
            ENTRY_FORMAT,
            array,
            (p.number - 1) * ENTRY_SIZE,
            _guid_bytes(p.type_uuid),
            _guid_bytes(p.part_uuid),
            p.first_lba,
            p.last_lba,
            p.attributes,
            name,
        )
    ecrc = zlib.crc32(array)

    def header(cur: int, other: int, entries_lba: int) -> bytes:
        h = bytearray(
            struct.pack(
                HEADER_FORMAT,
                b"EFI PART",
                0x00010000,
                HEADER_SIZE,
                0,
                0,
                cur,
                other,
                first_usable,
                last_usable,
                _guid_bytes(disk_uuid),
                entries_lba,
                N_ENTRIES,
                ENTRY_SIZE,
                ecrc,
            )
        )
        struct.pack_into("<I", h, 16, zlib.crc32(h))
        return bytes(h).ljust(SECTOR, b"\0")

    mbr = bytearray(SECTOR)
    struct.pack_into(
        "<B3sB3sII", mbr, 446, 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, min(disk_lbas - 1, 0xFFFFFFFF)
    )
    mbr[510:512] = b"\x55\xaa"
    f.seek(0)
    f.truncate(disk_lbas * SECTOR)
    f.write(mbr)
    f.write(header(1, disk_lbas - 1, 2))
    f.write(array)
    for part, src in zip(placed, parts, strict=True):
        f.seek(part.offset)
        f.write(src.data)
    f.seek((disk_lbas - 1 - entry_sectors) * SECTOR)
    f.write(array)
    f.write(header(disk_lbas - 1, 1, disk_lbas - 1 - entry_sectors))
    f.flush()
    return Table(disk_uuid, first_usable, last_usable, disk_lbas - 1, tuple(placed))


def split_root_hash(root_hash: bytes) -> tuple[str, str]:
    """Data and verity partition UUIDs as systemd-repart derives them from a 32-byte root hash."""
    if len(root_hash) < 32:
        raise ValueError("root hash shorter than 32 bytes")
    return str(uuid.UUID(bytes=root_hash[:16])), str(uuid.UUID(bytes=root_hash[16:32]))
