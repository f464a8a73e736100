"""The CLI's one error boundary on the click the node has: Debian 13 ships click 8.1.8, which has no
``click.exceptions.NoArgsIsHelpError`` (8.2 added it). The boundary named that class in an ``except``
clause, so on the node every exception that reached it (a verb's own ``sys.exit(1)``, a usage error)
became an AttributeError and a traceback (``repair --needed`` on every active boot, seen in the node
scenarios). Here click 8.1.8 is a real install of that release, in a folder of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bootkeeper.esp import scratch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def old_click(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """click 8.1.8 (Debian 13's, trixie: python3-click 8.1.8-1) from PyPI into a folder of its own."""
    d = tmp_path_factory.mktemp("click818")
    p = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(d), "click==8.1.8"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return d


def _bk(click_dir: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{click_dir}:{ROOT / 'src'}"}
    return subprocess.run(
        [sys.executable, "-m", "bootkeeper", *map(str, args)], capture_output=True, text=True, env=env, check=False
    )


def test_the_click_under_test_is_the_node_s(old_click: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(old_click)}
    p = subprocess.run([sys.executable, "-c", "import click; print(click.__version__)"], capture_output=True,
                       text=True, env=env, check=False)  # fmt: skip
    assert p.stdout.strip() == "8.1.8"


def test_a_verb_that_exits_1_exits_1_without_a_traceback(old_click: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "run/cos").mkdir(parents=True)
    (root / "run/cos/active_mode").touch()
    scratch.make(root / "efi", ukis=True)
    r = _bk(old_click, "repair", "--needed", "--root", root)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.startswith("no repair: booted active")


def test_usage_and_refusals_are_one_line_on_the_node_s_click(old_click: Path, tmp_path: Path) -> None:
    r = _bk(old_click, "status", "--bogus")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("bootkeeper: error: ")
    r = _bk(old_click, "update", "--check", "--root", tmp_path)
    assert r.returncode == 2 and r.stderr.splitlines()[0] == (
        "bootkeeper: error: no release source: give --source, or set update.source in the config"
    )
