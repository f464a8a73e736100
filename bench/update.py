"""Acquire from a registry: bootkeeper's OCI client against skopeo, same release, same loopback registry,
same run.

Usage: python bench/update.py [SIZE_MB]   (default 200). Pushes a release of SIZE_MB (a UKI of 60% and
four extensions, random bytes, an OCI image manifest skopeo understands) to Debian's docker-registry on
127.0.0.1, then, medians of 3, times as whole processes:

* (a) ``update/oci.py`` pulling every blob of it into a folder (a fresh interpreter doing only that),
  with its peak resident memory (VmHWM);
* (b) ``skopeo copy --src-tls-verify=false docker://… dir:…`` of the same image.

Goals (docs/updates.md, Registries): (a) within 1.2x (b); peak memory under 64 MiB whatever the size.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests" / "update"))
RUNS = 3
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

# the child: pull every blob the manifest names, then say the peak memory
PULL = """
import json, sys
from pathlib import Path
from bootkeeper.update.oci import Registry
from bootkeeper.update.origin import Descriptor, Net
host, repo, tag, dest = sys.argv[1:5]
reg = Registry(host, repo, Net(timeout=30, deadline=600))
m = json.loads(reg.manifest(tag).raw)
for d in [m["config"], *m["layers"]]:
    reg.blob(Descriptor(d["mediaType"], d["digest"], d["size"]), Path(dest) / d["digest"][7:])
status = Path("/proc/self/status").read_text()
print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
"""


def write_random(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return "sha256:" + h.hexdigest()


def main() -> None:
    import registry
    from bootkeeper.update.oci import Registry
    from bootkeeper.update.origin import Net

    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    if shutil.which("skopeo") is None or not Path(registry.DOCKER_REGISTRY).exists():
        raise SystemExit("skopeo or docker-registry missing: scripts/setup-test-deps.sh installs them")
    total = size_mb * 1_000_000
    sizes = [total * 6 // 10] + [total // 10] * 4
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        t = Path(tmp)
        (t / "release").mkdir()
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
        (t / "release/config.json").write_text(config)
        cfg_digest = "sha256:" + hashlib.sha256(config.encode()).hexdigest()
        cfg = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest, "size": len(config)}
        files = {cfg_digest: t / "release/config.json"}
        layers = []
        for i, size in enumerate(sizes):
            path = t / "release" / ("node.efi" if i == 0 else f"ext{i}.sysext.raw")
            digest = write_random(path, size)
            files[digest] = path
            layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size})
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": layers})
        with registry.serve(t / "registry") as reg:
            client = Registry(reg.host, "os/node", Net(timeout=30, deadline=600))
            for digest, path in files.items():
                client.push_blob(path, digest, path.stat().st_size)
            client.push_manifest("v1", manifest.encode(), OCI_MANIFEST)
            shutil.rmtree(t / "release")

            env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
            ours, theirs, peaks = [], [], []
            for run in range(RUNS):
                dest = t / f"ours{run}"
                dest.mkdir()
                t0 = time.perf_counter()
                out = subprocess.run(
                    [sys.executable, "-c", PULL, reg.host, "os/node", "v1", str(dest)],
                    check=True,
                    capture_output=True,
                    text=True,
                    env=env,
                )
                ours.append(time.perf_counter() - t0)
                peaks.append(int(out.stdout.split()[-1]) / 1024)
                shutil.rmtree(dest)
                t0 = time.perf_counter()
                subprocess.run(
                    ["skopeo", "copy", "--src-tls-verify=false", f"docker://{reg.host}/os/node:v1", f"dir:{t}/sk{run}"],
                    check=True,
                    capture_output=True,
                )
                theirs.append(time.perf_counter() - t0)
                shutil.rmtree(t / f"sk{run}")
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"release of {size_mb} MB (UKI + 4 extensions) from docker-registry on 127.0.0.1, medians of {RUNS}")
    print(f"| (a) bootkeeper update/oci.py pull | {a:7.2f} s | {size_mb / a:7.1f} MB/s |")
    print(f"| (b) skopeo copy docker:// dir:    | {b:7.2f} s | {size_mb / b:7.1f} MB/s |")
    print(f"ratio (a)/(b): {a / b:.2f}x (goal <= 1.2x)")
    print(f"peak RSS of (a): {max(peaks):.1f} MiB (goal < 64 MiB)")


if __name__ == "__main__":
    main()
