"""Where ``sysext activate`` leaves its report (``/run/bootkeeper/sysext.json``, written by
``activate.write_report``) and the reader of the part others use: the mode and, per image, its
verdict, whether it was placed and who signed it. Standard library only: ``status`` and ``motd`` read
it on the boot path, and ``activate`` reads what it placed last time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bootkeeper.errors import MalformedError, UnreadableError
from bootkeeper.sysext.required import Required

REPORT = "run/bootkeeper/sysext.json"


@dataclass(frozen=True)
class Activated:
    """One image as the last activation judged it."""

    name: str | None
    verdict: str | None  # passed | refused | failed-but-placed | unchecked | skipped
    placed: bool | None
    signer: str | None
    reasons: tuple[str, ...] = ()  # activate's one-line reasons (free text: metrics reduce them to a class)
    file: str | None = None  # where it was found (/.extra/sysext/a.raw): one per image file, unlike name

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "verdict": self.verdict, "placed": self.placed, "signer": self.signer}


@dataclass(frozen=True)
class Anchor:
    """A trust anchor the last activation judged signatures with (its report's ``trust.trusted``)."""

    fingerprint: str | None
    source: str | None


@dataclass(frozen=True)
class Activation:
    mode: str | None
    images: tuple[Activated, ...]
    anchors: tuple[Anchor, ...] = ()
    revoked: int = 0  # anchors found but revoked (by dbx or the config)
    required: Required | None = None  # sysext.required's verdict (None: an activation before it)

    @property
    def placed(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.images if i.placed and i.name is not None)


def read(root: Path) -> Activation | None:
    """The last activation under ``root``; None when there is none (activate has not run this boot).
    A report that cannot be read is an :class:`UnreadableError`, one that is not the shape activate
    writes a :class:`MalformedError`, naming the file (it is in /run: only a root process, or a
    crash, can have left it so)."""
    try:
        doc = json.loads((root / REPORT).read_text())
        images = tuple(
            Activated(
                img.get("name"),
                img.get("verdict"),
                img.get("placed"),
                img.get("signer"),
                tuple(str(r) for r in img.get("reasons") or ()),
                img.get("file") or None,
            )
            for img in doc.get("images", [])
        )
        trust = doc.get("trust") or {}
        anchors = tuple(Anchor(a.get("fingerprint"), a.get("source")) for a in trust.get("trusted") or ())
        needed = Required.from_json(doc.get("required"))
        return Activation(doc.get("mode"), images, anchors, len(trust.get("revoked") or ()), needed)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UnreadableError(f"{REPORT}: {type(exc).__name__}: {str(exc)[:120]}") from exc
    except (ValueError, AttributeError, TypeError, KeyError, RecursionError) as exc:
        raise MalformedError(f"{REPORT}: {type(exc).__name__}: {str(exc)[:120]}") from exc
