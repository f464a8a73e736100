"""The statereset hand-back count on the ESP: ``loader/bootkeeper-handbacks``.

How many times a good statereset boot handed the node back to active, passive and recovery since the
last good active or passive boot (assess/bless.py acts on it; ``boot_assessment.handbacks`` is the
budget). It lives on the ESP because nothing else survives what it counts: a statereset wipes the
persistent partition (the boot history with it), and an EFI variable would be firmware state that a
copy of the ESP (``simulate --esp``, a scratch ESP) does not carry. The name is one that neither
systemd-boot nor systemd-stub loads: systemd-boot reads ``loader/loader.conf``, ``loader/entries/*.conf``,
``loader/random-seed``, ``loader/keys/`` and ``EFI/Linux/*.efi``; the stub ``loader/credentials/*.cred``,
``loader/addons/*.addon.efi`` and a UKI's ``.extra.d/``; a plain file in ``loader/`` without a suffix is
none of those (booted with it in place on 252.39, 257.13 and 262.1: tests/vm/test_vm_bootcount.py).

The format is os-release-like text, one key::

    # bootkeeper: statereset hand-backs since the last good active or passive boot
    handbacks=1

Written crash-safely (``EspStore.write_atomic``) and read with a size cap; anything else in it is
malformed, and a malformed count is read as a spent budget (:func:`read`): a node never hands back more
often than its budget because a file was damaged.
"""

from __future__ import annotations

from dataclasses import dataclass

from bootkeeper import fsutil
from bootkeeper.errors import MalformedError, UnreadableError
from bootkeeper.esp.store import EspStore

HANDBACKS = "loader/bootkeeper-handbacks"
KEY = "handbacks"
MAX_SIZE = 1024
MAX_COUNT = 1000  # above any budget (boot_assessment.handbacks is at most 100)
HEADER = "# bootkeeper: statereset hand-backs since the last good active or passive boot\n"


def parse(data: bytes, source: str) -> int:
    """The count in the file's bytes; a :class:`MalformedError` naming ``source`` and the line."""
    if len(data) > MAX_SIZE:
        raise MalformedError(f"{source}: {len(data)} bytes, more than the {MAX_SIZE} a hand-back count may be")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    found: int | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or key.strip() != KEY:
            raise MalformedError(f"{source}: line {n}: {line[:60]!r} is not '{KEY}=N'")
        if found is not None:
            raise MalformedError(f"{source}: line {n}: '{KEY}' set twice")
        value = value.strip()
        if not value.isascii() or not value.isdigit() or len(value) > 4 or int(value) > MAX_COUNT:
            raise MalformedError(
                f"{source}: line {n}: {KEY}: {value[:40]!r} is not a whole number from 0 to {MAX_COUNT}"
            )
        found = int(value)
    if found is None:
        raise MalformedError(f"{source}: no '{KEY}=N' line")
    return found


def render(count: int) -> bytes:
    if not 0 <= count <= MAX_COUNT:
        raise ValueError(f"hand-back count {count} out of range 0..{MAX_COUNT}")
    return f"{HEADER}{KEY}={count}\n".encode()


@dataclass(frozen=True)
class Count:
    """What the ESP says: ``count`` hand-backs (0 without a file); ``problem``: why the file could not
    be read, in which case ``count`` is None and the budget counts as spent."""

    count: int | None
    present: bool
    problem: str | None = None

    def spent(self, budget: int) -> bool:
        """No hand-back is left: the count reached ``budget``, or the file could not be read."""
        return self.count is None or self.count >= budget


def read(store: EspStore) -> Count:
    p = store.path(HANDBACKS)
    try:
        with fsutil.open_nonblocking(p) as f:  # a FIFO must not hang the reader
            data = f.read(MAX_SIZE + 1)
    except FileNotFoundError:
        return Count(0, False)
    except OSError as exc:
        return Count(None, True, str(UnreadableError(f"{p}: cannot read ({exc.strerror or exc})")))
    try:
        return Count(parse(data, str(p)), True)
    except MalformedError as exc:
        return Count(None, True, str(exc))
