"""``bootkeeper tpm verify``: the booted machine's TPM event log against its live PCRs and against
what the ESP predicts for the entry that booted (see :mod:`bootkeeper.measure.verify`)."""

from __future__ import annotations

import os
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
    from bootkeeper.errors import InputError, NotApplicableError
    from bootkeeper.measure import verify as verify_mod
    from bootkeeper.node import tpm
    from bootkeeper.node.metrics import TPM_VERIFY
    from bootkeeper.node.store import esp_under

    dest = root / TPM_VERIFY
    why = tpm.no_tpm(root)
    if why is not None:
        # no TPM at all: nothing to verify, and no result is written. A result an earlier run left is
        # replaced by a failed one (a node does not lose its TPM: a result there that this run cannot
        # back is not kept agreeing, issue 27); with none there, none is written
        if os.path.lexists(dest):
            tpm.leave_result(dest, root, verify_mod.failed(f"{why}; an earlier tpm verify left a result"), say)
        raise NotApplicableError(why)
    try:
        # a TPM without its event log (securityfs not mounted, the file removed) cannot be verified:
        # a failed verification with the reason, never the last result kept (issue 27)
        report = tpm.verify(root, lambda: esp_under(esp, root), lambda: load_config(config_files, root), expect_path)
    except InputError as exc:
        # a verification that cannot complete is a failed one: left for metrics (agree 0, the reason),
        # then the error's exit code; never no result, which would keep the alert silent
        tpm.leave_result(dest, root, verify_mod.failed(str(exc)), say)
        raise
    tpm.leave_result(dest, root, report, say)
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
