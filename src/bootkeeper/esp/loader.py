"""``loader/loader.conf``: read as systemd-boot reads it, rewrite by touching only ``default``.

systemd-boot takes the last ``default`` line; its value is a glob pattern matched against entry
ids after the pattern is folded to lower case (``@saved`` means the LoaderEntryLastBooted
variable). ``preferred`` (260, 450e0dce02) is read the same way; where the boot loader has it, it
comes before ``default`` and skips entries with no tries left.
"""

from __future__ import annotations

from dataclasses import dataclass

from bootkeeper.esp import counter as counter_mod
from bootkeeper.esp import edit
from bootkeeper.esp.keyvalue import KeyValue, split_lines

KNOWN_KEYS = frozenset(
    {
        "timeout",
        "default",
        "editor",
        "auto-entries",
        "auto-firmware",
        "auto-poweroff",
        "auto-reboot",
        "beep",
        "reboot-for-bitlocker",
        "reboot-on-error",
        "secure-boot-enroll",
        "secure-boot-enroll-action",
        "console-mode",
        "random-seed-mode",
        "preferred",
    }
)


@dataclass(frozen=True)
class LoaderConf:
    text: str
    default: str | None  # the value of the last default line, as written
    default_line: int | None
    timeout: str | None
    problems: tuple[str, ...] = ()
    preferred: str | None = None  # the value of the last preferred line, as written
    preferred_line: int | None = None

    @property
    def default_pattern(self) -> str | None:
        """The pattern systemd-boot matches: lower-cased; ``@saved`` kept as is."""
        if self.default is None:
            return None
        if self.default.startswith("@") and self.default.lower() != "@saved":
            return None  # systemd-boot: "Unsupported special entry identifier, ignoring"
        return self.default.lower()

    @property
    def preferred_pattern(self) -> str | None:
        if self.preferred is None:
            return None
        if self.preferred.startswith("@") and self.preferred.lower() != "@saved":
            return None
        return self.preferred.lower()


def parse(text: str) -> LoaderConf:
    default: str | None = None
    default_line: int | None = None
    timeout: str | None = None
    preferred: str | None = None
    preferred_line: int | None = None
    problems: list[str] = []
    for item in split_lines(text, " \t"):
        if not isinstance(item, KeyValue):
            problems.append(f"line {item.lineno}: no value after '{item.text[:40]}' (ignored)")
            continue
        if item.key == "default":
            default, default_line = item.value, item.lineno
        elif item.key == "preferred":
            preferred, preferred_line = item.value, item.lineno
        elif item.key == "timeout":
            timeout = item.value
        elif item.key not in KNOWN_KEYS:
            problems.append(f"line {item.lineno}: unknown key '{item.key[:40]}' (ignored)")
    return LoaderConf(
        text=text,
        default=default,
        default_line=default_line,
        timeout=timeout,
        problems=tuple(problems),
        preferred=preferred,
        preferred_line=preferred_line,
    )


def set_key(text: str, key: str, value: str | None) -> str:
    """Return ``text`` with every ``KEY`` line replaced by one ``KEY VALUE`` line (at the place
    of the last one; appended when there is none), or removed when ``value`` is None
    (edit.replace_key). Nothing else changes."""
    return edit.replace_key(text, key, value, len)


def set_default(text: str, value: str | None) -> str:
    return set_key(text, "default", value)


def default_after_rename(conf: LoaderConf, old_name: str, new_name: str) -> tuple[bool, str | None]:
    """The seed's ``sed`` fix-up, done by parsing: if ``default`` names the renamed entry file
    literally (with or without a counter), return ``(True, value)`` with the value it should have
    now — or ``(True, None)`` to drop the line when the entry became bad, since a default that
    matches a bad entry makes systemd-boot boot it anyway. ``(False, None)``: leave it alone.

    Only a literal name is rewritten: a glob is the user's choice and may be meant to match many.
    """
    if conf.default is None or any(c in conf.default for c in "*?[\\"):
        return False, None
    for suffix in (".conf", ".efi"):
        if old_name.lower().endswith(suffix):
            break
    else:
        return False, None
    cur = counter_mod.parse(conf.default, suffix)
    old = counter_mod.parse(old_name, suffix)
    if not cur.same_entry(old):
        return False, None
    if counter_mod.parse(new_name, suffix).state is counter_mod.EntryState.BAD:
        return True, None
    if conf.default == new_name:
        return False, None
    return True, new_name
