"""``bootkeeper demo``: the whole boot-assessment story on a scratch ESP in a temporary folder (the
steps are node/demo.py's; this tells them)."""

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
    from bootkeeper.assess import chain
    from bootkeeper.cli.render import print_menu, print_timeline
    from bootkeeper.config import BootAssessment
    from bootkeeper.esp import scratch
    from bootkeeper.esp.store import EspStore
    from bootkeeper.node import demo as steps
    from bootkeeper.node.status import menu

    tmp = tempfile.mkdtemp(prefix="bootkeeper-demo-")
    root = Path(tmp) / "esp"
    cfg = BootAssessment(tries=3, recovery_tries=3)
    no_vars = Path(tmp) / "no-efivars"

    _step(f"1. A scratch ESP in {root}: four uncounted entries and a loader.conf that pins 'active.conf'")
    scratch.make(root, tries=None, recovery_tries=None, sort_keys=False, default="active.conf")
    print_menu(menu(root, no_vars, "257"))

    _step("2. bootkeeper arm: fresh counters, fallback sort keys, and the pinning default removed")
    for a in chain.arm(EspStore(root), cfg).actions:
        click.echo(f"  {a}")
    print_menu(menu(root, no_vars, "257"))

    _step("3. A failed upgrade: active panics on every boot (systemd-boot 257 model)")
    print_timeline(steps.failed_upgrade(root, cfg))
    click.echo("active used its 3 tries; systemd-boot fell back to passive, which booted and was blessed.")

    _step("4. The fixed active is installed with bootkeeper rotate, boots, and is blessed good")
    fixed = steps.install_fixed(Path(tmp), root, cfg)
    for a in fixed.rotated:
        click.echo(f"  {a}")
    click.echo(f"  systemd-boot boots {fixed.booted} and renames it to {fixed.renamed_to}")
    for a in fixed.blessed:
        click.echo(f"  bless good: {a}")
    print_menu(menu(root, no_vars, "257"))

    _services_demo(Path(tmp), cfg)

    if keep:
        click.echo(f"\nscratch ESP kept in {root}")
    else:
        import shutil

        shutil.rmtree(tmp)
        click.echo("\nscratch ESP removed (use --keep to look at it)")


def _services_demo(tmp: Path, cfg: BootAssessment) -> None:
    """Steps 5-7: a service that decides the boot, the generator, lint, and status after a fallback."""
    from bootkeeper.cli.render import print_timeline, status_lines
    from bootkeeper.esp.efivars import under
    from bootkeeper.node import demo as steps

    node = tmp / "node"
    efivars = under(node)
    _step(f"5. k3s.service decides the boot (reboot_on_failure: active), installed under {node}")
    for a in steps.enroll_k3s(node):
        click.echo(f"  {a}")
    for role, why, files in steps.generator_runs(node, efivars):
        click.echo(f"  bootkeeper-generator on {role}: {why}; writes {', '.join(files) or 'nothing'}")

    _step("6. bootkeeper lint on the seed's 'active only' cloud-config")
    for finding in steps.seed_findings():
        click.echo(f"  {finding}".replace("\n", "\n  "))

    _step("7. k3s fails on every entry: active reboots 3 times, passive stays up; bootkeeper status")
    records, shown = steps.services_fail(tmp, node, efivars, cfg)
    print_timeline(records)
    click.echo("".join(f"  {ln}\n" for ln in status_lines(shown)), nl=False)
