"""Services that decide a boot: a unit enrolled here must start successfully before
``boot-complete.target`` is reached, so a boot where it fails is never blessed.

Enrolment is what the seeds do by hand with ``systemctl edit`` + ``systemctl enable`` (docs/services.md,
"Enrol"):

* ``/etc/systemd/system/<unit>.d/50-bootkeeper-assessment.conf``: ``After=`` the default targets,
  ``Before=boot-complete.target``, ``[Install] RequiredBy=boot-complete.target``, and for
  ``reboot_on_failure: always`` also ``FailureAction=reboot``;
* ``/etc/systemd/system/boot-complete.target.requires/<unit>``: the symlink ``systemctl enable``
  makes from that ``RequiredBy=`` (systemd uses the link's name; it points at the unit file when one
  is installed, else at ``/usr/lib/systemd/system/<unit>``, where a system extension brings it);
* ``/etc/bootkeeper/services.json``: the enrolled units and their policy. ``reboot_on_failure:
  active`` is not written as a drop-in at all: bootkeeper-generator reads this file at every boot and
  adds ``FailureAction=reboot`` only when the booted entry is active (no cloud-config ``if:``).

Writes are crash-safe and ordered so that an interrupted enrol or remove is finished by running it
again: enrol writes the drop-in and the link before the record, remove drops the record first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from bootkeeper import fsutil, unittext
from bootkeeper.assess import generator
from bootkeeper.config import RebootOnFailure, ServiceSpec
from bootkeeper.errors import MalformedError, UnreadableError, UsageError, WriteError

UNIT_DIR = "etc/systemd/system"
DROPIN = "50-bootkeeper-assessment.conf"
REQUIRES = "boot-complete.target.requires"
RECORD = generator.CONFIG
# Where systemctl would look for the unit file, most important first (systemd.unit(5)).
SEARCH = ("etc/systemd/system", "run/systemd/system", "usr/local/lib/systemd/system", "usr/lib/systemd/system")
FALLBACK_TARGET = "/usr/lib/systemd/system"
AFTER = "default.target graphical.target multi-user.target"


def unit_name(name: str, where: str) -> str:
    """A valid unit name; a bare name gets ``.service`` (as systemctl does)."""
    name = generator.with_unit_suffix(name)
    if (why := unittext.unit_name_problem(name)) is not None:
        raise UsageError(f"{where}: {name!r} is not a unit name ({why})")
    return name


def loop_warnings(specs: list[ServiceSpec]) -> list[str]:
    """What ``lint`` reports as error BK103 about the drop-ins ``reboot_on_failure: always`` writes,
    said when they are written (the writers: ``service enroll``, ``install-units``, ``cloud-config render``)."""
    return [
        f"{generator.with_unit_suffix(s.name)}: reboot_on_failure: always writes "
        "FailureAction=reboot for every entry; a service that "
        "fails on every entry (not because of the upgrade) reboots passive and recovery too, a boot loop that "
        "ends in statereset (lint: BK103); 'active' reboots on the active entry only"
        for s in specs
        if s.reboot_on_failure is RebootOnFailure.ALWAYS
    ]


def render_dropin(spec: ServiceSpec) -> str:
    fa = ""
    if spec.reboot_on_failure is RebootOnFailure.ALWAYS:
        fa = f"# reboot_on_failure: always (on every entry, passive and recovery too)\n{generator.FAILURE_ACTION}\n"
    elif spec.reboot_on_failure is RebootOnFailure.ACTIVE:
        fa = f"# reboot_on_failure: active: {generator.FAILURE_ACTION} is added at boot, on the active entry only\n"
    return (
        f"# bootkeeper: a boot is good only if {unittext.comment(spec.name)} starts successfully.\n"
        "[Unit]\n"
        f"After={AFTER}\n"
        "Before=boot-complete.target\n"
        f"{fa}"
        "\n[Install]\n"
        "RequiredBy=boot-complete.target\n"
    )


@dataclass(frozen=True)
class Enrolled:
    name: str
    policy: RebootOnFailure | None  # None: drop-in or link without a record (interrupted)
    dropin: bool
    linked: bool
    unit_file: str | None  # where the unit is installed under ROOT, if it is

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "reboot_on_failure": self.policy.value if self.policy else None,
            "dropin": self.dropin,
            "linked": self.linked,
            "unit_file": self.unit_file,
        }


def read_record(root: Path) -> dict[str, RebootOnFailure]:
    try:
        services = generator.load_config(str(root))
    except generator.GeneratorUnreadable as exc:
        raise UnreadableError(str(exc)) from None
    except generator.GeneratorError as exc:
        raise MalformedError(str(exc)) from None
    except RecursionError:  # json.loads() nested deeper than the stack, if load_config() lets it through
        raise MalformedError(f"{root / RECORD}: not JSON (nested too deeply)") from None
    return {u: RebootOnFailure(p) for u, p in services.items()}


def _recorded_tries(root: Path) -> int:
    """The tries recorded for the generator's reboot rule (generator.failure_reboots)."""
    try:
        return generator._load(str(root))[1]
    except (generator.GeneratorError, RecursionError):
        return generator.DEFAULT_TRIES


def _write_record(root: Path, services: dict[str, RebootOnFailure], tries: int | None = None) -> None:
    # "tries" is boot_assessment.tries: the generator needs it to tell the last try (reboot: passive
    # boots next) from a boot with no tries left (no reboot: it would boot the same entry forever).
    doc: dict[str, object] = {
        "version": 1,
        "tries": tries if tries is not None else _recorded_tries(root),
        "services": {u: services[u].value for u in sorted(services)},
    }
    path = root / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    fsutil.write_atomic(path, (json.dumps(doc, indent=2) + "\n").encode())


def find_unit(root: Path, name: str) -> str | None:
    """The unit file's path as the node sees it (``/usr/lib/systemd/system/k3s.service``), if installed.
    A template instance is found by its template."""
    candidates = [name]
    if "@" in name:
        prefix, suffix = name.split("@", 1)
        candidates.append(f"{prefix}@.{suffix.rsplit('.', 1)[-1]}")
    for d in SEARCH:
        for c in candidates:
            if os.path.lexists(root / d / c):
                return f"/{d}/{c}"
    return None


def enroll(root: Path, specs: list[ServiceSpec], tries: int | None = None) -> list[str]:
    """Enrol (or re-enrol with a new policy) each service; returns what was done. ``tries``
    (``boot_assessment.tries``) is recorded for the generator; None keeps what is recorded."""
    base = root / UNIT_DIR
    names = [unit_name(s.name, "service") for s in specs]
    actions: list[str] = []
    try:
        record = read_record(root)
        for spec, name in zip(specs, names, strict=True):
            spec = ServiceSpec(name, spec.reboot_on_failure)
            dropin = base / f"{name}.d" / DROPIN
            text = render_dropin(spec)
            dropin.parent.mkdir(parents=True, exist_ok=True)
            if not dropin.is_file() or dropin.read_text() != text:
                fsutil.write_atomic(dropin, text.encode())
                actions.append(f"wrote {dropin}")
            target = find_unit(root, name)
            if target is None:
                target = f"{FALLBACK_TARGET}/{name}"
                actions.append(f"note: {name} is not installed under {root} yet (a system extension may bring it)")
            fsutil.symlink_atomic(base / REQUIRES / name, target)
            actions.append(f"linked {base / REQUIRES / name} -> {target}")
            record[name] = spec.reboot_on_failure
        _write_record(root, record, tries)
        actions.append(f"recorded {', '.join(names)} in {root / RECORD}")
    except OSError as exc:
        raise WriteError(f"{base}: cannot enrol ({exc.strerror or exc})") from exc
    return actions


def remove(root: Path, names: list[str]) -> list[str]:
    base = root / UNIT_DIR
    units = [unit_name(n, "service") for n in names]
    actions: list[str] = []
    try:
        record = read_record(root)
        if any(u in record for u in units):
            for u in units:
                record.pop(u, None)
            _write_record(root, record)
            actions.append(f"removed {', '.join(units)} from {root / RECORD}")
        for u in units:
            link = base / REQUIRES / u
            if link.is_symlink():
                link.unlink()
                fsutil.fsync_dir(link.parent)
                actions.append(f"removed {link}")
            dropin = base / f"{u}.d" / DROPIN
            if dropin.exists():
                dropin.unlink()
                fsutil.fsync_dir(dropin.parent)
                actions.append(f"removed {dropin}")
                if not any(dropin.parent.iterdir()):
                    dropin.parent.rmdir()
    except OSError as exc:
        raise WriteError(f"{base}: cannot remove ({exc.strerror or exc})") from exc
    return actions


def listing(root: Path) -> list[Enrolled]:
    """Every unit bootkeeper has enrolled, or left half-enrolled."""
    base = root / UNIT_DIR
    record = read_record(root)
    names = set(record)
    if (base / REQUIRES).is_dir():
        names |= {p.name for p in (base / REQUIRES).iterdir() if (base / f"{p.name}.d" / DROPIN).exists()}
    names |= {p.parent.name[:-2] for p in base.glob(f"*.d/{DROPIN}")} if base.is_dir() else set()
    return [
        Enrolled(
            n,
            record.get(n),
            (base / f"{n}.d" / DROPIN).is_file(),
            (base / REQUIRES / n).is_symlink(),
            find_unit(root, n),
        )
        for n in sorted(names)
    ]
