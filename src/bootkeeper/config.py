"""Configuration: ``/oem/*.yaml`` merged in lexical order (or ``--config FILE``), parsed into
frozen dataclasses at the edge. Every error names the file, the key and what is allowed.

Each key is one row of :data:`SETTINGS` (the way mkosi's ``SETTINGS`` declares its options): its
section and key, the parser that checks a value and names the key at fault, and the help text that
bootkeeper.yaml(5)'s SETTINGS is generated from (tests/project/test_manpages.py, tests/base/test_config.py). The
type and the default are the field of the frozen dataclass the rest of bootkeeper reads
(``BootAssessment``, ``Sysext``), which is also what a section's keys come from when a file does not
set them.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple, TypeVar

from bootkeeper import unittext
from bootkeeper.errors import ConfigError, UnreadableError

OEM_DIR = Path("/oem")
# Sections other issues own; accepted here so one /oem file can carry all of them.
_OTHER_SECTIONS = frozenset({"stages", "name", "install", "upgrade", "reset", "users", "kairos"})


class GoodWhen(StrEnum):
    """``boot_assessment.good_when``: what, besides the enrolled services, a boot needs to be good
    (assess/units.py renders the unit that checks it)."""

    MULTI_USER = "multi-user"  # multi-user.target reached (docs/seed-audit.md, "2. 'Good' means the system is up")
    NO_FAILED_UNITS = "no-failed-units"  # that, and no unit failed (systemd-boot-check-no-failures)
    SERVICES_ONLY = "services-only"  # the enrolled services alone (bootkeeper before good_when)


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
    """The ``boot_assessment`` section; what each key means is its row in :data:`SETTINGS`."""

    tries: int = 3
    rearm: bool = False
    recovery_tries: int = 3
    services: tuple[ServiceSpec, ...] = ()
    good_when: GoodWhen = GoodWhen.MULTI_USER
    handbacks: int = 1  # assess/handback.py


class SysextStore(StrEnum):
    ESP = "esp"  # EFI/<vendor>/<uki>.efi.extra.d/, handed over by systemd-stub
    PERSISTENT = "persistent"  # sysext.store_dir, per-role folders of links (esp/linkstore.py)


class SysextMode(StrEnum):
    DISABLED = "disabled"
    PERMISSIVE = "permissive"
    ENFORCED = "enforced"


ENFORCED_POLICY = "root=signed+absent:usr=signed+absent"
FIRMWARE_VARIABLES = ("db", "KEK", "PK", "MokListRT")  # MokListRT: shim's MOK (sysext/trust.py)


@dataclass(frozen=True)
class Certificate:
    """One ``sysext.certificates`` item: PEM text or a file path, and where it was configured."""

    value: str
    where: str  # "FILE: sysext.certificates[N]"


@dataclass(frozen=True)
class Sysext:
    """The ``sysext`` section; what each key means is its row in :data:`SETTINGS`."""

    mode: SysextMode = SysextMode.ENFORCED
    policy: str = ENFORCED_POLICY
    policy_where: str = "sysext.policy"  # "FILE: sysext.policy": where it was set, for messages
    certificates: tuple[Certificate, ...] = ()
    entries: tuple[tuple[str, tuple[str, ...]], ...] = ()
    sources: tuple[str, ...] = ()
    firmware: tuple[str, ...] = ("db",)
    verity_dirs: tuple[str, ...] = ("/run/verity.d", "/etc/verity.d", "/usr/lib/verity.d")
    full_check: bool = True
    refresh: bool = False
    hierarchies: tuple[str, ...] = ()
    vendor: str | None = None
    # trust an anchor only inside its validity period (systemd and the kernel never check the
    # dates: systemd-sysext verifies with PKCS7_NOVERIFY)
    require_valid_dates: bool = False
    # the node's systemd major version, when it cannot be read under the root (install-units, activate
    # --refresh and lint use it to decide what systemd-sysext understands): bootkeeper.systemd_version
    systemd_version: int | None = None
    store: SysextStore = SysextStore.ESP
    store_dir: str = "/var/lib/bootkeeper/extensions"  # the persistent store's default: its one home
    timeout: str = "5min"  # TimeoutSec= of bootkeeper-sysext.service (assess/units.py)
    required: tuple[str, ...] = ()  # extension names (sysext/required.py)


@dataclass(frozen=True)
class Update:
    """The ``update`` section; what each key means is its row in :data:`SETTINGS` (docs/updates.md)."""

    source: str | None = None  # oci:|ocifile:|dir:|file: (bootkeeper/update/source.py parses it)
    channel: str = "stable"
    schedule: str = "daily"
    randomized_delay: str = "1h"
    auto_apply: bool = False
    auth_file: str | None = None
    ca_file: str | None = None
    mirrors: tuple[str, ...] = ()
    staging_dir: str = "/var/lib/bootkeeper/update"
    limit_rate: int = 0
    timeout: str = "30s"
    deadline: str = "2h"
    repair_timeout: str = "20min"


@dataclass(frozen=True)
class Config:
    boot_assessment: BootAssessment = field(default_factory=BootAssessment)
    sysext: Sysext = field(default_factory=Sysext)
    update: Update = field(default_factory=Update)
    sources: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


# --- parsers: (value, "FILE: section.key") -> the field's value, or a ConfigError naming both --------

T = TypeVar("T")
Parser = Callable[[object, str], T]  # the value as YAML gave it: checked, never trusted


def _int(where: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: {value!r} is not a whole number from {lo} to {hi}")
    if not lo <= value <= hi:
        raise ConfigError(f"{where}: {value} is out of range {lo}..{hi}")
    return value


def _whole(lo: int, hi: int) -> Parser[int]:
    return lambda value, where: _int(where, value, lo, hi)


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not true or false")
    return value


E = TypeVar("E", bound=StrEnum)


def _one_of(kind: type[E]) -> Parser[E]:
    def parse(value: object, where: str) -> E:
        try:
            if isinstance(value, str):  # no other type equals a member's value
                return kind(value)
        except ValueError:
            pass
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(v.value for v in kind)}")

    return parse


def _strings(where: str, value: object, *, absolute: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: expected a list of non-empty strings, got {value!r}")
    if absolute:
        for v in value:
            _path(v, where)
    return tuple(value)


def _paths(value: object, where: str) -> tuple[str, ...]:
    return _strings(where, value, absolute=True)


PATH_MAX = 4095  # linux/limits.h PATH_MAX, less the NUL


def _path(value: object, where: str) -> str:
    """An absolute path of printable characters (spaces, quotes, ``%`` and non-ASCII letters are fine:
    every writer quotes them); no control character, line separator or NUL, as a path never needs one
    and it would start a line of its own in a unit file, the journal or a terminal."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(f"{where}: {value!r} is not an absolute path")
    if not unittext.printable(value) or len(value) > PATH_MAX:
        raise ConfigError(
            f"{where}: {value!r} is not an absolute path of printable characters (no control characters, "
            f"at most {PATH_MAX})"
        )
    return value


def _hierarchies(value: object, where: str) -> tuple[str, ...]:
    """``SYSTEMD_SYSEXT_HIERARCHIES`` as systemd-sysext reads it (systemd v252 and v257
    src/basic/env-util.c getenv_path_list(): split at ':', each absolute and normalized, not '/');
    normalized here as posixpath.normpath() writes it, so also no trailing '/'."""
    paths = _paths(value, where)
    for v in paths:
        if ":" in v or v == "/" or posixpath.normpath(v) != v or v.startswith("//"):
            raise ConfigError(
                f"{where}: {v!r} is not a hierarchy (an absolute, normalized path other than '/': no ':', "
                "no '.' or '..' component, no '//', no trailing '/')"
            )
    return _once(paths, where)


def _once(values: tuple[str, ...], where: str) -> tuple[str, ...]:
    """``values``, refused when one is listed twice (the first such, in sorted order)."""
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}: {sorted(v for v in set(values) if values.count(v) > 1)[0]!r} is listed twice")
    return values


def _services(value: object, where: str) -> tuple[ServiceSpec, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list")
    services = []
    for i, s in enumerate(value):
        item = f"{where}[{i}]"
        if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not s["name"]:
            raise ConfigError(f"{item}: expected a mapping with a non-empty 'name'")
        for key in s:
            if key not in ("name", "reboot_on_failure"):
                raise ConfigError(f"{item}.{key}: unknown key (allowed: name, reboot_on_failure)")
        name = s["name"]  # a bare name gets .service, as systemctl (and service enroll) give it
        if (why := unittext.unit_name_problem(unittext.with_unit_suffix(name))) is not None:
            raise ConfigError(f"{item}.name: {name!r} is not a unit name ({why})")
        rof = _one_of(RebootOnFailure)(s.get("reboot_on_failure", "never"), f"{item}.reboot_on_failure")
        services.append(ServiceSpec(s["name"], rof))
    return tuple(services)


# The characters of systemd's image-policy grammar (systemd.image-policy(7); systemd
# src/shared/image-policy.c as stored from main: designators and flags are lower-case words with '-'
# and digits, joined by '=', '+' and ':'; '*', '~' and '-' alone). systemd strips blanks around a flag
# (partition_policy_flags_from_string(): strstrip()); bootkeeper takes none, so the value never needs
# quoting on the drop-in's command line.
_POLICY_CHARS = re.compile(r"[a-z0-9=+:~*-]*")


def _policy(value: object, where: str) -> str:
    # the grammar is sysext/policy.py's: checked where the config is loaded for a verb (cli/common.py);
    # the characters here, so that no verb ever sees another
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected an image-policy string, got {value!r}")
    if not _POLICY_CHARS.fullmatch(value) or len(value) > 1024:
        raise ConfigError(
            f"{where}: {value!r} is not an image policy (lower-case letters, digits and '=+:~*-' only, "
            "e.g. root=signed+absent:usr=signed+absent)"
        )
    return value


def _certificates(value: object, where: str) -> tuple[Certificate, ...]:
    strings = _strings(where, [value] if isinstance(value, str) else value)
    return tuple(Certificate(v, f"{where}[{i}]") for i, v in enumerate(strings))


_ENTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]*")


def _entries(value: object, where: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of entry name to a list of regular expressions")
    entries = []
    for name, rules in value.items():
        at = f"{where}.{name}"
        if not isinstance(name, str) or not _ENTRY_NAME.fullmatch(name):
            raise ConfigError(f"{at}: not a boot entry name (letters, digits, '_.@-')")
        pats = _strings(at, [rules] if isinstance(rules, str) else rules)
        for i, pat in enumerate(pats):
            try:
                re.compile(pat)
            except re.error as exc:
                raise ConfigError(f"{at}[{i}]: {pat!r} is not a regular expression ({exc})") from None
        entries.append((name, pats))
    return tuple(entries)


# An extension's name as systemd-sysext derives it from the image's file name (what its
# extension-release.NAME must match): no "/", no leading "."; kept to a portable set, as it reaches a
# journal line, the metrics' labels and the verdict file in /run.
_EXTENSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+@-]{0,127}")


def _extension_names(value: object, where: str) -> tuple[str, ...]:
    names = _strings(where, value)
    for v in names:
        if not _EXTENSION_NAME.fullmatch(v) or v.endswith(".raw"):
            raise ConfigError(
                f"{where}: {v!r} is not an extension name (letters, digits, '_.+@-', at most 128, "
                "no '.raw': the image k3s.raw is named k3s)"
            )
    return _once(names, where)


def _firmware(value: object, where: str) -> tuple[str, ...]:
    firmware = _strings(where, value)
    for v in firmware:
        if v not in FIRMWARE_VARIABLES:
            raise ConfigError(f"{where}: {v!r} is not one of {', '.join(FIRMWARE_VARIABLES)}")
    return firmware


def _vendor(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _ENTRY_NAME.fullmatch(value):
        raise ConfigError(f"{where}: {value!r} is not a folder name under EFI/")
    return value


def _systemd_version(value: object, where: str) -> int | None:
    if value is None:
        return None
    from bootkeeper.systemd_version import HIGHEST, LOWEST  # only when the key is set: not on the boot path

    return _int(where, value, LOWEST, HIGHEST)


# systemd.time(7) time span, as parse_time() reads it (src/basic/time-util.c, v257.9): numbers, each with
# an optional unit, spaces between allowed; a bare number is seconds. ASCII only ("µs" is left out): the
# value lands in a unit file, so nothing but these characters ever reaches it.
_TIME_UNIT = (
    "usec|us|msec|ms|seconds|second|sec|s|minutes|minute|min|months|month|M|m|hours|hour|hr|h|days|day|d|"
    "weeks|week|w|years|year|y"
)
# possessive: a run of digits is one number, never split between repetitions (no exponential backtracking)
_TIMESPAN = re.compile(rf"(?:[0-9]++(?:\.[0-9]++)? *+(?:{_TIME_UNIT})? *+)++")


_UNIT_SECONDS = {
    **dict.fromkeys(("usec", "us"), 1e-6),
    **dict.fromkeys(("msec", "ms"), 1e-3),
    **dict.fromkeys(("seconds", "second", "sec", "s", ""), 1.0),
    **dict.fromkeys(("minutes", "minute", "min", "m"), 60.0),
    **dict.fromkeys(("hours", "hour", "hr", "h"), 3600.0),
    **dict.fromkeys(("days", "day", "d"), 86400.0),
    **dict.fromkeys(("weeks", "week", "w"), 604800.0),
    **dict.fromkeys(("months", "month", "M"), 2629800.0),
    **dict.fromkeys(("years", "year", "y"), 31557600.0),
}  # fmt: skip  (systemd's src/basic/time-util.c, parse_sec(): a month is 30.44 days, a year 365.25)


def seconds(span: str) -> float:
    """A time span :func:`_timespan` accepted, in seconds (``infinity``: ``math.inf``), as systemd reads it."""
    if span == "infinity":
        return float("inf")
    total = 0.0
    for number, unit in re.findall(rf"([0-9]+(?:\.[0-9]+)?) *({_TIME_UNIT}|)", span):
        total += float(number) * _UNIT_SECONDS[unit]
    return total


def _timespan(value: object, where: str) -> str:
    """A systemd time span (``90s``, ``5min``, ``1h 30min``), whole seconds as a number, or ``infinity``."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10**9:
        return str(value)
    text = value if isinstance(value, str) and len(value) <= 64 else ""
    if text == "infinity" or (text[:1].isdigit() and text[-1] != " " and _TIMESPAN.fullmatch(text)):
        return text
    raise ConfigError(
        f"{where}: {value!r} is not a systemd time span (e.g. 90s, 5min, 1h 30min, a number of seconds, or infinity)"
    )


_SCHEMES = ("oci:", "ocifile:", "dir:", "file:")
_CHANNEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")  # an OCI tag
_MIRROR = re.compile(r"[A-Za-z0-9.-]{1,253}(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


def _source(value: object, where: str) -> str | None:
    """A release source's form (the node parses it fully: bootkeeper/update/source.py); empty or null: none."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.startswith(_SCHEMES) or len(value) > PATH_MAX:
        raise ConfigError(f"{where}: {value!r:.80} is not a release source ({', '.join(_SCHEMES)} then where)")
    if not unittext.printable(value):
        raise ConfigError(f"{where}: {value!r:.80} has control characters")
    return value


def _channel(value: object, where: str) -> str:
    if not isinstance(value, str) or not _CHANNEL.fullmatch(value):
        raise ConfigError(f"{where}: {value!r:.80} is not a channel (an OCI tag: letters, digits, `._-`, at most 128)")
    return value


def _calendar(value: object, where: str) -> str:
    """``OnCalendar=``'s value, checked by form here (``systemd-analyze calendar`` is the judge)."""
    if not isinstance(value, str) or not value.strip() or len(value) > 256 or not unittext.printable(value):
        raise ConfigError(f"{where}: {value!r:.80} is not a calendar event (e.g. daily, *-*-* 03:00:00)")
    return value


def _optional_path(value: object, where: str) -> str | None:
    return None if value is None or value == "" else _path(value, where)


def _mirrors(value: object, where: str) -> tuple[str, ...]:
    hosts = _strings(where, value)
    for h in hosts:
        if not _MIRROR.fullmatch(h):
            raise ConfigError(f"{where}: {h!r:.80} is not a registry host (host[:port])")
    return _once(hosts, where)


# --- the settings table ------------------------------------------------------------------------------

Section = BootAssessment | Sysext | Update  # the dataclass of a section, which its keys are the fields of
SECTIONS: dict[str, type[Section]] = {"boot_assessment": BootAssessment, "sysext": Sysext, "update": Update}


class Setting(NamedTuple):  # a NamedTuple, not a dataclass: config is on the boot path, and it is cheaper
    """One config key: ``section.key`` is the field ``key`` of ``SECTIONS[section]``, whose default
    applies when no file sets it. ``where_field``: a field that records where the key was set."""

    section: str
    key: str
    parse: Parser[object]
    help: str
    where_field: str | None = None

    @property
    def path(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def default(self) -> object:
        f = next(f for f in fields(SECTIONS[self.section]) if f.name == self.key)
        return f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default


# In each section, the order of its rows is the order its unknown-key error lists them (and
# bootkeeper.yaml(5)'s SETTINGS: tests/base/test_config.py).
SETTINGS = (
    Setting(
        "boot_assessment",
        "handbacks",
        _whole(0, 100),
        "times in a row a good statereset boot re-arms active, passive and recovery (the next boot is active) "
        "without a good active or passive boot between; then statereset stays (0: always)",
    ),
    Setting("boot_assessment", "rearm", _bool, "re-arm the booted entry after every good boot"),
    Setting(
        "boot_assessment",
        "recovery_tries",
        _whole(1, 100),
        "tries of recovery and statereset entries; re-armed when active or passive is blessed good",
    ),
    Setting(
        "boot_assessment",
        "services",
        _services,
        "services that must start before a boot is good (install-units, service enroll): `name` and "
        "`reboot_on_failure` (never, active: through bootkeeper-generator, always). `name` is a systemd unit "
        "name (`k3s` means `k3s.service`): letters, digits, `:-_.\\` and at most one `@`, a unit type suffix, "
        "at most 255 characters",
    ),
    Setting("boot_assessment", "tries", _whole(1, 100), "tries of the active and passive entries (arm, rotate)"),
    Setting(
        "boot_assessment",
        "good_when",
        _one_of(GoodWhen),
        "what else a good boot needs (install-units): `multi-user` (multi-user.target reached), "
        "`no-failed-units` (that, and no failed unit) or `services-only` (the services alone)",
    ),
    Setting("sysext", "mode", _one_of(SysextMode), "`disabled`, `permissive` or `enforced`"),
    Setting(
        "sysext",
        "policy",
        _policy,
        "the image policy images must pass (systemd's grammar: lower-case letters, digits and `=+:~*-`); the "
        "seed's `verity+signed+absent` gets a warning",
        where_field="policy_where",
    ),
    Setting("sysext", "certificates", _certificates, "trust anchors: PEM text or paths (under --root when given)"),
    Setting(
        "sysext",
        "entries",
        _entries,
        "entry name to regular expressions (full match on the image name); an image no rule matches goes to "
        "active and passive",
    ),
    Setting(
        "sysext",
        "sources",
        _paths,
        "more folders activate reads, after `/.extra/sysext` (this and every other path: absolute, printable "
        "characters only, at most 4095)",
    ),
    Setting(
        "sysext",
        "firmware",
        _firmware,
        "firmware variables whose certificates are trusted: `db`, `KEK`, `PK`, `MokListRT`",
    ),
    Setting(
        "sysext", "verity_dirs", _paths, "folders whose `*.crt`/`*.pem` certificates are trusted (systemd-sysext's own)"
    ),
    Setting("sysext", "full_check", _bool, "activate verifies every data block, not only the hash tree"),
    Setting("sysext", "refresh", _bool, "run systemd-sysext refresh after activate"),
    Setting(
        "sysext",
        "hierarchies",
        _hierarchies,
        "`SYSTEMD_SYSEXT_HIERARCHIES`, e.g. `[/usr, /opt]`; a hierarchy below another freezes it (lint BK303). "
        "Each an absolute, normalized path other than `/`: no `:`, no `.` or `..`, no `//` or trailing `/`, "
        "printable characters only, each listed once",
    ),
    Setting("sysext", "vendor", _vendor, "only UKIs under `EFI/<vendor>/` (when the ESP has several vendors)"),
    Setting(
        "sysext",
        "require_valid_dates",
        _bool,
        "also refuse anchors outside their validity dates (systemd does not check them)",
    ),
    Setting(
        "sysext",
        "systemd_version",
        _systemd_version,
        "the node's systemd major (e.g. 252) when it cannot be read under --root; decides --image-policy",
    ),
    Setting(
        "sysext",
        "store",
        _one_of(SysextStore),
        "`esp` (`EFI/<vendor>/<uki>.efi.extra.d/`) or `persistent` (`store_dir`, folders of links)",
    ),
    Setting("sysext", "store_dir", _path, "the persistent store, for `store: persistent` (under --root when given)"),
    Setting(
        "sysext",
        "timeout",
        _timespan,
        "`TimeoutSec=` of bootkeeper-sysext.service: a systemd time span or seconds (`infinity`: none); "
        "what was placed then is merged (docs/operator-guide.md)",
    ),
    Setting(
        "sysext",
        "required",
        _extension_names,
        "extension names (`k3s` for `k3s.raw`) a good boot needs merged in enforced mode; one refused or "
        "missing fails the boot, and on active reboots it",
    ),
    Setting(
        "update",
        "source",
        _source,
        "where releases come from: `oci:REGISTRY/REPO[:TAG|@sha256:…]`, `ocifile:PATH`, `dir:PATH` or "
        "`file:PATH` (docs/updates.md); none: `update` needs `--source`, `repair` looks only on removable media",
    ),
    Setting("update", "channel", _channel, "the tag of an `oci:` source that names none"),
    Setting("update", "schedule", _calendar, "`OnCalendar=` of bootkeeper-update.timer"),
    Setting("update", "randomized_delay", _timespan, "`RandomizedDelaySec=` of bootkeeper-update.timer (jitter)"),
    Setting(
        "update",
        "auto_apply",
        _bool,
        "bootkeeper-update.service applies a downloaded release and reboots into it (else it only checks and "
        "downloads: `update --apply-downloaded` switches, e.g. in a maintenance window)",
    ),
    Setting("update", "auth_file", _optional_path, "registry credentials: a containers-auth.json(5) file (`auths`)"),
    Setting(
        "update", "ca_file", _optional_path, "PEM certificates a registry's HTTPS must chain to (else the system's)"
    ),
    Setting("update", "mirrors", _mirrors, "registry hosts tried, in order, before the source's own"),
    Setting("update", "staging_dir", _path, "where releases are downloaded to (the persistent partition)"),
    Setting("update", "limit_rate", _whole(0, 10**12), "bytes a second a download may take (0: no limit)"),
    Setting("update", "timeout", _timespan, "a connection or transfer with no byte for this long is abandoned"),
    Setting("update", "deadline", _timespan, "the longest one check or download may take"),
    Setting("update", "repair_timeout", _timespan, "`TimeoutSec=` of bootkeeper-repair.service"),
)

S = TypeVar("S")


def _block(src: str, section: str, raw: object) -> dict[str, object]:
    """A section's block as a file gave it, refused unless it is a mapping of the section's keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: {section}: expected a mapping, got {type(raw).__name__}")
    allowed = [s.key for s in SETTINGS if s.section == section]
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{src}: {section}.{key}: unknown key (allowed: {', '.join(allowed)})")
    return raw


def _parse_section(cls: type[S], src: str, raw: dict[str, object], key_src: dict[str, str] | None = None) -> S:
    """A section's block (checked by :func:`_block`) as its dataclass; ``key_src`` names the file each
    key came from after a merge."""
    section = next(name for name, c in SECTIONS.items() if c is cls)
    values: dict[str, object] = {}
    for s in [s for s in SETTINGS if s.section == section]:
        where = f"{(key_src or {}).get(s.key, src)}: {s.path}"
        values[s.key] = s.parse(raw[s.key], where) if s.key in raw else s.default
        if s.where_field is not None:
            values[s.where_field] = where
    return cls(**values)


def _load_yaml(path: Path) -> dict[object, object]:
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
    merged: dict[str, dict[str, object]] = {name: {} for name in SECTIONS}
    key_src: dict[str, dict[str, str]] = {name: {} for name in SECTIONS}
    for p in paths:
        data = _load_yaml(p)
        for key in data:
            if key not in SECTIONS and key not in _OTHER_SECTIONS:
                raise ConfigError(f"{p}: {key}: unknown section (bootkeeper reads {', '.join(SECTIONS)})")
        for name, cls in SECTIONS.items():
            if name in data:
                block = _block(str(p), name, data[name])
                _parse_section(cls, str(p), block)  # validate each file on its own, naming it
                merged[name].update(block)
                key_src[name].update({k: str(p) for k in block})
    return Config(
        boot_assessment=_parse_section(
            BootAssessment, "<defaults>", merged["boot_assessment"], key_src["boot_assessment"]
        ),
        sysext=_parse_section(Sysext, "<defaults>", merged["sysext"], key_src["sysext"]),
        update=_parse_section(Update, "<defaults>", merged["update"], key_src["update"]),
        sources=tuple(str(p) for p in paths),
    )
