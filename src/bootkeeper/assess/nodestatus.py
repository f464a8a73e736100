"""What the operator sees (``bootkeeper status``, ``bootkeeper motd``): which entry booted and why,
whether this boot is blessed yet, tries left on every entry, the enrolled services' results, each
role's OS (its UKI's ``.osrel``) and extension set, the installed and active extensions, and, after a
fallback to passive, which recorded upgrade failed. Gathering reads files and asks systemctl; the view
is plain data, rendered as text by :func:`render` (also the motd) or printed as JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootkeeper import fsutil
from bootkeeper.assess import history
from bootkeeper.errors import BootkeeperError
from bootkeeper.esp import efivars as efivars_mod
from bootkeeper.esp.entries import Role
from bootkeeper.esp.store import EspStore, Snapshot

MOTD = "run/motd.d/bootkeeper"
ENROLLED_RECORD = "etc/bootkeeper/services.json"  # services.RECORD, named here to keep status light
ENROLLED_LINKS = "etc/systemd/system/boot-complete.target.requires"
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
    store: EspStore, snap: Snapshot, links: Path | None = None
) -> tuple[list[dict[str, Any]], dict[str, list[str]], list[str]]:
    """Each entry that boots a UKI: its OS (the ``.osrel`` fields that name a version) and the images
    in its ``.extra.d`` (and, with the persistent store ``links``, its role's folder of links and
    ``common/``); also the images per entry (``installed``) and what could not be read."""
    from bootkeeper.esp import extra, pe
    from bootkeeper.esp.entries import parse_osrel

    try:
        targets = extra.targets(snap, store)
        found = extra.installed(store, targets)
    except (OSError, BootkeeperError) as exc:
        return [], {"error": [str(exc)]}, [f"extensions not read: {exc}"]
    installed: dict[str, list[str]] = {}
    for i in found:
        installed.setdefault(i.target.entry, []).append(i.name)
    out: list[dict[str, Any]] = []
    warnings: list[str] = []
    linked: dict[str, list[str]] = {}
    if links is not None:
        from bootkeeper.esp.linkstore import FOLDERS, LinkStore

        ls = LinkStore(links)
        for f in FOLDERS:
            for lk in ls.links(f):
                if lk.ok:
                    linked.setdefault(f, []).append(lk.name)
                else:
                    warnings.append(f"extension store: {lk.problem}")
        for f, names in linked.items():
            installed.setdefault(f"{links}/{f}", []).extend(names)
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
        out.append(
            {
                "entry": t.entry,
                "role": t.role.value if t.role else None,
                "via": t.via,
                "uki": t.uki,
                "os": fields,
                "version": history.os_version(fields) if fields is not None else None,
                "extra_dir": t.extra_dir,
                "extensions": [i.name for i in found if i.target == t]
                + sorted({*linked.get(t.role.value if t.role else "", []), *linked.get("common", [])}),
            }
        )
    return out, installed, warnings


def _extensions(root: Path, installed: dict[str, list[str]]) -> dict[str, Any]:
    active: list[dict[str, Any]] = []
    report_error = None
    try:
        report = json.loads((root / "run/bootkeeper/sysext.json").read_text())
        mode = report.get("mode")
        for img in report.get("images", []):
            active.append({k: img.get(k) for k in ("name", "verdict", "placed", "signer")})
    except FileNotFoundError:
        mode = None
    except (OSError, ValueError, AttributeError, TypeError, RecursionError) as exc:
        mode, report_error = None, f"run/bootkeeper/sysext.json: {type(exc).__name__}: {str(exc)[:120]}"
    return {"installed": installed, "activation": active, "mode": mode, "error": report_error}


def gather(
    root: Path,
    esp: Path,
    efivars: Path,
    sdboot_version: str | int | None,
    read_services: ServiceReader | None = systemctl_states,
    snap: Snapshot | None = None,
    links: Path | None = None,
) -> dict[str, Any]:
    from bootkeeper.assess import bless as bless_mod
    from bootkeeper.assess import pin
    from bootkeeper.esp.efivars import LoaderVars

    store = EspStore(esp)
    if snap is None:
        snap = store.snapshot(sdboot_version, loader_info=efivars_mod.loader_info(efivars))
    ev = LoaderVars.read(efivars)
    booted_path = ev.boot_count_path or ev.entry_selected
    booted: dict[str, Any] = {"entry": None, "role": None, "blessed": None, "counting": bool(ev.boot_count_path)}
    role: Role | None = None
    if ev.boot_count_path:
        try:
            b = bless_mod.parse_entry_path(ev.boot_count_path, "LoaderBootCountPath")
            role = b.role
            booted.update(entry=b.path, role=role.value if role else None)
            booted["blessed"] = bless_mod.status(store, b)
        except BootkeeperError as exc:
            booted["error"] = str(exc)
    elif ev.entry_selected:
        role = Role.from_entry_id(ev.entry_selected)
        booted.update(entry=ev.entry_selected, role=role.value if role else None, blessed="not counted")
    recorded = history.read_all(root)
    boots, warnings = recorded.boots, list(recorded.warnings)
    why = history.explain(snap, role, booted_path, boots) if booted_path else None
    roles, installed, role_warnings = _roles(store, snap, links)
    warnings += role_warnings
    running = next((r["os"] for r in roles if role is not None and r["role"] == role.value), None)
    failed = history.failed_upgrade(recorded.upgrades, role, why, running)
    entries = [
        {
            "path": e.path,
            "role": e.role.value if e.role else None,
            "state": e.state.value,
            "tries_left": e.name.tries_left,
            "tries_done": e.name.tries_done,
        }
        for e in sorted(snap.entries, key=lambda x: (x.role.rank if x.role else 99, x.path))
    ]
    enrolled: list[dict[str, Any]] = []
    rows = []
    try:
        if (root / ENROLLED_RECORD).exists() or (root / ENROLLED_LINKS).is_dir():  # else skip the import
            from bootkeeper.assess import services

            rows = services.listing(root)
    except BootkeeperError as exc:
        warnings = [*warnings, str(exc)]
    states: dict[str, dict[str, str]] = {}
    if rows and read_services is not None:
        try:
            states = read_services([r.name for r in rows])
        except BootkeeperError as exc:
            warnings.append(f"service states unknown: {exc}")
    for r in rows:
        props = states.get(r.name)
        enrolled.append(
            {
                "name": r.name,
                "reboot_on_failure": r.policy.value if r.policy else None,
                "result": _service_verdict(props),
                "active_state": props.get("ActiveState") if props else None,
            }
        )
    return {
        "booted": {**booted, "why": why.as_json() if why else None},
        "failed_upgrade": failed.as_json() if failed else None,
        "entries": entries,
        "roles": roles,
        "pin": pin.view(pin.pins(snap, ev)),
        "services": enrolled,
        "extensions": _extensions(root, installed),
        "history": [b.as_json() for b in boots[-10:]],
        "upgrades": [u.as_json() for u in recorded.upgrades[-5:]],
        "warnings": warnings + list(snap.problems),
    }


def _blessed_text(booted: dict[str, Any]) -> str:
    state = booted.get("blessed")
    return {
        "good": "blessed: this boot is good",
        "indeterminate": "NOT blessed yet: boot-complete.target not reached (or bless did not run)",
        "bad": "marked BAD",
        "not counted": "not counted (entry has no boot counter)",
    }.get(str(state), f"blessed: {state}")


def pin_lines(pin: dict[str, Any] | None) -> list[str]:
    """The ``pin`` view (assess/pin.py) as text: the pin consulted first, then the others."""
    if not pin:
        return []
    return [f"pin: {pin['text']}"] + [f"  also: {o['text']}" for o in pin.get("others", [])]


def render(view: dict[str, Any]) -> str:
    b = view["booted"]
    lines = []
    if b.get("error"):  # the variables are there and say something that cannot be followed: say what
        what = f"{b['entry']} (role {b['role'] or 'none'})" if b["entry"] else "unknown"
        lines.append(f"booted: {what}; its state is unknown: {b['error']}")
    elif b["entry"]:
        lines.append(f"booted: {b['entry']} (role {b['role'] or 'none'}); {_blessed_text(b)}")
    else:
        lines.append("booted: unknown (no systemd-boot variables)")
    if b.get("why"):
        lines.append(f"why: {b['why']['text']}")
    if view.get("failed_upgrade"):
        lines.append(view["failed_upgrade"]["text"])
    lines.append("entries:")
    for e in view["entries"]:
        tries = "not counted" if e["tries_left"] is None else f"{e['tries_left']} tries left, {e['tries_done']} used"
        lines.append(f"  {e['path']:<40} {e['state']:<13} {tries}")
    lines.extend(pin_lines(view.get("pin")))
    if view.get("roles"):
        lines.append("OS per entry (its UKI's .osrel):")
        for r in view["roles"]:
            lines.append(f"  {r['entry']:<12} {history.os_text(r['os'])}")
    if view["services"]:
        lines.append("services that decide a boot:")
        for s in view["services"]:
            lines.append(f"  {s['name']:<30} {s['result']:<20} reboot_on_failure: {s['reboot_on_failure']}")
    ext = view["extensions"]
    for entry, names in ext["installed"].items():
        lines.append(f"extensions installed for {entry}: {', '.join(names)}")
    if ext["activation"]:
        placed = [i["name"] for i in ext["activation"] if i["placed"]]
        refused = [f"{i['name']} ({i['verdict']})" for i in ext["activation"] if not i["placed"]]
        lines.append(f"extensions active ({ext['mode']}): {', '.join(placed) or 'none'}")
        if refused:
            lines.append(f"extensions refused: {', '.join(refused)}")
    for w in view["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines) + "\n"
