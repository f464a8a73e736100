"""Boot counting file names as systemd-boot parses them (``name+LEFT-DONE.conf|.efi``).

Follows ``boot_entry_parse_tries()`` of systemd-boot (src/boot/boot.c) and the Automatic Boot
Assessment document: the counter is introduced by the *last* ``+`` of the file name; LEFT is one
or more decimal digits, ``-DONE`` is optional (missing means 0); what follows must equal the
suffix, compared case-insensitively. A counter that does not parse means "not counted", never an
error. Values above INT_MAX are not counted either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

INT_MAX = 2**31 - 1
UINT64_MAX = 2**64 - 1


class EntryState(StrEnum):
    GOOD = "good"  # no counter: blessed, or never counted
    INDETERMINATE = "indeterminate"  # counted, tries left
    BAD = "bad"  # counted, no tries left


_DIGITS = re.compile(r"[0-9]+")


# UINT64_MAX has 20 decimal digits. Leading zeros do not count: parse_number16() multiplies its way
# through them without overflowing, so "+0003" is 3.
_MAX_SIGNIFICANT_DIGITS = len(str(UINT64_MAX))


def _parse_number(s: str, pos: int) -> tuple[int, int] | None:
    m = _DIGITS.match(s, pos)
    if m is None:
        return None
    digits = m.group(0).lstrip("0") or "0"
    # Checked before int(): beyond 4300 digits int() raises ValueError (CPython's limit on
    # str-to-int conversion), and a counter that long overflows anyway.
    if len(digits) > _MAX_SIGNIFICANT_DIGITS:
        return None
    value = int(digits)
    if value > UINT64_MAX:  # parse_number16() fails on overflow
        return None
    return value, m.end()


@dataclass(frozen=True)
class CountedName:
    """A file name split as systemd-boot splits it."""

    name: str
    suffix: str  # the suffix the caller looks for, lower case: ".conf" or ".efi"
    prefix: str | None = None  # text before the counter's "+", when counted
    tail: str | None = None  # the original suffix text after the counter, when counted
    tries_left: int | None = None
    tries_done: int | None = None

    @property
    def counted(self) -> bool:
        return self.tries_left is not None

    @property
    def state(self) -> EntryState:
        if self.tries_left is None:
            return EntryState.GOOD
        return EntryState.BAD if self.tries_left == 0 else EntryState.INDETERMINATE

    @property
    def base(self) -> str:
        """The name without the counter (what a good bless renames to)."""
        if self.prefix is None or self.tail is None:
            return self.name
        return self.prefix + self.tail

    @property
    def entry_key(self) -> str:
        """What names the entry whatever its counter: ``active+2-1.conf``, ``active+0-3.conf`` and
        ``active.conf`` are one entry (a rename by systemd-boot or a bless), ``ACTIVE.conf`` too (vfat
        folds case, and the suffix is compared without case). The one rule for "the same entry with
        and without a counter"."""
        return self.base.lower()

    def same_entry(self, other: CountedName) -> bool:
        return self.entry_key == other.entry_key

    @property
    def stem(self) -> str:
        """The base name without its suffix, e.g. ``active`` for ``active+2-1.conf``."""
        b = self.base
        if b.lower().endswith(self.suffix):
            return b[: len(b) - len(self.suffix)]
        return b

    def next_name(self) -> str | None:
        """What systemd-boot renames the file to before booting it, or None if not counted.

        The boot loader writes its own lower-case suffix, and never lets LEFT go below zero.
        """
        if self.prefix is None or self.tries_left is None or self.tries_done is None:
            return None
        left = max(self.tries_left - 1, 0)
        done = min(self.tries_done + 1, INT_MAX)
        return f"{self.prefix}+{left}-{done}{self.suffix}"

    def bad_name(self) -> str | None:
        """What systemd-bless-boot renames to for ``bad``: ``+0-DONE``."""
        if self.prefix is None or self.tail is None or self.tries_done is None:
            return None
        return f"{self.prefix}+0-{self.tries_done}{self.tail}"


def parse(name: str, suffix: str) -> CountedName:
    """Split ``name``; ``suffix`` is ``.conf`` for Type #1 entries, ``.efi`` for Type #2."""
    suffix = suffix.lower()
    plus = name.rfind("+")
    if plus < 0:
        return CountedName(name=name, suffix=suffix)
    left = _parse_number(name, plus + 1)
    if left is None or left[0] > INT_MAX:
        return CountedName(name=name, suffix=suffix)
    tries_left, pos = left
    tries_done = 0
    if pos < len(name) and name[pos] == "-":
        done = _parse_number(name, pos + 1)
        if done is None or done[0] > INT_MAX:
            return CountedName(name=name, suffix=suffix)
        tries_done, pos = done
    rest = name[pos:]
    if rest.lower() != suffix:  # a counter in the middle of the name does not count
        return CountedName(name=name, suffix=suffix)
    return CountedName(
        name=name,
        suffix=suffix,
        prefix=name[:plus],
        tail=rest,
        tries_left=tries_left,
        tries_done=tries_done,
    )


def format_name(stem: str, suffix: str, tries_left: int | None, tries_done: int | None = None) -> str:
    """Build ``stem+LEFT[-DONE]suffix`` (or ``stem+suffix`` when ``tries_left`` is None)."""
    if tries_left is None:
        return stem + suffix
    if tries_left < 0 or tries_left > INT_MAX or (tries_done is not None and not 0 <= tries_done <= INT_MAX):
        raise ValueError(f"counter out of range: +{tries_left}-{tries_done}")
    if "+" in suffix:
        raise ValueError(f"suffix {suffix!r} may not contain '+'")
    done = "" if tries_done is None else f"-{tries_done}"
    return f"{stem}+{tries_left}{done}{suffix}"
