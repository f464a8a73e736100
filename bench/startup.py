"""Start-up time of the boot-path verbs, next to the interpreter alone and to systemd's own tools.

Prints a table of medians over 20 runs each (wall time, this machine). Goal: bootkeeper's boot-path
verbs under 120 ms. Also asserts nothing about time: it reports. It does check that the boot-path
verbs import neither rich nor cryptography.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
TOOLS = Path(os.environ.get("VM_CACHE", ROOT / ".cache" / "vm")) / "host-tools"
RUNS = 20


def median_ms(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    times = []
    rc = 0
    for _ in range(RUNS):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, env={**os.environ, **(env or {})}, check=False)
        times.append((time.perf_counter() - t0) * 1000)
        rc = p.returncode
    return statistics.median(times), rc


def heavy_imports(args: list[str]) -> list[str]:
    code = (
        "import sys\nfrom bootkeeper.cli.main import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        "print('HEAVY:' + ' '.join(m for m in ('rich', 'cryptography') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False).stdout
    line = [x for x in out.splitlines() if x.startswith("HEAVY:")][-1]
    return line[len("HEAVY:") :].split()


def generator_row(tmp: Path) -> tuple[str, float, int]:
    """bootkeeper-generator as install-units installs it, on an active boot with one enrolled service."""
    from bootkeeper.assess import services, units
    from bootkeeper.config import Config, RebootOnFailure, ServiceSpec
    from bootkeeper.esp.efivars import LOADER_GUID, encode_string

    root = tmp / "node"
    units.install(root, units.render(Config(), ["/usr/bin/bootkeeper"], sys.executable), enable=False)
    services.enroll(root, [ServiceSpec("k3s.service", RebootOnFailure.ACTIVE)])
    (root / "run/cos").mkdir(parents=True)
    (root / "run/cos/active_mode").touch()
    ev = root / "sys/firmware/efi/efivars"
    ev.mkdir(parents=True)
    (ev / f"LoaderBootCountPath-{LOADER_GUID}").write_bytes(encode_string("\\loader\\entries\\active+2-1.conf"))
    out = [str(tmp / "gen" / d) for d in ("normal", "early", "late")]
    gen = str(root / units.GENERATOR_DIR / units.GENERATOR)
    ms, rc = median_ms([gen, *out], {"BOOTKEEPER_GENERATOR_ROOT": str(root)})
    if not (tmp / "gen/normal/k3s.service.d/50-bootkeeper-failure-action.conf").is_file():
        raise SystemExit("bootkeeper-generator wrote nothing on an active boot")
    return ("bootkeeper-generator, active boot (goal < 50 ms)", ms, rc)


def main() -> None:
    from bootkeeper.esp import scratch

    with tempfile.TemporaryDirectory() as tmp:
        esp = scratch.make(Path(tmp) / "esp")
        efivars = Path(tmp) / "efivars"
        efivars.mkdir()
        from bootkeeper.esp.efivars import LOADER_GUID, encode_string

        (efivars / f"LoaderBootCountPath-{LOADER_GUID}").write_bytes(encode_string("\\loader\\entries\\active+3.conf"))
        exe = Path(sys.executable).parent / "bootkeeper"
        bk = [str(exe)] if exe.exists() else [sys.executable, "-m", "bootkeeper"]
        rows: list[tuple[str, float, int]] = []
        rows.append(("python3 -c pass", *median_ms([sys.executable, "-c", "pass"])))
        status_args = ["status", "--esp", str(esp), "--efivars", str(efivars)]
        bless_args = ["bless", "status", "--esp", str(esp), "--efivars", str(efivars)]
        rows.append(("bootkeeper status --esp DIR", *median_ms(bk + status_args)))
        rows.append(("bootkeeper bless status", *median_ms(bk + bless_args)))
        rows.append(generator_row(Path(tmp)))
        bootctl = TOOLS / "bootctl"
        if bootctl.exists() and shutil.which("unshare"):
            script = f"mount --bind {esp} {esp} && {bootctl} --esp-path={esp} --no-variables list"
            rows.append(
                (
                    "real bootctl 252 list (incl. unshare+mount)",
                    *median_ms(["unshare", "-m", "sh", "-c", script], {"SYSTEMD_RELAX_ESP_CHECKS": "1"}),
                )
            )
            rows.append(("real bootctl 252 --version", *median_ms([str(bootctl), "--version"])))
        bless_boot = TOOLS / "systemd-bless-boot"
        if bless_boot.exists():
            rows.append(
                ("real systemd-bless-boot 252 status (refuses in containers)", *median_ms([str(bless_boot), "status"]))
            )
        w = max(len(r[0]) for r in rows)
        print(f"start-up, median of {RUNS} runs (goal for bootkeeper's boot-path verbs: < 120 ms)")
        print(f"{'command'.ljust(w)}  {'ms':>7}  exit")
        print(f"{'-' * w}  {'-' * 7}  ----")
        for name, ms, rc in rows:
            print(f"{name.ljust(w)}  {ms:7.1f}  {rc}")
        for args in (status_args, bless_args):
            heavy = heavy_imports(args)
            print(f"heavy imports in 'bootkeeper {args[0]} {args[1]}': {', '.join(heavy) or 'none'}")
            if heavy:
                raise SystemExit(f"boot-path verb imports {heavy}")


if __name__ == "__main__":
    main()
