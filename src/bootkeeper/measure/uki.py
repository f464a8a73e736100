"""PCR 11: what systemd-stub measures of the UKI it runs, and what systemd-pcrphase adds after it.

systemd-stub 257 (src/boot/stub.c, v257.9, ``measure_sections()``) walks ``unified_sections[]``
(src/fundamental/uki.c) in that order and, for each section the selected profile has (a section of
VirtualSize 0 counts as absent, src/boot/pe.h ``PE_SECTION_VECTOR_IS_SET``), logs two EV_IPL events
into PCR 11: the section name with its NUL, then the section's bytes as loaded in memory: VirtualSize
bytes, of which ``min(VirtualSize, SizeOfRawData)`` come from the file and the rest are zero.
``.pcrsig`` is never measured (it signs PCR 11, so it cannot be in it). The base sections are those
before the first ``.profile``; profile N's sections (``.profile`` included) override them, first
match wins within each (src/boot/pe.c ``pe_locate_profile_sections``).

``.dtbauto`` is taken only when it matches the firmware's device tree or ``.hwids``
(``pe_use_this_dtb``), which is the machine's, not the ESP's: it is not predicted, and a UKI with one
says so. systemd-measure 257 (src/measure/measure.c) computes the same from the section files, and
skips empty ones "as the stub does".

After the handover, systemd-pcrphase extends the phase words ``enter-initrd``, ``leave-initrd``,
``sysinit``, ``ready`` (the word's bytes, no NUL) into PCR 11 (systemd-measure ``measure_phase()``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bootkeeper import fsutil
from bootkeeper.errors import MalformedError, UnreadableError
from bootkeeper.esp.pe import Section, read_sections
from bootkeeper.measure.banks import Bank, extend
from bootkeeper.measure.events import EV_IPL, Event, Hasher, digests_of

__all__ = [
    "MAX_ZERO_FILL",
    "MEASURED",
    "PHASES",
    "UkiSections",
    "bound",
    "phase_values",
    "section_events",
    "sections_of",
]

# src/fundamental/uki.c (v257.9) unified_sections[] order, without .pcrsig (unified_section_measure())
MEASURED = (
    ".linux",
    ".osrel",
    ".cmdline",
    ".initrd",
    ".ucode",
    ".splash",
    ".dtb",
    ".uname",
    ".sbat",
    ".pcrpkey",
    ".profile",
    ".dtbauto",
    ".hwids",
)
ALL = (*MEASURED[:9], ".pcrsig", *MEASURED[9:])
PHASES = ("enter-initrd", "leave-initrd", "sysinit", "ready")
NOT_PREDICTED = (".dtbauto",)
# What a UKI's sections may claim beyond their bytes in the file. systemd-stub 257 measures each
# section as loaded: VirtualSize bytes from ImageBase+VirtualAddress, of which only
# MIN(SizeOfRawData, VirtualSize) come from the file, the rest being the zeros the firmware's loader
# fills in; pe_locate_sections_internal() (src/boot/pe.c, systemd 257 as RHEL 10's v257 branch has
# it, redhat-plumbers/systemd-rhel10 a4541d3e) checks VirtualSize only against address overflow, so a
# 5 KiB file may claim 4 GiB a section, which the firmware would have to allocate (SizeOfImage) before
# the stub ever ran. The one section real builders give a zero-filled tail is .linux: ukify sets its
# VirtualSize to the kernel's own SizeOfImage (src/ukify/ukify.py make_uki(), systemd main 0010d39a),
# a few tens of MiB beyond the kernel's bytes; every other section's VirtualSize is its data's length
# (ukify pe_add_sections(), objcopy --add-section). So the zeros of all measured sections together are
# bounded, generously, and a UKI claiming more is refused with the section and the sizes named:
# predicting it would hash gigabytes of zeros for a file no firmware loads. The bound is per FILE,
# over the sections of all its profiles together (each section counted once): the firmware loads
# the whole image, every profile's sections included, whichever profile the stub then picks. And
# each section is hashed once per file and run (section_digests()), however many profiles share
# it: the base .linux of a UKI with 94 profiles is measured into each of 94 predictions, but read
# and hashed once. A run's work on a UKI is thus its own bytes plus at most MAX_ZERO_FILL of zeros;
# an ESP's is that times the number of UKI files its entries name.
MAX_ZERO_FILL = 256 << 20
CACHE_ENTRIES = 1024  # digests kept per process (a few dozen bytes each)
_DIGESTS: dict[tuple[object, ...], dict[str, bytes]] = {}


@dataclass(frozen=True)
class UkiSections:
    """The sections systemd-stub uses for one profile of one UKI."""

    path: Path
    what: str  # the ESP-relative name, for messages
    profile: int
    sections: dict[str, Section]

    def has(self, name: str) -> bool:
        s = self.sections.get(name)
        return s is not None and s.virtual_size != 0

    def read(self, name: str, limit: int = 1 << 20) -> bytes:
        """A small section's bytes as the stub sees them (``.osrel``, ``.uname``, ``.cmdline``)."""
        s = self.sections[name]
        if s.virtual_size > limit:
            raise MalformedError(f"{self.what}: section {name} is {s.virtual_size} bytes, more than {limit}")
        out = bytearray()
        try:
            with fsutil.open_regular(self.path, self.what) as f:
                feed(f, s, self.what, out.extend)
        except OSError as exc:
            raise UnreadableError(f"{self.what}: {exc.strerror or exc}") from exc
        return bytes(out)


def zero_fill(s: Section) -> int:
    """The bytes of ``s`` in memory that are not in the file (VirtualSize beyond SizeOfRawData)."""
    return s.virtual_size - min(s.virtual_size, s.file_size)


def memo(f: BinaryIO, key: tuple[object, ...], compute: Callable[[], dict[str, bytes]]) -> dict[str, bytes]:
    """Digests of ``f`` computed once per process for ``key``: the file is known by device, inode,
    size and change times, so a file rewritten since is hashed again."""
    st = os.fstat(f.fileno())
    k = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, *key)
    found = _DIGESTS.get(k)
    if found is None:
        found = compute()
        if len(_DIGESTS) >= CACHE_ENTRIES:
            _DIGESTS.clear()
        _DIGESTS[k] = found
    return dict(found)


def section_digests(f: BinaryIO, s: Section, what: str, banks: tuple[Bank, ...]) -> dict[str, bytes]:
    """The digests of section ``s`` as loaded (:func:`feed`), hashed once per file (:func:`memo`)."""

    def compute() -> dict[str, bytes]:
        h = Hasher(banks)
        feed(f, s, what, h.update)
        return h.digests()

    key = ("section", s.name, s.file_offset, s.file_size, s.virtual_size, tuple(b.name for b in banks))
    return memo(f, key, compute)


def bound(sections: Iterable[Section], what: str) -> None:
    """Refuse sections whose zero-filled tails together exceed :data:`MAX_ZERO_FILL`, naming the
    section that crosses it and its sizes. Give it every section of a file that may be measured
    (:func:`sections_of` does): the bound is per file, not per profile."""
    total = 0
    for s in sections:
        fill = zero_fill(s)
        total += fill
        if total > MAX_ZERO_FILL:
            raise MalformedError(
                f"{what}: section {s.name} claims VirtualSize {s.virtual_size} with {s.file_size} bytes in the file: "
                f"{total} bytes of zeros in its measured sections (all profiles), more than the {MAX_ZERO_FILL} a UKI "
                "may claim"
            )


def _locate(table: list[Section], into: dict[str, Section]) -> None:
    for name in ALL:
        for s in table:
            if s.name == name:
                into[name] = s  # a zero VirtualSize here still hides the base's (it is "found")
                break


def sections_of(path: Path, what: str, profile: int = 0) -> UkiSections:
    try:
        with fsutil.open_regular(path, what) as f:
            table = read_sections(f, what)
    except OSError as exc:
        raise UnreadableError(f"{what}: {exc.strerror or exc}") from exc
    # every section any profile may measure, each once: the bound is the file's, not a profile's
    bound([s for s in table if s.name in ALL], what)
    starts = [i for i, s in enumerate(table) if s.name == ".profile"]
    found: dict[str, Section] = {}
    _locate(table[: starts[0]] if starts else table, found)
    if profile < len(starts):
        end = starts[profile + 1] if profile + 1 < len(starts) else len(table)
        _locate(table[starts[profile] : end], found)
    elif profile != 0:
        raise MalformedError(f"{what}: has no profile {profile} ({len(starts)} .profile sections)")
    if ".linux" not in found or found[".linux"].virtual_size == 0:
        raise MalformedError(f"{what}: not a UKI (no .linux section)")
    return UkiSections(path, what, profile, found)


def feed(f: BinaryIO, s: Section, what: str, sink: Callable[[bytes], object]) -> None:
    """The section as systemd-stub sees it in memory, in chunks: the file's bytes, then zeros up to
    VirtualSize."""
    from_file = min(s.virtual_size, s.file_size)
    f.seek(0, 2)
    if s.file_offset + from_file > f.tell():
        raise MalformedError(f"{what}: section {s.name} extends past the end of the file")
    f.seek(s.file_offset)
    left = from_file
    while left:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            raise MalformedError(f"{what}: section {s.name} extends past the end of the file")
        sink(chunk)
        left -= len(chunk)
    if s.virtual_size > from_file:
        sink(bytes(s.virtual_size - from_file))


def section_events(uki: UkiSections, banks: tuple[Bank, ...]) -> list[Event]:
    events: list[Event] = []
    try:
        with fsutil.open_regular(uki.path, uki.what) as f:
            for name in MEASURED:
                if not uki.has(name) or name in NOT_PREDICTED:
                    continue
                s = uki.sections[name]
                events.append(
                    Event(
                        11,
                        EV_IPL,
                        name,
                        f"the name of section {name} of {uki.what}",
                        digests_of(banks, name.encode() + b"\0"),
                    )
                )
                d = section_digests(f, s, uki.what, banks)
                events.append(Event(11, EV_IPL, name, f"section {name} of {uki.what} ({s.virtual_size} bytes)", d))
    except OSError as exc:
        raise UnreadableError(f"{uki.what}: {exc.strerror or exc}") from exc
    return events


def phase_values(
    handover: dict[str, bytes], banks: tuple[Bank, ...], path: tuple[str, ...] = PHASES
) -> dict[str, dict[str, bytes]]:
    """PCR 11 in each bank after each phase word of ``path``, starting from the handover value."""
    out: dict[str, dict[str, bytes]] = {}
    for b in banks:
        v = handover[b.name]
        out[b.name] = {}
        for p in path:
            v = extend(b, v, b.digest(p.encode()))
            out[b.name][p] = v
    return out


def has_unpredicted(uki: UkiSections) -> list[str]:
    return [n for n in NOT_PREDICTED if uki.has(n)]
