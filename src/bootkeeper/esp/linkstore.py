"""The persistent extension store (``sysext.store: persistent``): extensions off the ESP, kept as Kairos 3.4
keeps them (kairos-docs, blog/2025-04-15-system-extensions.md: the images in ``/var/lib/kairos/extensions/``,
one folder of symbolic links per boot profile, linked into ``/run/extensions`` at boot). Large images then
never pass through systemd-stub, which failed to load them (kairos#2630).

Layout under DIR (``sysext.store_dir``, default ``/var/lib/bootkeeper/extensions``)::

    DIR/<image>.raw                              the images: regular files, one per name
    DIR/<folder>/<name>.raw -> ../<image>.raw    links: active/ passive/ recovery/ statereset/ common/

A booted role loads its own folder and ``common/``. A link counts only when it is a symbolic link whose
target is exactly ``../<image>`` and that image is a regular file in DIR: anything else in a folder (a
plain file, a link elsewhere, a link to a link) is reported and never used, so what is unreadable makes
fewer images load, never more.

Writes hold an exclusive flock on DIR and follow the ESP's rules (:class:`~bootkeeper.esp.store.FolderStore`:
a temporary name nothing loads, fsync, rename, fsync the folder; temporaries a killed run left are removed
by the next write). A role's folder is replaced by staging ``.bootkeeper-upgrade-<role>.d`` and renaming it
into place while no entry of that role can boot (assess/upgrade.py orders those steps).

This module lives in ``esp/`` beside the ESP store because a role's *set* spans both (docs/design.md,
"An upgrade is a transaction"): the upgrade moves a role's UKI and its links in one ordered transaction.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bootkeeper import fsutil
from bootkeeper.errors import UnreadableError, WriteError
from bootkeeper.esp.checked import put_checked
from bootkeeper.esp.entries import Role
from bootkeeper.esp.store import FolderStore

COMMON = "common"
FOLDERS = (*(r.value for r in Role), COMMON)
COS_DIR = "run/cos"  # Kairos's immucore writes <role>_mode here


@dataclass(frozen=True)
class Link:
    """One entry of a folder: a link ``name`` to the store's ``image``, or why it is not used."""

    folder: str
    name: str
    image: str | None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def target_of(image: str) -> str:
    return f"../{image}"


def _accept(_: Path) -> None:
    """No check beyond the digest: the image was judged before it was put."""


def _plain(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..") and "\0" not in name


class LinkStore(FolderStore):
    what = "extension store"

    def temporary_folders(self) -> list[Path]:
        out = [self.root]
        with contextlib.suppress(OSError):
            out += [d for d in sorted(self.root.iterdir()) if d.is_dir() and not d.is_symlink()]
        return out

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """The lock (the folder is made first: a fresh node has none) and no stale temporaries."""
        if self.root.is_symlink():
            raise WriteError(f"{self.root}: is a symbolic link; refusing to write through it")
        try:
            self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(f"{self.root}: cannot create ({exc.strerror})") from exc
        with self.locked():
            self.clear_temporaries()
            yield

    # -- reading ---------------------------------------------------------------------------

    def images(self) -> dict[str, Path]:
        """The images: regular ``*.raw`` files at the top of the store."""
        try:
            names = sorted(os.listdir(self.root))
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except OSError as exc:
            raise UnreadableError(f"{self.root}: cannot list ({exc.strerror})") from exc
        out = {}
        for n in names:
            p = self.root / n
            with contextlib.suppress(OSError):
                if n.endswith(".raw") and not fsutil.is_temporary(n) and stat.S_ISREG(os.lstat(p).st_mode):
                    out[n] = p
        return out

    def links(self, folder: str) -> list[Link]:
        """Every ``*.raw`` of ``folder`` (a role, ``common`` or a staging folder), judged as activate
        judges it; a folder that is missing has none, one that cannot be listed is one problem."""
        d = self.root / folder
        try:
            if d.is_symlink():
                return [Link(folder, folder, None, f"{d}: is a symbolic link; not followed")]
            names = sorted(os.listdir(d))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            return [Link(folder, folder, None, f"{d}: cannot list ({exc.strerror})")]
        return [self._judge(folder, n) for n in names if n.endswith(".raw") and not fsutil.is_temporary(n)]

    def _judge(self, folder: str, name: str) -> Link:
        p = self.root / folder / name
        try:
            st = os.lstat(p)
            if not stat.S_ISLNK(st.st_mode):
                return Link(folder, name, None, f"{p}: not a link into {self.root}; not used")
            target = os.readlink(p)
        except OSError as exc:
            return Link(folder, name, None, f"{p}: cannot read ({exc.strerror})")
        image = target[3:] if target.startswith("../") else ""
        if not _plain(image):
            return Link(folder, name, None, f"{p}: links to {target!r}, not to an image of {self.root}; not used")
        try:
            ist = os.lstat(self.root / image)
        except FileNotFoundError:
            return Link(folder, name, None, f"{p}: names {target}, which is not in {self.root}; not used")
        except OSError as exc:
            return Link(folder, name, None, f"{p}: {target}: cannot read ({exc.strerror}); not used")
        if not stat.S_ISREG(ist.st_mode):
            return Link(folder, name, None, f"{p}: {target} is not a regular file; not used")
        return Link(folder, name, image)

    def linked(self) -> dict[str, list[str]]:
        """image name -> the folders (staging ones too) that link to it."""
        out: dict[str, list[str]] = {}
        try:
            folders = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.is_symlink())
        except OSError:
            return out
        for f in folders:
            for lk in self.links(f):
                if lk.image is not None:
                    out.setdefault(lk.image, []).append(f)
        return out

    def image_for(self, name: str, digest: str) -> tuple[str, bool]:
        """Where an image called ``name`` with SHA-256 ``digest`` goes, and whether it must be copied:
        ``name`` itself, unless another image of that name is linked from a folder; then
        ``<stem>~<digest[:12]>.raw`` (links keep the name systemd-sysext sees, so a new build of
        ``k3s.raw`` never replaces the bytes an older OS still loads)."""
        held = self.images()
        for candidate in (name, f"{name[: -len('.raw')]}~{digest[:12]}.raw"):
            have = held.get(candidate)
            if have is None:
                return candidate, True
            if fsutil.sha256_file(have) == digest:
                return candidate, False
            if candidate not in self.linked():
                return candidate, True  # garbage of an earlier run: replaced
        raise WriteError(f"{self.root}: {name}: two other images of this name are linked; remove one first")

    # -- writing (inside transaction()) ----------------------------------------------------

    def put(self, src: Path, image: str, digest: str | None = None) -> None:
        """Copy ``src`` to the image ``image``, crash-safely; with ``digest`` (the bytes that were
        judged) the copy is compared before it gets its name."""
        dest = self.root / image
        sfd = fsutil.open_input(src)  # the source's fault is not a failed write
        try:
            with self.naming(dest, "cannot write"):
                changed = f"{src}: changed after it was judged; not copied to {dest}"
                put_checked(self, sfd, [dest], _accept, digest=digest, changed=changed)
        finally:
            os.close(sfd)

    def link(self, folder: str, name: str, image: str) -> None:
        """``folder/name`` -> ``../image``: a temporary link renamed over it, the folder synced."""
        self.makedirs(folder)
        p = self.root / folder / name
        with self.naming(p, "cannot link"):
            tmp = fsutil.temp_path(p.parent)
            self.step(f"symlink:{name}")
            os.symlink(target_of(image), tmp)
            try:
                self.step(f"rename:{tmp.name}->{name}")
                os.rename(tmp, p)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            fsutil.fsync_dir(p.parent, self.step)

    def collect(self) -> list[str]:
        """Remove the images no folder links to; return their names."""
        used = self.linked()
        gone = [n for n in self.images() if n not in used]
        for n in gone:
            self.unlink(n)
        return gone


def booted_role(root: Path, efivars: Path) -> tuple[Role | None, str]:
    """The role this boot runs, and where that came from: ``/run/cos/<role>_mode`` (exactly one, as
    immucore writes it), else the entry ``LoaderEntrySelected`` names (``active+2.efi``, ``passive.conf``)."""
    from bootkeeper.errors import BootkeeperError
    from bootkeeper.esp import efivars as efivars_mod

    cos = root / COS_DIR
    found = [r for r in Role if (cos / f"{r.value}_mode").exists()]
    if len(found) == 1:
        return found[0], f"{cos}/{found[0].value}_mode"
    if len(found) > 1:
        return None, f"{cos}: more than one mode file"
    try:
        selected = efivars_mod.read_string(efivars, "LoaderEntrySelected")
    except (OSError, BootkeeperError) as exc:
        return None, f"LoaderEntrySelected cannot be read ({exc})"
    if selected is None:
        return None, f"no {cos}/<role>_mode and no LoaderEntrySelected"
    role = Role.from_entry_id(selected)
    return role, f"LoaderEntrySelected={selected}"
