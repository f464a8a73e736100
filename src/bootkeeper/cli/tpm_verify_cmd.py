"""``bootkeeper tpm verify``: the booted machine's TPM event log against its live PCRs and against
what the ESP predicts for the entry that booted (see :mod:`bootkeeper.measure.verify`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from bootkeeper.cli.common import (
    config_option,
    esp_option,
    json_option,
    load_config,
    options,
    print_json,
    refused_exit,
    root_option,
    say,
    table,
)
from bootkeeper.shown import echo

if TYPE_CHECKING:
    from bootkeeper.measure.verify import Report

__all__ = ["verify"]


@click.command()
@options(root_option, esp_option)
@click.option(
    "--expect",
    "expect_path",
    type=click.Path(path_type=Path),
    help="A saved `tpm predict --json`: the extensions meant to boot; differences are named file by file.",
)
@options(config_option, json_option)
def verify(
    root: Path, esp: Path | None, expect_path: Path | None, config_files: tuple[Path, ...], as_json: bool
) -> None:
    """Replay the TPM event log against the live PCRs, find the booted entry, and compare what
    systemd-stub logged into PCRs 11, 12 and 13 with the ESP's prediction for it. Exit 0 when all
    agree, 1 with findings (and when an entry cannot be predicted)."""
    from bootkeeper.node import tpm
    from bootkeeper.node.store import esp_under

    report = tpm.verify_kept(
        root, lambda: esp_under(esp, root), lambda: load_config(config_files, root), expect_path, say
    )
    if as_json:
        print_json(report.to_json())
    else:
        _print(report)
    if not report.ok:
        refused_exit()


def _print(report: Report) -> None:
    from bootkeeper.measure import verify as verify_mod

    echo(f"booted: {report.entry or '?'} ({report.uki or '?'}), found by {report.found_by}")
    # the stub's PCRs, and any other that disagrees; the rest in one line
    shown = [r for r in report.rows if r.pcr in verify_mod.STUB_PCRS or not r.agree]
    table(
        ("BANK", "PCR", "LIVE", "REPLAYED", "PREDICTED", "AGREE"),
        [
            (
                r.bank,
                r.pcr if not r.phases else f"{r.pcr} +{':'.join(r.phases)}",
                "-" if r.live is None else r.live.hex()[:16] + "…",
                r.replayed.hex()[:16] + "…",
                "-" if r.predicted is None else r.predicted.hex()[:16] + "…",
                "yes" if r.agree else "NO",
            )
            for r in shown
        ],
    )
    rest = sorted({r.pcr for r in report.rows if r not in shown and r.live is not None})
    if rest:
        echo(f"PCRs {', '.join(map(str, rest))}: the log replays to the live values")
    for n in report.notes:
        echo(f"note: {n}")
    for f in report.findings:
        echo(f"finding: {f}")
    echo("all agree" if report.ok else f"{len(report.findings)} finding(s)")
