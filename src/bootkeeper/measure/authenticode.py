"""The Authenticode hash of a PE image: what UEFI firmware extends into PCR 4 for every EFI
application it loads (``EV_EFI_BOOT_SERVICES_APPLICATION``), systemd-boot and each UKI it starts, and,
with Secure Boot off, the kernel that systemd-stub 257 hands to ``LoadImage()``.

Microsoft's "Windows Authenticode Portable Executable Signature Format", section "Calculating the
PE Image Hash", as EDK2 does it (SecurityPkg/Tcg/Tcg2Dxe/MeasurePeImage.c ``MeasurePeImageAndExtend``):
the headers up to ``SizeOfHeaders`` less the ``CheckSum`` field and the certificate table's data
directory entry; then every section with raw data, in ``PointerToRawData`` order; then whatever
follows them in the image up to the certificate table (its size from that directory entry), which is
left out. An image whose ``NumberOfRvaAndSizes`` has no certificate entry hashes its headers without
that hole.

systemd-pcrlock 257 (src/shared/pe-binary.c ``pe_hash()``, v257.9) computes the same, except that it
pads the hash with zeros to a multiple of 8 bytes of the *file* size when data trails the sections
(pesign's habit, not the firmware's): ``systemd_padding=True`` does that too, to compare with
``systemd-pcrlock lock-pe``. The two agree on every image whose size is a multiple of 8 or that ends
with its last section, which is what signing tools and ukify write.

The certificate table (data directory 4, "Attribute Certificate Table" of the PE/COFF specification)
holds the image's signatures: WIN_CERTIFICATE entries (``dwLength u32 | wRevision u16 |
wCertificateType u16 | bCertificate``), each starting on an 8-byte boundary, and ``wRevision``
0x0200 with ``wCertificateType`` PKCS_SIGNED_DATA (2) carrying one PKCS#7 SignedData, as sbsign and
pesign append them and EDK2 walks them (SecurityPkg/Library/DxeImageVerificationLib
``DxeImageVerificationHandler``). :func:`signatures` returns those blobs; measure/secureboot.py judges
them.

Input is hostile: sizes and offsets are checked against the image before anything is read, and a bad
one is a :class:`MalformedError` naming the file and the field."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from bootkeeper.errors import MalformedError, UnreadableError
from bootkeeper.measure.banks import Bank
from bootkeeper.measure.events import CHUNK, Hasher

__all__ = ["Image", "certificate_table", "digests", "hashed_ranges", "signatures"]

MAX_SECTIONS = 96
CERT_DIR = 4  # IMAGE_DIRECTORY_ENTRY_SECURITY
# A signature is a few KiB (a certificate chain of three is under 6 KiB); a table larger than this
# is refused before it is read, as are more entries than any signing tool appends.
MAX_CERT_TABLE = 1 << 20
MAX_SIGNATURES = 16
WIN_CERT_REVISION_2_0 = 0x0200
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002


@dataclass(frozen=True)
class Image:
    """A PE image as the firmware sees it: ``size`` bytes starting at ``offset`` of ``f``, of which
    ``from_file`` come from the file and the rest are zeros (a UKI's ``.linux`` section in memory,
    VirtualSize bytes of which SizeOfRawData are in the file)."""

    f: BinaryIO
    what: str
    size: int
    offset: int = 0
    from_file: int | None = None

    def read(self, at: int, n: int) -> bytes:
        if at < 0 or n < 0 or at + n > self.size:
            raise MalformedError(f"{self.what}: reads past the end of the image ({at}+{n} > {self.size})")
        in_file = self.size if self.from_file is None else self.from_file
        out = b""
        if at < in_file:
            k = min(n, in_file - at)
            try:
                self.f.seek(self.offset + at)
                out = self.f.read(k)
            except OSError as exc:
                raise UnreadableError(f"{self.what}: {exc.strerror or exc}") from exc
            if len(out) != k:
                raise MalformedError(f"{self.what}: ends {k - len(out)} bytes early")
        return out + bytes(n - len(out))


def _u16(b: bytes, at: int) -> int:
    return int(struct.unpack_from("<H", b, at)[0])


def _u32(b: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", b, at)[0])


def _coff_header(img: Image) -> tuple[int, int, int]:
    """The DOS and COFF headers: where the optional header starts, its size and the number of sections."""
    what = img.what
    if img.size < 64:
        raise MalformedError(f"{what}: {img.size} bytes, too small for a DOS header")
    dos = img.read(0, 64)
    if dos[:2] != b"MZ":
        raise MalformedError(f"{what}: not a PE image (no MZ header)")
    pe = _u32(dos, 0x3C)
    if pe > img.size - 24:
        raise MalformedError(f"{what}: e_lfanew {pe} points past the end of the image ({img.size} bytes)")
    coff = img.read(pe, 24)
    if coff[:4] != b"PE\0\0":
        raise MalformedError(f"{what}: no PE signature at e_lfanew {pe}")
    n_sections = _u16(coff, 6)
    opt_size = _u16(coff, 20)
    if n_sections > MAX_SECTIONS:
        raise MalformedError(f"{what}: NumberOfSections {n_sections}, more than the {MAX_SECTIONS} allowed")
    opt_at = pe + 24
    if opt_size < 2 or opt_at + opt_size > img.size:
        raise MalformedError(f"{what}: SizeOfOptionalHeader {opt_size} does not fit the image")
    return opt_at, opt_size, n_sections


def _data_directories(what: str, opt: bytes, opt_size: int) -> tuple[int, int]:
    """Where the optional header's data directories start (PE32 or PE32+) and how many it has."""
    magic = _u16(opt, 0)
    if magic == 0x10B:
        rva_at, dirs_at = 92, 96
    elif magic == 0x20B:
        rva_at, dirs_at = 108, 112
    else:
        raise MalformedError(f"{what}: optional header magic 0x{magic:04x} is neither PE32 nor PE32+")
    if opt_size < dirs_at:
        raise MalformedError(
            f"{what}: SizeOfOptionalHeader {opt_size} is too short for a {'PE32+' if magic == 0x20B else 'PE32'} header"
        )
    n_dirs = _u32(opt, rva_at)
    if n_dirs > (opt_size - dirs_at) // 8:
        raise MalformedError(f"{what}: NumberOfRvaAndSizes {n_dirs} does not fit SizeOfOptionalHeader {opt_size}")
    return dirs_at, n_dirs


def _section_runs(img: Image, table_at: int, n_sections: int) -> list[tuple[int, int]]:
    """The sections' raw data, sorted by offset, empty ones left out."""
    what = img.what
    if table_at + 40 * n_sections > img.size:
        raise MalformedError(f"{what}: the section table ({n_sections} sections at {table_at}) is truncated")
    table = img.read(table_at, 40 * n_sections)
    sections = []
    for i in range(n_sections):
        name = table[40 * i : 40 * i + 8].rstrip(b"\0").decode("ascii", "replace")
        raw_size = _u32(table, 40 * i + 16)
        raw_at = _u32(table, 40 * i + 20)
        if raw_size == 0:
            continue
        if raw_at + raw_size > img.size:
            raise MalformedError(
                f"{what}: section {name!r}: PointerToRawData {raw_at} + SizeOfRawData {raw_size} "
                f"is past the end of the image ({img.size} bytes)"
            )
        sections.append((raw_at, raw_size))
    sections.sort(key=lambda s: s[0])  # stable: equal offsets keep table order, as EDK2's insertion sort
    return sections


def certificate_table(img: Image) -> tuple[int, int]:
    """(file offset, size) of the certificate table, (0, 0) when the image has none. The table must
    end the image: the Authenticode hash leaves out exactly its size from the end (EDK2 computes it so),
    so a table anywhere else would leave bytes out of the hash that the signature does not cover."""
    what = img.what
    opt_at, opt_size, _ = _coff_header(img)
    opt = img.read(opt_at, opt_size)
    dirs_at, n_dirs = _data_directories(what, opt, opt_size)
    if n_dirs <= CERT_DIR:
        return 0, 0
    at = _u32(opt, dirs_at + 8 * CERT_DIR)
    size = _u32(opt, dirs_at + 8 * CERT_DIR + 4)
    if at == 0 or size == 0:
        return 0, 0
    if size > MAX_CERT_TABLE:
        raise MalformedError(f"{what}: certificate table of {size} bytes, more than the {MAX_CERT_TABLE} allowed")
    if at + size != img.size:
        raise MalformedError(
            f"{what}: certificate table at {at} of {size} bytes does not end the image ({img.size} bytes)"
        )
    return at, size


def signatures(img: Image) -> list[bytes]:
    """The PKCS#7 SignedData blobs of the certificate table's PKCS_SIGNED_DATA entries, in order (an
    entry of another revision or type is skipped, as EDK2 skips it); [] for an unsigned image."""
    what = img.what
    at, size = certificate_table(img)
    table = img.read(at, size) if size else b""
    out: list[bytes] = []
    off = 0
    while off < size:
        if size - off < 8:
            raise MalformedError(f"{what}: certificate table: {size - off} bytes at {off}, too few for an entry header")
        length, revision, kind = struct.unpack_from("<IHH", table, off)
        if length <= 8 or length > size - off:
            raise MalformedError(
                f"{what}: certificate table: entry at {off} has dwLength {length}, "
                f"not within the {size - off} bytes left"
            )
        if revision == WIN_CERT_REVISION_2_0 and kind == WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            if len(out) == MAX_SIGNATURES:
                raise MalformedError(f"{what}: certificate table: more than {MAX_SIGNATURES} signatures")
            out.append(table[off + 8 : off + length])
        off += (length + 7) & ~7
    return out


def hashed_ranges(img: Image, systemd_padding: bool = False) -> tuple[list[tuple[int, int]], int]:
    """The (offset, length) runs of the image that are hashed, in order, and the number of zero bytes
    hashed after them (only with ``systemd_padding``)."""
    what = img.what
    opt_at, opt_size, n_sections = _coff_header(img)
    opt = img.read(opt_at, opt_size)
    dirs_at, n_dirs = _data_directories(what, opt, opt_size)
    size_of_headers = _u32(opt, 60)
    checksum = opt_at + 64
    runs = [(0, checksum)]
    if n_dirs > CERT_DIR:
        cert_entry = opt_at + dirs_at + 8 * CERT_DIR
        cert_size = _u32(opt, dirs_at + 8 * CERT_DIR + 4)
        runs.append((checksum + 4, cert_entry - checksum - 4))
        rest = cert_entry + 8
    else:
        cert_size = 0
        rest = checksum + 4
    if size_of_headers < rest or size_of_headers > img.size:
        raise MalformedError(
            f"{what}: SizeOfHeaders {size_of_headers} is not between the end of the hashed header fields ({rest}) "
            f"and the image size ({img.size})"
        )
    runs.append((rest, size_of_headers - rest))
    sections = _section_runs(img, opt_at + opt_size, n_sections)
    runs += sections
    hashed = size_of_headers + sum(n for _, n in sections)
    pad = 0
    if img.size > hashed:
        if img.size < hashed + cert_size:
            raise MalformedError(
                f"{what}: certificate table of {cert_size} bytes does not fit after {hashed} hashed bytes "
                f"of a {img.size}-byte image"
            )
        runs.append((hashed, img.size - hashed - cert_size))
        if systemd_padding and img.size % 8:
            pad = 8 - img.size % 8
    return [r for r in runs if r[1]], pad


def digests(img: Image, banks: Iterable[Bank], systemd_padding: bool = False) -> dict[str, bytes]:
    """The image's Authenticode hash in each bank."""
    runs, pad = hashed_ranges(img, systemd_padding)
    h = Hasher(banks)
    for at, n in runs:
        while n:
            k = min(n, CHUNK)
            h.update(img.read(at, k))
            at += k
            n -= k
    h.update(bytes(pad))
    return h.digests()
