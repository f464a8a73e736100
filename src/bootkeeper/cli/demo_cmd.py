"""``bootkeeper demo``: the whole boot-assessment story on a scratch ESP in a temporary folder."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from bootkeeper.config import BootAssessment


def _step(title: str) -> None:
    click.echo("")
    from bootkeeper.shown import raw_stream

    click.secho(f"== {title}", bold=True, file=raw_stream(sys.stdout))  # its own words, styled


@click.command()
@click.option("--keep", is_flag=True, help="Keep the scratch ESP and print where it is.")
def demo(keep: bool) -> None:
    """Build a scratch ESP (active, passive, recovery, statereset), arm it, show the entries,
    simulate a failed upgrade falling back to passive, then bless a good boot. No hardware is touched."""
    from bootkeeper.assess import bless as bless_mod
    from bootkeeper.assess import bootloader, chain
    from bootkeeper.assess.simulate import BootOutcome, Fault, simulate
    from bootkeeper.cli.entries_cmd import _print_human, _view
    from bootkeeper.cli.simulate_cmd import print_timeline
    from bootkeeper.config import BootAssessment, RebootOnFailure
    from bootkeeper.esp import scratch
    from bootkeeper.esp.entries import Role
    from bootkeeper.esp.store import EspStore

    tmp = tempfile.mkdtemp(prefix="bootkeeper-demo-")
    root = Path(tmp) / "esp"
    cfg = BootAssessment(tries=3, recovery_tries=3)
    no_vars = Path(tmp) / "no-efivars"

    _step(f"1. A scratch ESP in {root}: four uncounted entries and a loader.conf that pins 'active.conf'")
    scratch.make(root, tries=None, recovery_tries=None, sort_keys=False, default="active.conf")
    _print_human(_view(root, no_vars, "257"))

    _step("2. bootkeeper arm: fresh counters, fallback sort keys, and the pinning default removed")
    res = chain.arm(EspStore(root), cfg)
    for a in res.actions:
        click.echo(f"  {a}")
    _print_human(_view(root, no_vars, "257"))

    _step("3. A failed upgrade: active panics on every boot (systemd-boot 257 model)")
    records = simulate(
        EspStore(root),
        cfg,
        [Fault(Role.ACTIVE, None, BootOutcome.PANIC)],
        5,
        reboot_on_failure=RebootOnFailure.ACTIVE,
        sdboot_version=257,
    )
    print_timeline(records)
    click.echo("active used its 3 tries; systemd-boot fell back to passive, which booted and was blessed.")

    _step("4. The fixed active is installed with bootkeeper rotate, boots, and is blessed good")
    new = Path(tmp) / "new-active.conf"
    new.write_text(
        "title Kairos active (fixed)\nversion 2\nlinux /EFI/kairos/vmlinuz\n"
        "initrd /EFI/kairos/initrd.img\noptions console=ttyS0 entry=active\n"
    )
    for a in chain.rotate(EspStore(root), cfg, new).actions:
        click.echo(f"  {a}")
    store = EspStore(root)
    choice = bootloader.choose(store.snapshot(257))
    assert choice is not None
    click.echo(f"  systemd-boot boots {choice.entry.path} and renames it to {choice.path_after}")
    if choice.rename_to:
        store.rename(choice.entry.path, choice.path_after)
    assert choice.boot_count_path is not None
    booted = bless_mod.parse_entry_path(choice.boot_count_path, "LoaderBootCountPath")
    result = bless_mod.bless(store, booted, bless_mod.Verdict.GOOD, cfg)
    for a in result.actions:
        click.echo(f"  bless good: {a}")
    _print_human(_view(root, no_vars, "257"))

    _services_demo(Path(tmp), cfg)

    if keep:
        click.echo(f"\nscratch ESP kept in {root}")
    else:
        import shutil

        shutil.rmtree(tmp)
        click.echo("\nscratch ESP removed (use --keep to look at it)")


SEED_EXAMPLE = """#cloud-config
stages:
  initramfs:
    - name: Configure service to trigger boot-complete.target on active
      if: '[ ! -f "/run/cos/active_mode" ]'
      files:
        - path: /etc/systemd/system/k3s.service.d/override.conf
          content: |
            [Unit]
            Before=boot-complete.target
            FailureAction=reboot
            [Install]
            RequiredBy=boot-complete.target
    - name: Enable service
      systemctl:
        enabled: [k3s]
"""


def _services_demo(tmp: Path, cfg: BootAssessment) -> None:
    """Steps 5-7: a service that decides the boot, the generator, lint, and status after a fallback."""
    import os

    from bootkeeper.assess import generator, lint, services, units
    from bootkeeper.assess.simulate import BootOutcome, Fault, simulate
    from bootkeeper.cli.simulate_cmd import print_timeline
    from bootkeeper.config import Config, RebootOnFailure, ServiceSpec
    from bootkeeper.esp import scratch
    from bootkeeper.esp.efivars import encode_string, under, var_path
    from bootkeeper.esp.entries import Role
    from bootkeeper.esp.store import EspStore

    node = tmp / "node"
    _step(f"5. k3s.service decides the boot (reboot_on_failure: active), installed under {node}")
    units.install(node, units.render(Config(), ["/usr/bin/bootkeeper"], "/usr/bin/python3"))
    for a in services.enroll(node, [ServiceSpec("k3s.service", RebootOnFailure.ACTIVE)]):
        click.echo(f"  {a}")
    efivars = under(node)
    efivars.mkdir(parents=True)
    var_path(efivars, "LoaderBootCountPath").write_bytes(encode_string("\\loader\\entries\\active+2-1.conf"))
    for role in ("active", "passive"):
        (node / "run/cos").mkdir(parents=True, exist_ok=True)
        for f in (node / "run/cos").iterdir():
            f.unlink()
        (node / f"run/cos/{role}_mode").touch()
        os.environ["BOOTKEEPER_GENERATOR_ROOT"] = str(node)
        try:
            files, why = generator.plan(str(node))
        finally:
            del os.environ["BOOTKEEPER_GENERATOR_ROOT"]
        click.echo(f"  bootkeeper-generator on {role}: {why}; writes {', '.join(files) or 'nothing'}")

    _step("6. bootkeeper lint on the seed's 'active only' cloud-config")
    for finding in lint.lint_text(SEED_EXAMPLE, "seed-example.yaml"):
        click.echo(f"  {finding}".replace("\n", "\n  "))

    _step("7. k3s fails on every entry: active reboots 3 times, passive stays up; bootkeeper status")
    esp = scratch.make(tmp / "esp2")
    faults = [Fault(r, None, BootOutcome.SERVICE) for r in Role]
    recs = simulate(
        EspStore(esp),
        cfg,
        faults,
        10,
        reboot_on_failure=RebootOnFailure.ACTIVE,
        history_root=node,
        start_time=1795000000.0,
    )
    print_timeline(recs)
    last = recs[-1].boot_count_path or ""
    var_path(efivars, "LoaderBootCountPath").write_bytes(encode_string(last))
    from bootkeeper.cli.status_cmd import gather

    shown = gather(node, esp, efivars, 257, read_services=None)
    click.echo("".join(f"  {ln}\n" for ln in shown.lines()), nl=False)
