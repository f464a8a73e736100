"""How text bootkeeper did not write is shown: the ONE escaping rule for what reaches a terminal, the
MOTD or the journal.

Names and fields come from the ESP (entry and image file names, a UKI's ``.osrel``), from images
(extension-release), from efivars and from the network. Each is bytes until it is shown; when it is
shown it goes through :func:`shown`, which writes

- ``\\`` as ``\\\\`` (so what follows is unambiguous),
- a byte that is not UTF-8 (``os.fsdecode``'s surrogateescape, U+DC80..U+DCFF) as ``\\xNN``,
- any other lone surrogate as ``\\uNNNN``,
- control characters (C0 with tab, newline, carriage return and ESC; DEL; C1) as ``\\xNN``,
  the line and paragraph separators U+2028/U+2029 as ``\\uNNNN``,
- the bidirectional controls (U+061C, U+200E/F, U+202A..U+202E, U+2066..U+2069) as ``\\uNNNN``,

and leaves every other character as it is. A name can then neither split a line (forge a ``status``
line, a MOTD line, a journal message) nor move the cursor, clear the screen or reorder what is shown,
and printing it never fails for want of UTF-8. It is the escaping the activation log has used since it
was written, with the bidi controls added (``sysext/activate.py``'s ``printable`` is this function).

One line of output is one unit: a line built from trusted text and untrusted names is escaped as a
whole (:func:`shown_line`: the same escapes, the line's own backslashes kept), table cells one by one,
error messages as the one line they are, a ``lint`` finding line by line. JSON keeps
the true value (``json.dumps`` escapes control characters itself) except that a string holding bytes
that are not UTF-8 is given in this escaped form (:func:`json_safe`): JSON has no way to carry them.

:func:`guard_streams` is the backstop for what no caller escaped: stdout and stderr of the command line
write every control character except newline and tab, every lone surrogate and every bidi control
escaped (backslashes are left alone there), so no verb can clear a terminal or die on a name.
"""

from __future__ import annotations

import os
import sys
import unicodedata
from collections.abc import Iterable
from typing import TextIO

BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escape(ch: str) -> str | None:
    """``ch`` escaped, or None when it is shown as it is."""
    o = ord(ch)
    if 0xDC80 <= o <= 0xDCFF:  # a byte that is not UTF-8 (os.listdir's / os.fsdecode's surrogateescape)
        return f"\\x{o - 0xDC00:02x}"
    if ch in BIDI:
        return f"\\u{o:04x}"
    cat = unicodedata.category(ch)
    if cat == "Cs":
        return f"\\u{o:04x}"
    if cat in ("Cc", "Zl", "Zp"):
        return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"
    return None


def text_of(value: object) -> str:
    """``value`` as a str: bytes and byte paths decoded with surrogateescape (nothing is lost)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, os.PathLike):
        return os.fsdecode(value)
    return value if isinstance(value, str) else str(value)


def shown(value: object) -> str:
    """``value`` as it may be shown on one line: see the module's rule."""
    text = text_of(value)
    if text.isprintable() and "\\" not in text and not BIDI.intersection(text):
        return text  # the common case, fast: nothing to escape
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        else:
            out.append(_escape(ch) or ch)
    return "".join(out)


def shown_line(text: object) -> str:
    """One line of output composed of bootkeeper's own words and untrusted names (a ``status`` line, a
    table cell, an error message): escaped like :func:`shown` but with backslashes left alone, since
    the line's own (an EFI path such as ``\\loader\\entries\\…``) are meant. A newline in it can only
    have come from a name, and is escaped."""
    s = text_of(text)
    if s.isprintable() and not BIDI.intersection(s):
        return s
    return "".join(_escape(ch) or ch for ch in s)


def echo(text: object = "", err: bool = False) -> None:
    """``click.echo`` of one line (or of nothing) as :func:`shown_line` shows it."""
    import click

    click.echo(shown_line("" if text is None else text), err=err)


def shown_lines(text: str) -> str:
    """The backstop of :func:`guard_streams`: like :func:`shown` but newlines and tabs stay and
    backslashes are not doubled (the text was meant as lines; only what no caller escaped is)."""
    if text.isprintable() and not BIDI.intersection(text) and "\n" not in text and "\t" not in text:
        return text
    return "".join(ch if ch in "\n\t" else (_escape(ch) or ch) for ch in text)


def json_safe(obj: object) -> object:
    """``obj`` with every string that holds bytes that are not UTF-8 (lone surrogates) in its
    :func:`shown` form; everything else as it is (JSON escapes control characters itself)."""
    if isinstance(obj, str):
        return shown(obj) if _has_surrogate(obj) else obj
    if isinstance(obj, dict):
        return {json_safe(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class Guarded:
    """A text stream that writes through :func:`shown_lines` (see :func:`guard_streams`)."""

    def __init__(self, raw: TextIO) -> None:
        self.raw = raw

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self.raw.write(shown_lines(s))
        return len(s)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self.raw.flush()

    def isatty(self) -> bool:
        return self.raw.isatty()

    def __getattr__(self, name: str) -> object:
        return getattr(self.raw, name)


def guard_streams() -> None:
    """stdout and stderr escape what a caller did not (the command line's ``main`` calls this once)."""
    if not isinstance(sys.stdout, Guarded) and sys.stdout is not None:
        sys.stdout = Guarded(sys.stdout)
    if not isinstance(sys.stderr, Guarded) and sys.stderr is not None:
        sys.stderr = Guarded(sys.stderr)


def raw_stream(stream: TextIO) -> TextIO:
    """The stream under the guard: for output bootkeeper itself styles (rich's tables, ``demo``'s
    headings), whose cells are escaped already."""
    return stream.raw if isinstance(stream, Guarded) else stream
