"""``bless``'s joins: which entry booted (``--entry`` or the loader's variable), the verdict on the
ESP (assess/bless.py) with its record in the boot history, and a node without boot counting."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bootkeeper.assess.bless import BlessResult, BootedEntry, Verdict
    from bootkeeper.config import BootAssessment
    from bootkeeper.esp.store import EspStore


def counted_path(efivars: Path, entry: str | None) -> tuple[str, str] | None:
    """The booted entry's path and where it was said (``--entry``, else LoaderBootCountPath); None:
    not booted with boot counting."""
    from bootkeeper.esp.efivars import read_string

    if entry is not None:
        return entry, "--entry"
    value = read_string(efivars, "LoaderBootCountPath") if efivars.is_dir() else None
    return (value, "LoaderBootCountPath") if value is not None else None


def restore_uncounted(esp: Path) -> str | None:
    """bless on a node without boot counting is still a run that puts /efi back to ro where fstab
    says so; a failure to do that is returned, to be said."""
    from bootkeeper.errors import BootkeeperError
    from bootkeeper.esp.store import EspStore

    try:
        EspStore(esp).restore_read_only()
    except BootkeeperError as exc:
        return str(exc)
    return None


def bless_recorded(
    store: EspStore,
    booted: BootedEntry,
    verdict: Verdict,
    cfg: BootAssessment,
    root: Path,
    boot_id: str | None,
) -> tuple[BlessResult, str | None]:
    """The verdict on the ESP, then in the boot history (``withheld`` when bless left the entry as
    it is); the second value: why the history could not be written."""
    from bootkeeper.assess import bless
    from bootkeeper.node.history import record_verdict

    result = bless.bless(store, booted, verdict, cfg)
    said = "withheld" if result.withheld else verdict.value
    return result, record_verdict(root, boot_id, said, result.handback)
