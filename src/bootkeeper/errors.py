"""Typed exceptions, named for what failed; each carries a one-line user message and its exit code.

:data:`EXIT_CODES` is the one table of exit codes: the CLI exits with the code of the class it
caught, and bootkeeper(8)'s EXIT STATUS is generated from this one by scripts/manpages.py
(``tests/cli/test_exit_codes.py`` compares them, and drives every verb's error paths). The library never
calls ``sys.exit``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    REFUSED = 1
    USAGE = 2
    NOTHING_TO_DO = 3
    MALFORMED = 4
    BUSY = 5
    IO = 6
    UNREADABLE = 7
    COMMAND = 8
    INTERNAL = 70  # sysexits.h EX_SOFTWARE: a bug, not the input


class BootkeeperError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user. Raise a subclass: the class says
    what failed, and so the exit code."""

    exit_code = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class RefusedError(BootkeeperError):
    """A check said no and nothing was changed: an image failed validation, ``sysext install`` or
    ``upgrade``'s gate refused, ``lint`` found an error. The message gives one reason per thing at fault."""

    exit_code = ExitCode.REFUSED


class UsageError(BootkeeperError):
    """A bad option or argument, or a combination of them that makes no sense."""

    exit_code = ExitCode.USAGE


class NotApplicableError(BootkeeperError):
    """Nothing to act on: the state does not call for the request (not booted with boot counting,
    an entry without a counter, no entry matches)."""

    exit_code = ExitCode.NOTHING_TO_DO


class InputError(BootkeeperError):
    """Something the request reads is at fault: catch this where any bad input (unreadable or
    malformed) means "skip it" or "refuse it"; raise one of its two subclasses."""


class MalformedError(InputError):
    """Input that was read but is wrong: the message names the file (and line, key or offset) and
    what was expected."""

    exit_code = ExitCode.MALFORMED


class ConfigError(MalformedError):
    """A configuration file or value at fault."""


class EspError(MalformedError):
    """The directory is not a usable ESP, or its contents contradict each other."""


class BusyError(BootkeeperError):
    """Another bootkeeper run holds the lock."""

    exit_code = ExitCode.BUSY


class WriteError(BootkeeperError):
    """Changing the disk failed: write, rename, fsync, delete, mkdir (a remount is a :class:`CommandError`)."""

    exit_code = ExitCode.IO


class UnreadableError(InputError):
    """An input could not be read at all: missing, permission denied, a directory where a file was
    expected (or the other way round)."""

    exit_code = ExitCode.UNREADABLE


class CommandError(BootkeeperError):
    """An external command is missing or failed; the message names the command and its exit status."""

    exit_code = ExitCode.COMMAND


class Interrupted(BaseException):
    """SIGTERM, SIGINT or SIGHUP arrived while the ESP was writable (:mod:`bootkeeper.interrupt`): a
    ``BaseException`` like ``KeyboardInterrupt``, so no ``except Exception`` that skips a bad file
    swallows it while every ``finally`` (the remount back to ro) runs. The CLI ends the process by
    the same signal."""

    def __init__(self, signo: int, name: str) -> None:
        super().__init__(f"stopped by {name}")
        self.signo = signo
        self.name = name


# The table bootkeeper(8)'s EXIT STATUS mirrors: code -> (the class that exits with it, what it means).
EXIT_CODES: dict[ExitCode, tuple[str, str]] = {
    ExitCode.OK: ("", "success; also already in the requested state, recovery not blessed by design"),
    ExitCode.REFUSED: (
        "RefusedError",
        "refused: an image failed validation, install or upgrade refused, lint found an error; nothing changed",
    ),
    ExitCode.USAGE: ("UsageError", "usage error: a bad option or argument"),
    ExitCode.NOTHING_TO_DO: (
        "NotApplicableError",
        "nothing to act on: not booted with boot counting, no counter, no such entry",
    ),
    ExitCode.MALFORMED: (
        "MalformedError",
        "malformed input: a file, line, key or value at fault (named in the message); not an ESP",
    ),
    ExitCode.BUSY: ("BusyError", "busy: another bootkeeper run holds the lock"),
    ExitCode.IO: ("WriteError", "I/O failure changing the disk: write, rename, fsync, delete, mkdir"),
    ExitCode.UNREADABLE: (
        "UnreadableError",
        "unreadable input: a file or folder missing, not permitted, or of the wrong kind",
    ),
    ExitCode.COMMAND: (
        "CommandError",
        "an external command is missing or failed: mount for a remount, bootctl, systemd-sysext, veritysetup…",
    ),
    ExitCode.INTERNAL: (
        "",
        "internal error: a bug in bootkeeper (the message names the exception; --debug shows the traceback)",
    ),
}
