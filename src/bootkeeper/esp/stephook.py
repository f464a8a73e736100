"""What a store is given from outside, kept out of esp/store.py (which reads no environment and writes
nothing to stderr itself): where its warnings go, and the power-cut tests' step hook.

``BOOTKEEPER_TEST_STEP_PAUSE=SECONDS`` (tests/node/test_node.py, tests/esp/test_remount_signals.py): every step
that changes the ESP is announced on stderr and then waits that long, so a test can kill the machine
between two steps.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

__all__ = ["TEST_PAUSE_ENV", "pause_from_env", "warn_stderr"]

TEST_PAUSE_ENV = "BOOTKEEPER_TEST_STEP_PAUSE"


def warn_stderr(line: str) -> None:
    """A store's warning, one line on stderr (it may quote a path from the ESP: escaped)."""
    from bootkeeper.shown import shown_line

    sys.stderr.write(f"bootkeeper: {shown_line(line)}\n")


def pause_from_env() -> Callable[[str], None] | None:
    """The step hook ``BOOTKEEPER_TEST_STEP_PAUSE`` asks for, or None (unset, or not 0 to 3600 seconds:
    then ignored with a warning)."""
    raw = os.environ.get(TEST_PAUSE_ENV)
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600:
        sys.stderr.write(f"bootkeeper: ignoring {TEST_PAUSE_ENV}={raw!r} (expected seconds, 0 to 3600)\n")
        return None

    def pause(step: str) -> None:
        sys.stderr.write(f"bootkeeper: test pause before {step} ({seconds:g} s)\n")
        sys.stderr.flush()
        time.sleep(seconds)

    return pause
