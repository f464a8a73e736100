"""Removable media that may hold a release, for ``bootkeeper repair`` on a node without a network
(docs/updates.md, "Repair", "Media").

Which block devices are looked at (``/sys/block``, the kernel's own view; no udev needed in recovery):

* a disk whose ``removable`` attribute is 1 (a USB stick, an SD card: block/genhd.c), every
  partition of it, or the whole disk when it has none; or
* any filesystem whose LABEL is one of :data:`LABELS` (``BKRELEASE``), on any disk: a second virtual
  disk, a stick whose bridge says it is not removable. The label is read by ``blkid -p``
  (util-linux's low-level probe, no cache).

Never a device that is mounted already (``/proc/self/mountinfo``), one that another device is built
on (``holders/``: LUKS, LVM, RAID members), an empty slot (size 0), a loop, ram or zram device unless
named on purpose (:class:`Host` ``only``, which the tests use). Each candidate is mounted read-only,
``nosuid,nodev,noexec`` under ``/run/bootkeeper/media/<name>`` with the type blkid found (one of
:data:`FSTYPES`), searched, and unmounted again, in ``finally``. A release on it is, at its top:

* an OCI image layout (a folder with an ``oci-layout`` file, the medium's root or a folder at its top):
  ``ocifile:DIR``;
* an OCI layout as a tar (``*.oci.tar``): ``ocifile:FILE``;
* a folder ``bootkeeper-release/`` holding the UKI and its extensions: ``dir:DIR``.

Nothing found on a medium is trusted: the release is verified as from any other source.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bootkeeper.errors import BootkeeperError

LABELS = ("BKRELEASE",)
MEDIA_DIR = "run/bootkeeper/media"
RELEASE_DIR = "bootkeeper-release"
OCI_TAR = ".oci.tar"
MOUNT_OPTIONS = "ro,nosuid,nodev,noexec"
# what a stick, a card or an image written for one carries; nothing the kernel would probe by guessing
FSTYPES = ("vfat", "exfat", "ext4", "ext3", "ext2", "iso9660", "udf", "btrfs", "xfs", "erofs", "squashfs")
SKIPPED = ("loop", "ram", "zram")  # kernel devices no stick is, unless named (Host.only)
MAX_LISTED = 1000  # entries read of a medium's top folder (a hostile medium may hold millions)

Say = Callable[[str], None]


@dataclass(frozen=True)
class Host:
    """Where the scan looks: the kernel's block devices, their nodes, the mount table, the labels that
    mark a release's medium, and (tests) the only device names to consider."""

    sys_block: Path = Path("/sys/block")
    dev: Path = Path("/dev")
    mountinfo: Path = Path("/proc/self/mountinfo")
    labels: tuple[str, ...] = LABELS
    only: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Candidate:
    """A block device (a partition or a whole disk) and why it is looked at."""

    name: str  # the kernel's name: sdb1, vdb, loop3
    node: Path  # its device node
    removable: bool  # its disk says removable=1


@dataclass(frozen=True)
class Medium:
    """A candidate with a filesystem that may be mounted: its type and label (blkid)."""

    name: str
    node: Path
    fstype: str
    label: str | None
    removable: bool

    @property
    def text(self) -> str:
        label = f" LABEL={self.label}" if self.label else ""
        return f"{self.node} ({self.fstype}{label}{', removable' if self.removable else ''})"


@dataclass(frozen=True)
class Found:
    """A release on a mounted medium: the source that names it (``ocifile:`` or ``dir:``)."""

    medium: Medium
    source: str


def _read(p: Path) -> str | None:
    try:
        return p.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _mounted(mountinfo: Path) -> set[str]:
    """``major:minor`` of every mounted device (proc(5), mountinfo's third field)."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return set()
    return {f[2] for f in (ln.split() for ln in lines) if len(f) > 2}


def _node(host: Host, name: str, devno: str) -> Path | None:
    """The device node of ``name``, when it is a block device with the number sysfs gives."""
    try:
        major, minor = (int(x) for x in devno.split(":"))
        st = os.stat(host.dev / name)
    except (OSError, ValueError):
        return None
    ok = stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(major, minor)
    return host.dev / name if ok else None


def candidates(host: Host) -> list[Candidate]:
    """The block devices to probe, disks in name order, each disk's partitions in order."""
    mounted = _mounted(host.mountinfo)
    try:
        disks = sorted(os.listdir(host.sys_block))
    except OSError:
        return []
    out: list[Candidate] = []
    for disk in disks:
        if host.only is not None and disk not in host.only:
            continue
        if host.only is None and disk.startswith(SKIPPED):
            continue
        d = host.sys_block / disk
        removable = _read(d / "removable") == "1"
        parts = sorted(p for p in _listdir(d) if p.startswith(disk) and (d / p / "partition").exists())
        for name, where in [(p, d / p) for p in parts] or [(disk, d)]:
            devno = _read(where / "dev")
            if devno is None or devno in mounted or _listdir(where / "holders") or _read(where / "size") in (None, "0"):
                continue
            if (node := _node(host, name, devno)) is not None:
                out.append(Candidate(name, node, removable))
    return out


def _listdir(p: Path) -> list[str]:
    try:
        return os.listdir(p)
    except OSError:
        return []


def probe(c: Candidate, labels: Sequence[str]) -> Medium | None:
    """The candidate's filesystem (``blkid -p``), when it is one to mount: on a removable disk any of
    :data:`FSTYPES`, elsewhere only one labelled with one of ``labels``."""
    from bootkeeper.run import run

    try:
        out = run(["blkid", "-p", "-o", "export", "--", str(c.node)], timeout=30).stdout
    except BootkeeperError:
        return None  # nothing blkid recognizes (exit 2), or a device that cannot be read
    fields = dict(ln.split("=", 1) for ln in out.splitlines() if "=" in ln)
    fstype, label = fields.get("TYPE"), fields.get("LABEL")
    if fstype not in FSTYPES:
        return None
    if not c.removable and label not in labels:
        return None
    return Medium(c.name, c.node, fstype, label, c.removable)


def release_in(top: Path) -> str | None:
    """The source of the release at the top of a mounted medium, or None. Links are never followed:
    a medium cannot point the search anywhere else."""
    if _is_file(top / "oci-layout"):
        return f"ocifile:{top}"
    try:
        with os.scandir(top) as it:
            names = sorted(e.name for _, e in zip(range(MAX_LISTED), it, strict=False))
    except OSError:
        return None
    for name in names:
        if not name.isprintable():
            continue
        p = top / name
        if name == RELEASE_DIR and _is_dir(p):
            return f"dir:{p}"
        if name.endswith(OCI_TAR) and _is_file(p):
            return f"ocifile:{p}"
        if _is_dir(p) and _is_file(p / "oci-layout"):
            return f"ocifile:{p}"
    return None


def _is_file(p: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(p).st_mode)
    except OSError:
        return False


def _is_dir(p: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(p).st_mode)
    except OSError:
        return False


@contextlib.contextmanager
def mounted(m: Medium, base: Path) -> Iterator[Path]:
    """``m`` mounted read-only at ``base/<name>``; unmounted (and the folder removed) when done."""
    from bootkeeper.errors import WriteError
    from bootkeeper.run import run

    target = base / m.name
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"{target}: cannot make the mount point ({exc.strerror})") from exc
    try:
        run(["mount", "-t", m.fstype, "-o", MOUNT_OPTIONS, "--", str(m.node), str(target)], timeout=60)
    except BaseException:
        with contextlib.suppress(OSError):
            target.rmdir()
        raise
    try:
        yield target
    finally:
        try:
            run(["umount", "--", str(target)], timeout=60)
        except BootkeeperError:
            run(["umount", "--lazy", "--", str(target)], timeout=60)  # busy: detached, gone when closed
        with contextlib.suppress(OSError):
            target.rmdir()


@contextlib.contextmanager
def find_release(host: Host, base: Path, say: Say) -> Iterator[Found | None]:
    """The first medium holding a release, kept mounted while the caller reads it (then unmounted);
    None when no medium holds one. A medium that cannot be mounted is said and skipped."""
    for c in candidates(host):
        m = probe(c, host.labels)
        if m is None:
            continue
        with contextlib.ExitStack() as stack:
            try:
                top = stack.enter_context(mounted(m, base))
            except BootkeeperError as exc:
                say(f"bootkeeper: warning: {m.text}: skipped: {exc}")
                continue
            source = release_in(top)
            if source is None:
                say(f"bootkeeper: {m.text}: no release on it (oci-layout, *{OCI_TAR} or {RELEASE_DIR}/)")
                continue
            say(f"bootkeeper: {m.text}: holds {source}")
            yield Found(m, source)  # the caller's errors pass through; the medium is unmounted
            return
    yield None
