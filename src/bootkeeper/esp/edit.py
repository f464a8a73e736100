"""Minimal edits of Type #1 entry text: change one key's line, leave every other byte alone."""

from __future__ import annotations

import re


def set_key(text: str, key: str, value: str) -> str:
    """Set ``key`` to ``value``: rewrite its last line in place (dropping earlier duplicates),
    or insert it after the ``title`` line (else at the top)."""
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"invalid value for {key}: {value!r}")
    pat = re.compile(rf"^[ \t]*{re.escape(key)}([ \t]|$)")
    lines = text.splitlines(keepends=True)
    idx = [i for i, line in enumerate(lines) if pat.match(line)]
    if idx:
        out = []
        for i, line in enumerate(lines):
            if i in idx[:-1]:
                continue
            if i == idx[-1]:
                ending = line[len(line.rstrip("\r\n")) :] or "\n"
                out.append(f"{key} {value}{ending}")
            else:
                out.append(line)
        return "".join(out)
    title = [i for i, line in enumerate(lines) if re.match(r"^[ \t]*title([ \t]|$)", line)]
    at = title[-1] + 1 if title else 0
    if at > 0 and not lines[at - 1].endswith("\n"):
        lines[at - 1] += "\n"
    lines.insert(at, f"{key} {value}\n")
    return "".join(lines)


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
