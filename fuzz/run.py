#!/usr/bin/env python3
"""Run the fuzzing targets (``fuzz/targets.py``) with atheris, each for a bounded time.

    fuzz/run.py [TARGET...] [--time 60] [--seeds] [--minimise]

Each target runs in its own process (one libFuzzer worker), starting from its seed inputs in
``tests/data/fuzz/<target>/`` and a working corpus in ``.cache/fuzz/corpus/<target>/``. An
exception the parser does not document is a crash; the harness keeps fuzzing after one, so a
run reports every distinct crash (type and innermost bootkeeper frame), not only the first.
Each new one is minimised (keeping the same type and frame) and saved as
``tests/data/fuzz/<target>/crash-<sha1>``, which ``make test`` then runs for ever after.
Timeouts and out-of-memory kills that libFuzzer reports are kept the same way
(``timeout-``/``oom-``). Prints a table: target, executions, seconds, new crashes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repository: fuzz/ is a package
WORK = HERE.parent / ".cache" / "fuzz"


def worker(name: str, libfuzzer_args: list[str], found: Path) -> None:
    """The fuzzing process: instrumented imports, then atheris drives ``targets.check``."""
    import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]

    with atheris.instrument_imports(include=["bootkeeper", "asn1crypto", "yaml"]):
        import asn1crypto.cms
        import asn1crypto.x509
        import yaml

        from fuzz import targets

        _ = (asn1crypto.cms, asn1crypto.x509, yaml)
    known: set[str] = set()
    for p in targets.corpus(name):  # already kept: not new
        try:
            targets.check(name, p.read_bytes())
        except Exception as exc:
            known.add(targets.signature_of(exc))
    found.mkdir(parents=True, exist_ok=True)

    def one_input(data: bytes) -> None:
        try:
            targets.check(name, data)
        except Exception as exc:
            sig = targets.signature_of(exc)
            if sig in known:
                return
            known.add(sig)
            digest = hashlib.sha1(data).hexdigest()
            (found / f"crash-{digest}").write_bytes(data)
            with (found / "found.jsonl").open("a") as f:
                f.write(json.dumps({"signature": sig, "file": f"crash-{digest}", "message": str(exc)[:300]}) + "\n")

    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()


def minimise(name: str, data: bytes, sig: str, budget: float = 30.0) -> bytes:
    """Delta debugging on byte ranges, keeping the crash's type and frame."""
    from fuzz import targets

    if sig.startswith("RecursionError"):
        return data  # the depth is the point, and how deep is too deep depends on the caller's stack
    deadline = time.monotonic() + budget

    def same(d: bytes) -> bool:
        try:
            targets.check(name, d)
        except Exception as exc:
            return targets.signature_of(exc) == sig
        return False

    n = 2
    while len(data) > 1 and time.monotonic() < deadline:
        chunk = max(1, len(data) // n)
        for i in range(0, len(data), chunk):
            cand = data[:i] + data[i + chunk :]
            if time.monotonic() > deadline:
                break
            if same(cand):
                data = cand
                n = max(n - 1, 2)
                break
        else:
            if chunk == 1:
                break
            n = min(n * 2, len(data))
    return data


def reminimise(name: str) -> None:
    """Shrink the kept crashes of ``name`` that still crash (e.g. found before a harness change)."""
    from fuzz import targets

    for p in targets.corpus(name):
        if not p.name.startswith("crash-"):
            continue
        data = p.read_bytes()
        try:
            targets.check(name, data)
            continue
        except Exception as exc:
            sig = targets.signature_of(exc)
        small = minimise(name, data, sig)
        if small != data:
            p.unlink()
            dest = p.with_name(f"crash-{hashlib.sha1(small).hexdigest()}")
            dest.write_bytes(small)
            print(f"{name}/{p.name} ({len(data)} bytes) -> {dest.name} ({len(small)} bytes): {sig}", flush=True)


def _executions(log: str) -> int:
    m = re.findall(r"stat::number_of_executed_units: (\d+)", log)
    if m:
        return int(m[-1])
    runs = re.findall(r"^#(\d+)\s", log, re.M)
    return int(runs[-1]) if runs else 0


def fuzz(name: str, seconds: int) -> dict[str, object]:
    from fuzz import targets

    t = targets.TARGETS[name]
    corpus = WORK / "corpus" / name
    artifacts = WORK / "artifacts" / name
    found = WORK / "found" / name
    for d in (corpus, artifacts):
        d.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(found, ignore_errors=True)
    keep = targets.CORPUS / name
    keep.mkdir(parents=True, exist_ok=True)
    # libFuzzer starts from the seeds only: kept crashes (deep nesting, say) are slow to run and
    # would fill the corpus with mutations of themselves; the worker knows them anyway.
    seeds = WORK / "seeds" / name
    shutil.rmtree(seeds, ignore_errors=True)
    seeds.mkdir(parents=True)
    for p in keep.glob("seed-*"):
        shutil.copyfile(p, seeds / p.name)
    start = time.monotonic()
    executions, new = 0, []
    log_path = WORK / f"{name}.log"
    with log_path.open("w") as log:
        while (left := seconds - int(time.monotonic() - start)) > 2:
            before = set(artifacts.iterdir())
            args = [
                f"-max_total_time={left}",
                f"-max_len={t.max_len}",
                "-timeout=10",
                "-rss_limit_mb=3072",
                "-workers=1",
                "-print_final_stats=1",
                f"-artifact_prefix={artifacts}/",
                str(corpus),
                str(seeds),
            ]
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--", *args]
            base = "/dev/shm" if os.path.isdir("/dev/shm") else None
            with tempfile.TemporaryDirectory(prefix="bootkeeper-fuzz-", dir=base) as tmp:
                env = {**os.environ, "BOOTKEEPER_FUZZ_SCRATCH": tmp}
                proc = subprocess.run(
                    cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env
                )
            log.write(proc.stdout)
            executions += _executions(proc.stdout)
            for a in sorted(set(artifacts.iterdir()) - before):  # libFuzzer's own: timeout, oom, signal
                kind = a.name.split("-", 1)[0]
                if kind == "slow":  # -report_slow_units: slow under instrumentation, not a failure
                    continue
                dest = keep / f"{kind}-{hashlib.sha1(a.read_bytes()).hexdigest()}"
                shutil.copyfile(a, dest)
                new.append({"signature": f"libFuzzer {kind}", "file": dest.name})
            if proc.returncode == 0:
                break
    for line in (found / "found.jsonl").read_text().splitlines() if (found / "found.jsonl").exists() else []:
        rec = json.loads(line)
        small = minimise(name, (found / rec["file"]).read_bytes(), rec["signature"])
        dest = keep / f"crash-{hashlib.sha1(small).hexdigest()}"
        dest.write_bytes(small)
        new.append({"signature": rec["signature"], "file": dest.name, "message": rec["message"]})
    return {"target": name, "executions": executions, "seconds": round(time.monotonic() - start), "new": new}


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[4:], WORK / "found" / sys.argv[2])
        return 0
    from fuzz import targets

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", metavar="TARGET", help=f"default: all ({', '.join(targets.TARGETS)})")
    ap.add_argument("--time", type=int, default=int(os.environ.get("FUZZ_TIME", "60")), help="seconds per target")
    ap.add_argument("--seeds", action="store_true", help="(re)make the seed inputs first (needs mkfs.erofs)")
    ap.add_argument("--minimise", action="store_true", help="only shrink the kept crashes that still crash")
    args = ap.parse_args()
    unknown = [n for n in args.targets if n not in targets.TARGETS]
    if unknown:
        ap.error(f"unknown target(s): {', '.join(unknown)}")
    if args.minimise:
        for name in args.targets or list(targets.TARGETS):
            reminimise(name)
        return 0
    if args.seeds:
        from fuzz import seeds

        seeds.write()
    results = []
    print(f"{'target':<18} {'executions':>11} {'seconds':>8} {'new crashes':>12}", flush=True)
    for name in args.targets or list(targets.TARGETS):
        r = fuzz(name, args.time)
        results.append(r)
        new = r["new"]
        assert isinstance(new, list)
        print(f"{name:<18} {r['executions']:>11} {r['seconds']:>8} {len(new):>12}", flush=True)
        for c in new:
            print(f"    {c['file']}: {c['signature']}", flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    with (WORK / "results.jsonl").open("a") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
