"""extension-release inside an image, checked against the host's os-release as systemd-sysext does
(``extension_release_validate()``): SYSEXT_SCOPE, ARCHITECTURE (``_any`` or the host's), ID
(``_any``, the host's ID or one of its ID_LIKE), then SYSEXT_LEVEL if both sides have one, else
VERSION_ID; a host without VERSION_ID and SYSEXT_LEVEL (rolling release) matches on ID alone.

The file is ``usr/lib/extension-release.d/extension-release.NAME`` where NAME is the image file
name without ``.raw`` (and without ``.sysext``, as systemd names images). A file under another
name is not taken: systemd-dissect 257 did not report it either (tests/sysext/test_interop.py).
erofs is read by :mod:`erofs`; squashfs with ``unsquashfs -cat`` through ``run()``.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bootkeeper.errors import CommandError, MalformedError, UnreadableError
from bootkeeper.esp.keyvalue import KeyValue, split_lines
from bootkeeper.sysext.erofs import Erofs

RELEASE_DIR = "usr/lib/extension-release.d"


def parse_release(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in split_lines(text, "="):
        if isinstance(item, KeyValue):
            v = item.value
            if len(v) >= 2 and v[0] == v[-1] == "'":
                v = v[1:-1]
            out[item.key] = v
    return out


def image_stem(name: str) -> str:
    """An image's name as systemd names it (``k3s.sysext.raw`` → ``k3s``): without ``.raw``, then
    without the class suffix ``.sysext`` (systemd src/shared/discover-image.c:
    extract_image_basename() with image_class_suffix_to_string()). The one rule for the
    extension-release file's NAME, ``sysext.entries`` patterns and the short name of ``sysext remove``."""
    stem = name.removesuffix(".raw")
    return stem.removesuffix(".sysext")


@dataclass(frozen=True)
class Release:
    file: str
    fields: dict[str, str]
    has_os_release: bool


def read_from_partition(path: Path, offset: int, size: int, fstype: str | None, name: str) -> Release:
    """The extension-release of the file system in bytes ``offset..offset+size`` of ``path``."""
    what = f"{name} (root file system)"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise UnreadableError(f"{what}: cannot open {path} ({exc.strerror})") from None
    try:
        if fstype == "erofs":
            return _from_erofs(Erofs(lambda off, n: os.pread(fd, n, offset + off), size, what), name, what)
        if fstype == "squashfs":
            return _squashfs((path, offset, size), name, what)
    except OSError as exc:
        raise UnreadableError(f"{what}: cannot read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    raise MalformedError(f"{what}: unknown file system, cannot read the extension-release")


def read_from_fs(fs: bytes, fstype: str | None, name: str, what: str) -> Release:
    if fstype == "erofs":
        return _from_erofs(Erofs(lambda off, n: fs[off : off + n], len(fs), what), name, what)
    if fstype == "squashfs":
        return _squashfs(fs, name, what)
    raise MalformedError(f"{what}: unknown file system, cannot read the extension-release")


def _shown(name: str) -> str:
    """A file name from the image as it goes into a one-line message: escaped by bootkeeper's one rule
    (bootkeeper.shown) and quoted when that changed it (a newline would split the line, and the journal's)."""
    from bootkeeper.shown import shown

    text = shown(name)
    return text if text == name else f"'{text}'"


def _from_erofs(e: Erofs, name: str, what: str) -> Release:
    d = e.lookup(RELEASE_DIR)
    names = [n for n in (e.listdir(d) if d is not None else {}) if n.startswith("extension-release.")]
    own = f"extension-release.{name}"
    if own not in names:
        raise MalformedError(
            f"{what}: no {RELEASE_DIR}/{own}" + (f" (found {', '.join(map(_shown, names))})" if names else "")
        )
    pick = own
    ino = e.lookup(f"{RELEASE_DIR}/{pick}")
    assert ino is not None
    has_os = e.lookup("usr/lib/os-release") is not None or e.lookup("etc/os-release") is not None
    return Release(pick, parse_release(e.read(ino).decode("utf-8", "replace")), has_os)


_SQUASHFS_SB = struct.Struct("<IIIIIHHHHHHQQQQQQQQ")  # squashfs 4.0 super block, 96 bytes
_ABSENT = 0xFFFF_FFFF_FFFF_FFFF


def _squashfs_bounds(fd: int, offset: int, size: int, what: str) -> None:
    """The super block's own size and every table it points at lie inside the partition: what
    unsquashfs then reads is what dm-verity will expose, nothing from past the partition's end."""
    raw = os.pread(fd, _SQUASHFS_SB.size, offset)
    if len(raw) < _SQUASHFS_SB.size:
        raise MalformedError(f"{what}: squashfs: super block truncated")
    f = _SQUASHFS_SB.unpack(raw)
    magic, bytes_used, tables = f[0], f[12], f[13:]
    if magic != 0x73717368:  # "hsqs"
        raise MalformedError(f"{what}: squashfs: bad magic")
    if bytes_used > size:
        raise MalformedError(f"{what}: squashfs: bytes_used {bytes_used} is past the partition's {size} bytes")
    for t in tables:
        if t != _ABSENT and t >= bytes_used:
            raise MalformedError(f"{what}: squashfs: a table at byte {t} is past bytes_used {bytes_used}")


def _squashfs(fs: bytes | tuple[Path, int, int], name: str, what: str) -> Release:
    """The squashfs is read by the real ``unsquashfs``: in place (``-o OFFSET``, after the bounds
    check, so no copy of the partition in memory or in /tmp), or from a temporary file when given
    bytes. Its failure, or its absence, is a fault of this image's check (a MalformedError naming it),
    never of the whole run: activate judges every image on its own, and the image is then refused
    for an unreadable extension-release."""
    from bootkeeper.run import check_tool, run

    try:
        check_tool("unsquashfs", "to read the extension-release from a squashfs image")
        with contextlib.ExitStack() as stack:
            if isinstance(fs, bytes):
                tmp = stack.enter_context(tempfile.NamedTemporaryFile())
                tmp.write(fs)
                tmp.flush()
                image = ["-o", "0", tmp.name]
            else:
                path, offset, size = fs
                fd = os.open(path, os.O_RDONLY)
                stack.callback(os.close, fd)
                _squashfs_bounds(fd, offset, size, what)
                image = ["-o", str(offset), str(path)]
            listing = run(["unsquashfs", "-lc", "-d", "", *image]).stdout.split()
            names = [
                p.rsplit("/", 1)[-1]
                for p in listing
                if p.startswith((f"{RELEASE_DIR}/extension-release.", f"/{RELEASE_DIR}/extension-release."))
            ]
            own = f"extension-release.{name}"
            if own not in names:
                found = f" (found {', '.join(map(_shown, names))})" if names else ""
                raise MalformedError(f"{what}: no {RELEASE_DIR}/{own}{found}")
            try:
                text = run(["unsquashfs", "-cat", *image, f"{RELEASE_DIR}/{own}"]).stdout
            except CommandError as exc:
                raise MalformedError(f"{what}: cannot read {RELEASE_DIR}/{own} ({exc})") from None
            has_os = any(p.rstrip("/").endswith(("usr/lib/os-release", "etc/os-release")) for p in listing)
            return Release(own, parse_release(text), has_os)
    except CommandError as exc:
        raise MalformedError(f"{what}: squashfs: {exc}") from None
    except OSError as exc:  # the image, or the temporary copy of given bytes
        raise MalformedError(f"{what}: squashfs: cannot read ({exc.strerror or exc})") from None


def check(rel: Release, host: dict[str, str] | None, arch: str, scope: str = "system") -> str | None:
    """None when the extension fits the host; otherwise why not. Without the host's os-release
    (``host`` None) only what needs no host is checked: own os-release, scope, architecture, ID."""
    f = rel.fields
    if rel.has_os_release:
        return "the image carries its own os-release: it is an OS image, not an extension"
    scopes = f.get("SYSEXT_SCOPE")
    if scopes is not None and scope not in scopes.split():
        return f"SYSEXT_SCOPE={scopes} does not include {scope}"
    a = f.get("ARCHITECTURE")
    if a and a != "_any" and a != arch:
        return f"ARCHITECTURE={a}, this machine is {arch}"
    ext_id = f.get("ID")
    if not ext_id:
        return f"{rel.file} has no ID"
    if ext_id == "_any" or host is None:
        return None
    host_id = host.get("ID", "")
    if ext_id != host_id and ext_id not in host.get("ID_LIKE", "").split():
        return f"ID={ext_id}, the host is {host_id}" + (f" (like {host['ID_LIKE']})" if host.get("ID_LIKE") else "")
    return _check_level(rel, host)


def _check_level(rel: Release, host: dict[str, str]) -> str | None:
    """The extension's SYSEXT_LEVEL, else its VERSION_ID, against the host's (the ID already matches)."""
    f = rel.fields
    host_ver, host_level = host.get("VERSION_ID", ""), host.get("SYSEXT_LEVEL", "")
    if not host_ver and not host_level:
        return None
    ext_level = f.get("SYSEXT_LEVEL", "")
    if host_level and ext_level:
        return None if host_level == ext_level else f"SYSEXT_LEVEL={ext_level}, the host has {host_level}"
    if not host_ver:
        return None
    ext_ver = f.get("VERSION_ID", "")
    if not ext_ver:
        return f"{rel.file} has no VERSION_ID (the host has {host_ver}) and no matching SYSEXT_LEVEL"
    return None if ext_ver == host_ver else f"VERSION_ID={ext_ver}, the host has {host_ver}"
