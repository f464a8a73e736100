"""What activation says: each image's :class:`Outcome` (one journal line), the run's :class:`Report`
(written to :data:`bootkeeper.sysext.report.REPORT`, read back by :mod:`bootkeeper.sysext.report`),
and the one-line forms of names and faults, escaped as everything shown is."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NotRequired, TypedDict

from bootkeeper import fsutil
from bootkeeper.errors import WriteError
from bootkeeper.shown import shown
from bootkeeper.sysext.report import REPORT

if TYPE_CHECKING:
    from bootkeeper.sysext.extdirs import Resident


@dataclass
class Outcome:
    """One image as this activation judged it, and whether it was placed."""

    name: str
    source: str
    placed: bool
    verdict: str  # passed | refused | failed-but-placed | unchecked | skipped
    reasons: list[str] = field(default_factory=list)
    signer: str | None = None
    root_hash: str | None = None
    qualified_as: str | None = None
    seconds: float = 0.0
    # where it was found, from the root (/.extra/sysext/a.raw, a store folder's link): one per entry of
    # the source folders, where ``name`` is not (one name can be in .extra/sysext and .extra/global_sysext,
    # and ``source`` is empty for a skip) — metrics' series identity (docs/fleet.md, "The metrics and their labels")
    file: str = ""

    def line(self) -> str:
        """One journal line; every part escaped (names and subjects come from the ESP)."""
        where = "placed" if self.placed else "not placed"
        who = f", signed by {self.signer}" if self.signer else ""
        why = f": {'; '.join(self.reasons)}" if self.reasons else ""
        return printable(f"{self.name}: {self.verdict}, {where}{who}{why}")


def refused(name: str, src: Path | str, why: str) -> Outcome:
    """An image refused before it was judged (unopened, not staged, too large), for ``why``."""
    return Outcome(name, str(src), False, "refused", [why])


def printable(text: str) -> str:
    """``text`` escaped by bootkeeper's one rule for what is shown (:func:`bootkeeper.shown.shown`):
    control characters, bytes that are not UTF-8 and bidi controls written as ``\\xNN`` /
    ``\\uNNNN``, ``\\`` as ``\\\\``, so a file name can neither split a journal line nor forge one."""
    return shown(text)


def fault(exc: BaseException) -> str:
    """An unexpected exception as one line: its class and message."""
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return printable(text if len(text) <= 300 else text[:299] + "…")


class Exported(TypedDict):
    """The trust anchors exported to /run/verity.d: the folder and the file names written, removed."""

    dir: str
    written: list[str]
    removed: list[str]


class Trust(TypedDict, total=False):
    """The report's ``trust``: the anchors judged with, those revoked, the problems met loading or
    exporting them, and the export (absent when it failed); empty in disabled mode."""

    trusted: list[dict[str, object]]
    revoked: list[dict[str, object]]
    problems: list[str]
    exported: Exported


class StoreUsed(TypedDict):
    """The report's ``store`` (``sysext.store: persistent``): the folders read, the role and why."""

    dir: str
    role: str | None
    why: str
    folders: list[str]
    problem: NotRequired[str]


class Refresh(TypedDict):
    """The report's ``refresh``: the ``systemd-sysext refresh`` run, whether it ran and its error,
    the submount steps around it (systemd-sysext older than v257)."""

    argv: list[str]
    env: dict[str, str] | None
    systemd: str
    ok: bool
    error: str | None
    submounts: NotRequired[list[str]]


@dataclass
class Report:
    """One activation as its report file holds it: the mode, the sources read, each image's outcome,
    the earlier copies removed, the trust anchors, the other extension folders' residents."""

    mode: str
    policy: str
    root: str
    sources: list[str]
    images: list[Outcome] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    trust: Trust = field(default_factory=lambda: Trust())
    store: StoreUsed | None = None  # sysext.store: persistent: the folders read, the role and why
    refresh: Refresh | None = None
    seconds: float = 0.0
    # /etc/extensions and /var/lib/extensions, judged in place (sysext/extdirs.py)
    residents: list[Resident] = field(default_factory=list)
    required: dict[str, object] | None = None  # sysext.required's verdict (sysext/required.py)

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def write_report(root: Path, report: Report) -> None:
    p = root / REPORT
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_atomic(p, (json.dumps(report.as_json(), indent=2) + "\n").encode())
    except OSError as exc:
        raise WriteError(f"{p}: cannot write the report ({exc.strerror})") from exc
