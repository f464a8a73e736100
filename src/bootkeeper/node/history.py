"""The boot history as the verbs write it (assess/history.py holds the records): this boot's id, and
the verdict of ``bless`` with a statereset boot's hand-back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bootkeeper.assess.handback import Result as Handback

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def current_boot_id(given: str | None) -> str:
    """``given`` (``--boot-id``), else the kernel's id of this boot, else one made from the time."""
    if given:
        return given
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return f"unknown-{int(time.time())}"


def record_verdict(root: Path, boot_id: str | None, verdict: str, handback: Handback | None = None) -> str | None:
    """The verdict, and a statereset boot's hand-back, go into the boot history (where ``history record``
    keeps one: a node with bootkeeper-boot.service); failing to write it never fails the bless: the
    failure is returned, to be said as a warning."""
    from bootkeeper.assess import history
    from bootkeeper.errors import WriteError

    if not (root / history.HISTORY).parent.is_dir():
        return None
    bid, now = current_boot_id(boot_id), time.time()
    try:
        history.append(root, history.verdict_record(bid, now, verdict))
        if handback is not None:
            from bootkeeper.assess import handback as handback_mod

            history.append(root, handback_mod.record(bid, now, handback))
    except WriteError as exc:
        return str(exc)
    return None
