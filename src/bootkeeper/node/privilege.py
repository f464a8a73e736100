"""Whether a failure was for want of root's capabilities: the hint the error boundary adds to it."""

from __future__ import annotations

import os

_DENIED = ("Permission denied", "Operation not permitted", "only root", "must be superuser")
# capability(7) bits: what the verbs that change /efi, /run, /etc and /var need on a node
_CAPS = {1: "CAP_DAC_OVERRIDE", 21: "CAP_SYS_ADMIN"}


def root_hint(exc: BaseException) -> str | None:
    """The verbs that change a node need root: when one failed for want of a permission and this
    process lacks root's capabilities, say so (a scratch ESP of one's own needs none)."""
    e: BaseException | None = exc
    denied = False
    while e is not None and not denied:
        denied = isinstance(e, PermissionError) or any(w in str(e) for w in _DENIED)
        e = e.__cause__ or e.__context__
    if not denied:
        return None
    try:
        with open("/proc/self/status") as f:
            eff = next(int(x.split()[1], 16) for x in f if x.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return None
    lacking = [name for bit, name in _CAPS.items() if not eff >> bit & 1]
    if not lacking:
        return None
    return f"this needs root: bootkeeper runs as uid {os.geteuid()} without {' and '.join(lacking)}; run it as root"
