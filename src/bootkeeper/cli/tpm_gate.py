"""``--luks``: the LUKS2 volumes whose TPM2 tokens a change of the boot set must leave unlocking, for the
verbs that make one (``upgrade``, ``sysext install|remove``); the gate itself is :mod:`bootkeeper.node.tpm`'s."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from bootkeeper.cli.common import F


def luks_option(what: str) -> Callable[[F], F]:
    return click.option(
        "--luks",
        "luks",
        multiple=True,
        type=click.Path(path_type=Path, dir_okay=False),
        help=f"A LUKS2 volume {what} (repeatable; default: /etc/crypttab's).",
    )
