"""The boot history as the verbs write it (assess/history.py holds the records): this boot's id, and
the verdict of ``bless`` with a statereset boot's hand-back."""

from __future__ import annotations

import time
from collections.abc import Callable
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


def record_boot(root: Path, esp: Callable[[], Path], efivars: Path, sdboot_version: str | None, boot_id: str | None,
                say: Callable[[str], None]) -> tuple[str, dict[str, object] | None]:  # fmt: skip
    """``history record``: this boot (booted entry, its counter, every entry's state), once per boot id;
    the record written, or None when this boot is recorded already. An ESP that cannot be read is
    said and the boot recorded without it."""
    from bootkeeper.assess import history
    from bootkeeper.errors import BootkeeperError
    from bootkeeper.esp.efivars import LoaderVars
    from bootkeeper.esp.store import EspStore

    bid = current_boot_id(boot_id)
    boots, _ = history.read(root)
    if history.recorded(boots, bid):
        return bid, None
    ev = LoaderVars.read(efivars)
    try:
        snap = EspStore(esp()).snapshot(sdboot_version, loader_info=ev.loader_info)
    except BootkeeperError as exc:
        say(f"warning: ESP not read: {exc}")
        snap = None
    rec = history.boot_record(bid, time.time(), ev.boot_count_path or ev.entry_selected, snap)
    history.append(root, rec)
    return bid, rec
