"""Mounts below a hierarchy systemd-sysext merges (a persistent ``/usr/local``, a bind mount on
``/usr/share/pki/trust/anchors``): what each systemd does with them, the step that keeps them visible
and writable where systemd does not, and how to see from ``/proc/self/mountinfo`` that one was shadowed.

What systemd-sysext does (seen with this machine's 252 and trixie's 257.13 in private namespaces,
``tests/sysext/test_submounts.py``):

* **252-256**: ``merge_hierarchy()`` mounts a read-only overlayfs on the hierarchy (``/usr``) whose
  lowest layer is the host's ``/usr`` *directory*; overlayfs does not cross mounts, and the overlay is
  mounted on top of the mounts below ``/usr``: ``/usr/local`` shows the root file system's empty,
  read-only directory; the persistent mount is still there, beneath, and reappears on ``unmerge``
  (systemd v256 ``src/sysext/sysext.c``, read at 00217206752c: ``merge_subprocess()`` and
  ``unmerge_hierarchy()`` move no submounts; upstream issue #31922). Making ``/usr/local`` a
  hierarchy of its own (``SYSTEMD_SYSEXT_HIERARCHIES``) shows its files but through a read-only
  overlay, and without ``/usr`` in the list ``/usr`` is not merged.
* **257 and later**: ``move_submounts()`` (PR #34381, "sysext: Deal with nested mounts properly",
  first in v257) moves every submount of the hierarchy into the workspace before the overlay is put in
  place and back on top of it afterwards, also on ``unmerge``: the persistent ``/usr/local`` stays
  visible and writable. Two limits: a mount *nested* inside such a submount makes 257 abort in
  ``path_startswith_full()`` (``Assertion 'original_path' failed``, Flatcar #2111) after it has moved
  the submount away, so the mount is lost until the next refresh; fixed by PR #41875 (cloned private
  submounts). And a hierarchy below another (``/usr/local`` beside ``/usr``) still gets a read-only
  overlay of its own.

bootkeeper's step, for systemd older than :data:`PRESERVED_SINCE` (the drop-in of
``systemd-sysext.service`` and ``sysext activate --refresh`` run it around the refresh): ``keep``
bind-mounts every top-level mount below a hierarchy (recursively, so nested mounts come along) into
``/run/bootkeeper/submounts`` and makes those copies private; ``restore``, after the merge, binds each
copy back onto the merged hierarchy where the path no longer shows that mount (compared by device and
inode: the shadowed mount keeps its name in mountinfo, so ``mountpoint(1)`` cannot tell), makes it
shared again (so systemd-sysext's next ``unmerge`` takes it away with the overlay) and drops the copy.
A POSIX shell script with util-linux's ``mount``/``umount`` and coreutils' ``stat``: no Python start
on the boot's critical chain.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# systemd v257 src/sysext/sysext.c: move_submounts() (PR #34381): submounts survive merge and unmerge.
PRESERVED_SINCE = 257
DEFAULT_HIERARCHIES = ("/usr", "/opt")  # systemd-sysext's own default (arg_hierarchies)
HIERARCHIES_ENV = "SYSTEMD_SYSEXT_HIERARCHIES"  # ':'-separated, read by systemd-sysext and SCRIPT_TEXT
SCRIPT = "etc/bootkeeper/sysext-submounts"  # under ROOT; install-units writes it next to the drop-in's needs
KEEP_DIR = "run/bootkeeper/submounts"
MOUNTINFO = "/proc/self/mountinfo"
_DEPTH = 256  # mounts nested deeper are taken as reachable (a loop in hostile input ends here)

SCRIPT_TEXT = r"""#!/bin/sh
# Installed by 'bootkeeper install-units': keeps the mounts below the hierarchies systemd-sysext
# merges (a persistent /usr/local, bind mounts such as /usr/share/pki/trust/anchors) visible and
# writable over the merged overlay. systemd-sysext before v257 mounts its overlay on top of them.
# Usage: sysext-submounts keep (before the refresh) | restore (after it).
# BOOTKEEPER_ROOT: the node's root (as systemd-sysext --root=); SYSTEMD_SYSEXT_HIERARCHIES as systemd.
set -u
root=${BOOTKEEPER_ROOT:-}
root=${root%/}
keep="$root/run/bootkeeper/submounts"
hier=${SYSTEMD_SYSEXT_HIERARCHIES:-/usr:/opt}

below_hierarchy() {
    # split at ':' alone, and no pathname expansion: a hierarchy with '*', '?' or '[' is that path
    old_ifs=$IFS
    IFS=:
    set -f
    for h in $hier; do
        h=${h%/}
        case "$1" in "$root$h"/*) IFS=$old_ifs; set +f; return 0 ;; esac
    done
    IFS=$old_ifs
    set +f
    return 1
}

keep() {
    if [ -d "$keep" ]; then  # left by a run that did not get to restore
        for d in "$keep"/*; do
            [ -e "$d" ] && umount -l "$d" 2>/dev/null
        done
        rm -rf "$keep"
    fi
    mkdir -p "$keep" || return 1
    n=0
    kept=
    # mountinfo: ID PARENT MAJ:MIN ROOT TARGET OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
    while read -r _ _ _ _ t rest; do
        case "$t" in *\\*) echo "sysext-submounts: $t: a name with escapes, not kept" >&2; continue ;; esac
        case "${rest#* - }" in "overlay sysext "*) continue ;; esac  # systemd-sysext's own overlays
        case "$t" in */.systemd-sysext | */.systemd-sysext/*) continue ;; esac
        below_hierarchy "$t" || continue
        skip=
        for k in $kept; do
            case "$t" in "$k" | "$k"/*) skip=1 ;; esac  # the recursive bind of $k carries it
        done
        [ -z "$skip" ] || continue
        if [ -d "$t" ]; then mkdir "$keep/$n"; else : >"$keep/$n"; fi
        # private: dropping the copy later must not propagate to the mounts bound back from it
        if mount --rbind "$t" "$keep/$n" && mount --make-rprivate "$keep/$n"; then
            printf '%s %s\n' "$n" "$t" >>"$keep/list"
            kept="$kept $t"
        fi
        n=$((n + 1))
    done </proc/self/mountinfo
    return 0
}

restore() {
    [ -f "$keep/list" ] || return 0
    rc=0
    while read -r n t; do
        # shadowed when the path shows another file system or folder than the copy taken before
        if [ "$(stat -c %d:%i "$t" 2>/dev/null)" != "$(stat -c %d:%i "$keep/$n")" ]; then
            # shared again, so that systemd-sysext's unmerge takes it away with its overlay
            if mount --rbind "$keep/$n" "$t" && mount --make-rshared "$t"; then
                echo "sysext-submounts: $t: mounted again over the merged hierarchy"
            else
                rc=1
            fi
        fi
        umount -l "$keep/$n"
    done <"$keep/list"
    rm -rf "$keep"
    return $rc
}

case "${1:-}" in
keep) keep ;;
restore) restore ;;
*)
    echo "usage: sysext-submounts keep|restore" >&2
    exit 2
    ;;
esac
"""


def preserves_submounts(major: int) -> bool:
    """systemd-sysext of this version keeps the mounts below a hierarchy over its overlay itself."""
    return major >= PRESERVED_SINCE


def step_argv(verb: str) -> list[str]:
    """The command line of the installed script (``keep`` or ``restore``); run by ``/bin/sh`` so that
    an /etc mounted noexec does not matter."""
    return ["/bin/sh", f"/{SCRIPT}", verb]


def nested(hierarchies: Sequence[str]) -> list[tuple[str, str]]:
    """(inner, outer) for every hierarchy at or below another one of the list."""
    norm = [posixpath.normpath(h) for h in hierarchies]
    out = []
    for i, inner in enumerate(norm):
        for j, outer in enumerate(norm):
            if i != j and (inner.startswith(outer.rstrip("/") + "/") or (inner == outer and i > j)):
                out.append((hierarchies[i], hierarchies[j]))
                break
    return out


# --- what /proc/self/mountinfo says ------------------------------------------------------------------


def _unescape(s: str) -> str:
    """mountinfo's octal escapes (``\\040`` for a space)."""
    if "\\" not in s:
        return s
    out, i = [], 0
    while i < len(s):
        code = s[i + 1 : i + 4]
        if s[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo."""

    id: int
    parent: int
    dev: str  # major:minor
    root: str  # the folder of the file system mounted here
    target: str
    options: str
    fstype: str
    source: str

    @property
    def read_only(self) -> bool:
        return "ro" in self.options.split(",")

    @property
    def sysext_overlay(self) -> bool:
        return self.fstype == "overlay" and self.source == "sysext"


def parse_mountinfo(text: str) -> list[Mount]:
    """The lines of mountinfo; a line that does not parse is skipped (the kernel writes them)."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if not sep or len(f) < 6 or len(r) < 2 or not f[0].isdigit() or not f[1].isdigit():
            continue
        out.append(Mount(int(f[0]), int(f[1]), f[2], _unescape(f[3]), _unescape(f[4]), f[5], r[0], _unescape(r[1])))
    return out


def _under(path: str, top: str) -> bool:
    return top == "/" or path == top or path.startswith(top.rstrip("/") + "/")


def hidden(mounts: Sequence[Mount]) -> set[int]:
    """The ids of mounts no path reaches. Going down from the root, a mount is passed over when a
    sibling (same parent) sits on a folder above its mount point, or on the same mount point and later
    in mountinfo (attached later: on top); and a mount with one stacked on it (a child on the same
    path) shows only that one."""
    order = {m.id: i for i, m in enumerate(mounts)}
    by_id = {m.id: m for m in mounts}
    children: dict[int, list[Mount]] = {}
    for m in mounts:
        children.setdefault(m.parent, []).append(m)

    def blocked(c: Mount) -> bool:
        for s in children.get(c.parent, ()):
            if s.id == c.id:
                continue
            if s.target != c.target and _under(c.target, s.target):
                return True
            if s.target == c.target and order[s.id] > order[c.id]:
                return True
        return False

    reachable: dict[int, bool] = {}

    def reach(m: Mount, depth: int) -> bool:
        if m.id not in reachable:
            parent = by_id.get(m.parent)
            up = parent is None or parent.id == m.id or depth > _DEPTH or reach(parent, depth + 1)
            reachable[m.id] = up and not blocked(m)
        return reachable[m.id]

    return {
        m.id
        for m in mounts
        if not reach(m, 0) or any(c.target == m.target and c.id != m.id for c in children.get(m.id, ()))
    }


@dataclass(frozen=True)
class Shadowed:
    """A mount below a merged hierarchy that no path shows: ``by`` is the overlay over it."""

    target: str
    fstype: str
    source: str
    by: str

    def text(self) -> str:
        return (
            f"{self.target} ({self.fstype} {self.source}) is shadowed by systemd-sysext's overlay on {self.by}: "
            "what is written there does not reach it"
        )

    def as_json(self) -> dict[str, str]:
        return {"target": self.target, "fstype": self.fstype, "source": self.source, "by": self.by}


def shadowed(mounts: Sequence[Mount], root: Path = Path("/")) -> list[Shadowed]:
    """The mounts below a systemd-sysext overlay in ``root`` that are hidden and not shown again at
    their path (by bootkeeper's step or systemd's move: a visible mount of the same file system and
    folder). Paths in the result are the node's (``root`` taken off)."""
    top = str(root.resolve()) if str(root) != "/" else "/"
    gone = hidden(mounts)
    visible = [m for m in mounts if m.id not in gone]
    overlays = [m for m in visible if m.sysext_overlay and _under(m.target, top)]
    shown = {(m.target, m.dev, m.root) for m in visible}
    out = []
    seen: set[str] = set()
    for m in mounts:
        if m.id not in gone or m.sysext_overlay or m.target in seen or (m.target, m.dev, m.root) in shown:
            continue
        over = [o for o in overlays if o.id != m.id and _under(m.target, o.target)]
        if not over:
            continue
        seen.add(m.target)
        node = "/" + posixpath.relpath(m.target, top) if top != "/" else m.target
        by = max((o.target for o in over), key=len)
        by = "/" + posixpath.relpath(by, top) if top != "/" else by
        out.append(Shadowed(posixpath.normpath(node), m.fstype, m.source, posixpath.normpath(by)))
    return out


def read_mountinfo(path: str = MOUNTINFO) -> list[Mount]:
    """This process's mounts (empty when they cannot be read: nothing is then reported)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_mountinfo(f.read(1 << 24))
    except OSError:
        return []


def mounts_below(mounts: Sequence[Mount], hierarchies: Sequence[str], root: Path = Path("/")) -> list[Mount]:
    """Visible or not, the mounts strictly below one of ``hierarchies`` inside ``root`` (not
    systemd-sysext's own overlays)."""
    top = str(root.resolve()) if str(root) != "/" else ""
    out = []
    for m in mounts:
        if m.sysext_overlay or "/.systemd-sysext" in m.target:
            continue
        for h in hierarchies:
            base = os.path.normpath(top + "/" + h.strip("/"))
            if m.target != base and _under(m.target, base):
                out.append(m)
                break
    return out
