"""``bootkeeper demo``: the whole boot-assessment story on a scratch ESP in a temporary folder."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click


def _step(title: str) -> None:
    click.echo("")
    click.secho(f"== {title}", bold=True)


@click.command()
@click.option("--keep", is_flag=True, help="Keep the scratch ESP and print where it is.")
def demo(keep: bool) -> None:
    """Build a scratch ESP (active, passive, recovery, statereset), arm it, show the entries,
    simulate a failed upgrade falling back to passive, then bless a good boot. No hardware is touched."""
    from bootkeeper.assess import bless as bless_mod
    from bootkeeper.assess import bootloader, chain
    from bootkeeper.assess.simulate import Fault, Outcome, simulate
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
    _print_human(_view(root, no_vars, 257))

    _step("2. bootkeeper arm: fresh counters, fallback sort keys, and the pinning default removed")
    res = chain.arm(EspStore(root), cfg)
    for a in res.actions:
        click.echo(f"  {a}")
    _print_human(_view(root, no_vars, 257))

    _step("3. A failed upgrade: active panics on every boot (systemd-boot 257 model)")
    records = simulate(
        EspStore(root),
        cfg,
        [Fault(Role.ACTIVE, None, Outcome.PANIC)],
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
    _print_human(_view(root, no_vars, 257))

    if keep:
        click.echo(f"\nscratch ESP kept in {root}")
    else:
        import shutil

        shutil.rmtree(tmp)
        click.echo("\nscratch ESP removed (use --keep to look at it)")
