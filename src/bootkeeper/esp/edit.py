"""Minimal edits of Type #1 entry text: change one key's line, leave every other byte alone."""

from __future__ import annotations

import re
from collections.abc import Callable

# Lines as systemd-boot's line_get_key_value() ends them: at LF or CR (not at the form feeds,
# vertical tabs and Unicode separators str.splitlines() also splits at).
_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def _is_key_line(line: str, key: str) -> bool:
    """Whether systemd-boot reads ``line`` as a ``key`` line (line_get_key_value(): blanks around
    the line go, the key runs to the first blank, a line without a value is skipped)."""
    s = line.rstrip("\r\n").strip(" \t")
    return s.startswith(key) and len(s) > len(key) and s[len(key)] in " \t"


def replace_key(text: str, key: str, value: str | None, insert_at: Callable[[list[str]], int]) -> str:
    """The one "replace the last key line" rule, for entries and loader.conf alike: every line
    systemd-boot reads as ``key`` goes, and ``key value`` takes the place of the last one (the one
    systemd-boot uses); without one it goes in at line ``insert_at(lines)``. ``value`` None removes
    them all. Nothing from a NUL on is touched (systemd-boot reads the text as a C string), and no
    other byte changes."""
    if value is not None and (any(c in value for c in "\r\n\0") or not value.strip(" \t")):
        raise ValueError(f"invalid {key} value {value!r}")
    nul = text.find("\0")
    live, rest = (text, "") if nul < 0 else (text[:nul], text[nul:])
    lines = _LINES.findall(live)
    idx = [i for i, line in enumerate(lines) if _is_key_line(line, key)]
    if not idx:
        if value is None:
            return text
        at = insert_at(lines)
        if at > 0 and not lines[at - 1].endswith(("\r", "\n")):
            lines[at - 1] += "\n"
        lines.insert(at, f"{key} {value}\n")
        return "".join(lines) + rest
    out: list[str] = []
    for i, line in enumerate(lines):
        if i not in idx:
            out.append(line)
        elif i == idx[-1] and value is not None:
            ending = line[len(line.rstrip("\r\n")) :] or "\n"
            out.append(f"{key} {value}{ending}")
    return "".join(out) + rest


def _after_title(lines: list[str]) -> int:
    title = [i for i, line in enumerate(lines) if _is_key_line(line, "title")]
    return title[-1] + 1 if title else 0


def set_key(text: str, key: str, value: str) -> str:
    """Set ``key`` of a Type #1 entry to ``value``: its last line rewritten in place (earlier
    duplicates dropped), or a line after the ``title`` line (else at the top)."""
    return replace_key(text, key, value, _after_title)


def rename_key(text: str, old: str, new: str) -> str:
    """Rename the key of every ``old`` line to ``new``, where systemd-boot would read it as that key
    (``line_get_key_value()``: lines end at LF or CR, leading blanks are skipped, the key runs to the
    first blank and a value follows; nothing after a NUL is read). The value, the blanks around it,
    the line ending and every other byte stay as they are."""
    for k in (old, new):
        if not k or any(c in k for c in " \t\r\n\0#"):
            raise ValueError(f"not an entry key: {k!r}")
    nul = text.find("\0")
    live, rest = (text, "") if nul < 0 else (text[:nul], text[nul:])
    pat = re.compile(rf"(?<![^\r\n])([ \t]*){re.escape(old)}(?=[ \t]+[^ \t\r\n])")
    return pat.sub(lambda m: m.group(1) + new, live) + rest
