"""Typed exceptions. Each carries a one-line user message and the exit code the CLI uses.

Exit codes (documented in README.md):
  0 success, 1 a refusal (RefusedError: upgrade's gate) or unexpected failure, 2 usage error,
  3 nothing to act on / state not determinable,
  4 malformed input (a file or value at fault), 5 ESP busy (another run holds the lock),
  6 I/O or external command failure (remount, rename, fsync).
"""

from __future__ import annotations


class BootkeeperError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class RefusedError(BootkeeperError):
    """A check refused the request before anything was changed (``upgrade``'s gate); the message gives
    one reason per thing at fault."""

    exit_code = 1


class UsageError(BootkeeperError):
    exit_code = 2


class NotApplicableError(BootkeeperError):
    """The request cannot be carried out because the state does not call for it."""

    exit_code = 3


class ParseError(BootkeeperError):
    """Malformed input: the message names the file (and line or key) and what was expected."""

    exit_code = 4


class ConfigError(ParseError):
    pass


class EspError(ParseError):
    """The directory is not a usable ESP, or its contents contradict each other."""


class BusyError(BootkeeperError):
    exit_code = 5


class StoreIOError(BootkeeperError):
    exit_code = 6


class CommandError(StoreIOError):
    """An external command failed; the message names the command and its exit status."""
