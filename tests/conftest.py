from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
# The helper modules (helpers.py, nodevm.py, ...) sit here and the tests in folders laid out like src/;
# a test imports another folder's test module by its bare name (from test_node import Node), so each
# folder is on the path whatever pytest collects first (file names are unique across folders).
for folder in [TESTS, *sorted(d for d in TESTS.iterdir() if d.is_dir() and any(d.glob("test_*.py")))]:
    sys.path.insert(0, str(folder))

import luks  # noqa: E402  (a helper module in tests/, importable once the path above is set)


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> luks.Lab:
    """The test module's own ``Lab`` (a subclass of luks.Lab: its LUKS volumes and UKIs), made once per
    module as they are slow to make."""
    gone = luks.missing()
    if gone:
        pytest.fail(f"missing in the trixie tree: {', '.join(gone)} (scripts/setup-trixie.sh makes it)")
    made: luks.Lab = request.module.Lab(tmp_path_factory.mktemp("lab"))
    return made


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    try:
        from test_node import NODE_TABLES
    except ImportError:
        NODE_TABLES = []
    for title, lines in NODE_TABLES:
        terminalreporter.section(f"node scenario {title}")
        for line in lines:
            terminalreporter.write_line(line)
    try:
        from test_node import NODE_RETRIES
    except ImportError:
        NODE_RETRIES = []
    for line in NODE_RETRIES:
        terminalreporter.write_line(f"node: {line}")
    try:
        from test_hostile import HOSTILE_ROWS
    except ImportError:
        HOSTILE_ROWS = []
    if HOSTILE_ROWS:
        terminalreporter.section("hostile images")
        for row in HOSTILE_ROWS:
            terminalreporter.write_line(row)
    try:
        from test_vm_bootcount import VM_RESULTS, VM_STATS
    except ImportError:
        return
    for line in VM_STATS:
        terminalreporter.write_line(f"vm: {line}")
    if VM_RESULTS:
        terminalreporter.section("real systemd-boot vs bootkeeper model")
        terminalreporter.write_line("| scenario | systemd-boot | booted (real) | model: role:file->renamed | |")
        terminalreporter.write_line("|---|---|---|---|---|")
        for row in VM_RESULTS:
            terminalreporter.write_line(row)
