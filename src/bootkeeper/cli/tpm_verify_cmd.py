"""``bootkeeper tpm verify``: the booted machine's TPM event log against its live PCRs and against
what the ESP predicts for the entry that booted (see :mod:`bootkeeper.measure.verify`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bootkeeper.cli.common import config_option, esp_option, json_option, print_json, root_option, table
from bootkeeper.shown import echo

if TYPE_CHECKING:
    from bootkeeper.measure.verify import Report

__all__ = ["verify"]

FIRMWARE_LOG = "sys/kernel/security/tpm0/binary_bios_measurements"
USER_LOG = "run/log/systemd/tpm2-measure.log"
LIVE_PCRS = "sys/class/tpm/tpm0"
EFIVARS = "sys/firmware/efi/efivars"
STUB_IMAGE = "StubImageIdentifier"
# EFI_GLOBAL_VARIABLE (UEFI 2.10, 3.3): SecureBoot is one byte, 1 when on
SECURE_BOOT = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
MAX_EXPECT = 64 << 20  # a saved `tpm predict --json`: a few KiB an entry, file lists included


def _secure_boot(efivars: Path) -> bool:
    from bootkeeper.esp.efivars import read_raw

    raw = read_raw(efivars / SECURE_BOOT)
    return raw is not None and len(raw) == 5 and raw[4] == 1


def _esp(esp: Path | None, root: Path, find_esp: Any) -> Path:
    """``--esp``, else the first of ROOT/efi, ROOT/boot/efi, ROOT/boot with loader/ or EFI/."""
    if esp is not None or root == Path("/"):
        return Path(find_esp(esp))
    from bootkeeper.cli.common import ESP_CANDIDATES

    for c in ESP_CANDIDATES:
        d = root / c.relative_to("/")
        if (d / "loader").is_dir() or (d / "EFI").is_dir():
            return d
    from bootkeeper.errors import EspError

    raise EspError(f"no ESP found under {root} (efi, boot/efi, boot); pass --esp DIR")


def _leave_result(root: Path, result: Report) -> None:
    """The result for ``bootkeeper metrics`` (its TPM series and the TpmVerifyFailed alert), written
    atomically to ROOT/run/bootkeeper/tpm-verify.json; a root without /run keeps none. Failing to
    write it is a warning: the verdict on stdout and the exit code stand."""
    import json

    from bootkeeper import fsutil
    from bootkeeper.cli.metrics import TPM_VERIFY

    dest = root / TPM_VERIFY
    if not (root / "run").is_dir():
        return
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_atomic(dest, (json.dumps(result.to_json(), indent=2) + "\n").encode())
    except OSError as exc:
        echo(f"bootkeeper: warning: {dest}: not written ({exc.strerror or exc})", err=True)


@click.command()
@root_option
@esp_option
@click.option(
    "--expect",
    "expect_path",
    type=click.Path(path_type=Path),
    help="A saved `tpm predict --json`: the extensions meant to boot; differences are named file by file.",
)
@config_option
@json_option
def verify(
    root: Path, esp: Path | None, expect_path: Path | None, config_files: tuple[Path, ...], as_json: bool
) -> None:
    """Replay the TPM event log against the live PCRs, find the booted entry, and compare what
    systemd-stub logged into PCRs 11, 12 and 13 with the ESP's prediction for it. Exit 0 when all
    agree, 1 with findings (and when an entry cannot be predicted)."""
    from bootkeeper.cli.metrics import TPM_VERIFY
    from bootkeeper.errors import ExitCode, InputError, NotApplicableError, UnreadableError
    from bootkeeper.measure import verify as verify_mod

    log_path = root / FIRMWARE_LOG
    tpm = root / LIVE_PCRS
    if not os.path.lexists(log_path) and not os.path.lexists(tpm):
        # no TPM at all: nothing to verify, and no result is written. A result an earlier run left is
        # replaced by a failed one (a node does not lose its TPM: a result there that this run cannot
        # back is not kept agreeing, issue 27); with none there, none is written
        why = f"{log_path}: no TPM event log and no {tpm} (no TPM)"
        if os.path.lexists(root / TPM_VERIFY):
            _leave_result(root, verify_mod.failed(f"{why}; an earlier tpm verify left a result"))
        raise NotApplicableError(why)
    try:
        if not os.path.lexists(log_path):
            # a TPM without its event log (securityfs not mounted, the file removed) cannot be
            # verified: a failed verification with the reason, never the last result kept (issue 27)
            raise UnreadableError(f"{log_path}: no TPM event log, but {tpm} is there (is securityfs mounted?)")
        report = _verify(root, esp, expect_path, config_files)
    except InputError as exc:
        # a verification that cannot complete is a failed one: left for metrics (agree 0, the reason),
        # then the error's exit code; never no result, which would keep the alert silent
        _leave_result(root, verify_mod.failed(str(exc)))
        raise
    _leave_result(root, report)
    if as_json:
        print_json(report.to_json())
    else:
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
    if not report.ok:
        raise SystemExit(int(ExitCode.REFUSED))


def _verify(root: Path, esp: Path | None, expect_path: Path | None, config_files: tuple[Path, ...]) -> Report:
    """Read the machine (the event logs, the live PCRs, the efivars, the ESP, the config) and verify;
    an entry the ESP cannot predict is part of the report (:class:`~bootkeeper.measure.verify.Report`),
    any other input at fault raises its :class:`~bootkeeper.errors.InputError`."""
    from bootkeeper import fsutil
    from bootkeeper.cli.common import find_esp, load_config
    from bootkeeper.esp import efivars as ev
    from bootkeeper.esp.store import EspStore
    from bootkeeper.measure import eventlog
    from bootkeeper.measure import predict as predict_mod
    from bootkeeper.measure import verify as verify_mod
    from bootkeeper.sysext.activate import EXTRA_DIR

    log = eventlog.read_log(root / FIRMWARE_LOG)
    user = eventlog.read_user_log(root / USER_LOG)
    live = verify_mod.live_pcrs(root / LIVE_PCRS, log.banks)
    efivars = root / EFIVARS
    stub_image = ev.read_string(efivars, STUB_IMAGE) if efivars.is_dir() else None
    selected = ev.LoaderVars.read(efivars).entry_selected
    secure_boot = _secure_boot(efivars) if efivars.is_dir() else False
    store = EspStore(_esp(esp, root, find_esp))
    predictions, unpredictable = predict_mod.predict_each(store, log.banks, secure_boot)
    cfg = load_config(config_files, root)
    booted = where = None
    for folder in [root / EXTRA_DIR, *(fsutil.under(root, s) for s in cfg.sysext.sources)]:
        found = verify_mod.booted_files(folder)
        if found:
            booted, where = found, str(folder)
            break
    expected = None
    if expect_path is not None:
        from bootkeeper.measure.untrusted import load_json

        raw = fsutil.read_input(expect_path, "the expected prediction")
        obj = load_json(raw, str(expect_path), MAX_EXPECT, "the output of tpm predict --json")
        expected = verify_mod.parse_expected(obj, str(expect_path))
    return verify_mod.verify(
        log,
        user,
        live,
        predictions,
        stub_image=stub_image,
        selected=selected,
        booted=booted,
        booted_where=where,
        expected=expected,
        expect_what=str(expect_path),
        unpredictable=unpredictable,
    )
