"""``sysext.required``: the extensions a good boot needs merged ("hook systemd into this to crash so the
boot assessment can kick in": docs/seed-audit.md, "3. A required extension decides the boot").

Activation judges them (:func:`judge`, pure: the config's names against the report's images, matched
by :func:`release.image_stem`, the name systemd-sysext gives an image) and leaves the verdict in two
places: in its report (``required``, what ``status``, ``motd`` and the metrics read) and, when the boot
must not count as good, in :data:`FAILED`, one line per reason. ``bootkeeper-sysext-required.service``
(assess/units.py) is required by ``boot-complete.target`` and runs only when that file exists
(``ConditionPathExists=``): a boot whose required set is whole starts no process for it, and one
where it is not fails the unit (``bootkeeper sysext required --record``: the reason in the journal and
the boot history), so ``boot-complete.target`` is never reached and, on a counted active boot,
``bootkeeper-generator``'s ``FailureAction=reboot`` falls back to passive with its own set.

Fail closed: an activation with required names writes :data:`FAILED` first (:func:`pending`) and
replaces it with the verdict at its end (:func:`settle`); one that dies in between leaves the pending
line, and the boot is not good. Only enforced mode judges: in permissive mode a refused image is
placed on purpose, and in disabled mode nothing is judged. Standard library only (read on the boot path).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypedDict

from bootkeeper import fsutil
from bootkeeper.errors import WriteError

FAILED = "run/bootkeeper/sysext-required.failed"
UNIT = "bootkeeper-sysext-required.service"  # assess/units.py renders it (the wings share no import)
PENDING = "bootkeeper-sysext did not finish: the required extensions ({names}) were not judged"


class RefusedJson(TypedDict):
    name: str
    why: str


class RequiredJson(TypedDict):
    """The verdict as the report carries it (:meth:`Required.as_json`)."""

    names: list[str]
    enforced: bool
    ok: bool
    missing: list[str]
    refused: list[RefusedJson]
    text: str


class Judged(Protocol):
    """What :func:`judge` reads of an image (activate's Outcome, the report's Activated)."""

    @property
    def name(self) -> str | None: ...
    @property
    def placed(self) -> bool | None: ...
    @property
    def verdict(self) -> str | None: ...


@dataclass(frozen=True)
class Required:
    """The verdict on ``sysext.required`` of one activation."""

    names: tuple[str, ...]
    enforced: bool
    missing: tuple[str, ...] = ()
    refused: tuple[tuple[str, str], ...] = ()  # (name, why: activate's reasons, printable)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.refused)

    def lines(self) -> list[str]:
        """Why the boot is not good, one line per extension (empty when it is)."""
        out = [f"required extension {n} refused: {why}" for n, why in self.refused]
        out += [f"required extension {n} missing: no image of it in the activation's sources" for n in self.missing]
        return out

    def text(self) -> str:
        if not self.names:
            return "none required"
        if not self.enforced:
            return f"{', '.join(self.names)} required, judged in enforced mode only"
        return "; ".join(self.lines()) if not self.ok else f"{', '.join(self.names)}: all merged"

    def as_json(self) -> dict[str, object]:  # shaped as RequiredJson, which from_json reads
        return {
            "names": list(self.names),
            "enforced": self.enforced,
            "ok": self.ok,
            "missing": list(self.missing),
            "refused": [{"name": n, "why": w} for n, w in self.refused],
            "text": self.text(),
        }

    @classmethod
    def from_json(cls, doc: RequiredJson | None) -> Required | None:
        """The report's ``required``; None when absent (an activation before sysext.required). The
        report is read as JSON: its reader turns a key or type this finds wrong into MalformedError."""
        if doc is None:
            return None
        names = tuple(str(n) for n in doc["names"])
        missing = tuple(str(n) for n in doc["missing"])
        refused = tuple((str(r["name"]), str(r["why"])) for r in doc["refused"])
        return cls(names, bool(doc["enforced"]), missing, refused)


def judge(names: Iterable[str], enforced: bool, images: Iterable[Judged], reasons: dict[str, str]) -> Required:
    """Each required name is merged when an image of that name was placed; else refused when one was
    judged and refused (``reasons``: image file name -> why, already printable), else missing."""
    from bootkeeper.sysext.release import image_stem  # not on status's path, which only reads the verdict

    wanted = tuple(names)
    if not enforced or not wanted:
        return Required(wanted, enforced)
    by_stem: dict[str, list[Judged]] = {}
    for img in images:
        if img.name is not None:
            by_stem.setdefault(image_stem(img.name), []).append(img)
    missing, refused = [], []
    for n in wanted:
        found = by_stem.get(n, [])
        if any(i.placed for i in found):
            continue
        judged = [i for i in found if i.verdict == "refused"]
        if judged:
            refused.append((n, "; ".join(f"{i.name}: {reasons.get(i.name or '', 'refused')}" for i in judged)))
        else:
            missing.append(n)
    return Required(wanted, enforced, tuple(missing), tuple(refused))


def pending(root: Path, names: tuple[str, ...]) -> None:
    """Before judging: the boot is not good until :func:`settle` says otherwise."""
    if names:
        _write(root, [PENDING.format(names=", ".join(names))])


def settle(root: Path, verdict: Required) -> None:
    """After judging: :data:`FAILED` holds the reasons, or is gone when the boot may count as good."""
    if verdict.ok:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(root / FAILED)
        return
    _write(root, verdict.lines())


def read_failed(root: Path) -> list[str] | None:
    """The reasons in :data:`FAILED`, or None when the file is not there (the boot may be good)."""
    try:
        text = (root / FAILED).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    return [line for line in text.splitlines() if line.strip()] or ["(no reason recorded)"]


def _write(root: Path, lines: list[str]) -> None:
    p = root / FAILED
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_atomic(p, "".join(f"{line}\n" for line in lines).encode())
    except OSError as exc:
        raise WriteError(f"{p}: cannot write the required extensions' verdict ({exc.strerror})") from exc
