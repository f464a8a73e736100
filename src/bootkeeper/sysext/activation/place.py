"""What the mode makes of a verdict, and the destination brought to it: the copies the mode allows
renamed into place (their bytes are the bytes judged), the earlier copies not placed now removed."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from bootkeeper import fsutil
from bootkeeper.config import SysextMode
from bootkeeper.sysext.activation.copying import OpenCopy
from bootkeeper.sysext.activation.judging import Verdict
from bootkeeper.sysext.activation.outcome import Outcome, printable


def place_all(opened: list[OpenCopy], dest: Path, mode: SysextMode, verdicts: dict[str, Verdict]) -> dict[str, Outcome]:
    """Rename into place the copies the mode allows (their bytes are the bytes judged)."""
    out: dict[str, Outcome] = {}
    for c in opened:
        o = _outcome(c.name, c.src, mode, verdicts.get(c.name))
        if o.placed:
            why = _place(c.fd, c.tmp, dest / c.name)
            if why is not None:
                o.placed, o.verdict = False, "refused"
                o.reasons.append(why)
        out[c.name] = o
    return out


def _outcome(name: str, src: Path, mode: SysextMode, v: Verdict | None) -> Outcome:
    if v is None:  # disabled: not checked
        return Outcome(name, str(src), True, "unchecked")
    reasons = list(v.reasons)
    if v.ok:
        verdict, placed = "passed", True
    elif mode is SysextMode.PERMISSIVE and not v.blockers:
        verdict, placed = "failed-but-placed", True
    else:
        verdict, placed = "refused", False
        if mode is SysextMode.PERMISSIVE:
            reasons.append(permissive_refusal(list(v.blockers)))
    return Outcome(name, str(src), placed, verdict, reasons, v.signer, v.root_hash, v.qualified_as, v.seconds)


def permissive_refusal(blockers: list[str]) -> str:
    """The reason a permissive run does not place an image: what stops systemd-sysext from merging it."""
    return (
        f"permissive: not placed, systemd-sysext would not merge it ({blockers[0]}); "
        "one it cannot open makes it merge none (systemd#32762)"
    )


def _place(fd: int, tmp: Path, target: Path) -> str | None:
    """Rename the validated copy over ``target``; or why not. Only a regular file (an earlier copy)
    or a symbolic link is replaced: a directory or anything else there is left alone."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return f"{target}: cannot be checked ({exc.strerror}); not placed"
    else:
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            return f"{target}: not a regular file in the way (a directory?); left alone, not placed"
    try:
        fsutil.commit(fd, tmp, target)
    except OSError as exc:
        return f"{target}: cannot place ({exc.strerror or exc})"
    return None


def prune(dest: Path, images: list[Outcome], previous: list[str], log: Callable[[str], None] | None) -> list[str]:
    """Remove from ``dest`` the copies of images not placed now (refused now, or placed by an earlier
    run per its report): they must not stay. The names removed."""
    placed = {o.name for o in images if o.placed}
    refused = {o.name for o in images if not o.placed and o.verdict == "refused"}
    removed: list[str] = []
    for old in sorted(refused | set(previous)):
        p = dest / old
        if old in placed or not (p.is_file() or p.is_symlink()):
            continue
        try:
            p.unlink()
        except OSError as exc:
            line = f"{old}: an earlier copy in {dest} not placed now cannot be removed ({exc.strerror})"
        else:
            removed.append(old)
            line = f"{old}: removed from {dest} (an earlier copy; not placed now)"
        if log is not None:
            log(printable(line))
    return removed
