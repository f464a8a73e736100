"""A scratch ESP in a folder: the four Kairos-style roles as Type #1 entries.

Used by ``bootkeeper demo``/``simulate`` and by the tests (which put a real kernel, initrd and
systemd-boot in it and boot it in QEMU). Nothing here touches a real ESP.
"""

from __future__ import annotations

import struct
from pathlib import Path

from bootkeeper.esp.entries import Role

DEFAULT_OPTIONS = "console=ttyS0 loglevel=1"


def make(
    root: Path,
    *,
    tries: int | None = 3,
    recovery_tries: int | None = 3,
    sort_keys: bool = True,
    default: str | None = None,
    roles: tuple[Role, ...] = tuple(Role),
    kernel: Path | None = None,
    initrd: Path | None = None,
    sdboot: Path | None = None,
    efi_key_roles: tuple[Role, ...] = (),
    ukis: bool = False,
) -> Path:
    """Write ``loader/loader.conf`` and one entry per role; return ``root``.

    Without ``kernel``/``initrd`` small placeholder files stand in for them (enough for the model,
    which only checks that the loader file exists).
    """
    (root / "loader" / "entries").mkdir(parents=True, exist_ok=True)
    (root / "EFI" / "BOOT").mkdir(parents=True, exist_ok=True)
    (root / "EFI" / "kairos").mkdir(parents=True, exist_ok=True)
    kdst, idst = root / "EFI" / "kairos" / "vmlinuz", root / "EFI" / "kairos" / "initrd.img"
    kdst.write_bytes(kernel.read_bytes() if kernel else b"placeholder kernel\n")
    idst.write_bytes(initrd.read_bytes() if initrd else b"placeholder initrd\n")
    if sdboot is not None:
        (root / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(sdboot.read_bytes())
    conf = "timeout 0\neditor no\n"
    if default is not None:
        conf += f"default {default}\n"
    (root / "loader" / "loader.conf").write_text(conf)
    for role in roles:
        n = tries if role.burns_own_tries else recovery_tries
        name = f"{role.value}+{n}.conf" if n is not None else f"{role.value}.conf"
        lines = [f"title Kairos {role.value}"]
        if sort_keys:
            lines.append(f"sort-key {role.sort_key}")
        if ukis:  # Kairos UKI layout: the entry names EFI/kairos/<role>.efi
            uki = root / "EFI" / "kairos" / f"{role.value}.efi"
            uki.write_bytes(stand_in_uki(((b".osrel", f"ID=kairos\nVERSION_ID=1\nIMAGE_ID={role.value}\n".encode()),)))
            lines.append(f"efi /EFI/kairos/{role.value}.efi")
        elif role in efi_key_roles:
            lines.append("efi /EFI/kairos/vmlinuz")
        else:
            lines.append("linux /EFI/kairos/vmlinuz")
            lines.append("initrd /EFI/kairos/initrd.img")
        lines.append(f"options {DEFAULT_OPTIONS} entry={role.value}")
        (root / "loader" / "entries" / name).write_text("\n".join(lines) + "\n")
    return root


def stand_in_uki(sections: tuple[tuple[bytes, bytes], ...]) -> bytes:
    """A minimal PE file with the given named sections: enough for the section-table readers, and
    a stand-in for a UKI on a scratch ESP (it does not boot)."""
    pe_off = 0x80
    opt_size = 0xF0
    table_off = pe_off + 24 + opt_size
    data_off = (table_off + 40 * len(sections) + 0x1FF) & ~0x1FF
    dos = bytearray(b"MZ" + b"\0" * 0x3A + struct.pack("<I", pe_off))
    hdr = b"PE\0\0" + struct.pack("<HHIIIHH", 0x8664, len(sections), 0, 0, 0, opt_size, 0x22)
    out = bytearray(dos.ljust(pe_off, b"\0") + hdr + b"\0" * opt_size)
    body = bytearray()
    for name, data in sections:
        off = data_off + len(body)
        out += struct.pack("<8sIIIIIIHHI", name.ljust(8, b"\0"), len(data), 0x1000, len(data), off, 0, 0, 0, 0, 0)
        body += data.ljust((len(data) + 0x1FF) & ~0x1FF, b"\0")
    return bytes(out.ljust(data_off, b"\0") + body)


def signable_stand_in(sections: tuple[tuple[bytes, bytes], ...]) -> bytes:
    """A minimal but valid PE32+ image (x86-64, an EFI application) with the given named sections: a
    stand-in UKI that the real ``sbsign`` signs and ``sbverify`` verifies (it does not boot: no code).

    The layout is what the PE/COFF specification asks of an image ("PE Format", Microsoft Learn) and what
    sbsigntool's ``image_pecoff_parse()`` and ``image_pecoff_parse_64()`` (src/image.c) check: the optional
    header's magic 0x20B with all 16 data directories (the certificate table is the fifth, which sbsign
    fills in), FileAlignment 0x200, SectionAlignment 0x1000, each section's raw data on a FileAlignment
    boundary and its VirtualAddress on a SectionAlignment one, in ascending order, SizeOfHeaders and
    SizeOfImage rounded up to them. Sections are initialised read-only data, as ukify adds ``.osrel`` and
    ``.linux``."""
    file_align, section_align = 0x200, 0x1000
    pe_off, opt_size = 0x80, 112 + 16 * 8  # PE32+ fields, then 16 data directories of 8 bytes

    def up(n: int, a: int) -> int:
        return (n + a - 1) & ~(a - 1)

    headers = up(pe_off + 24 + opt_size + 40 * len(sections), file_align)
    table, body = bytearray(), bytearray()
    va = section_align
    for name, data in sections:
        raw = up(len(data), file_align)
        at = headers + len(body) if raw else 0
        # IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ
        table += struct.pack("<8sIIIIIIHHI", name.ljust(8, b"\0"), len(data), va, raw, at, 0, 0, 0, 0, 0x40000040)
        body += data.ljust(raw, b"\0")
        va += up(max(len(data), 1), section_align)
    # Machine x86-64; Characteristics EXECUTABLE_IMAGE | LARGE_ADDRESS_AWARE | DEBUG_STRIPPED
    coff = b"PE\0\0" + struct.pack("<HHIIIHH", 0x8664, len(sections), 0, 0, 0, opt_size, 0x0222)
    opt = struct.pack(
        "<HBBIIIIIQIIHHHHHHIIIIHHQQQQII",
        0x20B,  # PE32+
        0, 0,  # linker version
        0, len(body), 0,  # SizeOfCode, SizeOfInitializedData, SizeOfUninitializedData
        0, 0,  # AddressOfEntryPoint, BaseOfCode: no code
        0,  # ImageBase
        section_align, file_align,
        0, 0, 0, 0, 0, 0,  # OS, image and subsystem versions
        0,  # Win32VersionValue
        va,  # SizeOfImage: the last section's end, on a SectionAlignment boundary
        headers,  # SizeOfHeaders
        0,  # CheckSum (sbsign computes it)
        10,  # Subsystem: EFI application
        0x0100,  # DllCharacteristics: NX_COMPAT
        0, 0, 0, 0,  # stack and heap reserve and commit
        0,  # LoaderFlags
        16,  # NumberOfRvaAndSizes
    )  # fmt: skip
    dos = b"MZ" + b"\0" * 0x3A + struct.pack("<I", pe_off)
    out = dos.ljust(pe_off, b"\0") + coff + opt.ljust(opt_size, b"\0") + table
    return bytes(out.ljust(headers, b"\0") + body)
