"""The TPM's say in a change of the boot set, shared by the verbs that make one: which LUKS2 volumes
are checked (``--luks``, else /etc/crypttab's), whether an extension change leaves them unlocking
(PCR 13, :func:`bootkeeper.measure.luks.extension_gate`), and the systemd-pcrlock components made
again for the entries it changed. The rules live in ``measure/``; this module reads the node and
prints the warnings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from bootkeeper.cli.common import F
from bootkeeper.shown import echo


def luks_option(what: str) -> Callable[[F], F]:
    def deco(f: F) -> F:
        return click.option(
            "--luks",
            "luks",
            multiple=True,
            type=click.Path(path_type=Path, dir_okay=False),
            help=f"A LUKS2 volume {what} (repeatable; default: /etc/crypttab's).",
        )(f)

    return deco


def volumes(root: Path, luks: tuple[Path, ...]) -> list[Any]:
    """:func:`bootkeeper.measure.luks.node_volumes`, its warnings printed."""
    from bootkeeper.measure import luks as luks_mod

    found, warnings = luks_mod.node_volumes(root, luks)
    for w in warnings:
        echo(f"bootkeeper: warning: {w}", err=True)
    return found


def extension_gate(root: Path, luks: tuple[Path, ...]) -> list[Any]:
    """Per volume, what an extension change on the ESP does to its TPM2 tokens (PCR 13)."""
    from bootkeeper.measure import luks as luks_mod

    found = volumes(root, luks)
    if not found:
        return []
    pol = luks_mod.pcrlock_policy(root)
    return [luks_mod.extension_gate(v, pol) for v in found]


def refuse_or_warn(gates: list[Any], force: bool, verb: str) -> bool:
    """Raise the refusal (nothing was written yet) unless ``force``; with it, warn. Also warn about
    broken tokens on a volume that still unlocks with another one. True when forced past a refusal."""
    from bootkeeper.errors import RefusedError

    bad = [g for g in gates if not g.ok]
    for g in gates:
        if g.ok and g.broken:
            echo(f"bootkeeper: warning: {g.note()}", err=True)
    if not bad:
        return False
    reasons = "; ".join(g.reason() for g in bad)
    if not force:
        raise RefusedError(
            f"{verb} refused: {reasons}; nothing was changed",
            hint="bind the volume to the signed PCR 11 policy (systemd-cryptenroll --tpm2-public-key-pcrs=11 "
            "--tpm2-pcrs=), or pass --force and enrol it again (or run systemd-pcrlock make-policy) before "
            "the next boot",
        )
    echo(f"bootkeeper: warning: {verb} with --force although {reasons}", err=True)
    return True


@dataclass
class PcrlockRun:
    """``tpm pcrlock`` made again for the entries a change touched, in each folder it was set up in."""

    dirs: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"dirs": self.dirs, "written": self.written, "error": self.error}


def rerun_pcrlock(root: Path, store: Any, extra_dirs: set[str]) -> PcrlockRun | None:
    """The 660-bootkeeper-sysext variants of the changed entries, written again where ``tpm pcrlock``
    was set up (under ``root``); None when it was not, or nothing changed. A failure here comes after
    the change was made: it is a warning, never the verb's failure."""
    from bootkeeper.errors import BootkeeperError
    from bootkeeper.measure import pcrlock

    dirs = pcrlock.setup_dirs(root)
    if not dirs or not extra_dirs:
        return None
    run = PcrlockRun([str(d) for d in dirs])
    try:
        variants = pcrlock.sysext_variants(store, extra_dirs)
        for d in dirs:
            run.written += [str(d / w) for w in pcrlock.update(d, variants)]
    except BootkeeperError as exc:
        run.error = str(exc)
        echo(
            f"bootkeeper: warning: the systemd-pcrlock components were not made again ({exc}); "
            "run bootkeeper tpm pcrlock",
            err=True,
        )
        return run
    for w in run.written:
        echo(f"bootkeeper: pcrlock: {w} written; run systemd-pcrlock make-policy before the next boot", err=True)
    return run
