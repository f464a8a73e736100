"""dm-verity build and full verify: bootkeeper against veritysetup (cryptsetup-bin), same file,
same run; and signature-mode validate of one image against systemd-dissect --validate.

Usage: python bench/verity.py [SIZE_MIB]   (default 1024). Prints a table of medians of 3 runs.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))


def timed(fn: Callable[[], object], runs: int = 3) -> float:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    from bootkeeper.sysext import image, policy, verity

    size_mib = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    if shutil.which("veritysetup") is None:
        raise SystemExit("veritysetup missing: apt-get install cryptsetup-bin (scripts/setup-test-deps.sh does)")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        data = Path(tmp) / "data"
        with data.open("wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(1 << 20))
        salt = os.urandom(32)
        ref_hash = Path(tmp) / "ref.hash"

        def vs_format() -> None:
            subprocess.run(
                ["veritysetup", "format", str(data), str(ref_hash), f"--salt={salt.hex()}"],
                check=True,
                capture_output=True,
            )

        tree: list[verity.Tree] = []

        def bk_build() -> None:
            with data.open("rb") as f:
                tree[:] = [verity.build(f, salt=salt)]

        t_vs_build = timed(vs_format)
        t_bk_build = timed(bk_build)
        area = tree[0].hash_area()
        (Path(tmp) / "bk.hash").write_bytes(area)
        rh = tree[0].root_hash.hex()

        def vs_verify() -> None:
            subprocess.run(
                ["veritysetup", "verify", str(data), str(Path(tmp) / "bk.hash"), rh], check=True, capture_output=True
            )

        def bk_verify() -> None:
            with data.open("rb") as f:
                assert verity.verify(f, area, tree[0].root_hash, full=True).ok

        t_vs_verify = timed(vs_verify)
        t_bk_verify = timed(bk_verify)
        data.unlink()

        rows = [
            (f"verity build, {size_mib} MiB", t_bk_build, t_vs_build, "veritysetup format"),
            (f"verity full verify, {size_mib} MiB", t_bk_verify, t_vs_verify, "veritysetup verify"),
        ]
        # signature-mode validate of one ~100 MB image vs systemd-dissect --validate (trixie tree)
        from cryptography import x509

        import trixie

        key_p, cert_p = Path(tmp) / "k.pem", Path(tmp) / "c.pem"
        subprocess.run(
            [sys.executable, "-m", "bootkeeper", "keys", "generate", "--key", str(key_p), "--cert", str(cert_p)],
            check=True,
            capture_output=True,
        )
        t = Path(tmp) / "tree"
        (t / "usr/bin").mkdir(parents=True)
        (t / "usr/bin/blob").write_bytes(os.urandom(100 << 20))
        img = Path(tmp) / "bench.sysext.raw"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bootkeeper",
                "sysext",
                "build",
                str(t),
                "-o",
                str(img),
                "--key",
                str(key_p),
                "--cert",
                str(cert_p),
            ],
            check=True,
            capture_output=True,
        )
        cert = x509.load_pem_x509_certificate(cert_p.read_bytes())
        pol = policy.parse(policy.ENFORCED_DEFAULT)
        t_bk_val = timed(lambda: image.validate(img, pol, [cert]), runs=5)
        dissect = "n/a (no trixie tree: scripts/setup-trixie.sh)"
        t_sd_val = float("nan")
        if trixie.available():

            def sd() -> None:
                p = trixie.run(
                    f"systemd-dissect --validate --image-policy={policy.ENFORCED_DEFAULT} {img.name}", Path(tmp)
                )
                assert p.returncode == 0, p.stderr

            t_sd_val = timed(sd, runs=5)
            dissect = "systemd-dissect --validate (257, incl. unshare+chroot)"
        rows.append(("validate 100 MB image, signature mode", t_bk_val, t_sd_val, dissect))
    print(f"{'what':<42} {'bootkeeper':>11} {'reference':>10} {'ratio':>6}  reference tool")
    print(f"{'-' * 42} {'-' * 11} {'-' * 10} {'-' * 6}  {'-' * 14}")
    for what, bk, ref, tool in rows:
        ratio = bk / ref if ref == ref and ref > 0 else float("nan")
        print(f"{what:<42} {bk * 1000:9.1f}ms {ref * 1000:8.1f}ms {ratio:6.2f}  {tool}")
    print(f"(medians; {os.cpu_count()} cores; goals: verity ratio <= 1.0, validate < 20 ms)")


if __name__ == "__main__":
    main()
