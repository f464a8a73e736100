"""Boot Loader Specification entries and their order, as systemd-boot sees them.

Type #1: ``loader/entries/*.conf`` (keys title, version, sort-key, machine-id, linux, uki, efi,
initrd, options, architecture, devicetree). Type #2: ``EFI/Linux/*.efi`` UKIs, whose title,
version and sort key come from the ``.osrel`` section (PRETTY_NAME|IMAGE_ID|NAME|ID,
IMAGE_VERSION|VERSION|VERSION_ID|BUILD_ID, IMAGE_ID|ID). Order is ``boot_entry_compare()``:
entries with no tries left last, then entries with a sort key before those without; by sort key,
machine-id, version (newest first); then id (newest first); then more tries left, fewer done.

What changed between systemd-boot versions is decided by :class:`bootkeeper.esp.sdboot.SdBoot`
(from the full version string the binary carries): which loader keys exist and which are
counted, whether an entry id keeps its boot counter (``active+3.conf`` on 252, ``active.conf``
on 257.13 and 259+), multi-profile ids. A counted file with the FAT read-only attribute is never
renamed, on any version.

Multi-profile UKIs (382e4da4a5, PR #34339, v257; src/boot/boot.c ``boot_entry_add_type2()``): a
Type #2 UKI with ``.profile`` sections is one menu entry per profile. Profile 0 has the file's id;
profile N ≥ 1 the id ``<file id>@<ID=>`` (``@N`` without ``ID=``), see :meth:`Entry.entry_id`.
They are :class:`Entry` values with ``profile`` ≥ 1 and the file's path: booting any of them renames
the file (the counter is on the file).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cmp_to_key
from typing import TypeVar

from bootkeeper.esp import counter as counter_mod
from bootkeeper.esp import sdboot as sdboot_mod
from bootkeeper.esp.counter import CountedName, EntryState
from bootkeeper.esp.sdboot import SdBoot

__all__ = ["CountedName", "EntryState"]
from bootkeeper.esp.keyvalue import Junk, KeyValue, split_lines

TYPE1_DIR = "loader/entries"
TYPE2_DIR = "EFI/Linux"

Version = SdBoot | int | str | None  # what callers may pass: see sdboot.of()


class EntryKind(StrEnum):
    TYPE1 = "type1"
    TYPE2 = "type2"


class LoaderType(StrEnum):
    LINUX = "linux"
    UKI = "uki"
    EFI = "efi"
    TYPE2 = "type2"
    UNDEFINED = "undefined"  # no linux/uki/efi line: systemd-boot drops the entry
    BAD = "bad"  # two kinds of loader line: systemd-boot drops the entry
    IGNORE = "ignore"  # other architecture: systemd-boot drops the entry

    def bumps_counters(self, sdboot: Version = None) -> bool:
        """Whether systemd-boot renames a counted entry of this kind when it boots it: ``linux``
        and Type #2 always, ``uki`` where the key exists, ``efi`` before 258 (see sdboot.py)."""
        if self not in (LoaderType.LINUX, LoaderType.UKI, LoaderType.EFI, LoaderType.TYPE2):
            return False
        return sdboot_mod.of(sdboot).counts(self.value)


class Role(StrEnum):
    ACTIVE = "active"
    PASSIVE = "passive"
    RECOVERY = "recovery"
    STATERESET = "statereset"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    @property
    def sort_key(self) -> str:
        """Sort keys that order the fallback chain active → passive → recovery → statereset."""
        return f"{self.rank + 1}-{self.value}"

    @property
    def burns_own_tries(self) -> bool:
        """Recovery and statereset are re-armed when active or passive is blessed good."""
        return self in (Role.ACTIVE, Role.PASSIVE)

    @classmethod
    def from_stem(cls, stem: str) -> Role | None:
        m = re.match(r"(active|passive|recovery|statereset)(?:$|[-_.@ ])", stem.lower())
        return cls(m.group(1)) if m else None

    @classmethod
    def from_entry_id(cls, entry_id: str) -> Role | None:
        """The role of the entry systemd-boot names in ``LoaderEntrySelected`` (``active+2.efi``,
        ``passive.conf``, ``active.efi@debug``): its file name without counter and suffix."""
        return cls.from_stem(entry_id.split("+", 1)[0].rsplit(".", 1)[0])


@dataclass(frozen=True)
class Entry:
    """One entry file, parsed; ``listed`` says whether systemd-boot would show and boot it."""

    path: str  # relative to the ESP, "/"-separated, e.g. loader/entries/active+3.conf
    kind: EntryKind
    name: CountedName
    loader_type: LoaderType
    title: str | None = None
    version: str | None = None
    sort_key: str | None = None
    machine_id: str | None = None
    loader: str | None = None
    options: str | None = None
    initrd: tuple[str, ...] = ()
    listed: bool = True
    why_unlisted: str | None = None
    problems: tuple[str, ...] = field(default=())
    read_only: bool = False  # the FAT read-only attribute (a vfat file without write bits)
    profile: int = 0  # Type #2: the UKI profile (0: the base); Type #1: the 'profile' key (259+)
    profile_id: str | None = None  # Type #2: ID= of the profile's .profile section

    @property
    def directory(self) -> str:
        return TYPE1_DIR if self.kind is EntryKind.TYPE1 else TYPE2_DIR

    @property
    def file_name(self) -> str:
        return self.name.name

    @property
    def state(self) -> EntryState:
        return self.name.state

    @property
    def role(self) -> Role | None:
        return Role.from_stem(self.name.stem)

    @property
    def counted(self) -> bool:
        return self.name.counted

    def _file_id(self, sd: SdBoot) -> str:
        if self.name.counted and sd.ids_drop_counter:
            base = self.name.base
            return base if sd.id_keeps_case(self.kind is EntryKind.TYPE2) else base.lower()
        return self.file_name.lower()

    @property
    def is_uki_profile(self) -> bool:
        """A second (third, …) menu entry made from a UKI's ``.profile`` section."""
        return self.kind is EntryKind.TYPE2 and self.profile > 0

    def entry_id(self, sdboot: Version = None) -> str:
        """The id systemd-boot gives the entry (matched by ``default`` and the EFI variables).

        UKI profiles N ≥ 1, for ``Foo+3-0.efi`` (profile 1, no ``ID=``):

        * 257.0–257.9, 258.0: ``foo+3-0.efi@1``: ``<file>@N`` (382e4da4a5), then lower-cased;
        * 257.10–257.13, 258.1–258.2: ``Foo.efi``: the backported counter strip (a059f9b2ab,
          e67e514567) in ``boot_entry_parse_tries()`` overwrites the id after ``@N`` was
          appended, so every profile of a *counted* file has profile 0's id (read at v257.13 and
          v258.1); an uncounted ``Foo.efi`` still gets ``foo.efi@1``;
        * 258.3+, 259+: ``Foo.efi@1``: the suffix is appended to the file id after it is made
          (941b91600c, v259; backport a91fdd399f, v258.3), so ``ID=`` keeps its case (read at
          v258.3, v259 and v261.2: no lower-casing after the append); 262.1 lower-cases ``ID=``
          (booted: ``ID=Debug`` gives ``active.efi@debug``; the commit is not in the sources read
          here, so whether 262 lower-cases the whole id is not known: only the suffix is)."""
        sd = sdboot_mod.of(sdboot)
        base = self._file_id(sd)
        if not self.is_uki_profile or not sd.has_profile_ids:
            return base
        suffix = self.profile_id if self.profile_id is not None else str(self.profile)
        if sd.profile_suffix_after_id:
            return f"{base}@{suffix.lower() if sd.profile_id_lowered else suffix}"
        if self.name.counted and sd.ids_drop_counter:
            return base
        return f"{self.file_name}@{suffix}".lower()

    def id_without_profile(self, sdboot: Version = None) -> str | None:
        """``BootEntry.id_without_profile``: what ``boot_entry_compare()`` orders a profile ≥ 1 by
        (None for every other entry, which is ordered by its id). Before 258.3 it is the lower-cased
        file name, counter and all (``foo+3-0.efi``); from 258.3/259 the file id (``Foo.efi``)."""
        sd = sdboot_mod.of(sdboot)
        if not self.is_uki_profile or not sd.has_profile_ids:
            return None
        return self._file_id(sd) if sd.profile_suffix_after_id else self.file_name.lower()

    @property
    def may_auto_boot(self) -> bool:
        """Whether the "first entry in menu order" fallback may take it, where the version applies
        ``SdBoot.fallback_skips_profiles``: never an entry with a profile > 0."""
        return self.profile == 0

    def next_name(self, sdboot: Version = None) -> str | None:
        """The name systemd-boot renames this entry to when it boots it, or None: not counted, a
        loader kind this version does not count, or the FAT read-only attribute (the boot loader
        opens the file for writing to rename it, and the firmware refuses: booted on 252.39,
        257.13 and 262.1, no rename and no LoaderBootCountPath)."""
        if self.read_only or not self.loader_type.bumps_counters(sdboot):
            return None
        return self.name.next_name()


EXTRA_SUFFIX = ".extra.d"


def extra_dir(uki: str) -> str:
    """The folder systemd-stub reads for the UKI at ESP path ``uki`` (its extensions, credentials):
    the UKI's name without the boot counter, plus ``.extra.d`` (``active+2-1.efi`` reads
    ``active.efi.extra.d``; src/boot/stub.c, the loaded image's own path + ``.extra.d``)."""
    folder, _, name = uki.rpartition("/")
    base = counter_mod.parse(name, ".efi").base + EXTRA_SUFFIX
    return f"{folder}/{base}" if folder else base


def same_entry(paths: Iterable[str]) -> list[tuple[str, ...]]:
    """The entry files that are one entry with different counters (``active+3.conf`` beside a used-up
    ``active+0-3.conf``): each group of two or more paths (``loader/entries/x.conf``,
    ``EFI/Linux/x.efi``) in one folder with one :attr:`CountedName.entry_key`, sorted. The one rule
    the ESP snapshot's problem, lint's BK203 and the metrics' ``entry_files`` share."""
    groups: dict[tuple[str, str], list[str]] = {}
    for path in dict.fromkeys(paths):  # a UKI's profiles share its file: one path, one file
        folder, _, name = path.rpartition("/")
        suffix = ".efi" if name.lower().endswith(".efi") else ".conf"
        groups.setdefault((folder.lower(), counter_mod.parse(name, suffix).entry_key), []).append(path)
    return [tuple(sorted(g)) for _, g in sorted(groups.items()) if len(g) > 1]


def valid_type1_filename(name: str) -> bool:
    low = name.lower()
    return bool(name) and not name.startswith(".") and low.endswith(".conf") and not low.startswith("auto-")


def valid_type2_filename(name: str) -> bool:
    low = name.lower()
    return bool(name) and not name.startswith(".") and low.endswith(".efi") and not low.startswith("auto-")


_SINGLE_KEYS = ("title", "version", "sort-key", "machine-id", "linux", "uki", "efi", "architecture", "devicetree")
_KNOWN_KEYS = {*_SINGLE_KEYS, "initrd", "options", "uki-url", "profile", "extra"}


@dataclass
class _Type1Lines:
    """What the lines of a ``.conf`` set, gathered in file order (src/boot/boot.c boot_entry_load_type1())."""

    problems: list[str] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    options: list[str] = field(default_factory=list)
    initrd: list[str] = field(default_factory=list)
    loader_type: LoaderType = LoaderType.UNDEFINED
    loader: str | None = None
    profile: int = 0


def _read_type1_lines(text: str, sd: SdBoot, arch: str) -> _Type1Lines:
    f = _Type1Lines()
    for item in split_lines(text, " \t"):
        if isinstance(item, Junk):
            f.problems.append(f"line {item.lineno}: no value after '{item.text[:40]}' (ignored)")
            continue
        assert isinstance(item, KeyValue)
        key = item.key
        if key not in _KNOWN_KEYS or (key == "extra" and not sd.has_extra_key):
            f.problems.append(f"line {item.lineno}: unknown key '{key[:40]}' (ignored by systemd-boot {sd})")
            continue
        if key in _SINGLE_KEYS and key in f.seen:
            f.problems.append(f"line {item.lineno}: duplicate key '{key}' (line {f.seen[key]} is overridden)")
        f.seen.setdefault(key, item.lineno)
        if not _take_type1_line(f, item, sd, arch):
            break
    return f


def _take_type1_line(f: _Type1Lines, item: KeyValue, sd: SdBoot, arch: str) -> bool:
    """One known key's line into ``f``; False when systemd-boot stops reading the file there."""
    key, value = item.key, item.value
    if key == "options":
        f.options.append(value)
    elif key == "initrd":
        f.initrd.append(value)
    elif key in ("linux", "efi", "uki"):
        return _take_loader_line(f, item, sd)
    elif key == "profile":
        # 1e9c9773b9 (v259): parse_number8(), the whole value, at most UINT_MAX; the id is unchanged
        if sd.at_least("259") and value.isascii() and value.isdigit() and int(value) <= 0xFFFFFFFF:
            f.profile = int(value)
    elif key == "architecture":
        if value.lower() != arch:
            f.loader_type = LoaderType.IGNORE
            return False
    else:
        f.values[key] = value
    return True


def _take_loader_line(f: _Type1Lines, item: KeyValue, sd: SdBoot) -> bool:
    key = item.key
    kind = LoaderType(key)
    if key == "uki" and not sd.knows_uki_key:
        f.problems.append(f"line {item.lineno}: 'uki' is unknown to systemd-boot {sd} (ignored)")
        return True
    if f.loader_type not in (LoaderType.UNDEFINED, kind):
        f.loader_type = LoaderType.BAD
        f.problems.append(f"line {item.lineno}: '{key}' mixed with another loader line")
        return False
    f.loader_type = kind
    f.loader = item.value
    return True


def _type1_unlisted(
    loader_type: LoaderType, loader: str | None, loader_exists: bool | Callable[[str], bool] | None, arch: str
) -> str | None:
    """Why systemd-boot leaves the entry out of its menu, or None when it lists it."""
    if loader_type in (LoaderType.UNDEFINED, LoaderType.BAD, LoaderType.IGNORE):
        return {
            LoaderType.UNDEFINED: "no linux, uki or efi line",
            LoaderType.BAD: "more than one kind of loader line",
            LoaderType.IGNORE: f"architecture is not {arch}",
        }[loader_type]
    if loader is not None and (loader_exists(loader) if callable(loader_exists) else loader_exists) is False:
        return f"its loader {loader} is not on the ESP"
    return None


def parse_type1(
    file_name: str,
    text: str,
    *,
    loader_exists: bool | Callable[[str], bool] | None = None,
    sdboot_version: Version = None,
    arch: str = "x64",
    read_only: bool = False,
) -> Entry:
    """Parse a ``.conf`` entry as systemd-boot does; oddities become ``problems``, not errors.

    ``loader_exists`` says whether the file named by linux/uki/efi is on the ESP (systemd-boot
    drops entries whose loader is missing): a bool, a function asked with the loader path, or
    None for "not checked".
    """
    sd = sdboot_mod.of(sdboot_version)
    f = _read_type1_lines(text, sd, arch)
    loader_type, loader, problems, values = f.loader_type, f.loader, f.problems, f.values
    why = _type1_unlisted(loader_type, loader, loader_exists, arch)
    if loader_type is LoaderType.EFI and counter_mod.parse(file_name, ".conf").counted and not sd.counts_efi_key:
        problems.append(f"uses the 'efi' key: systemd-boot {sd} never counts its boots down")
    return Entry(
        path=f"{TYPE1_DIR}/{file_name}",
        kind=EntryKind.TYPE1,
        name=counter_mod.parse(file_name, ".conf"),
        loader_type=loader_type,
        title=values.get("title"),
        version=values.get("version"),
        sort_key=values.get("sort-key"),
        machine_id=values.get("machine-id"),
        loader=loader,
        options=" ".join(f.options) if f.options else None,
        initrd=tuple(f.initrd),
        listed=why is None,
        why_unlisted=why,
        problems=tuple(problems),
        read_only=read_only,
        profile=f.profile,
    )


def unread_type1(file_name: str, why: str) -> Entry:
    """A ``.conf`` that was not read (larger than an entry file may be, or unreadable): a finding
    about that file, listed under ``unlisted`` and ``problems``; the other entries still count.
    Whether systemd-boot would show it is not modelled: bootkeeper does not parse what it did not read."""
    return Entry(
        path=f"{TYPE1_DIR}/{file_name}",
        kind=EntryKind.TYPE1,
        name=counter_mod.parse(file_name, ".conf"),
        loader_type=LoaderType.UNDEFINED,
        listed=False,
        why_unlisted=f"not read: {why}",
        problems=(f"not read: {why}",),
    )


def parse_osrel(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in split_lines(text, "="):
        if isinstance(item, KeyValue):
            out[item.key] = item.value
    return out


def parse_type2(
    file_name: str,
    osrel: bytes | None,
    *,
    problem: str | None = None,
    read_only: bool = False,
    profile: int = 0,
    profile_id: str | None = None,
    profile_title: str | None = None,
) -> Entry:
    """A UKI in ``EFI/Linux``; ``osrel`` is its ``.osrel`` section (None: missing/unreadable), or
    with ``profile`` the menu entry of one of its profiles (``osrel`` then is that profile's)."""
    name = counter_mod.parse(file_name, ".efi")
    path = f"{TYPE2_DIR}/{file_name}"

    def unlisted(why: str, problems: tuple[str, ...]) -> Entry:
        return Entry(
            path,
            EntryKind.TYPE2,
            name,
            LoaderType.TYPE2,
            listed=False,
            why_unlisted=why,
            problems=problems,
            profile=profile,
            profile_id=profile_id,
        )

    if osrel is None:
        why = problem or "no .osrel section"
        return unlisted(why, (why,))
    rel = parse_osrel(osrel.decode("utf-8", "replace"))
    good_name = rel.get("PRETTY_NAME") or rel.get("IMAGE_ID") or rel.get("NAME") or rel.get("ID")
    good_version = rel.get("IMAGE_VERSION") or rel.get("VERSION") or rel.get("VERSION_ID") or rel.get("BUILD_ID")
    sort_key = rel.get("IMAGE_ID") or rel.get("ID")
    if not good_name:
        return unlisted(".osrel has no PRETTY_NAME, IMAGE_ID, NAME or ID", ())
    if profile_title or profile > 0:  # the menu title boot.c gives a profile
        good_name = f"{good_name} ({profile_title or profile_id or f'Profile #{profile + 1}'})"
    return Entry(
        path=path,
        kind=EntryKind.TYPE2,
        name=name,
        loader_type=LoaderType.TYPE2,
        title=good_name,
        version=good_version,
        sort_key=sort_key,
        loader=f"/{path}",
        read_only=read_only,
        profile=profile,
        profile_id=profile_id,
    )


# ---------------------------------------------------------------------------------------------
# Ordering

_Ordered = TypeVar("_Ordered", str, int)  # bool is an int


def _cmp(a: _Ordered, b: _Ordered) -> int:
    return int(a > b) - int(a < b)


def _is_alpha(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z")


def _is_digit(c: str) -> bool:
    return "0" <= c <= "9"


def _valid_version_char(c: str) -> bool:
    return _is_digit(c) or _is_alpha(c) or c in "~-^."


def _strcmp_ptr(a: str | None, b: str | None) -> int:
    if a is None or b is None:
        return _cmp(a is not None, b is not None)
    return _cmp(a, b)


def _skip_invalid(s: str, i: int) -> int:
    while s[i] != "\0" and not _valid_version_char(s[i]):
        i += 1
    return i


def _run_of(s: str, i: int, pred: Callable[[str], bool]) -> int:
    while pred(s[i]):
        i += 1
    return i


def _compare_separators(sa: str, i: int, sb: str, j: int) -> tuple[int, int, int]:
    """The '-', '^' and '.' steps of the loop, in that order: the side without the separator sorts first."""
    for ch in "-^.":
        if sa[i] == ch or sb[j] == ch:
            r = _cmp(sa[i] != ch, sb[j] != ch)
            if r:
                return r, i, j
            i += 1
            j += 1
    return 0, i, j


def _compare_digits(sa: str, i: int, sb: str, j: int) -> tuple[int, int, int]:
    """A numeric segment: leading zeros skipped, then the longer number is the larger, then digit by digit."""
    i = _run_of(sa, i, lambda c: c == "0")
    j = _run_of(sb, j, lambda c: c == "0")
    ii, jj = _run_of(sa, i, _is_digit), _run_of(sb, j, _is_digit)
    return _cmp(ii - i, jj - j) or _cmp(sa[i:ii], sb[j:jj]), ii, jj


def _compare_letters(sa: str, i: int, sb: str, j: int) -> tuple[int, int, int]:
    """An alphabetical segment: the common length compared, then the longer segment is the larger."""
    ii, jj = _run_of(sa, i, _is_alpha), _run_of(sb, j, _is_alpha)
    n = min(ii - i, jj - j)
    return _cmp(sa[i : i + n], sb[j : j + n]) or _cmp(ii - i, jj - j), ii, jj


def strverscmp_improved(a: str | None, b: str | None) -> int:
    """systemd's version comparison (rpmvercmp-like), with '~' '-' '^' '.' handled specially.

    A port of ``strverscmp_improved()`` in src/fundamental/string-util-fundamental.c, its loop body
    split as the C's comments are: skip invalid characters, '~', the end, '-' '^' '.', then a numeric
    or an alphabetical segment."""
    if not a or not b:
        return _strcmp_ptr(a, b)
    sa, sb = a + "\0", b + "\0"
    i = j = 0
    while True:
        i, j = _skip_invalid(sa, i), _skip_invalid(sb, j)
        if sa[i] == "~" or sb[j] == "~":
            r = _cmp(sa[i] != "~", sb[j] != "~")
            if r:
                return r
            i += 1
            j += 1
        if sa[i] == "\0" or sb[j] == "\0":
            return _cmp(sa[i], sb[j])
        r, i, j = _compare_separators(sa, i, sb, j)
        if r:
            return r
        segment = _compare_digits if _is_digit(sa[i]) or _is_digit(sb[j]) else _compare_letters
        r, i, j = segment(sa, i, sb, j)
        if r:
            return r


def _tries(e: Entry) -> tuple[int, int]:
    if e.name.tries_left is None or e.name.tries_done is None:
        return -1, -1
    return e.name.tries_left, e.name.tries_done


def compare(a: Entry, b: Entry, sdboot_version: Version = None) -> int:
    """``boot_entry_compare()``: negative when ``a`` comes first in the menu.

    Profiles (257+): the id part compares ``id_without_profile`` where set (profiles ≥ 1), else the
    id, and then, when both are profiles ≥ 1, the profile number. On 257.10–258.2 a counted file's
    profile 1 is ordered by ``foo+3-0.efi`` and its profile 0 by ``Foo.efi`` (read at v257.13), so
    which comes first is whatever strverscmp_improved() says of the two: for ``Foo+3-0.efi`` and
    ``foo+3-0.efi`` alike profile 1 comes first (``F`` < ``f``; ``.`` sorts before a digit)."""
    sd = sdboot_mod.of(sdboot_version)
    a_left, a_done = _tries(a)
    b_left, b_done = _tries(b)
    r = _cmp(a_left == 0, b_left == 0)
    if r:
        return r
    r = _cmp(a.sort_key is None, b.sort_key is None)
    if r:
        return r
    if a.sort_key is not None and b.sort_key is not None:
        r = _cmp(a.sort_key, b.sort_key)
        if r:
            return r
        r = _strcmp_ptr(a.machine_id, b.machine_id)
        if r:
            return r
        r = -strverscmp_improved(a.version, b.version)
        if r:
            return r
        if sd.profile_sorts_after_version:
            r = _cmp(a.profile, b.profile)
            if r:
                return r
    a_key, b_key = a.id_without_profile(sd), b.id_without_profile(sd)
    r = -strverscmp_improved(a_key or a.entry_id(sd), b_key or b.entry_id(sd))
    if r:
        return r
    if a_key is not None and b_key is not None:
        r = _cmp(a.profile, b.profile)
        if r:
            return r
    if a_left < 0 or b_left < 0:
        return 0
    r = -_cmp(a_left, b_left)
    if r:
        return r
    return _cmp(a_done, b_done)


def menu_order(entries: list[Entry], sdboot_version: Version = None) -> list[Entry]:
    """Listed entries in boot-menu order: Type #2 first, then Type #1 (the scan order), a stable
    sort (systemd-boot's ``sort_pointer_array()`` is an insertion sort). A UKI's profile entries
    (``Snapshot.profiles``, when given) are scanned right after their file, lowest profile first."""
    listed = [e for e in entries if e.listed]
    first: dict[str, int] = {}
    for i, e in enumerate(listed):
        first.setdefault(e.path, i)
    type2 = sorted((e for e in listed if e.kind is EntryKind.TYPE2), key=lambda e: (first[e.path], e.profile))
    scan = type2 + [e for e in listed if e.kind is EntryKind.TYPE1]

    sd = sdboot_mod.of(sdboot_version)

    def cmp(x: Entry, y: Entry) -> int:
        return compare(x, y, sd)

    return sorted(scan, key=cmp_to_key(cmp))


def first_auto_boot(order: list[Entry], sdboot_version: Version = None) -> Entry | None:
    """The entry "first entry in menu order" boots: the first one, or where
    ``SdBoot.fallback_skips_profiles`` holds, the first with profile 0 (None: the menu waits)."""
    sd = sdboot_mod.of(sdboot_version)
    for e in order:
        if e.may_auto_boot or not sd.fallback_skips_profiles:
            return e
    return None


def type2_role_order(entries: list[Entry], sdboot_version: Version = None) -> list[Entry]:
    """The role UKIs of EFI/Linux in menu order, as the fallback chain sees them: listed, profile 0,
    not bad (bad ones sort last anyway). Their order comes from each file's ``.osrel``, which
    bootkeeper cannot rewrite; :func:`out_of_role_order` says whether it is the role order."""
    return [
        e
        for e in menu_order(entries, sdboot_version)
        if e.kind is EntryKind.TYPE2 and e.profile == 0 and e.role is not None and e.state is not EntryState.BAD
    ]


def out_of_role_order(ukis: list[Entry]) -> list[tuple[Entry, Entry]]:
    """Every pair (earlier, later) in ``ukis`` where a later role boots first: active, passive,
    recovery, statereset is the order the fallback chain needs."""
    return [
        (a, b)
        for i, a in enumerate(ukis)
        for b in ukis[i + 1 :]
        if a.role is not None and b.role is not None and a.role.rank > b.role.rank
    ]
