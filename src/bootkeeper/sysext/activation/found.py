"""What activation takes in: every entry of the source folders (the UKI's ``/.extra/sysext``, the
ESP's global extensions, the persistent store's folders of links, the configured folders), each an
image to judge or skipped with its reason; the images to copy, smallest first, each with its size."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from bootkeeper import fsutil
from bootkeeper.sysext.activation.outcome import Outcome, StoreUsed, refused

if TYPE_CHECKING:
    from bootkeeper.config import Sysext
    from bootkeeper.esp.linkstore import LinkStore

EXTRA_DIR = ".extra/sysext"
# Newer systemd-stub also hands the ESP's loader/extensions/*.raw (extensions for every UKI) to the
# initrd here; they are judged exactly like the UKI's own, which win on a name clash.
GLOBAL_DIR = ".extra/global_sysext"
CONFEXT_SKIPPED = "a configuration extension: systemd-confext's, not placed in /run/extensions"

# a source: a folder of images, or a folder of links into the persistent store (the store, the folder)
Source = Path | tuple["LinkStore", str]


class Found(NamedTuple):
    """One entry of a source folder: its name, the image to judge (None when skipped, with the
    reason in ``skipped``), and where it was found (the entry in its folder, a link for the store;
    the folder itself when it cannot be listed)."""

    name: str
    path: Path | None
    skipped: str | None
    at: Path


@dataclass(frozen=True)
class Job:
    """An image to copy and judge: its name in the destination, where it is, its size when listed."""

    name: str
    src: Path
    size: int


def candidates(sources: list[Source]) -> list[Found]:
    """Every entry of the source folders, first folder wins. A link of the store that is not exactly
    ``../<image>`` of a regular file there is skipped with its reason."""
    out: list[Found] = []
    seen: set[str] = set()
    for source in sources:
        listed, label = _listed(source, out)
        for n, p, problem in listed:  # systemd-stub only passes *.raw; nothing else is an image
            out.append(_screen(n, p, problem, label / n, seen))
    return out


def _listed(source: Source, out: list[Found]) -> tuple[list[tuple[str, Path, str | None]], Path]:
    """The images of one source (name, path, problem) and the folder they are named under; a folder
    that cannot be listed is added to ``out`` as skipped, and lists nothing."""
    if isinstance(source, tuple):
        store, folder = source
        links = store.links(folder)
        return [
            (lk.name, store.root / (lk.image or f"{folder}/{lk.name}"), lk.problem) for lk in links
        ], store.root / folder
    d = source
    try:
        if d.is_symlink():
            out.append(Found(d.name, None, f"{d}: source folder is a symbolic link; not followed", d))
            return [], d
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return [], d
    except OSError as exc:
        out.append(Found(d.name, None, f"{d}: cannot list ({exc.strerror})", d))
        return [], d
    return [(n, d / n, None) for n in names if not fsutil.is_temporary(n) and n.endswith(".raw")], d


def _screen(n: str, p: Path, problem: str | None, at: Path, seen: set[str]) -> Found:
    """One listed image: to judge, or skipped (a problem with its link, a configuration extension, a
    name taken by an earlier folder, a name systemd-sysext would not take)."""
    from bootkeeper.errors import UsageError
    from bootkeeper.sysext.deploy import check_name

    if problem is not None:
        return Found(n, None, problem, at)
    if n.endswith(".confext.raw"):  # systemd-stub hands these to /.extra/confext
        return Found(n, None, f"{at}: {CONFEXT_SKIPPED}", at)
    if n in seen:
        return Found(n, None, f"{at}: an image of this name came from an earlier folder", at)
    seen.add(n)
    try:
        check_name(n)
    except UsageError as exc:
        return Found(n, None, str(exc), at)
    return Found(n, p, None, at)


def store_sources(root: Path, cfg: Sysext, efivars: Path | None) -> tuple[list[tuple[LinkStore, str]], StoreUsed]:
    """``sysext.store: persistent``: the booted role's folder of links and ``common/``, and what the
    report says of them. A role that cannot be told loads ``common/`` alone (fewer images, never more)."""
    from bootkeeper.esp import efivars as efivars_mod
    from bootkeeper.esp import linkstore

    store = linkstore.LinkStore(fsutil.under(root, cfg.store_dir))
    role, why = linkstore.booted_role(root, efivars or efivars_mod.under(root))
    folders = [role.value] if role is not None else []
    folders.append(linkstore.COMMON)
    used = StoreUsed(dir=str(store.root), role=role.value if role else None, why=why, folders=folders)
    if role is None:
        used["problem"] = f"the booted role is unknown ({why}): only {linkstore.COMMON}/ is loaded"
    return [(store, f) for f in folders], used


def take_stock(found: list[Found]) -> tuple[dict[int, Outcome], dict[str, Outcome], list[Job]]:
    """The skipped (by entry: one name may be skipped in one folder, judged from another), the refused
    unopened (by name: the names judged are unique, see :func:`candidates`), and the jobs to copy and
    judge, smallest first (see :mod:`bootkeeper.sysext.activate`)."""
    skips: dict[int, Outcome] = {}
    outcomes: dict[str, Outcome] = {}
    pending: list[Job] = []
    for i, (name, src, skipped, _) in enumerate(found):
        if src is None:
            skips[i] = Outcome(name, "", False, "skipped", [skipped or "skipped"])
            continue
        try:
            st = os.lstat(src)
        except OSError as exc:
            outcomes[name] = refused(name, src, f"{src}: cannot open ({exc.strerror})")
            continue
        pending.append(Job(name, src, st.st_size))
    pending.sort(key=lambda j: (j.size, j.name))
    return skips, outcomes, pending


def previous(root: Path) -> list[str]:
    """The images the last activation placed (its report), to be removed now if not placed again."""
    from bootkeeper.errors import BootkeeperError
    from bootkeeper.sysext import report

    try:
        last = report.read(root)
    except BootkeeperError:
        return []
    return list(last.placed) if last else []


def from_root(root: Path, p: Path) -> str:
    """``p`` as the node sees it (``/.extra/sysext/a.raw``), the same under any ``--root``."""
    try:
        return "/" + str(p.relative_to(root))
    except ValueError:
        return str(p)
