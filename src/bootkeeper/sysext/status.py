"""The extension half of ``bootkeeper status`` and ``motd``: what each entry and, with
``sysext.store: persistent``, each folder of the store holds, and what the last activation placed or
refused (its report: ``sysext/report.py``). Frozen data with ``as_json()``; the CLI
(``cli/status_cmd.py``) puts it beside the boot half (``assess/status.py``) and renders the text.
Light imports only: this runs on the boot path."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bootkeeper import submounts
from bootkeeper.errors import BootkeeperError
from bootkeeper.sysext import report
from bootkeeper.sysext.report import Activation


@dataclass(frozen=True)
class StoreLinks:
    """The persistent store's folders (a role or ``common``) → the images they link, and the links
    skipped with their reason (activate skips them too)."""

    dir: Path
    folders: Mapping[str, tuple[str, ...]]
    problems: tuple[str, ...]


def store_links(store_dir: Path) -> StoreLinks:
    from bootkeeper.esp.linkstore import FOLDERS, LinkStore

    ls = LinkStore(store_dir)
    folders: dict[str, tuple[str, ...]] = {}
    problems: list[str] = []
    for f in FOLDERS:
        names = []
        for lk in ls.links(f):
            if lk.ok:
                names.append(lk.name)
            else:
                problems.append(f"extension store: {lk.problem}")
        if names:
            folders[f] = tuple(names)
    return StoreLinks(store_dir, folders, tuple(problems))


@dataclass(frozen=True)
class Extensions:
    """``installed``: entry (or store folder, by its path) → image names; ``activation``: the last
    activation (None: no report, activate has not run); ``shadowed``: the mounts below a merged
    hierarchy that systemd-sysext's overlay hides (:mod:`bootkeeper.submounts`)."""

    installed: Mapping[str, tuple[str, ...]]
    activation: Activation | None
    shadowed: tuple[submounts.Shadowed, ...] = ()

    def as_json(self) -> dict[str, object]:
        act = self.activation
        return {
            "installed": {k: list(v) for k, v in self.installed.items()},
            "activation": [i.as_json() for i in act.images] if act else [],
            "mode": act.mode if act else None,
            "shadowed": [m.as_json() for m in self.shadowed],
            "required": act.required.as_json() if act and act.required else None,
        }


def gather(
    root: Path, on_esp: Mapping[str, tuple[str, ...]], links: StoreLinks | None, mountinfo: str = submounts.MOUNTINFO
) -> tuple[Extensions, tuple[str, ...]]:
    """The extension half, and what could not be read or is shadowed (one line each, for the status
    warnings). ``mountinfo``: where this process's mounts are read."""
    installed = dict(on_esp)
    if links is not None:
        for f, names in links.folders.items():
            installed[f"{links.dir}/{f}"] = (*installed.get(f"{links.dir}/{f}", ()), *names)
    shadowed = tuple(submounts.shadowed(submounts.read_mountinfo(mountinfo), root))
    said = tuple(m.text() for m in shadowed)
    try:
        activation = report.read(root)
    except BootkeeperError as exc:
        return Extensions(installed, None, shadowed), (str(exc), *said)
    return Extensions(installed, activation, shadowed), said
