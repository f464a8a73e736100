"""The slow suites are wired: every VM test finds its fixtures.

The node tests run only in CI's node process, an hour after a change; a fixture a module forgot to
import (``fixture 'pieces' not found``) then shows as an error at setup after 55 minutes, as it did
for tests/node/test_node_extdirs.py (stop 33). ``pytest --setup-plan`` resolves every fixture of every
selected test without running one, so this fast test finds the same fault in seconds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_vm_test_resolves_its_fixtures() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "--setup-plan", "-q", "-p", "no:cacheprovider",
         "-m", "node or guest or vm", str(TESTS)],
        capture_output=True, text=True, cwd=TESTS.parent, check=False, timeout=600,
    )  # fmt: skip
    planned = [line for line in r.stdout.splitlines() if line.strip().startswith("tests/") and "::" in line]
    assert r.returncode == 0 and "ERROR" not in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
    assert len(planned) > 30, r.stdout[-3000:]  # the node, guest and vm tests were selected, not none
