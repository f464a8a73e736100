"""Boot-time activation: 20 signed images of 50 MB in enforced mode, against systemd-dissect --validate
over the same 20 images (systemd 257 in the trixie tree), in the same run.

Usage: python bench/activate.py [COUNT] [SIZE_MB]   (default 20 50). Prints a table (medians of 3).
``bootkeeper`` rows copy each image to /run/extensions and check it there (structure, hash tree,
signature, policy, extension-release; "full" also every data block). systemd-dissect --validate checks
structure and policy only, and copies nothing.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    import trixie
    from bootkeeper import config
    from bootkeeper.sysext import activate, image, signature

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    size_mb = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    key, cert = signature.self_signed("rsa", "bench")
    # at boot /.extra is in the initramfs and /run is tmpfs: measure in memory too (BENCH_DIR overrides)
    where = os.environ.get("BENCH_DIR") or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        t = Path(tmp)
        blob = t / "blob"
        blob.write_bytes(os.urandom(size_mb * 1_000_000))
        extra = t / "root/.extra/sysext"
        extra.mkdir(parents=True)
        for i in range(count):  # the extension-release must carry each image's own name
            name = f"bench{i:02d}"
            tree = t / f"tree{i}"
            (tree / "usr/bin").mkdir(parents=True)
            os.link(blob, tree / "usr/bin/blob")
            image.build(tree, extra / f"{name}.sysext.raw", key, cert)
            shutil.rmtree(tree)
        (t / "root/etc").mkdir()
        (t / "root/etc/bench.pem").write_bytes(cert.public_bytes(Encoding.PEM))
        (t / "c.yaml").write_text("sysext:\n  certificates: [/etc/bench.pem]\n  firmware: []\n  verity_dirs: []\n")
        cfg = config.load([t / "c.yaml"]).sysext
        rows = []

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

        for full in (False, True):
            runs = [run_activate(full) for _ in range(3)]
            dt = statistics.median(r[0] for r in runs)
            placed = runs[0][1]
            label = "bootkeeper activate (tree+signature)" if not full else "bootkeeper activate (full data check)"
            rows.append((label, dt, dt / count, f"{placed}/{count} placed"))
        if trixie.available():
            loop = (
                "s=$(date +%s%N); for f in .extra/sysext/*.raw; do systemd-dissect --validate "
                '--image-policy=root=signed+absent:usr=signed+absent "$f" >/dev/null || echo FAIL $f; done; '
                "e=$(date +%s%N); echo $(( (e - s) / 1000 ))"
            )
            times = []
            fails = ""
            for _ in range(3):
                r = trixie.run(loop, t / "root")
                lines = r.stdout.strip().splitlines()
                times.append(int(lines[-1]) / 1e6)
                fails = " ".join(x for x in lines[:-1] if x.startswith("FAIL"))
            dt = statistics.median(times)
            rows.append(("systemd-dissect --validate (257)", dt, dt / count, fails or f"{count}/{count} OK"))
        else:
            rows.append(("systemd-dissect --validate (257)", float("nan"), float("nan"), "no trixie tree"))
    print(
        f"activation of {count} signed images of {size_mb} MB, enforced, medians of 3 "
        f"({os.cpu_count()} CPUs, files in {where or tempfile.gettempdir()})"
    )
    print(f"{'what':40} {'total s':>9} {'per image ms':>13}  result")
    for label, total, per, note in rows:
        print(f"{label:40} {total:9.3f} {per * 1000:13.1f}  {note}")


if __name__ == "__main__":
    main()
