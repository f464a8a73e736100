"""The node's systemd version, read offline from its root tree, and what that version of
systemd-sysext understands.

Read from ROOT, most robust first:

1. ``ROOT/usr/lib/systemd/systemd`` (``ROOT/lib/systemd/systemd`` on split-usr): its ELF ``DT_NEEDED``
   names ``libsystemd-shared-<tag>.so``, where the tag is meson's ``shared_lib_tag`` (the project
   version, ``252``; a distribution may set its own, so only the leading number is used). The name is
   found by searching the first 8 MiB of the binary for that byte string (it sits in ``.dynstr``,
   near the start; no ELF parser is needed, and garbage simply does not match).
2. The library itself: ``ROOT/usr/lib{,64,/*-linux-gnu}/systemd/libsystemd-shared-*.so`` and
   ``ROOT/lib/systemd/libsystemd-shared-*.so``.
3. dpkg's ``ROOT/var/lib/dpkg/status``: the ``Version:`` of the installed ``Package: systemd``.

Paths are resolved inside ROOT as a chroot would (an absolute symbolic link points into ROOT, at
most 40 links); only regular files are read, and never more than a fixed number of bytes. A hostile
tree (loops, FIFOs, huge or garbled files) gives ``None``, never an exception.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

# --image-policy= first appears in systemd-sysext v254 (commit 84be0c710d9d "tree-wide: hook up image
# dissection policy logic everywhere"); 252/253's getopt rejects it ("case '?': return -EINVAL"):
# exit 1, nothing merged.
IMAGE_POLICY_SINCE = 254
# sysext.conf / sysext.conf.d with [SysExt] ImagePolicy= and Mutable=: v259 (72d51c3ebf66, PR #38250).
SYSEXT_CONF_SINCE = 259
# What is assumed when the version can be neither read nor is configured: today's behaviour.
ASSUMED = IMAGE_POLICY_SINCE
LOWEST, HIGHEST = 200, 999  # a plausible systemd major; anything else read is ignored

_BINARIES = ("usr/lib/systemd/systemd", "lib/systemd/systemd")
_LIB_DIRS = ("usr/lib/systemd", "usr/lib64/systemd", "usr/lib/*-linux-gnu/systemd", "lib/systemd")
_DPKG_STATUS = "var/lib/dpkg/status"
_SCAN = 8 << 20  # bytes of the binary searched for the DT_NEEDED name
_DPKG_MAX = 64 << 20  # a real status file is a few MB
_MAX_LINKS = 40  # the kernel's limit (ELOOP)
_NEEDED = re.compile(rb"libsystemd-shared-([0-9][^\0/]{0,63})\.so\0")
_LIBNAME = re.compile(r"libsystemd-shared-([0-9][^/]{0,63})\.so")
_LEADING = re.compile(r"[0-9]{1,4}")


def major_of(tag: str) -> int | None:
    """The leading number of a version tag (``252``, ``257.13-1~deb13u1``, ``1:255.4``), if plausible."""
    tag = tag.strip()
    if ":" in tag:  # a Debian epoch
        tag = tag.split(":", 1)[1]
    m = _LEADING.match(tag)
    if m is None or (len(tag) > m.end() and tag[m.end()].isdigit()):
        return None
    n = int(m.group(0))
    return n if LOWEST <= n <= HIGHEST else None


def resolve_in(root: Path, rel: str) -> Path | None:
    """``rel`` inside ``root`` with every symbolic link followed as under ``chroot root`` (absolute
    targets start again at ``root``, ``..`` never leaves it). ``None`` when it does not exist, for a
    loop, or for a link that cannot be read."""
    todo = [p for p in rel.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = root.joinpath(*done, part)
        try:
            st = os.lstat(here)
            if not stat.S_ISLNK(st.st_mode):
                done.append(part)
                continue
            target = os.readlink(here)
        except (OSError, ValueError):  # missing, not a folder on the way, a NUL in a name
            return None
        links += 1
        if links > _MAX_LINKS:
            return None
        if target.startswith("/"):
            done = []
        todo = [p for p in target.split("/") if p not in ("", ".")] + todo
    return root.joinpath(*done)


def is_null(root: Path, rel: str) -> bool:
    """systemd's masking: ``rel`` is a symbolic link to ``/dev/null`` (or an empty regular file)."""
    p = root / rel
    with contextlib.suppress(OSError):
        if os.path.islink(p) and os.readlink(p) == "/dev/null":
            return True
        st = os.lstat(p)
        return stat.S_ISREG(st.st_mode) and st.st_size == 0
    return False


def read_in(root: Path, rel: str, limit: int) -> bytes | None:
    """At most ``limit`` bytes of the regular file ``rel`` inside ``root`` (see :func:`resolve_in`);
    ``None`` when it is missing, not a regular file (a FIFO is never opened for waiting) or unreadable."""
    p = resolve_in(root, rel)
    if p is None:
        return None
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, left = [], limit
        while left > 0:
            b = os.read(fd, min(left, 1 << 20))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _from_binary(root: Path) -> tuple[int, str] | None:
    for rel in _BINARIES:
        data = read_in(root, rel, _SCAN)
        if data is None:
            continue
        for m in _NEEDED.finditer(data):
            major = major_of(m.group(1).decode("ascii", "replace"))
            if major is not None:
                return major, f"{root / rel}: needs libsystemd-shared-{m.group(1).decode('ascii', 'replace')}.so"
    return None


def _listdir(root: Path, rel: str) -> list[str]:
    d = resolve_in(root, rel)
    if d is None:
        return []
    try:
        return sorted(os.listdir(d))
    except OSError:
        return []


def _from_library(root: Path) -> tuple[int, str] | None:
    for pattern in _LIB_DIRS:
        head, _, tail = pattern.partition("*")
        if tail:  # one wildcard component, matched by hand: glob() would follow links out of ROOT
            parent, _, prefix = head.rpartition("/")
            suffix, _, rest = tail.partition("/")
            dirs = [
                f"{parent}/{n}/{rest}" for n in _listdir(root, parent) if n.startswith(prefix) and n.endswith(suffix)
            ]
        else:
            dirs = [pattern]
        for rel_dir in dirs:
            for name in _listdir(root, rel_dir):
                m = _LIBNAME.fullmatch(name)
                if m is None or (major := major_of(m.group(1))) is None:
                    continue
                if read_in(root, f"{rel_dir}/{name}", 0) is not None:  # a regular file (after links)
                    return major, str(root / rel_dir / name)
    return None


_NOT_INSTALLED = ("not-installed", "config-files")


def _from_dpkg(root: Path) -> tuple[int, str] | None:
    data = read_in(root, _DPKG_STATUS, _DPKG_MAX)
    if data is None:
        return None
    text = data.decode("utf-8", "replace")
    for stanza in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.split("\n"):
            if not line or line[0] in " \t" or ":" not in line:
                continue  # continuation lines (Description, Conffiles) say nothing about the version
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
        if fields.get("package") != "systemd":
            continue
        status = fields.get("status", "install ok installed").split()
        if status and status[-1] in _NOT_INSTALLED:
            continue
        major = major_of(fields.get("version", ""))
        if major is not None:
            return major, f"{root / _DPKG_STATUS}: systemd {fields['version']}"
    return None


def node_systemd_version(root: Path) -> tuple[int, str] | None:
    """The systemd major version of the tree at ``root`` and where it was read, or ``None``."""
    for how in (_from_binary, _from_library, _from_dpkg):
        try:
            got = how(root)
        except (OSError, ValueError, RecursionError):  # a hostile tree: try the next source
            got = None
        if got is not None:
            return got
    return None


def takes_image_policy(major: int) -> bool:
    """systemd-sysext of this version accepts ``--image-policy=``."""
    return major >= IMAGE_POLICY_SINCE


@dataclass(frozen=True)
class NodeSystemd:
    """The systemd the node runs, and how that was decided (an option, the config, read, assumed)."""

    major: int
    source: str
    found: bool = True

    @property
    def takes_image_policy(self) -> bool:
        return takes_image_policy(self.major)

    @property
    def reads_sysext_conf(self) -> bool:
        return self.major >= SYSEXT_CONF_SINCE

    def describe(self) -> str:
        return f"systemd {self.major} ({self.source})"

    def warning(self, root: Path) -> str | None:
        if self.found:
            return None
        return (
            f"{root}: the node's systemd version was not found (usr/lib/systemd/systemd, libsystemd-shared-*.so, "
            f"dpkg status); assuming {ASSUMED} or later (set sysext.systemd_version)"
        )


def resolve(root: Path, configured: int | None, option: int | None = None) -> NodeSystemd:
    """Precedence: the command-line option, then ``sysext.systemd_version``, then what is read under
    ``root``; otherwise :data:`ASSUMED`, with ``found`` false (the caller warns)."""
    if option is not None:
        return NodeSystemd(option, "--systemd-version")
    if configured is not None:
        return NodeSystemd(configured, "sysext.systemd_version")
    got = node_systemd_version(root)
    if got is not None:
        return NodeSystemd(got[0], got[1])
    return NodeSystemd(ASSUMED, "assumed: not found", found=False)
