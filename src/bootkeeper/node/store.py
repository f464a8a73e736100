"""Where the node keeps its boot set: the ESP (found as systemd does) and the persistent extension store
(``sysext.store: persistent``), each found or built in one place."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bootkeeper.errors import EspError

if TYPE_CHECKING:
    from bootkeeper.config import Config
    from bootkeeper.esp.linkstore import LinkStore


def link_store(cfg: Config, root: Path) -> LinkStore:
    """The store at ``sysext.store_dir``, under ``root``."""
    from bootkeeper import fsutil
    from bootkeeper.esp.linkstore import LinkStore

    return LinkStore(fsutil.under(root, cfg.sysext.store_dir))


def persistent(cfg: Config) -> bool:
    """Whether extensions live in the persistent store rather than the ESP's .extra.d folders."""
    from bootkeeper.config import SysextStore

    return cfg.sysext.store is SysextStore.PERSISTENT


def links_if_persistent(cfg: Config, root: Path) -> LinkStore | None:
    """The persistent store when ``sysext.store: persistent``, else None."""
    return link_store(cfg, root) if persistent(cfg) else None


ESP_CANDIDATES = (Path("/efi"), Path("/boot/efi"), Path("/boot"))


def find_esp(esp: Path | None) -> Path:
    """``--esp``, else the first of /efi, /boot/efi, /boot that holds loader/ or EFI/."""
    if esp is not None:
        return esp
    for c in ESP_CANDIDATES:
        if (c / "loader").is_dir() or (c / "EFI").is_dir():
            return c
    raise EspError("no ESP found at /efi, /boot/efi or /boot; pass --esp DIR")


def esp_under(esp: Path | None, root: Path) -> Path:
    """``--esp``, else the first of ROOT/efi, ROOT/boot/efi, ROOT/boot with loader/ or EFI/."""
    if esp is not None or root == Path("/"):
        return find_esp(esp)
    for c in ESP_CANDIDATES:
        d = root / c.relative_to("/")
        if (d / "loader").is_dir() or (d / "EFI").is_dir():
            return d
    raise EspError(f"no ESP found under {root} (efi, boot/efi, boot); pass --esp DIR")
