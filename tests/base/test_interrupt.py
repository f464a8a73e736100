"""bootkeeper.interrupt with real signals sent to this process (issue 27, defect 5): recorded while
deferred, raised as Interrupted where raising, the way back never cut, nested guards sharing one set
of handlers, the old handlers back afterwards."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from bootkeeper.errors import Interrupted
from bootkeeper.interrupt import SIGNALS, guarded, raising


def _send(sig: int) -> None:
    """A real signal to this process; Python runs its handler at the next bytecode boundary."""
    os.kill(os.getpid(), sig)
    time.sleep(0.01)


@pytest.fixture(autouse=True)
def _handlers_back() -> Iterator[None]:
    before = {s: signal.getsignal(s) for s in SIGNALS}
    yield
    assert {s: signal.getsignal(s) for s in SIGNALS} == before  # the guard put them back


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_inside_raising_unwinds_through_finally(sig: int) -> None:
    ran: list[str] = []
    with pytest.raises(Interrupted) as e, guarded():
        try:
            with raising():
                _send(sig)
                ran.append("not reached")
        finally:
            ran.append("way back")
    assert ran == ["way back"]
    assert e.value.signo == sig and str(e.value) == f"stopped by {signal.Signals(sig).name}"


def test_a_signal_before_the_window_is_raised_by_check_before_anything_changes() -> None:
    ran: list[str] = []
    with pytest.raises(Interrupted), guarded() as check:
        _send(signal.SIGTERM)  # recorded, not raised: as during the remount to rw
        ran.append("recorded")
        check()
        ran.append("remounted")
    assert ran == ["recorded"]


def test_the_way_back_is_not_cut_and_the_signal_ends_the_run_after_it() -> None:
    ran: list[str] = []
    with pytest.raises(Interrupted) as e, guarded():
        with raising():
            ran.append("writes")
        with raising(False):
            _send(signal.SIGHUP)
            ran.append("remount-ro done")
    assert ran == ["writes", "remount-ro done"] and e.value.signo == signal.SIGHUP


def test_a_second_signal_during_the_unwind_does_not_cut_the_way_back() -> None:
    ran: list[str] = []
    with pytest.raises(Interrupted) as e, guarded():
        try:
            with raising():
                _send(signal.SIGTERM)
        finally:
            _send(signal.SIGINT)  # fired already: only recorded
            ran.append("way back")
    assert ran == ["way back"] and e.value.signo == signal.SIGTERM


def test_nested_guards_share_the_handlers_and_the_outer_way_back_runs() -> None:
    ran: list[str] = []
    with pytest.raises(Interrupted), guarded():
        try:
            with raising(), guarded():
                try:
                    with raising():
                        _send(signal.SIGTERM)
                finally:
                    ran.append("inner way back")
                assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        finally:
            ran.append("outer way back")
    assert ran == ["inner way back", "outer way back"]


def test_a_recorded_signal_replaces_another_error_on_its_way() -> None:
    """A child killed by the same SIGTERM (systemd signals the whole control group) fails the step with
    its own error; the run still ends by the signal."""
    with pytest.raises(Interrupted) as e, guarded():
        _send(signal.SIGTERM)
        raise RuntimeError("mount killed by signal SIGTERM")
    assert isinstance(e.value.__context__, RuntimeError)


def test_outside_a_guard_nothing_changes() -> None:
    with raising():
        pass
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
