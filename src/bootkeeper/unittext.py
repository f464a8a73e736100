"""Text bootkeeper writes into systemd unit files, drop-ins, generator output and the cloud-config that
carries them: every value that comes from the config or the command line goes through one of these
functions, so that no value can end its line, start a directive of its own, or be read by systemd as
anything but itself (bootkeeper.yaml(5), DESCRIPTION: values that reach the units).

How systemd reads a unit file (systemd.syntax(7), systemd.service(5) "Command lines", systemd.exec(5)
``Environment=``; and what the host's systemd 252 and trixie's 257 make of our files, read back from the
manager's own parse by tests/assess/test_unit_injection.py):

* a file is read line by line; a newline always ends a setting, and a line ending in a backslash is
  joined with the next one. So no raw control character is ever written: inside quotes a C escape
  (``\\n``, ``\\x01``, ``\\u2028``) stands for it, and outside quotes a value holding one is refused
  (:class:`UnitTextError`);
* ``%`` starts a specifier in most settings (``%h``, ``%n``, ...): a literal one is ``%%``;
* ``ExecStart=`` and the other command lines split words at whitespace, take single or double quotes
  and C escapes inside them, end a command at an unquoted ``;`` word, and replace ``$NAME`` and
  ``${NAME}`` with the environment when the command runs: a literal ``$`` is ``$$``;
* ``Environment=`` splits assignments at whitespace and takes the same quotes and C escapes, but
  replaces no variables (a ``$`` is itself).

The checks of what a config value may contain are config.py's (and :func:`unit_name_problem`, which it
uses); these are the second layer, which holds even for a value that got past them.
"""

from __future__ import annotations

import json

from bootkeeper.errors import ConfigError

# systemd src/basic/unit-name.h (v252, v257): UNIT_NAME_MAX is 256 with the NUL; VALID_CHARS of
# unit-name.c; a unit type suffix from unit-def.c's unit_type_table (slice is left out: a slice
# cannot decide a boot). assess/generator.py restates them (it runs alone, python3 -IS) and
# tests/assess/test_unit_injection.py checks that both agree.
UNIT_NAME_MAX = 255
UNIT_TYPES = ("service", "socket", "target", "mount", "path", "timer", "swap", "device", "automount", "scope")
_UNIT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:-_.\\")
# A word needing no quotes on an Exec line or in Environment= (and a plain YAML scalar): none of
# these is special to systemd's word splitting, its specifiers, its variables or YAML.
_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/._-:+=,@")
_C_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


class UnitTextError(ConfigError):
    """A value that cannot be written into a unit file as itself (a control character where no quotes
    are allowed, a NUL anywhere)."""


def with_unit_suffix(name: str) -> str:
    """``k3s`` -> ``k3s.service``; a name that already ends in a unit type is kept (systemctl's rule:
    systemd src/basic/unit-name.c unit_name_mangle_with_suffix(); assess/generator.py's too)."""
    return name if name.endswith(tuple(f".{t}" for t in UNIT_TYPES)) else name + ".service"


def unit_name_problem(name: str) -> str | None:
    """Why ``name`` (with its type suffix) is not a unit name as systemd's unit_name_is_valid() reads
    one, or None: at most 255 characters, a prefix of letters, digits and ``:-_.\\``, at most one
    ``@`` (a template or an instance), and a unit type suffix."""
    if len(name) > UNIT_NAME_MAX:
        return f"longer than {UNIT_NAME_MAX} characters"
    stem, dot, suffix = name.rpartition(".")
    if not dot or suffix not in UNIT_TYPES:
        return f"no unit type suffix ({', '.join('.' + t for t in UNIT_TYPES)})"
    prefix, at, instance = stem.partition("@")
    if not prefix or not set(prefix) <= _UNIT_CHARS or (at and not set(instance) <= _UNIT_CHARS):
        return "letters, digits, ':-_.\\' and at most one '@' before the type suffix"
    return None


def printable(value: str) -> bool:
    """No control character, no line or paragraph separator, no other non-printable character (the
    ASCII space is fine): what a single line of a unit file may hold."""
    return value.replace(" ", "").isprintable()


def _escape(value: str, *, dollar: bool = False, quoted: bool = True) -> str:
    """The inside of a double-quoted word (``quoted``; else a comment's text): backslash, and with
    ``quoted`` the quote and ``%``, and with ``dollar`` also ``$``, escaped; every
    non-printable character as a C escape systemd's cunescape() reads back (``\\xNN`` below 0x80,
    ``\\uNNNN``/``\\UNNNNNNNN`` above: one code point, never a lone byte that is not UTF-8)."""
    out = []
    for c in value:
        if c == "\0" and quoted:
            raise UnitTextError(f"{value!r}: a NUL cannot be written into a unit file")
        if c == "\\" or (c == '"' and quoted):
            out.append("\\" + c)
        elif c == "%" and quoted:
            out.append("%%")
        elif c == "$" and dollar:
            out.append("$$")
        elif c == " " or c.isprintable():
            out.append(c)
        elif c in _C_ESCAPES:
            out.append(_C_ESCAPES[c])
        elif ord(c) < 0x80:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) <= 0xFFFF:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return "".join(out)


def exec_arg(value: str) -> str:
    """One word of an ``Exec*=`` command line: the command gets exactly ``value`` as one argument."""
    if value and set(value) <= _BARE:
        return value
    return '"' + _escape(value, dollar=True) + '"'


def exec_line(argv: list[str]) -> str:
    """A whole command line. ``argv[0]`` is an absolute path (so it never starts with a ``-@:+!``
    prefix) without ``$``: the program to run may not be a variable (systemd.service(5), "Command
    lines"), and what ``$$`` would become in the path itself is left unguessed: refused."""
    if not argv or not argv[0].startswith("/") or "$" in argv[0]:
        raise UnitTextError(f"{argv[0] if argv else ''!r}: a command must start with an absolute path without '$'")
    return " ".join(exec_arg(a) for a in argv)


def env_assignment(name: str, value: str) -> str:
    """The value of an ``Environment=`` line setting ``name`` to exactly ``value``."""
    if not name or not name.replace("_", "a").isalnum() or not name.isascii() or name[0].isdigit():
        raise UnitTextError(f"{name!r} is not an environment variable name")
    text = f"{name}={value}"
    if set(text) <= _BARE:
        return text
    return '"' + _escape(text) + '"'


def setting(key: str, value: str) -> str:
    """``key=value`` for a setting that takes its value as it is, without quotes (``TimeoutSec=``): a
    value that would end the line or be joined with the next one is refused."""
    if not printable(value) or value.endswith("\\") or value != value.strip():
        raise UnitTextError(f"{key}={value!r} cannot be written into a unit file as it is")
    return f"{key}={value.replace('%', '%%')}"


def comment(text: str) -> str:
    """Text for a ``#`` comment line: one line whatever ``text`` holds (backslashes doubled, so none
    ends the line either)."""
    return _escape(text, quoted=False)


def yaml_scalar(value: str) -> str:
    """A YAML scalar that reads back as exactly the string ``value``: plain (as a person writes it) when
    it starts with a letter or '/', holds a character other than letters (so it is never a YAML 1.1
    ``yes``/``null``), has only harmless characters and no ``: ``; else double-quoted (JSON's string
    syntax is YAML's double-quoted style, escapes included)."""
    if (
        value[:1].isascii()
        and (value[:1].isalpha() or value[:1] == "/")
        and not value.isalpha()
        and set(value) <= _BARE | {" ", "\\"}
        and ": " not in value
        and value[-1] not in ": "
    ):
        return value
    return json.dumps(value)
