"""Boot-time activation against the floor of this machine, in the same run.

Usage: python bench/activate.py [COUNTxSIZE_MB ...]   (default: 20x50 200x1). For each shape (COUNT
signed images of SIZE_MB MB, enforced), medians of 3 of:

* ``bootkeeper activate``, without and with the full data check: each image copied to
  /run/extensions (in one pass: hashed as it is copied) and checked there (structure, hash tree,
  signature, policy, extension-release; "full" also every data block);
* the floor, with real tools: one ``cp`` of the same files into the same tmpfs, then
  ``openssl dgst -sha256`` of the same files on all cores (``xargs -P``): the copy and the hash of
  every byte, which the full check cannot do without; the ratio of the full check to it;
* ``systemd-dissect --validate`` (systemd 257, the trixie tree) over the same images: structure and
  policy only, no copy, no data read.

Goals (docs/extensions.md, "Extensions on the node"): the full check within 1.2x the floor; under 5 ms
an image for 200 x 1 MB.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
RUNS = 3


def build_images(t: Path, count: int, size_mb: int, key: Any, cert: Any) -> Path:
    from bootkeeper.sysext import image

    blob = t / "blob"
    blob.write_bytes(os.urandom(size_mb * 1_000_000))
    extra = t / "root/.extra/sysext"
    extra.mkdir(parents=True)
    for i in range(count):  # the extension-release must carry each image's own name
        tree = t / f"tree{i}"
        (tree / "usr/bin").mkdir(parents=True)
        os.link(blob, tree / "usr/bin/blob")
        image.build(tree, extra / f"bench{i:03d}.sysext.raw", key, cert)
        shutil.rmtree(tree)
    blob.unlink()
    return extra


def floor(extra: Path, dest: Path) -> tuple[float, float]:
    """Seconds of one ``cp`` of the images into ``dest`` (the same tmpfs) and of ``openssl dgst
    -sha256`` of them on every core, timed by the shell around the real tools."""
    cpus = os.cpu_count() or 1
    files = sorted(str(p) for p in extra.iterdir())
    per = max(1, -(-len(files) // cpus))
    script = (
        'set -e; s=$(date +%s%N); cp "$@" "$DEST"/; m=$(date +%s%N); '
        f'printf "%s\\0" "$@" | xargs -0 -P {cpus} -n {per} openssl dgst -sha256 >/dev/null; '
        "e=$(date +%s%N); echo $(( (m - s) / 1000 )) $(( (e - m) / 1000 ))"
    )
    dest.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["sh", "-c", script, "floor", *files], env={**os.environ, "DEST": str(dest)}, capture_output=True, text=True
    )
    if r.returncode != 0:
        raise SystemExit(f"floor: cp/openssl failed: {r.stderr.strip()}")
    shutil.rmtree(dest)
    cp_us, dgst_us = (int(x) for x in r.stdout.split())
    return cp_us / 1e6, dgst_us / 1e6


def shape(count: int, size_mb: int, where: str | None) -> list[tuple[str, float, float, str]]:
    from cryptography.hazmat.primitives.serialization import Encoding

    import trixie
    from bootkeeper import config
    from bootkeeper.sysext import activate, signature

    key, cert = signature.self_signed("rsa", "bench")
    rows: list[tuple[str, float, float, str]] = []
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        t = Path(tmp)
        extra = build_images(t, count, size_mb, key, cert)
        (t / "root/etc").mkdir()
        (t / "root/etc/bench.pem").write_bytes(cert.public_bytes(Encoding.PEM))
        (t / "c.yaml").write_text("sysext:\n  certificates: [/etc/bench.pem]\n  firmware: []\n  verity_dirs: []\n")
        cfg = config.load([t / "c.yaml"]).sysext

        def run_activate(full: bool) -> tuple[float, int]:
            shutil.rmtree(t / "root/run", ignore_errors=True)
            c = config.Sysext(**{**cfg.__dict__, "full_check": full})
            t0 = time.perf_counter()
            rep = activate.activate(t / "root", c, config.SysextMode.ENFORCED)
            dt = time.perf_counter() - t0
            for o in rep.images:
                if not o.placed:
                    print(f"  {o.line()}", file=sys.stderr)
            return dt, sum(o.placed for o in rep.images)

        full_s = 0.0
        for full in (False, True):
            runs = [run_activate(full) for _ in range(RUNS)]
            dt = statistics.median(r[0] for r in runs)
            label = "bootkeeper activate (full data check)" if full else "bootkeeper activate (tree+signature)"
            rows.append((label, dt, dt / count, f"{min(r[1] for r in runs)}/{count} placed"))
            full_s = dt
        shutil.rmtree(t / "root/run", ignore_errors=True)
        floors = [floor(extra, t / "root/run/floor") for _ in range(RUNS)]
        cp_s = statistics.median(f[0] for f in floors)
        dgst_s = statistics.median(f[1] for f in floors)
        floor_s = statistics.median(f[0] + f[1] for f in floors)
        rows.append(("floor: cp into the same tmpfs", cp_s, cp_s / count, "coreutils cp"))
        cpus = os.cpu_count() or 1
        rows.append((f"floor: openssl dgst -sha256, {cpus} cores", dgst_s, dgst_s / count, "xargs -P"))
        rows.append(("floor: cp + openssl", floor_s, floor_s / count, f"full check / floor = {full_s / floor_s:.2f}x"))
        if trixie.available():
            loop = (
                "s=$(date +%s%N); for f in .extra/sysext/*.raw; do systemd-dissect --validate "
                '--image-policy=root=signed+absent:usr=signed+absent "$f" >/dev/null || echo FAIL $f; done; '
                "e=$(date +%s%N); echo $(( (e - s) / 1000 ))"
            )
            times = []
            fails = ""
            for _ in range(RUNS):
                r = trixie.run(loop, t / "root")
                lines = r.stdout.strip().splitlines()
                times.append(int(lines[-1]) / 1e6)
                fails = " ".join(x for x in lines[:-1] if x.startswith("FAIL"))
            dt = statistics.median(times)
            rows.append(("systemd-dissect --validate (257)", dt, dt / count, fails or f"{count}/{count} OK"))
        else:
            rows.append(("systemd-dissect --validate (257)", float("nan"), float("nan"), "no trixie tree"))
    return rows


def main() -> None:
    shapes = sys.argv[1:] or ["20x50", "200x1"]
    # at boot /.extra is in the initramfs and /run is tmpfs: measure in memory too (BENCH_DIR overrides)
    where = os.environ.get("BENCH_DIR") or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    for spec in shapes:
        count, _, size = spec.partition("x")
        n, mb = int(count), int(size or 50)
        rows = shape(n, mb, where)
        print(
            f"\nactivation of {n} signed images of {mb} MB, enforced, medians of {RUNS} "
            f"({os.cpu_count()} CPUs, files in {where or tempfile.gettempdir()})"
        )
        print(f"{'what':40} {'total s':>9} {'per image ms':>13}  result")
        for label, total, per, note in rows:
            print(f"{label:40} {total:9.3f} {per * 1000:13.2f}  {note}")
    print("\ngoals: the full check within 1.2x the floor; under 5 ms an image for 200 x 1 MB")


if __name__ == "__main__":
    main()
