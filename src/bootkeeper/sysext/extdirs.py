"""The other extension folders: ``/etc/extensions`` and ``/var/lib/extensions``, which systemd-sysext
merges beside ``/run/extensions`` (systemd v257 src/shared/discover-image.c: image_search_path
[IMAGE_SYSEXT]; 252 also reads ``/usr/lib/extensions`` and ``/usr/local/lib/extensions``, read-only
on a Kairos node). Nothing checks what lies there: 252 merges it whatever it is, 254 and later with
only their own policy (bootkeeper passes the configured one in enforced mode), and one image there that
systemd-sysext cannot open makes it merge none of the others (systemd#32762).

Each entry systemd-sysext would take (a ``*.raw`` file, a directory, a symbolic link, a block device;
hidden names and bootkeeper's temporaries are not its) is judged as activate judges the images it
places, in place:

* ``enforced``: an image that fails, and every directory, link or device (nothing proves where they
  come from), is refused and moved into the quarantine folder;
* ``permissive``: an image the node's systemd-sysext would not merge is moved (else it merges none),
  one that only fails bootkeeper's checks is kept (``failed-but-kept``); the rest is not judged;
* ``disabled``: listed, never read or moved.

A move is a rename within the file system (the quarantine folder and the source folder are fsynced),
or across file systems a crash-safe copy (temporary file, fsync, rename) before the original is
unlinked: a crash leaves the image in place or in both, never in neither. Nothing is ever deleted; a
name already in the quarantine gets ``.1``, ``.2``... The quarantine folder is one per source folder
(``var-lib-extensions/``, ``etc-extensions/``), under ``/var/lib/bootkeeper/quarantine``, which
systemd-sysext never reads.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bootkeeper import fsutil
from bootkeeper.config import SysextMode

if TYPE_CHECKING:
    from cryptography import x509

    from bootkeeper.sysext.policy import ImagePolicy

FOLDERS = ("etc/extensions", "var/lib/extensions")
QUARANTINE_DIR = "var/lib/bootkeeper/quarantine"
MAX_SUFFIX = 10_000  # names tried in the quarantine (NAME.1 ... ) before giving up on a collision


@dataclass
class Resident:
    """One entry of an extension folder as activation judged it. ``kept``: still where
    systemd-sysext finds it; ``quarantined``: where it was moved."""

    name: str
    path: str
    kind: str  # image | directory | symlink | device
    verdict: str  # passed | refused | failed-but-kept | unchecked
    kept: bool
    reasons: list[str] = field(default_factory=list)
    signer: str | None = None
    quarantined: str | None = None

    def line(self) -> str:
        from bootkeeper.sysext.activate import printable

        where = f"moved to {self.quarantined}" if self.quarantined else ("kept" if self.kept else "not moved")
        who = f", signed by {self.signer}" if self.signer else ""
        why = f": {'; '.join(self.reasons)}" if self.reasons else ""
        return printable(f"{self.path}: {self.verdict}, {where}{who}{why}")


@dataclass(frozen=True)
class Judge:
    """What judging needs (activate's rules): the mode, the image policy, the trusted certificates,
    the host's os-release, whether the whole hash tree is read."""

    mode: SysextMode
    pol: ImagePolicy
    certs: list[x509.Certificate]
    host: dict[str, str] | None
    full: bool


def sweep(root: Path, judge: Judge, *, move: bool, log: Callable[[str], None] | None = None) -> list[Resident]:
    """Judge every entry of the extension folders under ``root``; with ``move``, put the refused ones
    in the quarantine folder. Never raises for one entry: its reason is in its row."""
    out: list[Resident] = []
    for rel in FOLDERS:
        d = root / rel
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            continue
        except OSError as exc:
            out.append(Resident(rel, str(d), "folder", "unchecked", True, [f"{d}: cannot list ({exc.strerror})"]))
            continue
        for n in names:
            if n.startswith(".") or fsutil.is_temporary(n):
                continue  # not an extension to systemd-sysext (nor is a hidden name to us)
            r = _judge(d / n, n, judge)
            if r is None:
                continue
            if move and not r.kept:
                _quarantine(root, rel, d / n, r)
            if log is not None:
                log(r.line())
            out.append(r)
    return out


def quarantined(root: Path) -> list[Path]:
    """What the quarantine folder holds (one level per source folder), for ``sysext list`` and lint."""
    q = root / QUARANTINE_DIR
    out: list[Path] = []
    with contextlib.suppress(OSError):
        for sub in sorted(q.iterdir()):
            with contextlib.suppress(OSError):
                out += sorted(p for p in sub.iterdir() if not fsutil.is_temporary(p.name))
    return out


def _kind(p: Path, name: str) -> str | None:
    """What systemd-sysext would take ``p`` as (it follows links), or None when it would not."""
    st = os.lstat(p)
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    if stat.S_ISDIR(st.st_mode):
        return "directory"
    if stat.S_ISBLK(st.st_mode):
        return "device"
    if stat.S_ISREG(st.st_mode):
        return "image" if name.endswith(".raw") and not name.endswith(".confext.raw") else None
    return None


_NOT_AN_IMAGE = {
    "symlink": "a symbolic link: not followed, nothing shows what it leads to",
    "directory": "a directory extension: no verity, no signature, enforced mode merges signed images only",
    "device": "a block device: not judged, enforced mode merges signed images only",
}


def _judge(p: Path, name: str, judge: Judge) -> Resident | None:
    try:
        kind = _kind(p, name)
    except OSError as exc:
        return Resident(name, str(p), "image", "refused", judge.mode is SysextMode.DISABLED, [f"{p}: {exc.strerror}"])
    if kind is None:
        return None
    if judge.mode is SysextMode.DISABLED:
        return Resident(name, str(p), kind, "unchecked", True)
    if kind != "image":
        if judge.mode is SysextMode.ENFORCED:
            return Resident(name, str(p), kind, "refused", False, [_NOT_AN_IMAGE[kind]])
        return Resident(name, str(p), kind, "unchecked", True, ["not an image: not judged in permissive mode"])
    try:
        from bootkeeper.sysext.image import validate

        v = validate(p, judge.pol, judge.certs, full=judge.full, os_release=judge.host, name=name)
        ok, reasons, blockers, signer = v.ok, list(v.reasons), list(v.blockers), v.signer
    except Exception as exc:  # the per-image boundary, as in activate
        from bootkeeper.sysext.activation.outcome import fault

        why = f"validation stopped ({fault(exc)})"
        ok, reasons, blockers, signer = False, [why], [why], None
    if ok:
        return Resident(name, str(p), kind, "passed", True, [], signer)
    if judge.mode is SysextMode.PERMISSIVE and not blockers:
        return Resident(name, str(p), kind, "failed-but-kept", True, reasons, signer)
    if judge.mode is SysextMode.PERMISSIVE:
        from bootkeeper.sysext.activate import permissive_refusal

        reasons.append(permissive_refusal(blockers))
    return Resident(name, str(p), kind, "refused", False, reasons, signer)


def _free_name(qdir: Path, name: str) -> Path:
    for i in range(MAX_SUFFIX):
        target = qdir / (name if i == 0 else f"{name}.{i}")
        if not os.path.lexists(target):
            return target
    raise FileExistsError(errno.EEXIST, f"{MAX_SUFFIX} names taken", str(qdir / name))


def _quarantine(root: Path, rel: str, p: Path, r: Resident) -> None:
    """Move ``p`` into the quarantine folder (see the module's docstring); on failure it stays and
    ``r`` says why (systemd-sysext will then see it)."""
    qdir = root / QUARANTINE_DIR / rel.replace("/", "-")
    try:
        qdir.mkdir(parents=True, exist_ok=True)
        target = _free_name(qdir, p.name)
        try:
            os.rename(p, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV or r.kind != "image":
                raise
            _copy(p, target)
            os.unlink(p)
        fsutil.fsync_dir(qdir)
        fsutil.fsync_dir(p.parent)
    except OSError as exc:
        r.kept = True
        r.reasons.append(f"{p}: cannot move it to {qdir} ({exc.strerror or exc}): left in place")
        return
    r.quarantined = str(target)


def _copy(src: Path, target: Path) -> None:
    """A crash-safe copy of a regular file to ``target`` (temporary name, fsync, rename)."""
    fd_src = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        with fsutil.temp_file(target) as (fd, tmp):
            while chunk := os.read(fd_src, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            fsutil.commit(fd, tmp, target)
    finally:
        os.close(fd_src)
