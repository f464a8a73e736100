"""GUID Partition Table: protective MBR, primary and backup header, CRC32s, entries — read and write.

UEFI spec 2.10 §5.3. Partition types are those of the Discoverable Partitions Specification for
the designators a system extension uses (root/usr, their -verity and -verity-sig), on every
architecture systemd knows. A reader facing hostile input raises :class:`MalformedError` naming what is wrong: bad
signature or CRC, entries beyond the disk or overlapping, too many entries.
"""

from __future__ import annotations

import itertools
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from bootkeeper.errors import InputError, MalformedError

SECTOR = 512
HEADER_FORMAT = "<8sIIIIQQQQ16sQIII"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)  # 92
ENTRY_FORMAT = "<16s16sQQQ72s"
ENTRY_SIZE = 128
N_ENTRIES = 128
MAX_ENTRIES = 1024
# attribute bits of the Discoverable Partitions Specification (systemd's SD_GPT_FLAG_*). Bits 0
# (required) and 1 (no block IO protocol) change nothing for a root/usr partition: checked against
# systemd-dissect --validate 257 (tests/sysext/test_interop.py).
ATTR_READ_ONLY = 1 << 60  # as repart sets it
ATTR_NO_AUTO = 1 << 63  # systemd-dissect skips such a partition as if it were not there
ATTR_GROWFS = 1 << 59

# designator -> architecture -> type UUID, every architecture systemd 257 knows (the table printed by
# `systemd-id128 show` of 257.13, first name per UUID): systemd-dissect considers a root or usr partition
# of ANY architecture, so a reader that knows only its own would not see an extra partition it judges.
TYPES: dict[str, dict[str, str]] = {
    "root": {
        "alpha": "6523f8ae-3eb1-4e2a-a05a-18b695ae656f",
        "arc": "d27f46ed-2919-4cb8-bd25-9531f3c16534",
        "arm": "69dad710-2ce4-4e3c-b16c-21a1d49abed3",
        "arm64": "b921b045-1df0-41c3-af44-4c6f280d3fae",
        "ia64": "993d8d3d-f80e-4225-855a-9daf8ed7ea97",
        "loongarch64": "77055800-792c-4f94-b39a-98c91b762bb6",
        "mips": "e9434544-6e2c-47cc-bae2-12d6deafb44c",
        "mips64": "d113af76-80ef-41b4-bdb6-0cff4d3d4a25",
        "mips-le": "37c58c8a-d913-4156-a25f-48b1b64e07f0",
        "mips64-le": "700bda43-7a34-4507-b179-eeb93d7a7ca3",
        "parisc": "1aacdb3b-5444-4138-bd9e-e5c2239b2346",
        "ppc": "1de3f1ef-fa98-47b5-8dcd-4a860a654d78",
        "ppc64": "912ade1d-a839-4913-8964-a10eee08fbd2",
        "ppc64-le": "c31c45e6-3f39-412e-80fb-4809c4980599",
        "riscv32": "60d5a7fe-8e7d-435c-b714-3dd8162144e1",
        "riscv64": "72ec70a6-cf74-40e6-bd49-4bda08e8f224",
        "s390": "08a7acea-624c-4a20-91e8-6e0fa67d23f9",
        "s390x": "5eead9a9-fe09-4a1e-a1d7-520d00531306",
        "tilegx": "c50cdd70-3862-4cc3-90e1-809a8c93ee2c",
        "x86": "44479540-f297-41b2-9af7-d131d5f0458a",
        "x86-64": "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
    },
    "root-verity": {
        "alpha": "fc56d9e9-e6e5-4c06-be32-e74407ce09a5",
        "arc": "24b2d975-0f97-4521-afa1-cd531e421b8d",
        "arm": "7386cdf2-203c-47a9-a498-f2ecce45a2d6",
        "arm64": "df3300ce-d69f-4c92-978c-9bfb0f38d820",
        "ia64": "86ed10d5-b607-45bb-8957-d350f23d0571",
        "loongarch64": "f3393b22-e9af-4613-a948-9d3bfbd0c535",
        "mips": "7a430799-f711-4c7e-8e5b-1d685bd48607",
        "mips64": "579536f8-6a33-4055-a95a-df2d5e2c42a8",
        "mips-le": "d7d150d2-2a04-4a33-8f12-16651205ff7b",
        "mips64-le": "16b417f8-3e06-4f57-8dd2-9b5232f41aa6",
        "parisc": "d212a430-fbc5-49f9-a983-a7feef2b8d0e",
        "ppc": "98cfe649-1588-46dc-b2f0-add147424925",
        "ppc64": "9225a9a3-3c19-4d89-b4f6-eeff88f17631",
        "ppc64-le": "906bd944-4589-4aae-a4e4-dd983917446a",
        "riscv32": "ae0253be-1167-4007-ac68-43926c14c5de",
        "riscv64": "b6ed5582-440b-4209-b8da-5ff7c419ea3d",
        "s390": "7ac63b47-b25c-463b-8df8-b4a94e6c90e1",
        "s390x": "b325bfbe-c7be-4ab8-8357-139e652d2f6b",
        "tilegx": "966061ec-28e4-4b2e-b4a5-1f0a825a1d84",
        "x86": "d13c5d3b-b5d1-422a-b29f-9454fdc89d76",
        "x86-64": "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",
    },
    "root-verity-sig": {
        "alpha": "d46495b7-a053-414f-80f7-700c99921ef8",
        "arc": "143a70ba-cbd3-4f06-919f-6c05683a78bc",
        "arm": "42b0455f-eb11-491d-98d3-56145ba9d037",
        "arm64": "6db69de6-29f4-4758-a7a5-962190f00ce3",
        "ia64": "e98b36ee-32ba-4882-9b12-0ce14655f46a",
        "loongarch64": "5afb67eb-ecc8-4f85-ae8e-ac1e7c50e7d0",
        "mips": "bba210a2-9c5d-45ee-9e87-ff2ccbd002d0",
        "mips64": "43ce94d4-0f3d-4999-8250-b9deafd98e6e",
        "mips-le": "c919cc1f-4456-4eff-918c-f75e94525ca5",
        "mips64-le": "904e58ef-5c65-4a31-9c57-6af5fc7c5de7",
        "parisc": "15de6170-65d3-431c-916e-b0dcd8393f25",
        "ppc": "1b31b5aa-add9-463a-b2ed-bd467fc857e7",
        "ppc64": "f5e2c20c-45b2-4ffa-bce9-2a60737e1aaf",
        "ppc64-le": "d4a236e7-e873-4c07-bf1d-bf6cf7f1c3c6",
        "riscv32": "3a112a75-8729-4380-b4cf-764d79934448",
        "riscv64": "efe0f087-ea8d-4469-821a-4c2a96a8386a",
        "s390": "3482388e-4254-435a-a241-766a065f9960",
        "s390x": "c80187a5-73a3-491a-901a-017c3fa953e9",
        "tilegx": "b3671439-97b0-4a53-90f7-2d5a8f3ad47b",
        "x86": "5996fc05-109c-48de-808b-23fa0830b676",
        "x86-64": "41092b05-9fc8-4523-994f-2def0408b176",
    },
    "usr": {
        "alpha": "e18cf08c-33ec-4c0d-8246-c6c6fb3da024",
        "arc": "7978a683-6316-4922-bbee-38bff5a2fecc",
        "arm": "7d0359a3-02b3-4f0a-865c-654403e70625",
        "arm64": "b0e01050-ee5f-4390-949a-9101b17104e9",
        "ia64": "4301d2a6-4e3b-4b2a-bb94-9e0b2c4225ea",
        "loongarch64": "e611c702-575c-4cbe-9a46-434fa0bf7e3f",
        "mips": "773b2abc-2a99-4398-8bf5-03baac40d02b",
        "mips64": "57e13958-7331-4365-8e6e-35eeee17c61b",
        "mips-le": "0f4868e9-9952-4706-979f-3ed3a473e947",
        "mips64-le": "c97c1f32-ba06-40b4-9f22-236061b08aa8",
        "parisc": "dc4a4480-6917-4262-a4ec-db9384949f25",
        "ppc": "7d14fec5-cc71-415d-9d6c-06bf0b3c3eaf",
        "ppc64": "2c9739e2-f068-46b3-9fd0-01c5a9afbcca",
        "ppc64-le": "15bb03af-77e7-4d4a-b12b-c0d084f7491c",
        "riscv32": "b933fb22-5c3f-4f91-af90-e2bb0fa50702",
        "riscv64": "beaec34b-8442-439b-a40b-984381ed097d",
        "s390": "cd0f869b-d0fb-4ca0-b141-9ea87cc78d66",
        "s390x": "8a4f5770-50aa-4ed3-874a-99b710db6fea",
        "tilegx": "55497029-c7c1-44cc-aa39-815ed1558630",
        "x86": "75250d76-8cc6-458e-bd66-bd47cc81a812",
        "x86-64": "8484680c-9521-48c6-9c11-b0720656f69e",
    },
    "usr-verity": {
        "alpha": "8cce0d25-c0d0-4a44-bd87-46331bf1df67",
        "arc": "fca0598c-d880-4591-8c16-4eda05c7347c",
        "arm": "c215d751-7bcd-4649-be90-6627490a4c05",
        "arm64": "6e11a4e7-fbca-4ded-b9e9-e1a512bb664e",
        "ia64": "6a491e03-3be7-4545-8e38-83320e0ea880",
        "loongarch64": "f46b2c26-59ae-48f0-9106-c50ed47f673d",
        "mips": "6e5a1bc8-d223-49b7-bca8-37a5fcceb996",
        "mips64": "81cf9d90-7458-4df4-8dcf-c8a3a404f09b",
        "mips-le": "46b98d8d-b55c-4e8f-aab3-37fca7f80752",
        "mips64-le": "3c3d61fe-b5f3-414d-bb71-8739a694a4ef",
        "parisc": "5843d618-ec37-48d7-9f12-cea8e08768b2",
        "ppc": "df765d00-270e-49e5-bc75-f47bb2118b09",
        "ppc64": "bdb528a5-a259-475f-a87d-da53fa736a07",
        "ppc64-le": "ee2b9983-21e8-4153-86d9-b6901a54d1ce",
        "riscv32": "cb1ee4e3-8cd0-4136-a0a4-aa61a32e8730",
        "riscv64": "8f1056be-9b05-47c4-81d6-be53128e5b54",
        "s390": "b663c618-e7bc-4d6d-90aa-11b756bb1797",
        "s390x": "31741cc4-1a2a-4111-a581-e00b447d2d06",
        "tilegx": "2fb4bf56-07fa-42da-8132-6b139f2026ae",
        "x86": "8f461b0d-14ee-4e81-9aa9-049b6fb97abd",
        "x86-64": "77ff5f63-e7b6-4633-acf4-1565b864c0e6",
    },
    "usr-verity-sig": {
        "alpha": "5c6e1c76-076a-457a-a0fe-f3b4cd21ce6e",
        "arc": "94f9a9a1-9971-427a-a400-50cb297f0f35",
        "arm": "d7ff812f-37d1-4902-a810-d76ba57b975a",
        "arm64": "c23ce4ff-44bd-4b00-b2d4-b41b3419e02a",
        "ia64": "8de58bc2-2a43-460d-b14e-a76e4a17b47f",
        "loongarch64": "b024f315-d330-444c-8461-44bbde524e99",
        "mips": "97ae158d-f216-497b-8057-f7f905770f54",
        "mips64": "05816ce2-dd40-4ac6-a61d-37d32dc1ba7d",
        "mips-le": "3e23ca0b-a4bc-4b4e-8087-5ab6a26aa8a9",
        "mips64-le": "f2c2c7ee-adcc-4351-b5c6-ee9816b66e16",
        "parisc": "450dd7d1-3224-45ec-9cf2-a43a346d71ee",
        "ppc": "7007891d-d371-4a80-86a4-5cb875b9302e",
        "ppc64": "0b888863-d7f8-4d9e-9766-239fce4d58af",
        "ppc64-le": "c8bfbd1e-268e-4521-8bba-bf314c399557",
        "riscv32": "c3836a13-3137-45ba-b583-b16c50fe5eb4",
        "riscv64": "d2f9000a-7a18-453f-b5cd-4d32f77a7b32",
        "s390": "17440e4f-a8d0-467f-a46e-3912ae6ef2c5",
        "s390x": "3f324816-667b-46ae-86ee-9b0c0c6c11b4",
        "tilegx": "4ede75e2-6ccc-4cc8-b9c7-70334b087510",
        "x86": "974a71c0-de41-43c3-be5d-5c5ccd1ad2c0",
        "x86-64": "e7bb33fb-06cf-4e81-8273-e543b413e2e2",
    },
}
# systemd's ARCHITECTURE_SECONDARY (src/basic/architecture.h): the architecture a native one also runs
SECONDARY_ARCH = {"x86-64": "x86", "arm64": "arm"}
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
        raise MalformedError(f"{what}: GPT header at LBA {lba} is truncated")
    f = struct.unpack_from(HEADER_FORMAT, raw)
    sig, rev, hsize, hcrc = f[0], f[1], f[2], f[3]
    if sig != b"EFI PART":
        raise MalformedError(f"{what}: no GPT header at LBA {lba} (signature {sig!r})")
    if rev != 0x00010000:
        raise MalformedError(f"{what}: GPT revision {rev:#x} at LBA {lba}, expected 0x10000")
    if hsize < HEADER_SIZE or hsize > SECTOR:
        raise MalformedError(f"{what}: GPT header size {hsize} at LBA {lba} is not within {HEADER_SIZE}..{SECTOR}")
    check = bytearray(raw[:hsize])
    check[16:20] = b"\0\0\0\0"
    if zlib.crc32(check) != hcrc:
        raise MalformedError(f"{what}: GPT header CRC32 mismatch at LBA {lba}")
    return f


def _check_header(
    what: str, disk_lbas: int, cur: int, backup: int, first: int, last: int, entries_lba: int, n: int, esize: int
) -> None:
    """The primary header's fields against the disk: its own LBA, the entry array's place and size,
    the usable area and the backup header inside the disk."""
    if cur != 1:
        raise MalformedError(f"{what}: GPT header says it is at LBA {cur}, not 1")
    if esize != ENTRY_SIZE:
        raise MalformedError(f"{what}: GPT entry size {esize}, expected {ENTRY_SIZE}")
    if n == 0 or n > MAX_ENTRIES:
        raise MalformedError(f"{what}: GPT has {n} entries, expected 1..{MAX_ENTRIES}")
    if not (2 <= entries_lba < disk_lbas) or entries_lba + (n * esize + SECTOR - 1) // SECTOR > disk_lbas:
        raise MalformedError(f"{what}: GPT entry array at LBA {entries_lba} lies beyond the disk ({disk_lbas} sectors)")
    if not (first <= last < disk_lbas):
        raise MalformedError(
            f"{what}: GPT usable area {first}..{last} does not fit the disk ({disk_lbas} sectors): truncated image?"
        )
    if backup >= disk_lbas:
        raise MalformedError(
            f"{what}: GPT backup header at LBA {backup} lies beyond the disk ({disk_lbas} sectors): truncated image?"
        )


def _partitions(array: bytes, n: int, first: int, last: int, what: str) -> list[Partition]:
    """The used entries of the array, each inside the usable area ``first..last``, none overlapping."""
    parts = []
    for i in range(n):
        tguid, pguid, p_first, p_last, attrs, name = struct.unpack_from(ENTRY_FORMAT, array, i * ENTRY_SIZE)
        if tguid == b"\0" * 16:
            continue
        if p_first > p_last or p_first < first or p_last > last:
            raise MalformedError(
                f"{what}: partition {i + 1} spans LBA {p_first}..{p_last}, outside the usable {first}..{last}"
            )
        nm = name.decode("utf-16-le", "replace").split("\0", 1)[0]
        parts.append(Partition(i + 1, _guid(tguid), _guid(pguid), p_first, p_last, attrs, nm))
    ordered = sorted(parts, key=lambda p: p.first_lba)
    for a, b in itertools.pairwise(ordered):
        if b.first_lba <= a.last_lba:
            raise MalformedError(f"{what}: partitions {a.number} and {b.number} overlap")
    return parts


def read(f: BinaryIO, size: int, what: str = "image") -> Table:
    """Read and check the primary GPT of a disk image of ``size`` bytes."""
    if size < 3 * SECTOR:
        raise MalformedError(f"{what}: {size} bytes, too small for a GPT")
    disk_lbas = size // SECTOR
    f.seek(0)
    mbr = f.read(SECTOR)
    warnings = []
    if mbr[510:512] != b"\x55\xaa" or mbr[450] != 0xEE:
        warnings.append("no protective MBR")
    hdr = f.read(SECTOR)
    (_, _, _, _, _, cur, backup, first, last, disk, entries_lba, n, esize, ecrc) = _header(hdr, 1, what)
    _check_header(what, disk_lbas, cur, backup, first, last, entries_lba, n, esize)
    f.seek(entries_lba * SECTOR)
    array = f.read(n * esize)
    if len(array) < n * esize:
        raise MalformedError(f"{what}: GPT entry array is truncated")
    if zlib.crc32(array) != ecrc:
        raise MalformedError(f"{what}: GPT entry array CRC32 mismatch")
    parts = _partitions(array, n, first, last, what)
    f.seek(backup * SECTOR)
    try:
        _header(f.read(SECTOR), backup, what)
    except InputError as exc:
        warnings.append(f"backup GPT header: {exc}")
    return Table(_guid(disk), first, last, backup, tuple(parts), tuple(warnings))


@dataclass(frozen=True)
class NewPartition:
    type_uuid: str
    part_uuid: str
    name: str
    data: bytes
    attributes: int = ATTR_READ_ONLY
    size: int = 0  # at least this many bytes; what ``data`` does not fill stays a hole (sparse)


def write(f: BinaryIO, parts: list[NewPartition], disk_uuid: str, align: int = 4096) -> Table:
    """Write a whole disk image: protective MBR, primary GPT, partitions (aligned), backup GPT."""
    entry_sectors = N_ENTRIES * ENTRY_SIZE // SECTOR
    first_usable = 2 + entry_sectors
    lba = -(-first_usable * SECTOR // align) * align // SECTOR
    placed = []
    for i, new in enumerate(parts):
        sectors = max(1, -(-max(len(new.data), new.size) // SECTOR))
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
