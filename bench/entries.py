"""How reading the ESP scales with the number of Type #1 entries (docs/upgrades.md, "Limits").

Builds scratch ESPs with N entries whose kernels lie in ``loader/entries`` itself (the layout that made
every entry list that folder again) and prints the median time of one ``EspStore.snapshot()`` and of
``bootkeeper entries --json`` at 1,000 and 4,000 entries, and their ratio: about 4 is linear, about 16
quadratic (the old code gave ~12 for the snapshot). It reports; it asserts nothing about time.

    .venv/bin/python bench/entries.py [SMALL] [LARGE]
"""

from __future__ import annotations

import functools
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
RUNS = 3


def make(root: Path, n: int) -> Path:
    d = root / "loader/entries"
    d.mkdir(parents=True)
    (root / "loader/loader.conf").write_text("timeout 0\n")
    for i in range(n):
        (d / f"vmlinuz-{i}").write_bytes(b"k")
        (d / f"e{i}+3.conf").write_text(f"title e{i}\nsort-key e\nversion {i}\nlinux /loader/entries/vmlinuz-{i}\n")
    return root


def median_s(fn: Callable[[], Any]) -> float:
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    from bootkeeper.esp.store import EspStore

    small, large = (int(a) for a in (sys.argv[1:3] if len(sys.argv) > 2 else ("1000", "4000")))
    exe = Path(sys.executable).parent / "bootkeeper"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        esps = {n: make(Path(tmp) / f"esp{n}", n) for n in (small, large)}

        def snapshot(esp: Path) -> object:
            return EspStore(esp).snapshot(257)

        def cli(esp: Path) -> object:
            cmd = [str(exe), "entries", "--esp", str(esp), "--efivars", tmp, "--json"]
            return subprocess.run(cmd, check=True, capture_output=True)

        for what, run in (("EspStore.snapshot()", snapshot), ("bootkeeper entries --json", cli)):
            t = {n: median_s(functools.partial(run, esps[n])) for n in (small, large)}
            rows.append((what, t[small], t[large], t[large] / t[small]))
    print(f"{'what':<28} {small:>8} {large:>8}  ratio (linear: {large / small:.0f})")
    for what, a, b, ratio in rows:
        print(f"{what:<28} {a:7.2f}s {b:7.2f}s  {ratio:5.1f}")


if __name__ == "__main__":
    main()
