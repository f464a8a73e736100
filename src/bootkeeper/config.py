"""Configuration: ``/oem/*.yaml`` merged in lexical order (or ``--config FILE``), parsed into
frozen dataclasses at the edge. Every error names the file, the key and what is allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from bootkeeper.errors import ConfigError, UnreadableError

OEM_DIR = Path("/oem")
# Sections other issues own; accepted here so one /oem file can carry all of them.
_OTHER_SECTIONS = frozenset({"stages", "name", "install", "upgrade", "reset", "users", "kairos"})


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


class SysextStore(StrEnum):
    ESP = "esp"  # EFI/<vendor>/<uki>.efi.extra.d/, handed over by systemd-stub
    PERSISTENT = "persistent"  # sysext.store_dir, per-role folders of links (esp/linkstore.py)


class SysextMode(StrEnum):
    DISABLED = "disabled"
    PERMISSIVE = "permissive"
    ENFORCED = "enforced"


ENFORCED_POLICY = "root=signed+absent:usr=signed+absent"
FIRMWARE_VARIABLES = ("db", "KEK", "PK")


@dataclass(frozen=True)
class Certificate:
    """One ``sysext.certificates`` item: PEM text or a file path, and where it was configured."""

    value: str
    where: str  # "FILE: sysext.certificates[N]"


@dataclass(frozen=True)
class Sysext:
    mode: SysextMode = SysextMode.ENFORCED
    policy: str = ENFORCED_POLICY
    policy_where: str = "sysext.policy"  # "FILE: sysext.policy": where it was set, for messages
    certificates: tuple[Certificate, ...] = ()
    # entry name -> regular expressions matched (in full) against the image name
    entries: tuple[tuple[str, tuple[str, ...]], ...] = ()
    sources: tuple[str, ...] = ()  # extra folders activate reads besides /.extra/sysext
    firmware: tuple[str, ...] = ("db",)  # firmware variables whose certificates are trusted
    verity_dirs: tuple[str, ...] = ("/run/verity.d", "/etc/verity.d", "/usr/lib/verity.d")
    full_check: bool = True  # verify every data block at activation, not only the hash tree
    refresh: bool = False  # run systemd-sysext refresh after activation
    hierarchies: tuple[str, ...] = ()  # SYSTEMD_SYSEXT_HIERARCHIES, e.g. /usr:/opt:/usr/local
    vendor: str | None = None  # EFI/<vendor>/ when the ESP has UKIs in more than one folder
    # trust an anchor only inside its validity period (systemd and the kernel never check the
    # dates: systemd-sysext verifies with PKCS7_NOVERIFY)
    require_valid_dates: bool = False
    # the node's systemd major version, when it cannot be read under the root (install-units, activate
    # --refresh and lint use it to decide what systemd-sysext understands): bootkeeper.systemd_version
    systemd_version: int | None = None
    store: SysextStore = SysextStore.ESP
    store_dir: str = "/var/lib/bootkeeper/extensions"  # esp/linkstore.DEFAULT_DIR

    def rules_for(self, entry: str) -> tuple[str, ...]:
        return dict(self.entries).get(entry, ())


@dataclass(frozen=True)
class Config:
    boot_assessment: BootAssessment = field(default_factory=BootAssessment)
    sysext: Sysext = field(default_factory=Sysext)
    sources: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


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


def _strings(where: str, value: Any, *, absolute: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: expected a list of non-empty strings, got {value!r}")
    if absolute:
        for v in value:
            if not v.startswith("/") or "\0" in v:
                raise ConfigError(f"{where}: {v!r} is not an absolute path")
    return tuple(value)


_SYSEXT_KEYS = (
    "mode",
    "policy",
    "certificates",
    "entries",
    "sources",
    "firmware",
    "verity_dirs",
    "full_check",
    "refresh",
    "hierarchies",
    "vendor",
    "require_valid_dates",
    "systemd_version",
    "store",
    "store_dir",
)
_ENTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]*")


def _parse_sysext(src: str, raw: Any, key_src: dict[str, str] | None = None) -> tuple[Sysext, list[str]]:
    """The ``sysext`` block; ``key_src`` names the file each key came from after a merge."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: sysext: expected a mapping, got {type(raw).__name__}")

    def at(key: str) -> str:
        return f"{(key_src or {}).get(key, src)}: sysext.{key}"

    for key in raw:
        if key not in _SYSEXT_KEYS:
            raise ConfigError(f"{src}: sysext.{key}: unknown key (allowed: {', '.join(_SYSEXT_KEYS)})")
    d = Sysext()
    warnings: list[str] = []
    mode_raw = raw.get("mode", d.mode.value)
    try:
        mode = SysextMode(mode_raw)
    except ValueError:
        allowed = ", ".join(m.value for m in SysextMode)
        raise ConfigError(f"{at('mode')}: {mode_raw!r} is not one of {allowed}") from None
    pol_raw = raw.get("policy", d.policy)
    if not isinstance(pol_raw, str):
        raise ConfigError(f"{at('policy')}: expected an image-policy string, got {pol_raw!r}")
    # the grammar is sysext/policy.py's: checked where the config is loaded for a verb (cli/common.py)
    certs_raw = raw.get("certificates", [])
    if isinstance(certs_raw, str):
        certs_raw = [certs_raw]
    strings = _strings(at("certificates"), certs_raw)
    certs = tuple(Certificate(v, f"{at('certificates')}[{i}]") for i, v in enumerate(strings))
    entries_raw = raw.get("entries", {})
    if not isinstance(entries_raw, dict):
        raise ConfigError(f"{at('entries')}: expected a mapping of entry name to a list of regular expressions")
    entries = []
    for name, rules in entries_raw.items():
        where = f"{at('entries')}.{name}"
        if not isinstance(name, str) or not _ENTRY_NAME.fullmatch(name):
            raise ConfigError(f"{where}: not a boot entry name (letters, digits, '_.@-')")
        if isinstance(rules, str):
            rules = [rules]
        pats = _strings(where, rules)
        for i, pat in enumerate(pats):
            try:
                re.compile(pat)
            except re.error as exc:
                raise ConfigError(f"{where}[{i}]: {pat!r} is not a regular expression ({exc})") from None
        entries.append((name, pats))
    firmware = _strings(at("firmware"), raw.get("firmware", list(d.firmware)))
    for v in firmware:
        if v not in FIRMWARE_VARIABLES:
            raise ConfigError(f"{at('firmware')}: {v!r} is not one of {', '.join(FIRMWARE_VARIABLES)}")
    sources = _strings(at("sources"), raw.get("sources", []), absolute=True)
    verity_dirs = _strings(at("verity_dirs"), raw.get("verity_dirs", list(d.verity_dirs)), absolute=True)
    hierarchies = _strings(at("hierarchies"), raw.get("hierarchies", []), absolute=True)
    vendor = raw.get("vendor")
    if vendor is not None and (not isinstance(vendor, str) or not _ENTRY_NAME.fullmatch(vendor)):
        raise ConfigError(f"{at('vendor')}: {vendor!r} is not a folder name under EFI/")
    systemd_version = raw.get("systemd_version")
    if systemd_version is not None:
        from bootkeeper.systemd_version import HIGHEST, LOWEST

        systemd_version = _int(at("systemd_version"), systemd_version, LOWEST, HIGHEST)
    store_raw = raw.get("store", d.store.value)
    try:
        store = SysextStore(store_raw)
    except ValueError:
        raise ConfigError(
            f"{at('store')}: {store_raw!r} is not one of {', '.join(s.value for s in SysextStore)}"
        ) from None
    store_dir = raw.get("store_dir", d.store_dir)
    if not isinstance(store_dir, str) or not store_dir.startswith("/") or "\0" in store_dir:
        raise ConfigError(f"{at('store_dir')}: {store_dir!r} is not an absolute path")
    return (
        Sysext(
            mode=mode,
            policy=str(pol_raw),
            policy_where=at("policy"),
            certificates=certs,
            entries=tuple(entries),
            sources=sources,
            firmware=firmware,
            verity_dirs=verity_dirs,
            full_check=_bool(at("full_check"), raw.get("full_check", d.full_check)),
            refresh=_bool(at("refresh"), raw.get("refresh", d.refresh)),
            hierarchies=hierarchies,
            vendor=vendor,
            require_valid_dates=_bool(at("require_valid_dates"), raw.get("require_valid_dates", d.require_valid_dates)),
            systemd_version=systemd_version,
            store=store,
            store_dir=store_dir,
        ),
        warnings,
    )


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UnreadableError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{where}: {problem}") from exc
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise ConfigError(f"{path}: nested too deeply to be a bootkeeper config") from None
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
    merged_sx: dict[str, Any] = {}
    sx_src: dict[str, str] = {}
    for p in paths:
        data = _load_yaml(p)
        for key in data:
            if key not in ("boot_assessment", "sysext") and key not in _OTHER_SECTIONS:
                raise ConfigError(f"{p}: {key}: unknown section (bootkeeper reads boot_assessment, sysext)")
        if "boot_assessment" in data:
            block = data["boot_assessment"]
            _parse_boot_assessment(str(p), block)  # validate each file on its own, naming it
            merged_ba.update(block)
            ba_src = str(p)
        if "sysext" in data:
            block = data["sysext"]
            _parse_sysext(str(p), block)
            merged_sx.update(block)
            sx_src.update({k: str(p) for k in block})
    sysext, warnings = _parse_sysext("<defaults>", merged_sx, sx_src)
    return Config(
        boot_assessment=_parse_boot_assessment(ba_src, merged_ba),
        sysext=sysext,
        sources=tuple(str(p) for p in paths),
        warnings=tuple(warnings),
    )
