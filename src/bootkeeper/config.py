"""Configuration: ``/oem/*.yaml`` merged in lexical order (or ``--config FILE``), parsed into
frozen dataclasses at the edge. Every error names the file, the key and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from bootkeeper.errors import ConfigError

OEM_DIR = Path("/oem")
# Sections other issues own; accepted here so one /oem file can carry all of them.
_OTHER_SECTIONS = frozenset({"sysext", "stages", "name", "install", "upgrade", "reset", "users", "kairos"})


class RebootOnFailure(StrEnum):
    NEVER = "never"
    ACTIVE = "active"
    ALWAYS = "always"


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    reboot_on_failure: RebootOnFailure = RebootOnFailure.NEVER


@dataclass(frozen=True)
class BootAssessment:
    tries: int = 3
    rearm: bool = False
    recovery_tries: int = 3
    services: tuple[ServiceSpec, ...] = ()


@dataclass(frozen=True)
class Config:
    boot_assessment: BootAssessment = field(default_factory=BootAssessment)
    sources: tuple[str, ...] = ()


def _int(where: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: {value!r} is not a whole number from {lo} to {hi}")
    if not lo <= value <= hi:
        raise ConfigError(f"{where}: {value} is out of range {lo}..{hi}")
    return value


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not true or false")
    return value


def _parse_boot_assessment(src: str, raw: Any) -> BootAssessment:
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: boot_assessment: expected a mapping, got {type(raw).__name__}")
    allowed = {"tries", "rearm", "recovery_tries", "services"}
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{src}: boot_assessment.{key}: unknown key (allowed: {', '.join(sorted(allowed))})")
    ba = BootAssessment()
    tries = _int(f"{src}: boot_assessment.tries", raw.get("tries", ba.tries), 1, 100)
    rtries = _int(f"{src}: boot_assessment.recovery_tries", raw.get("recovery_tries", ba.recovery_tries), 1, 100)
    rearm = _bool(f"{src}: boot_assessment.rearm", raw.get("rearm", ba.rearm))
    services_raw = raw.get("services", [])
    if not isinstance(services_raw, list):
        raise ConfigError(f"{src}: boot_assessment.services: expected a list")
    services = []
    for i, s in enumerate(services_raw):
        where = f"{src}: boot_assessment.services[{i}]"
        if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not s["name"]:
            raise ConfigError(f"{where}: expected a mapping with a non-empty 'name'")
        for key in s:
            if key not in ("name", "reboot_on_failure"):
                raise ConfigError(f"{where}.{key}: unknown key (allowed: name, reboot_on_failure)")
        rof = s.get("reboot_on_failure", "never")
        try:
            rof_v = RebootOnFailure(rof)
        except ValueError:
            allowed_v = ", ".join(v.value for v in RebootOnFailure)
            raise ConfigError(f"{where}.reboot_on_failure: {rof!r} is not one of {allowed_v}") from None
        services.append(ServiceSpec(s["name"], rof_v))
    return BootAssessment(tries=tries, rearm=rearm, recovery_tries=rtries, services=tuple(services))


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load(paths: list[Path] | None = None, oem_dir: Path = OEM_DIR) -> Config:
    """Merge the given files (or ``oem_dir/*.yaml`` in lexical order); later files win per key."""
    if paths is None:
        paths = sorted(oem_dir.glob("*.yaml")) if oem_dir.is_dir() else []
    merged_ba: dict[str, Any] = {}
    ba_src = "<defaults>"
    for p in paths:
        data = _load_yaml(p)
        for key in data:
            if key != "boot_assessment" and key not in _OTHER_SECTIONS:
                raise ConfigError(f"{p}: {key}: unknown section (bootkeeper reads boot_assessment, sysext)")
        if "boot_assessment" in data:
            block = data["boot_assessment"]
            _parse_boot_assessment(str(p), block)  # validate each file on its own, naming it
            merged_ba.update(block)
            ba_src = str(p)
    return Config(boot_assessment=_parse_boot_assessment(ba_src, merged_ba), sources=tuple(str(p) for p in paths))
