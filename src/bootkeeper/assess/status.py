"""The boot half of what the operator sees (``bootkeeper status``, ``bootkeeper motd``): which entry
booted and why, whether this boot is blessed yet, tries left on every entry, the enrolled services'
results, each role's OS (its UKI's ``.osrel``) and extension set, and, after a fallback to passive,
which recorded upgrade failed. :func:`gather` reads files and asks systemctl; what it returns is frozen
data with ``as_json()`` (the ``status --json`` schema docs/services.md, "Status", documents). A source
that cannot be read is named in ``warnings`` (or, for the booted entry's state, as an
:class:`Unavailable` reason), never as an error inside the data. The extension half (the activation
report, the persistent store's links) is sysext's (``sysext/status.py``); ``node/status.py`` puts both
together and ``cli/render.py`` renders the text.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootkeeper import fsutil
from bootkeeper.assess import handback, history
from bootkeeper.assess.history import Boot, FailedUpgrade, Repair, Upgrade, Why
from bootkeeper.errors import BootkeeperError
from bootkeeper.esp import efivars as efivars_mod
from bootkeeper.esp.entries import Role
from bootkeeper.esp.store import EspStore, Snapshot

MOTD = "run/motd.d/bootkeeper"
SHOW_PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "Result")

ServiceReader = Callable[[list[str]], dict[str, dict[str, str]]]


def parse_systemctl_show(text: str) -> dict[str, dict[str, str]]:
    """``systemctl show -p Id,… A B``: blocks of ``Key=Value`` separated by blank lines."""
    out: dict[str, dict[str, str]] = {}
    for block in text.split("\n\n"):
        props = dict(ln.split("=", 1) for ln in block.splitlines() if "=" in ln)
        if props.get("Id"):
            out[props["Id"]] = props
    return out


def systemctl_states(units: list[str]) -> dict[str, dict[str, str]]:
    from bootkeeper.run import run

    if not units:
        return {}
    proc = run(["systemctl", "show", f"--property={','.join(SHOW_PROPERTIES)}", "--", *units], timeout=10)
    return parse_systemctl_show(proc.stdout)


@dataclass(frozen=True)
class Temporary:
    """A ``.bootkeeper-*.tmp`` on the ESP: what a killed write left (neither systemd-boot nor
    systemd-stub loads it, but it holds its space until a write verb clears it)."""

    path: str  # relative to the ESP
    size: int


def stale_temporaries(esp: Path) -> tuple[Temporary, ...]:
    """Every temporary anywhere on the ESP (links not followed). Read-only: only a write verb, under
    the ESP lock, can tell a stale temporary from one a run in progress is writing."""
    found: list[Temporary] = []
    for folder, dirs, files in os.walk(esp, onerror=lambda _exc: None):
        dirs.sort()
        for name in sorted(files):
            if not fsutil.is_temporary(name):
                continue
            p = Path(folder) / name
            try:
                st = p.lstat()
            except OSError:
                continue  # gone meanwhile
            found.append(Temporary(p.relative_to(esp).as_posix(), st.st_size))
    return tuple(found)


@dataclass(frozen=True)
class Unavailable:
    """A value status could not tell, and why (shown in its place, never as a traceback)."""

    reason: str


@dataclass(frozen=True)
class Booted:
    """The entry this boot came from (``LoaderBootCountPath``, else ``LoaderEntrySelected``)."""

    entry: str | None
    role: Role | None
    blessed: str | Unavailable | None  # good | indeterminate | bad | not counted; None: nothing booted
    counting: bool
    why: Why | None

    def as_json(self) -> dict[str, object]:
        return {
            "entry": self.entry,
            "role": self.role.value if self.role else None,
            "blessed": None if isinstance(self.blessed, Unavailable) else self.blessed,
            "counting": self.counting,
            "why": self.why.as_json() if self.why else None,
        }


@dataclass(frozen=True)
class EntryState:
    path: str
    role: Role | None
    state: str
    tries_left: int | None
    tries_done: int | None

    def as_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "role": self.role.value if self.role else None,
            "state": self.state,
            "tries_left": self.tries_left,
            "tries_done": self.tries_done,
        }


@dataclass(frozen=True)
class RoleOs:
    """An entry that boots a UKI: the OS its ``.osrel`` names (None: none, or unreadable — then
    ``warnings`` says why) and its extension set: the images in its ``.extra.d`` (``extra``), then,
    with the persistent store, its role's links and ``common/`` (``linked``)."""

    entry: str
    role: Role | None
    via: str
    uki: str
    os: Mapping[str, str] | None
    extra_dir: str
    extra: tuple[str, ...]
    linked: tuple[str, ...] = ()

    @property
    def version(self) -> str | None:
        return history.os_version(self.os) if self.os is not None else None

    def as_json(self) -> dict[str, object]:
        return {
            "entry": self.entry,
            "role": self.role.value if self.role else None,
            "via": self.via,
            "uki": self.uki,
            "os": dict(self.os) if self.os is not None else None,
            "version": self.version,
            "extra_dir": self.extra_dir,
            "extensions": [*self.extra, *self.linked],
        }


@dataclass(frozen=True)
class ServiceResult:
    """An enrolled service and what systemctl says of it this boot."""

    name: str
    reboot_on_failure: str | None
    result: str  # passed | failed (<Result>) | starting | not run | not installed | unknown
    active_state: str | None

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "reboot_on_failure": self.reboot_on_failure,
            "result": self.result,
            "active_state": self.active_state,
        }


@dataclass(frozen=True)
class NodeStatus:
    booted: Booted
    failed_upgrade: FailedUpgrade | None
    entries: tuple[EntryState, ...]
    roles: tuple[RoleOs, ...]
    pin: Mapping[str, Any] | None  # assess/pin.py's view
    services: tuple[ServiceResult, ...]
    history: tuple[Boot, ...]  # the last 10
    upgrades: tuple[Upgrade, ...]  # the last 5
    warnings: tuple[str, ...]  # every source that could not be read, in the order read
    handback: handback.View | None = None  # statereset's hand-backs (assess/handback.py)
    # the sources that could not be read (some of their values are missing): "efivars" (the booted
    # entry's state), "history" (a record or the whole file), "handbacks" (the ESP's count); metrics
    # exports each as bootkeeper_source_unreadable, so a fault sets a series instead of removing one
    unreadable: tuple[str, ...] = ()
    repairs: tuple[Repair, ...] = ()  # the last 5 repair attempts (bootkeeper repair), oldest first

    @property
    def on_esp(self) -> dict[str, tuple[str, ...]]:
        """The images in each entry's ``.extra.d``, for the entries that have any."""
        return {r.entry: r.extra for r in self.roles if r.extra}

    @property
    def problems(self) -> tuple[str, ...]:
        """``warnings``, and first why the booted entry's state is unknown, when it is."""
        b = self.booted.blessed
        return ((b.reason,) if isinstance(b, Unavailable) else ()) + self.warnings

    def as_json(self) -> dict[str, object]:
        return {
            "booted": self.booted.as_json(),
            "failed_upgrade": self.failed_upgrade.as_json() if self.failed_upgrade else None,
            "entries": [e.as_json() for e in self.entries],
            "roles": [r.as_json() for r in self.roles],
            "pin": dict(self.pin) if self.pin is not None else None,
            "services": [s.as_json() for s in self.services],
            "history": [b.as_json() for b in self.history],
            "upgrades": [u.as_json() for u in self.upgrades],
            "warnings": list(self.problems),
            "handback": self.handback.as_json() if self.handback is not None else None,
            "repairs": [r.as_json() for r in self.repairs],
        }


def _service_verdict(props: dict[str, str] | None) -> str:
    if props is None:
        return "unknown"
    if props.get("LoadState") == "not-found":
        return "not installed"
    active, result = props.get("ActiveState"), props.get("Result")
    if active == "failed" or (result not in (None, "success")):
        return f"failed ({result})"
    if active in ("active", "reloading"):
        return "passed"
    if active in ("activating",):
        return "starting"
    return "not run"


def _roles(
    store: EspStore, snap: Snapshot, linked: Mapping[str, Sequence[str]]
) -> tuple[tuple[RoleOs, ...], list[str]]:
    """Each entry that boots a UKI, with its OS and extension set; and what could not be read.
    ``linked``: the persistent store's folder → its good links (``common`` for every role)."""
    from bootkeeper.esp import extra, pe
    from bootkeeper.esp.entries import parse_osrel

    try:
        targets = extra.targets(snap, store)
        found = extra.installed(store, targets)
    except (OSError, BootkeeperError) as exc:
        return (), [f"extensions not read: {exc}"]
    out: list[RoleOs] = []
    warnings: list[str] = []
    for t in targets:
        fields: dict[str, str] | None = None
        try:
            raw = pe.read_osrel(store.path(t.uki))  # None: a plain EFI-stub kernel, no OS to name
            if raw is not None:
                fields = history.os_fields(parse_osrel(raw.decode("utf-8", "replace")))
        except OSError as exc:
            warnings.append(f"{t.uki}: cannot read its .osrel ({exc.strerror or exc})")
        except BootkeeperError as exc:
            warnings.append(f"{t.uki}: its .osrel is not readable: {str(exc)[:160]}")
        role = t.role.value if t.role else ""
        if linked:  # the store's folders (esp/linkstore.py is not imported without one)
            from bootkeeper.esp.linkstore import COMMON

            linked_set = tuple(sorted({*linked.get(role, ()), *linked.get(COMMON, ())}))
        else:
            linked_set = ()
        out.append(
            RoleOs(
                t.entry,
                t.role,
                t.via,
                t.uki,
                fields,
                t.extra_dir,
                tuple(i.name for i in found if i.target == t),
                linked_set,
            )
        )
    return tuple(out), warnings


def _booted(store: EspStore, ev: efivars_mod.LoaderVars) -> Booted:
    from bootkeeper.assess import bless as bless_mod

    counting = bool(ev.boot_count_path)
    if ev.boot_count_path:
        try:
            b = bless_mod.parse_entry_path(ev.boot_count_path, "LoaderBootCountPath")
        except BootkeeperError as exc:  # the variables say something that cannot be followed: say what
            return Booted(None, None, Unavailable(str(exc)), counting, None)
        try:
            return Booted(b.path, b.role, bless_mod.status(store, b), counting, None)
        except BootkeeperError as exc:
            return Booted(b.path, b.role, Unavailable(str(exc)), counting, None)
    if ev.entry_selected:
        return Booted(ev.entry_selected, Role.from_entry_id(ev.entry_selected), "not counted", counting, None)
    return Booted(None, None, None, counting, None)


def _services(root: Path, read_services: ServiceReader | None, warnings: list[str]) -> tuple[ServiceResult, ...]:
    from bootkeeper.assess import services

    try:
        rows = services.listing(root)
    except BootkeeperError as exc:
        warnings.append(str(exc))
        return ()
    states: dict[str, dict[str, str]] = {}
    if rows and read_services is not None:
        try:
            states = read_services([r.name for r in rows])
        except BootkeeperError as exc:
            warnings.append(f"service states unknown: {exc}")
    out = []
    for r in rows:
        props = states.get(r.name)
        out.append(
            ServiceResult(
                r.name,
                r.policy.value if r.policy else None,
                _service_verdict(props),
                props.get("ActiveState") if props else None,
            )
        )
    return tuple(out)


def gather(
    root: Path,
    esp: Path,
    efivars: Path,
    sdboot_version: str | int | None,
    read_services: ServiceReader | None = systemctl_states,
    snap: Snapshot | None = None,
    linked: Mapping[str, Sequence[str]] | None = None,
    linked_warnings: Sequence[str] = (),
    handbacks: int = 1,
) -> NodeStatus:
    """``linked``/``linked_warnings``: the persistent store's good links per folder and the links it
    skipped (sysext/status.py reads them; nothing when the extensions live on the ESP); ``handbacks``:
    the budget (``boot_assessment.handbacks``)."""
    from bootkeeper.assess import pin
    from bootkeeper.esp.efivars import LoaderVars

    store = EspStore(esp)
    if snap is None:
        snap = store.snapshot(sdboot_version, loader_info=efivars_mod.loader_info(efivars))
    ev = LoaderVars.read(efivars)
    booted_path = ev.boot_count_path or ev.entry_selected
    booted = _booted(store, ev)
    recorded = history.read_all(root)
    boots, warnings = recorded.boots, [*recorded.warnings, *linked_warnings]
    why = history.explain(snap, booted.role, booted_path, boots) if booted_path else None
    roles, role_warnings = _roles(store, snap, linked or {})
    warnings += role_warnings
    running = next((r.os for r in roles if booted.role is not None and r.role is booted.role), None)
    failed = history.failed_upgrade(recorded.upgrades, booted.role, why, dict(running) if running is not None else None)
    entries = tuple(
        EntryState(e.path, e.role, e.state.value, e.name.tries_left, e.name.tries_done)
        for e in sorted(snap.entries, key=lambda x: (x.role.rank if x.role else 99, x.path))
    )
    services = _services(root, read_services, warnings)
    from bootkeeper.esp import handback as handback_file

    count = handback_file.read(store)
    shown = handback.view(count, handbacks, booted.role, snap.entries)
    return NodeStatus(
        Booted(booted.entry, booted.role, booted.blessed, booted.counting, why),
        failed,
        entries,
        roles,
        pin.view(pin.pins(snap, ev)),
        services,
        tuple(boots[-10:]),
        tuple(recorded.upgrades[-5:]),
        (*warnings, *snap.problems, *((count.problem,) if count.problem else ())),
        shown,
        tuple(
            source
            for source, bad in (
                ("efivars", isinstance(booted.blessed, Unavailable)),
                ("history", bool(recorded.warnings)),
                ("handbacks", count.problem is not None),
            )
            if bad
        ),
        tuple(recorded.repairs[-5:]),
    )
