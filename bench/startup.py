"""Start-up time of the verbs bootkeeper's units run at every boot, next to the interpreter alone and
to systemd's own tools (docs/testing.md, "What bootkeeper costs every boot").

Each verb runs as its unit runs it (src/bootkeeper/assess/units.py), on a scratch node root (``--root
DIR``, the config in DIR/oem, the ESP in DIR/efi, the EFI variables of a counted boot of active under
DIR/sys/firmware/efi/efivars), as tests/cli/test_import_budget.py builds one. Prints a table of medians
over 15 runs each (wall time, this machine) and each median as a ratio to ``python3 -c pass`` measured
in the same run: the ratio is what carries over to a slower machine (the node's CPU, or QEMU's TCG).
Asserts nothing about time: it reports. It fails (SystemExit) when a verb exits other than 0 (a broken
verb is not timed as a fast error) and when a boot-path verb imports rich or cryptography that it must
not (``sysext activate`` judges signatures: cryptography is its own, as in tests/cli/test_import_budget.py).

``random-seed`` runs the real bootctl (Debian 12's, from scripts/setup-test-deps.sh) on a read-only
tmpfs ESP in a private mount namespace (it needs root), as bootkeeper-random-seed.service finds the
node's /efi: remounted rw and back by bootkeeper around bootctl. The timing loop of that row runs
inside the namespace (this file, ``--inner``), so the namespace and mount are not in the time.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
TOOLS = Path(os.environ.get("VM_CACHE", ROOT / ".cache" / "vm")) / "host-tools"
RUNS = 15  # make test runs this file last: 15 runs of each row keep it under ~30 s
HEAVY = ("rich", "cryptography")
TEXTFILE_DIR = "var/lib/prometheus/node-exporter"
NODE_CONFIG = "boot_assessment:\n  tries: 3\nsysext:\n  firmware: []\n"


@dataclass(frozen=True)
class Row:
    name: str
    ms: float
    rcs: tuple[int, ...]  # every run's exit code
    want_rc: int | None = 0  # None: a reference command, whatever it exits with


def time_runs(
    cmd: list[str], env: dict[str, str] | None = None, before: Callable[[], None] | None = None
) -> list[tuple[float, int]]:
    """``cmd`` RUNS times: (ms, exit code) of each; ``before`` runs ahead of each, outside the time.
    One run ahead of them, untimed, writes the bytecode the others read (see :func:`main`)."""
    out = []
    for i in range(RUNS + 1):
        if before is not None:
            before()
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, env={**os.environ, **(env or {})}, check=False)
        if i:
            out.append(((time.perf_counter() - t0) * 1000, p.returncode))
    return out


def row(name: str, runs: list[tuple[float, int]], want_rc: int | None = 0) -> Row:
    return Row(name, statistics.median(ms for ms, _ in runs), tuple(rc for _, rc in runs), want_rc)


PROBE = """
import sys
from bootkeeper.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
sys.stdout.flush()
print("HEAVY:" + " ".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


def heavy_imports(cmd_prefix: list[str], args: list[str], env: dict[str, str] | None = None) -> list[str]:
    """The heavy modules loaded by ``bootkeeper ARGS`` in a fresh interpreter (``cmd_prefix``: e.g. the
    mount namespace it runs in)."""
    probe = [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args]
    p = subprocess.run(
        [*cmd_prefix, *probe], capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )
    lines = [x for x in p.stderr.splitlines() if x.startswith("HEAVY:")]
    if not lines:
        raise SystemExit(f"bootkeeper {' '.join(args)}: the import probe printed nothing: {p.stderr.strip()[-500:]}")
    return lines[-1][len("HEAVY:") :].split()


def node_root(tmp: Path) -> Path:
    """A scratch node: ESP with active (counted, booted: 2 tries left, 1 used) and passive, the EFI
    variables of that boot, the config in oem/, node_exporter's textfile folder."""
    from bootkeeper.esp.efivars import LOADER_GUID, encode_string

    root = tmp / "node"
    entries = root / "efi/loader/entries"
    entries.mkdir(parents=True)
    (root / "efi/EFI/kairos").mkdir(parents=True)
    (root / "efi/EFI/kairos/vmlinuz").write_bytes(b"k")
    (root / "efi/loader/loader.conf").write_text("timeout 0\n")
    for name, role, key in (("active+2-1.conf", "active", 1), ("passive+3.conf", "passive", 2)):
        (entries / name).write_text(
            f"title {role}\nsort-key {key}-{role}\nlinux /EFI/kairos/vmlinuz\noptions entry={role}\n"
        )
    efivars = root / "sys/firmware/efi/efivars"
    efivars.mkdir(parents=True)
    for var, value in (
        ("LoaderBootCountPath", "\\loader\\entries\\active+2-1.conf"),
        ("LoaderEntrySelected", "active+2-1.conf"),
    ):
        (efivars / f"{var}-{LOADER_GUID}").write_bytes(encode_string(value))
    (root / "oem").mkdir()
    (root / "oem/90-node.yaml").write_text(NODE_CONFIG)
    (root / ".extra/sysext").mkdir(parents=True)
    (root / TEXTFILE_DIR).mkdir(parents=True)
    shutil.copytree(root / "efi", tmp / "efi-pristine")
    return root


def read_only_esp(mnt: Path) -> list[str]:
    """The command prefix that runs a command in a private mount namespace with a read-only tmpfs ESP
    (mode 0700: bootctl warns about a world-readable one) at ``mnt``, as the node's /efi is mounted."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        raise SystemExit("random-seed: needs root and unshare (util-linux) for a private mount namespace")
    script = (
        f"mount -t tmpfs -o size=1m,mode=0700 tmpfs {mnt} && mkdir {mnt}/loader {mnt}/EFI && "
        f'mount -o remount,ro {mnt} && exec "$@"'
    )
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]


def generator_row(tmp: Path) -> Row:
    """bootkeeper-generator as install-units installs it, on an active boot with one enrolled service."""
    from bootkeeper.assess import services, units
    from bootkeeper.config import Config, RebootOnFailure, ServiceSpec
    from bootkeeper.esp.efivars import LOADER_GUID, encode_string

    root = tmp / "gen-node"
    units.install(root, units.render(Config(), ["/usr/bin/bootkeeper"], sys.executable), enable=False)
    services.enroll(root, [ServiceSpec("k3s.service", RebootOnFailure.ACTIVE)])
    (root / "run/cos").mkdir(parents=True)
    (root / "run/cos/active_mode").touch()
    ev = root / "sys/firmware/efi/efivars"
    ev.mkdir(parents=True)
    (ev / f"LoaderBootCountPath-{LOADER_GUID}").write_bytes(encode_string("\\loader\\entries\\active+2-1.conf"))
    out = [str(tmp / "gen" / d) for d in ("normal", "early", "late")]
    gen = str(root / units.GENERATOR_DIR / units.GENERATOR)
    runs = time_runs([gen, *out], {"BOOTKEEPER_GENERATOR_ROOT": str(root)})
    if not (tmp / "gen/normal/k3s.service.d/50-bootkeeper-failure-action.conf").is_file():
        raise SystemExit("bootkeeper-generator wrote nothing on an active boot")
    return row("bootkeeper-generator, active boot (goal < 50 ms)", runs)


def inner(argv: list[str]) -> None:
    """``--inner -- CMD...``: time CMD here (in the namespace the outer run made), print the runs as JSON."""
    print(json.dumps(time_runs(argv)))


def main() -> None:
    if sys.argv[1:2] == ["--inner"]:
        inner(sys.argv[3:])
        return
    from bootkeeper.assess import units

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # a node's package ships its modules byte-compiled (py3compile at install): time the verbs
        # reading bytecode too, not compiling bootkeeper at every start as they would under
        # PYTHONDONTWRITEBYTECODE (which some machines set); the bytecode goes to a folder of this run
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        root = node_root(tmp)
        esp, pristine = root / "efi", tmp / "efi-pristine"
        exe = Path(sys.executable).parent / "bootkeeper"
        bk = [str(exe)] if exe.exists() else [sys.executable, "-m", "bootkeeper"]

        def fresh_esp() -> None:  # bless good renames the booted entry: every run blesses a fresh copy
            shutil.rmtree(esp)
            shutil.copytree(pristine, esp)

        bootctl = TOOLS / "bootctl"
        if not bootctl.exists():
            raise SystemExit(f"{bootctl} is missing: scripts/setup-test-deps.sh unpacks Debian 12's bootctl there")
        seed_esp = tmp / "seed-esp"
        seed_esp.mkdir()
        seed_env = {"PATH": f"{TOOLS}:{os.environ.get('PATH', '')}", "SYSTEMD_RELAX_ESP_CHECKS": "1"}
        on_root = ["--root", str(root)]
        # (row, the unit that runs it, arguments, heavy modules it may load, run before each, command prefix, env)
        verbs: list[tuple[str, list[str], tuple[str, ...], Callable[[], None] | None, list[str], dict[str, str]]] = [
            (f"sysext activate --no-refresh ({units.SYSEXT_UNIT}, nothing handed over)",
             ["sysext", "activate", "--no-refresh", *on_root], ("cryptography",), None, [], {}),
            (f"random-seed ({units.RANDOM_SEED_UNIT}, real bootctl 252, read-only ESP)",
             ["random-seed", "--esp", str(seed_esp), *on_root], (), None, read_only_esp(seed_esp), seed_env),
            (f"history record ({units.BOOT_UNIT})",
             ["history", "record", "--esp", str(esp), *on_root], (), None, [], {}),
            (f"motd ({units.BOOT_UNIT}, {units.BLESS_UNIT}: ExecStartPost)",
             ["motd", "--esp", str(esp), *on_root], (), None, [], {}),
            (f"bless good ({units.BLESS_UNIT}, counted boot)",
             ["bless", "good", "--esp", str(esp), *on_root], (), fresh_esp, [], {}),
            (f"metrics --textfile-dir DIR ({units.METRICS_UNIT})",
             ["metrics", "--textfile-dir", str(root / TEXTFILE_DIR), "--esp", str(esp), *on_root], (), None, [], {}),
        ]  # fmt: skip

        rows = [row("python3 -c pass", time_runs([sys.executable, "-c", "pass"]), None)]
        for name, args, _, before, prefix, env in verbs:
            if prefix:
                p = subprocess.run(
                    [*prefix, sys.executable, __file__, "--inner", "--", *bk, *args],
                    capture_output=True, text=True, env={**os.environ, **env}, check=False,
                )  # fmt: skip
                if p.returncode != 0:
                    raise SystemExit(f"{name}: the timing loop failed ({p.returncode}): {p.stderr.strip()[-500:]}")
                rows.append(row(name, [(ms, rc) for ms, rc in json.loads(p.stdout)]))
            else:
                rows.append(row(name, time_runs(bk + args, env, before)))
        rows.append(generator_row(tmp))
        status_args = ["status", "--esp", str(esp), "--efivars", str(root / "sys/firmware/efi/efivars")]
        bless_args = ["bless", "status", "--esp", str(esp), "--efivars", str(root / "sys/firmware/efi/efivars")]
        rows.append(row("status --esp DIR (by hand, not a unit)", time_runs(bk + status_args)))
        rows.append(row("bless status (by hand, not a unit)", time_runs(bk + bless_args)))
        if shutil.which("unshare"):
            script = f"mount --bind {esp} {esp} && {bootctl} --esp-path={esp} --no-variables list"
            rows.append(
                row(
                    "real bootctl 252 list (incl. unshare+mount)",
                    time_runs(["unshare", "-m", "sh", "-c", script], {"SYSTEMD_RELAX_ESP_CHECKS": "1"}),
                )
            )
        rows.append(row("real bootctl 252 --version", time_runs([str(bootctl), "--version"]), None))
        bless_boot = TOOLS / "systemd-bless-boot"
        if bless_boot.exists():
            rows.append(
                row(
                    "real systemd-bless-boot 252 status (refuses in containers)",
                    time_runs([str(bless_boot), "status"]),
                    None,
                )
            )

        base = rows[0].ms
        w = max(len(r.name) for r in rows)
        print(f"start-up, median of {RUNS} runs; x: the median over python3 -c pass's of this run ({base:.1f} ms)")
        print("goals: status and bless status under 120 ms, the generator under 50 ms; the rest are reported as ratios")
        print(f"{'command'.ljust(w)}  {'ms':>7}  {'x':>5}  exit")
        print(f"{'-' * w}  {'-' * 7}  {'-' * 5}  ----")
        for r in rows:
            rcs = ",".join(str(rc) for rc in sorted(set(r.rcs)))
            print(f"{r.name.ljust(w)}  {r.ms:7.1f}  {r.ms / base:5.1f}  {rcs}")
        broken = [
            f"{r.name}: exit {sorted(set(r.rcs))}" for r in rows if r.want_rc is not None and set(r.rcs) != {r.want_rc}
        ]
        if broken:
            raise SystemExit("verbs that did not exit 0 (timed an error, not the verb): " + "; ".join(broken))

        probes = [(args, allowed, prefix, env) for _, args, allowed, _, prefix, env in verbs]
        probes += [(status_args, (), [], {}), (bless_args, (), [], {})]
        for args, allowed, prefix, env in probes:
            if args[:2] == ["bless", "good"]:
                fresh_esp()
            heavy = heavy_imports(prefix, args, env)
            label = " ".join(
                a for a in args if not a.startswith("/") and a not in ("--esp", "--root", "--efivars", "--textfile-dir")
            )
            print(f"heavy imports in 'bootkeeper {label}': {', '.join(heavy) or 'none'}")
            if set(heavy) - set(allowed):
                raise SystemExit(f"boot-path verb 'bootkeeper {label}' imports {sorted(set(heavy) - set(allowed))}")


if __name__ == "__main__":
    main()
