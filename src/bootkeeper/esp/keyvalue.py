"""Line splitting exactly as systemd-boot's ``line_get_key_value()`` does it.

Lines end at LF or CR; leading and trailing blanks go; ``#`` lines and lines without a
separator are skipped; the value starts after the run of separators; a value that starts with
``"`` loses its surrounding quotes if the line ends with ``"``. A NUL byte ends the text, as the
boot loader handles it as a C string.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class KeyValue:
    lineno: int
    key: str
    value: str


@dataclass(frozen=True)
class Junk:
    lineno: int
    text: str


def split_lines(text: str, sep: str) -> Iterator[KeyValue | Junk]:
    nul = text.find("\0")
    if nul >= 0:
        text = text[:nul]
    lineno = 0
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        lineno += 1
        line = raw.strip(" \t")
        if not line or line.startswith("#"):
            continue
        i = 0
        while i < len(line) and line[i] not in sep:
            i += 1
        if i == len(line):
            yield Junk(lineno, line)
            continue
        key = line[:i]
        j = i
        while j < len(line) and line[j] in sep:
            j += 1
        value = line[j:]
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        elif value == '"':
            value = value[1:]
        yield KeyValue(lineno, key, value)
