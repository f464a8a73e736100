"""``bootkeeper update``: check a source, download its release, apply it (docs/updates.md). The work is
:mod:`bootkeeper.node.update`'s; this verb parses, shows progress on a terminal and renders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from bootkeeper.cli.common import (
    ProgressBar,
    config_option,
    esp_option,
    json_option,
    load_config,
    options,
    print_json,
    root_option,
    say,
    version_option,
)
from bootkeeper.cli.tpm_gate import luks_option
from bootkeeper.shown import echo

if TYPE_CHECKING:
    from bootkeeper.config import Config
    from bootkeeper.node.update import Applied, ApplyOptions, Check
    from bootkeeper.update.acquire import Staged
    from bootkeeper.update.source import Source

STEPS = ("check", "download-only", "apply-downloaded")


class _Downloads:
    """The fetchers' progress (bytes done so far, total) as the terminal's bar wants it (bytes since)."""

    def __init__(self) -> None:
        self.bar = ProgressBar("downloading")
        self.done = 0

    def __call__(self, done: int, total: int | None) -> None:
        if done < self.done:  # the next file
            self.done = 0
        self.bar(done - self.done, total or 0)
        self.done = done

    def close(self) -> None:
        self.bar.close()


_HELP = {
    "source": "oci:REGISTRY/REPO[:TAG|@sha256:…], ocifile:PATH, dir:PATH or file:PATH (default: update.source).",
    "check": "Say what the source offers and whether it fits; download nothing.",
    "download-only": "Download and verify into the staging folder; apply nothing.",
    "apply-downloaded": "Apply the release downloaded before; fetch nothing.",
    "scheduled": "What bootkeeper-update.service runs: check, download when newer, apply when update.auto_apply.",
    "allow-downgrade": "Apply a release whose version is not newer than the running OS's.",
    "limit-rate": "Bytes a second a download may take (default: update.limit_rate).",
    "dry-run": "Apply as far as the upgrade's plan and gate; write nothing to the ESP.",
    "force": "Apply although the upgrade's gate refuses the extensions or the release failed here before (logged); "
    "never past the UKI's signature or the version rule.",
}


@click.command()
@click.option("--source", "source", default=None, help=_HELP["source"])
@click.option("--check", "step", flag_value="check", help=_HELP["check"])
@click.option("--download-only", "step", flag_value="download-only", help=_HELP["download-only"])
@click.option("--apply-downloaded", "step", flag_value="apply-downloaded", help=_HELP["apply-downloaded"])
@click.option("--scheduled", is_flag=True, help=_HELP["scheduled"])
@click.option("--allow-downgrade", is_flag=True, help=_HELP["allow-downgrade"])
@click.option("--limit-rate", type=click.IntRange(0), default=None, help=_HELP["limit-rate"])
@click.option("--dry-run", is_flag=True, help=_HELP["dry-run"])
@click.option("--force", is_flag=True, help=_HELP["force"])
@options(luks_option("whose signed-policy TPM2 token the new UKI must open"), esp_option, config_option, version_option)
@options(root_option, json_option)
def update(
    source: str | None, step: str | None, scheduled: bool, allow_downgrade: bool, limit_rate: int | None,
    dry_run: bool, force: bool, luks: tuple[Path, ...], esp: Path | None, config_files: tuple[Path, ...],
    sdboot_version: str | None, root: Path, as_json: bool,
) -> None:  # fmt: skip
    """Check a source for a newer release, download it into the staging folder, and apply it.

    Without a step option: all three. The UKI must be signed by a trusted key and newer than the running
    OS; its extensions are judged against it by the upgrade's gate. Refused: exit 1, the ESP unchanged."""
    from bootkeeper.errors import UsageError
    from bootkeeper.node import update as node

    if scheduled and step is not None:
        raise UsageError("--scheduled decides the steps itself: give it alone, without a step option")
    if scheduled:
        from bootkeeper.node.repair import REPAIR_ROLES, booted_role

        role, why = booted_role(root)
        if role in REPAIR_ROLES:  # the unit's ConditionPathExists= covers Kairos's /run/cos only
            echo(f"no update: booted {role} ({why}); bootkeeper-repair.service runs there")
            return
    cfg = load_config(config_files, root)
    if scheduled and source is None and cfg.update.source is None:  # the timer on a node not set up for it
        echo("no update: update.source is not set")
        return
    opts = node.ApplyOptions(allow_downgrade, False, dry_run, force, luks, sdboot_version)
    out: dict[str, object] = {}
    if step == "apply-downloaded":
        staged = node.downloaded(cfg, root)
        out["applied"] = _apply(cfg, root, esp, staged, opts, as_json).as_json()
        _done(out, as_json)
        return
    src = node.need_source(cfg, source)
    checked = node.check(cfg, root, src)
    out["check"] = checked.as_json()
    if not as_json:
        _show_check(checked)
    if step == "check" or (not checked.newer and not allow_downgrade):
        if not as_json and step != "check":
            echo(f"nothing to do: {checked.version or 'the release'} is not newer than the running {checked.running}")
        _done(out, as_json)
        return
    staged = _fetch(cfg, root, src, limit_rate, as_json)
    out["downloaded"] = {"folder": str(staged.folder), "version": staged.version, "digest": staged.manifest_digest}
    if step == "download-only" or (scheduled and not cfg.update.auto_apply):
        if not as_json:
            echo(f"downloaded: {staged.version or 'the release'} into {staged.folder}")
        _done(out, as_json)
        return
    applied = _apply(cfg, root, esp, staged, opts, as_json)
    out["applied"] = applied.as_json()
    _done(out, as_json)
    if scheduled and applied.result == "upgraded":  # auto_apply: the node switches now, as it was told to
        node.reboot(root, f"applied {applied.version or 'the release'}", say)


def _fetch(cfg: Config, root: Path, src: Source, limit_rate: int | None, as_json: bool) -> Staged:
    from bootkeeper.node import update as node
    from bootkeeper.update import acquire

    bar = _Downloads()
    try:
        return acquire.acquire(src, node.net_for(cfg, root, limit_rate), node.staging_for(cfg, root), bar)
    finally:
        bar.close()


def _apply(cfg: Config, root: Path, esp: Path | None, staged: Staged, opts: ApplyOptions, as_json: bool) -> Applied:
    from bootkeeper.node import update as node
    from bootkeeper.node.history import current_boot_id

    done = node.apply_staged(cfg, root, esp, staged, opts, say, lambda: current_boot_id(None))
    if done.outcome.refusal is not None:
        if as_json:
            print_json({"applied": done.as_json()})
        raise done.outcome.refusal
    if not as_json:
        for line in done.outcome.actions:
            echo(("would " if done.result == "dry-run" else "") + line)
        signer = f", signed by {done.signer}" if done.signer else ""
        echo(f"result: {done.result} ({done.version or 'no version'}{signer})")
    return done


def _show_check(c: Check) -> None:
    echo(f"source: {c.source}")
    echo(f"release: {c.version or '(no version announced)'}; running: {c.running or '(unknown)'}"
         + ("; newer" if c.newer else "; not newer"))  # fmt: skip
    for name, kind, size in c.files:
        echo(f"  {kind:7} {size:>12}  {name}")
    free = f"{c.room} bytes free" if c.room is not None else "free space unknown"
    echo(f"download: {c.size} bytes; staging: {free}" + (f"; downloaded already ({c.staged})" if c.staged else ""))


def _done(out: dict[str, object], as_json: bool) -> None:
    if as_json:
        print_json(out)
