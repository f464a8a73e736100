"""README.md is the page a new user reads first (issue 28 item 8): under 16 KB, the two set-up commands
first, links that lead somewhere, and a quick start that works as written on the demo's kept ESP."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def test_the_readme_is_short_and_starts_with_the_two_commands() -> None:
    text = README.read_text()
    assert len(text.encode()) < 16 * 1024
    first = re.search(r"```sh\n(.*?)```", text, re.S)
    assert first is not None
    assert [line.split("#")[0].strip() for line in first.group(1).splitlines()] == ["make demo", "make test"]


def test_every_link_of_the_readme_leads_to_a_file() -> None:
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text())
    assert len(links) >= 10
    assert [link for link in links if not (ROOT / link).exists()] == []


def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    """Every ``sh`` block of the quick start, in order, in one shell that stops at the first failure."""
    for tool in ("mkfs.erofs", "veritysetup", "sbsign"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing; scripts/setup-test-deps.sh installs it")
    text = README.read_text()
    quick = text[text.index("## Quick start") : text.index("## The verbs")]
    blocks = re.findall(r"```sh\n(.*?)```", quick, re.S)
    assert len(blocks) == 6
    script = "set -euo pipefail\n" + "".join(blocks)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    r = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "result: upgraded" in r.stdout
    assert "hello.raw" in r.stdout
    assert "bootkeeper_entry_tries_left" in r.stdout
    # the loop: push, update, a failed update (refused, then past a fallback), repair
    assert "release: 3; running: 2; newer" in r.stdout
    assert "result: upgraded (3, signed by CN=bootkeeper test signing key)" in r.stdout
    refusals = [line for line in r.stderr.splitlines() if line.startswith("bootkeeper: error: ")]
    assert len(refusals) == 1, r.stderr
    assert refusals[0].endswith(
        "/releases:4-unsigned: kairos-4.efi: Secure Boot signature: not signed"
        " (no certificate table, or no PKCS#7 signature in it)"
    )
    assert (
        "bootkeeper: loader/entries/active+0-3.conf: the active entry is bad (no tries left); the new OS replaces it"
        " and loader/entries/passive+3.conf stays as it is"
    ) in r.stderr.splitlines()
    assert "result: upgraded (4, signed by CN=bootkeeper test signing key)" in r.stdout
    assert re.search(r"^repair: booted recovery \(.*/node/run/cos/recovery_mode\)$", r.stdout, re.M)
    assert re.search(r"^repaired: active and passive rebuilt from ocifile:.*/releases:stable \(5\)$", r.stdout, re.M)
    assert re.search(r" UTC repair on recovery from ocifile:.*/releases:stable: repaired \(5\)$", r.stdout, re.M)
    assert list(tmp_path.iterdir()) == []  # the quick start cleans up after itself
