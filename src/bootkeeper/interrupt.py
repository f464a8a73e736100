"""SIGTERM, SIGINT and SIGHUP as an orderly unwind while the ESP is writable.

systemd stops a unit with SIGTERM (at shutdown, on ``TimeoutStartSec=``, ``systemctl stop``); a terminal
sends SIGINT and SIGHUP. Python's defaults end the process at once (SIGTERM, SIGHUP) or raise
``KeyboardInterrupt`` anywhere (SIGINT): a read-only ``/efi`` remounted rw stayed rw. Inside
:func:`guarded` these signals are recorded; inside :func:`raising` they become :class:`Interrupted`, an
exception every ``finally`` sees, so the way back to ro runs. The remounts themselves run deferred: a
signal during ``mount -o remount,rw`` (or between it and the ``try``) is acted on once the ``try`` is
entered; one during the way back, when that is done (a way-back ``mount`` killed by the same signal
is run again: :meth:`bootkeeper.esp.store.EspStore._way_back`). The CLI then ends the process by the same signal
with its default action (what systemd counts as a clean stop, and a shell as 128+N).

Nested guards share one set of handlers (the outermost installs and restores them). Signal handlers
can only be set in the main thread: elsewhere :func:`guarded` changes nothing.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType

from bootkeeper.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# what signal.signal() takes and gives back: a function, SIG_DFL/SIG_IGN, or None (set outside Python)
Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


class _State:
    def __init__(self) -> None:
        self.depth = 0
        self.raising = False  # a signal raises Interrupted at once (else it is only recorded)
        self.fired = False  # Interrupted was raised: later signals are only recorded while it unwinds
        self.pending: int | None = None  # the first signal that arrived
        self.saved: dict[int, Handler] = {}


_state = _State()


def _handler(signo: int, frame: FrameType | None) -> None:
    if _state.pending is None:
        _state.pending = signo
    if _state.raising and not _state.fired:
        _state.fired = True
        raise Interrupted(signo, signal.Signals(signo).name)


def _check() -> None:
    """Raise the recorded signal now (a point where unwinding is safe)."""
    if _state.pending is not None and not _state.fired:
        _state.fired = True
        raise Interrupted(_state.pending, signal.Signals(_state.pending).name)


@contextlib.contextmanager
def guarded() -> Iterator[Callable[[], None]]:
    """Record :data:`SIGNALS` for the duration (the outermost guard installs the handlers and puts the
    old ones back). Yields ``check``: raise a signal that arrived (before the first change). On the way
    out a signal that arrived while deferred is raised, unless an :class:`Interrupted` is already on
    its way (it replaces any other exception: the run was asked to stop)."""
    outermost = _state.depth == 0
    if outermost:
        _state.pending, _state.fired, _state.raising = None, False, False
        try:
            _state.saved = {s: signal.signal(s, _handler) for s in SIGNALS}
        except ValueError:  # not the main thread: its handlers are the process's
            yield lambda: None
            return
    _state.depth += 1
    try:
        yield _check
    finally:
        _state.depth -= 1
        if outermost:
            for s, old in _state.saved.items():
                signal.signal(s, old)
            _state.saved = {}
            # a signal that arrived while deferred (during the way back, or while a child such as
            # mount was killed by the same SIGTERM, systemd sending it to the whole control group)
            # ends the run by that signal, in place of whatever else is on its way
            _check()


@contextlib.contextmanager
def raising(on: bool = True) -> Iterator[None]:
    """Within a :func:`guarded` block: signals raise :class:`Interrupted` at once (``on``), or are only
    recorded (``on=False``: the remount back to ro must not be cut). A signal recorded before is
    raised on entering a raising block, and on leaving a deferred block back into a raising one."""
    if _state.depth == 0:
        yield
        return
    before = _state.raising
    _state.raising = on
    try:
        if on:
            _check()
        yield
    finally:
        _state.raising = before
    if before:
        _check()
