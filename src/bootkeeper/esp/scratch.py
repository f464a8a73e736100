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
