"""Boot-loop hazards, found before they happen: in cloud-config (yip ``stages:``), in unit files and
drop-ins, and on the ESP. Each finding has a code, a severity, the file and line, and a fix.

Where a cloud-config step runs is worked out from its ``if:``: the tests of ``/run/cos/<role>_mode``
(``[ -f … ]``, ``[ ! -f … ]``, ``test -e …``, ``!``, ``&&``, ``||``) are evaluated for each role in
three values (true, false, maybe); any other shell is "maybe", so a hazard is reported when a step
*can* run on a role.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Generic, TypeVar, cast

from bootkeeper.assess import chain, cloudconfig, generator
from bootkeeper.assess.chain import default_can_pin
from bootkeeper.assess.status import Temporary
from bootkeeper.config import BootAssessment
from bootkeeper.errors import BootkeeperError, InputError
from bootkeeper.esp import entries as entries_mod
from bootkeeper.esp.entries import TYPE1_DIR, TYPE2_DIR, Entry, EntryKind, LoaderType, Role
from bootkeeper.esp.sdboot import SdBoot
from bootkeeper.esp.store import EspStore, Snapshot
from bootkeeper.findings import Finding, Severity

ROLES = tuple(Role)
FALLBACK_ROLES = (Role.PASSIVE, Role.RECOVERY, Role.STATERESET)
REBOOTS = ("reboot", "reboot-force", "reboot-immediate")


# --- where a step runs -----------------------------------------------------------------------------

Tri = bool | None  # None: maybe
_MODE = re.compile(r"^/run/cos/([a-z]+)_mode$")


def _term(words: list[str], role: Role) -> tuple[Tri, set[str]]:
    """One test command; returns its value on ``role`` and the roles whose mode file it names."""
    neg = False
    while words and words[0] == "!":
        neg, words = not neg, words[1:]
    if words and words[0] == "[" and words[-1:] == ["]"]:
        words = words[1:-1]
    elif words and words[0] == "test":
        words = words[1:]
    else:
        return None, set()
    while words and words[0] == "!":
        neg, words = not neg, words[1:]
    if len(words) != 2 or words[0] not in ("-f", "-e"):
        return None, set()
    m = _MODE.match(words[1])
    if not m:
        return None, set()
    value: Tri = m.group(1) == role.value
    return (not value if neg else value), {m.group(1)}


def evaluate(condition: str | None, role: Role) -> tuple[Tri, set[str]]:
    """The condition's value when ``role`` booted, and the mode files it tests."""
    if condition is None or not condition.strip():
        return True, set()
    try:
        tokens = shlex.split(condition.replace("&&", " && ").replace("||", " || "))
    except ValueError:
        return None, set()
    value: Tri = None
    op: str | None = None
    named: set[str] = set()
    words: list[str] = []
    for tok in [*tokens, "&&END"]:
        if tok in ("&&", "||", "&&END"):
            v, n = _term(words, role)
            named |= n
            if op is None:
                value = v
            elif op == "&&":
                value = False if (value is False or v is False) else (True if value and v else None)
            else:
                value = True if (value is True or v is True) else (False if value is False and v is False else None)
            op, words = tok, []
        else:
            words.append(tok)
    return value, named


def runs_on(condition: str | None) -> tuple[set[Role], set[str]]:
    roles: set[Role] = set()
    named: set[str] = set()
    for r in ROLES:
        v, n = evaluate(condition, r)
        named |= n
        if v is not False:
            roles.add(r)
    return roles, named


# --- what the rules look at ------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitLine:
    section: str
    key: str
    value: str
    line: int


def parse_unit(text: str, first_line: int = 1) -> list[UnitLine]:
    out: list[UnitLine] = []
    section = ""
    for i, raw in enumerate(text.splitlines()):
        s = raw.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1]
        elif "=" in s:
            k, v = s.split("=", 1)
            out.append(UnitLine(section, k.strip(), v.strip(), first_line + i))
    return out


def _unit_of(path: str) -> str | None:
    """``…/k3s.service.d/x.conf`` → ``k3s.service``; ``…/k3s.service`` → ``k3s.service``; else None."""
    types = "|".join(generator.UNIT_TYPES)
    m = re.search(rf"([^/]+\.(?:{types}))(?:\.d/[^/]+\.conf)?$", path)
    return m.group(1) if m else None


def _roles_text(roles: set[Role]) -> str:
    return ", ".join(r.value for r in ROLES if r in roles)


@dataclass(frozen=True)
class UnitFile:
    """A unit file or drop-in in effect on ``roles``, reported against ``file``. ``enabled``: units
    the same cloud-config enables (None: unknown, e.g. a unit file given alone)."""

    file: str
    unit: str
    lines: list[UnitLine]
    roles: set[Role]
    enabled: set[str] | None


@dataclass(frozen=True)
class StepView:
    """A cloud-config step and where it runs: the roles it can run on, the mode files it tests."""

    step: cloudconfig.Step
    roles: set[Role]
    named: set[str]


@dataclass(frozen=True)
class CloudConfigFile:
    """A cloud-config as lint reads it: its steps, or why it cannot be read (line, message, fix)."""

    file: str
    cfg: cloudconfig.CloudConfig | None
    steps: tuple[StepView, ...] = ()
    unreadable: tuple[int | None, str, str] | None = None


@dataclass(frozen=True)
class EspView:
    """The ESP ``snap`` was read from, at ``esp``; ``store`` to read its files again (None: only the
    snapshot is known)."""

    snap: Snapshot
    esp: str
    cfg: BootAssessment
    entry_default: str | None
    temporaries: Sequence[Temporary]
    store: EspStore | None

    @property
    def listed(self) -> list[Entry]:
        return [e for e in self.snap.entries if e.listed]

    @cached_property
    def key_plans(self) -> list[tuple[Entry, chain.KeyPlan]]:
        """The role entries whose loader key is a question (not 'linux'), with the plan arm follows
        for each (:func:`chain.plan_key`), read once for BK201 and BK207."""
        snap, store = self.snap, self.store
        loaders = (
            chain.boot_loaders(store, snap) if store else chain.BootLoaders(snap.sdboot, snap.sdboot_version_source)
        )
        out: list[tuple[Entry, chain.KeyPlan]] = []
        for e in snap.entries:
            if e.role is None or e.kind is not EntryKind.TYPE1:
                continue
            line = _key_of(e)
            if line is None or line.key == "linux":
                continue
            if store is not None:
                try:
                    line, plan = chain.entry_key_plan(store, loaders, store.read_text(e.path))
                except InputError:
                    continue
            else:  # no ESP to look at: the file is taken for the UKI the layout names
                plan = chain.plan_key(line, None, loaders)
            if not e.listed and (line is None or line.key != "uki"):
                continue  # dropped for another reason: not a question of the key
            out.append((e, plan))
        return out


# --- the rules: one function per code, registered in RULES at the end ----------------------------------


def _bk100(doc: CloudConfigFile) -> list[Finding]:
    if doc.unreadable is not None:
        line, msg, fix = doc.unreadable
        return [Finding("BK100", Severity.ERROR, doc.file, line, msg, fix)]
    problems = doc.cfg.problems if doc.cfg is not None else ()
    return [Finding("BK100", Severity.WARNING, doc.file, ln, msg, "fix the step") for ln, msg in problems]


def _roles_in_name(name: str) -> set[str]:
    return {r.value for r in ROLES if re.search(rf"\b{r.value}\b", name.lower())}


def _bk101(doc: CloudConfigFile) -> list[Finding]:
    out: list[Finding] = []
    for s in doc.steps:
        step, meant = s.step, _roles_in_name(s.step.name)
        if step.condition is None or len(meant) != 1:
            continue
        role = next(iter(meant))
        if role in s.named and Role(role) not in s.roles:
            out.append(
                Finding(
                    "BK101",
                    Severity.ERROR,
                    doc.file,
                    step.condition_line,
                    f"step '{step.name}' is meant for {role}, but if: {step.condition!r} is false on {role} "
                    f"and true on {_roles_text(s.roles)}: the condition is inverted",
                    f"if: '[ -f \"/run/cos/{role}_mode\" ]'",
                )
            )
    return out


def _bk102(doc: CloudConfigFile) -> list[Finding]:
    out: list[Finding] = []
    writers: dict[str, list[tuple[cloudconfig.Step, cloudconfig.FileWrite, set[Role]]]] = {}
    for s in doc.steps:
        step = s.step
        if s.named and not s.roles:
            out.append(
                Finding(
                    "BK102",
                    Severity.ERROR,
                    doc.file,
                    step.condition_line,
                    f"step '{step.name}': if: {step.condition!r} is false on every entry: the step never runs",
                    "test one mode file: if: '[ -f \"/run/cos/active_mode\" ]'",
                )
            )
        for w in step.files:
            writers.setdefault(w.path, []).append((step, w, s.roles))
    for path, ws in writers.items():
        for i, (s1, w1, r1) in enumerate(ws):
            for s2, w2, r2 in ws[i + 1 :]:
                both = r1 & r2
                if both and w1.content != w2.content:
                    out.append(
                        Finding(
                            "BK102",
                            Severity.ERROR,
                            doc.file,
                            s2.condition_line,
                            f"steps '{s1.name}' (line {s1.line}) and '{s2.name}' both write {path} on "
                            f"{_roles_text(both)}, with different content: the conditions contradict each other "
                            f"and the later step wins",
                            "make the conditions exclusive ('[ -f X ]' and '[ ! -f X ]'), or write two files",
                        )
                    )
    return out


def _bk103(u: UnitFile) -> list[Finding]:
    out: list[Finding] = []
    if not u.roles & set(FALLBACK_ROLES):
        return out
    for ln in u.lines:
        if ln.section == "Unit" and ln.key == "FailureAction" and ln.value in REBOOTS:
            out.append(
                Finding(
                    "BK103",
                    Severity.ERROR,
                    u.file,
                    ln.line,
                    f"{u.unit}: FailureAction={ln.value} is in effect on {_roles_text(u.roles)}: a service that "
                    f"fails on every entry (not because of the upgrade) reboots passive and recovery too, "
                    f"a boot loop that ends in statereset",
                    f"reboot on the active entry only: 'bootkeeper service enroll {u.unit} --reboot-on-failure "
                    f"active', or write this drop-in only under if: '[ -f \"/run/cos/active_mode\" ]'",
                )
            )
    return out


def _pulled(u: UnitFile) -> bool:
    """Whether [Install] makes boot-complete.target need the unit (once it is enabled)."""
    install = {(ln.key, t) for ln in u.lines if ln.section == "Install" for t in ln.value.split()}
    return any(k in ("RequiredBy", "WantedBy") and t == "boot-complete.target" for k, t in install)


def _bk104(u: UnitFile) -> list[Finding]:
    if not _pulled(u) or u.enabled is None or u.unit in u.enabled:
        return []
    line = next(ln.line for ln in u.lines if ln.section == "Install")
    return [
        Finding(
            "BK104",
            Severity.ERROR,
            u.file,
            line,
            f"{u.unit}: [Install] RequiredBy=boot-complete.target has no effect until the unit is enabled, "
            f"and nothing here enables it: boot-complete.target is reached without it",
            f"add {u.unit} to a 'systemctl: enabled:' list (or run 'bootkeeper service enroll {u.unit}')",
        )
    ]


def _bk105(u: UnitFile) -> list[Finding]:
    before = [
        ln
        for ln in u.lines
        if ln.section == "Unit" and ln.key == "Before" and "boot-complete.target" in ln.value.split()
    ]
    if not before or _pulled(u):
        return []
    return [
        Finding(
            "BK105",
            Severity.WARNING,
            u.file,
            before[0].line,
            f"{u.unit}: Before=boot-complete.target orders it but nothing makes boot-complete.target need it: "
            f"the boot is blessed whether it starts or not",
            "add '[Install] RequiredBy=boot-complete.target' and enable the unit",
        )
    ]


def _bk106(doc: CloudConfigFile) -> list[Finding]:
    out: list[Finding] = []
    for s in doc.steps:
        for w in s.step.files:
            if _unit_of(w.path) is None:
                continue
            if s.step.condition is not None and w.path.startswith("/etc/") and s.roles != set(ROLES):
                out.append(
                    Finding(
                        "BK106",
                        Severity.WARNING,
                        doc.file,
                        w.line,
                        f"{w.path} is written only on {_roles_text(s.roles)} but under /etc, where it stays for "
                        f"later boots of other entries if /etc persists",
                        f"write it under /run/systemd/system/ (gone at the next boot), e.g. "
                        f"/run/systemd/system/{w.path.split('/etc/systemd/system/', 1)[-1]}",
                    )
                )
    return out


def _exec_lines(u: UnitFile) -> list[UnitLine]:
    return [ln for ln in u.lines if ln.section == "Service" and ln.key.startswith("Exec")]


def _bk107(u: UnitFile) -> list[Finding]:
    return [
        Finding(
            "BK107",
            Severity.WARNING,
            u.file,
            ln.line,
            f"{u.unit}: {ln.key} edits the ESP with 'sed -i': no fsync of the file or the folder on a FAT "
            f"file system, so a power cut can leave loader.conf empty or half-old",
            "let 'bootkeeper bless good' (bootkeeper-bless.service) keep loader.conf's default valid: "
            "it writes a temporary file, fsyncs, renames and fsyncs the folder",
        )
        for ln in _exec_lines(u)
        if re.search(r"\bsed\b.*\s-[a-zA-Z]*i", ln.value) and ("loader.conf" in ln.value or "/efi" in ln.value)
    ]


def _bk108(u: UnitFile) -> list[Finding]:
    return [
        Finding(
            "BK108",
            Severity.WARNING,
            u.file,
            ln.line,
            f"{u.unit}: ExecStartPost= runs only when ExecStart= succeeded: when it fails, "
            f"{ln.value.split()[-1]} stays mounted read-write",
            "remount read-only in ExecStopPost= (runs in every case), or use bootkeeper-bless.service",
        )
        for ln in _exec_lines(u)
        if ln.key == "ExecStartPost" and re.search(r"\bmount\b.*remount,ro", ln.value)
    ]


# the targets bootkeeper-boot-check.service (boot_assessment.good_when) and every enrolled service are
# ordered after (units.py, services.AFTER)
_UP_TARGETS = ("multi-user.target", "graphical.target", "default.target")


def _bk109(u: UnitFile) -> list[Finding]:
    """A unit a target of the running system pulls in, ordered after boot-complete.target but not after
    that target: the target gets an implicit After= on the units it wants (systemd.target(5), both with
    default dependencies), boot-complete.target is after the check that is after the target: a cycle,
    which systemd breaks by dropping a job (maybe the check's, and the boot is blessed unchecked)."""
    unit = [ln for ln in u.lines if ln.section == "Unit"]
    if any(ln.key == "DefaultDependencies" and ln.value.lower() in ("no", "false", "0", "off") for ln in unit):
        return []
    after = [ln for ln in unit if ln.key == "After" and "boot-complete.target" in ln.value.split()]
    ordered = {t for ln in unit if ln.key in ("After", "Before") for t in ln.value.split()}
    wanted = sorted(
        {
            t
            for ln in u.lines
            if ln.section == "Install" and ln.key in ("WantedBy", "RequiredBy")
            for t in ln.value.split()
            if t in _UP_TARGETS and t not in ordered
        }
    )
    if not after or not wanted:
        return []
    return [
        Finding(
            "BK109",
            Severity.ERROR,
            u.file,
            after[0].line,
            f"{u.unit}: After=boot-complete.target, and {', '.join(wanted)} wants it (so is ordered after it): "
            "an ordering cycle with the units that decide a boot, ordered after "
            f"{wanted[0]} and before boot-complete.target (boot_assessment.good_when, enrolled services); "
            "systemd breaks it by dropping a start job",
            f"add 'After={' '.join(wanted)}' (or DefaultDependencies=no with the ordering it needs)",
        )
    ]


def _key_of(e: Entry) -> chain.LoaderLine | None:
    """The loader line from the parsed entry, when the file cannot be read again."""
    if e.loader_type in (LoaderType.LINUX, LoaderType.EFI, LoaderType.UKI) and e.loader is not None:
        return chain.LoaderLine(e.loader_type.value, e.loader)
    if chain.uki_ignored(e):
        return chain.LoaderLine("uki", "its UKI")
    return None


def _key_finding(code: str, e: Entry, file: str, plan: chain.KeyPlan, sd: SdBoot) -> Finding | None:
    """BK201 ('efi' where it is not counted) and BK207 ('uki' where it is unknown), with hints
    right for this systemd-boot: the plan is the one arm follows (:func:`chain.plan_key`)."""
    if plan.case is chain.KeyCase.FINE or e.role is None or plan.key is None:
        return None
    role, key = e.role.value, plan.key
    if code != ("BK201" if key == "efi" else "BK207"):
        return None
    severity = Severity.ERROR if (key == "uki" or e.counted) else Severity.WARNING
    linux = "boot the kernel with 'linux' (and 'initrd') lines, which every systemd-boot counts"
    never = f"so a bad {role} is booted again and again and never falls back"
    if plan.case is chain.KeyCase.CONVERT and key == "efi":
        message = f"{role} entry uses the 'efi' key: {plan.reason}, {never}"
        fix = f"bootkeeper arm converts it to 'uki' (systemd-boot {sd} knows it)"
    elif plan.case is chain.KeyCase.CONVERT:
        message = f"{role} entry uses the 'uki' key: {plan.reason}"
        fix = "use 'efi' (counted by this version); bootkeeper arm converts it"
    elif plan.case is chain.KeyCase.ASSUMED:
        severity = Severity.WARNING
        message = (
            f"{role} entry uses the '{key}' key, and which key systemd-boot counts depends on its version: "
            f"{plan.reason}"
        )
        fix = (
            "lint with --systemd-boot-version N (the version on the node); 'bootkeeper arm --systemd-boot-version "
            "N' then writes the key that version counts"
        )
    elif plan.case is chain.KeyCase.DISAGREE:
        severity = Severity.ERROR
        message = f"{role} entry uses the '{key}' key: {plan.reason}"
        fix = "install one systemd-boot version as both files (bootctl update); then bootkeeper arm picks the key"
    else:  # NOT_UKI, UNCOUNTED: no key of the UKI kind suits the file
        message = f"{role} entry uses the '{key}' key: {plan.reason}" + (f", {never}" if key == "efi" else "")
        fix = linux
    return Finding(code, severity, file, None, message, fix)


def _key_findings(code: str, v: EspView) -> list[Finding]:
    found = (_key_finding(code, e, f"{v.esp}/{e.path}", plan, v.snap.sdboot) for e, plan in v.key_plans)
    return [f for f in found if f is not None]


def _bk201(v: EspView) -> list[Finding]:
    return _key_findings("BK201", v)


def _bk207(v: EspView) -> list[Finding]:
    return _key_findings("BK207", v)


def _bk209(v: EspView) -> list[Finding]:
    """The menu order of the role UKIs in EFI/Linux/ (the bad ones aside, which sort last) is not
    active, passive, recovery, statereset. systemd-boot takes their order from each file's
    ``.osrel`` (:func:`entries.compare`), which bootkeeper does not write and cannot rewrite."""
    ukis = entries_mod.type2_role_order(list(v.snap.entries), v.snap.sdboot)
    pairs = entries_mod.out_of_role_order(ukis)
    if not pairs:
        return []
    ahead, behind = next((a, b) for a, b in pairs if ukis.index(b) == ukis.index(a) + 1)
    keys = "; ".join(f"{e.file_name}: sort key {e.sort_key!r}, version {e.version!r}" for e in ukis)
    return [
        Finding(
            "BK209",
            Severity.ERROR,
            f"{v.esp}/{TYPE2_DIR}",
            None,
            f"the UKIs boot in the order {' → '.join(e.file_name for e in ukis)}, not the role order: "
            f"{ahead.file_name} boots before {behind.file_name}. systemd-boot orders them by the sort key of their "
            f".osrel (IMAGE_ID, else ID), then its version (IMAGE_VERSION, else VERSION, VERSION_ID, BUILD_ID; "
            f"newest first), then the file name (last first): {keys}",
            "bootkeeper cannot rewrite a UKI's .osrel: build the UKIs so that it orders them (IMAGE_IDs that sort "
            "in role order, or one IMAGE_ID and versions that fall in role order), or move them out of EFI/Linux/ "
            "and boot them from Type #1 entries with sort-key 1-active … 4-statereset, which 'bootkeeper arm' writes",
        )
    ]


def _bk208(v: EspView) -> list[Finding]:
    return [
        Finding(
            "BK208",
            Severity.ERROR,
            f"{v.esp}/{e.path}",
            None,
            f"{e.role.value} entry has the read-only attribute: systemd-boot never renames it (booted on "
            f"252.39, 257.13 and 262.1), so its tries never run down and a bad {e.role.value} never falls back",
            "bootkeeper arm clears the attribute (or mattrib -r / chmod u+w)",
        )
        for e in v.listed
        if e.role is not None and e.counted and e.read_only
    ]


def _bk202(v: EspView) -> list[Finding]:
    out: list[Finding] = []
    pattern = v.snap.loader_conf.default_pattern if v.snap.loader_conf else None
    for source, pat, where in (
        ("loader.conf default", pattern, f"{v.esp}/loader/loader.conf"),
        ("LoaderEntryDefault", v.entry_default, "EFI variable LoaderEntryDefault"),
    ):
        hits = default_can_pin(pat, v.listed, v.cfg)
        if hits:
            out.append(
                Finding(
                    "BK202",
                    Severity.ERROR,
                    where,
                    None,
                    f"{source} {pat!r} can match {', '.join(hits)} once it is bad, and systemd-boot boots the "
                    f"default even when it is bad: no fallback",
                    "remove it ('bootkeeper arm' does) and let sort-key order the fallback chain",
                )
            )
    return out


def _bk203(v: EspView) -> list[Finding]:
    from bootkeeper.esp.entries import same_entry

    by_path = {e.path: e for e in v.snap.entries}
    return [
        Finding(
            "BK203",
            Severity.ERROR,
            f"{v.esp}/{paths[0]}",
            None,
            f"{' and '.join(paths)} are the same entry ({by_path[paths[0]].name.entry_key}) "
            "with and without a counter: "
            f"the menu shows both and bless cannot tell which one booted",
            "remove the stale one ('bootkeeper bless good' on the next good boot removes it)",
        )
        for paths in same_entry(e.path for e in v.snap.entries)
    ]


def _bk204(v: EspView) -> list[Finding]:
    unsorted = [e.path for e in v.listed if e.role is not None and e.kind is EntryKind.TYPE1 and not e.sort_key]
    if not unsorted:
        return []
    return [
        Finding(
            "BK204",
            Severity.WARNING,
            f"{v.esp}/{TYPE1_DIR}",
            None,
            f"no sort-key in {', '.join(unsorted)}: the fallback order is left to the file names and versions",
            "'bootkeeper arm' writes sort keys 1-active, 2-passive, 3-recovery, 4-statereset",
        )
    ]


def _bk205(v: EspView) -> list[Finding]:
    roles = {e.role for e in v.listed}
    return [
        Finding(
            "BK205",
            Severity.WARNING,
            v.esp,
            None,
            f"no {role.value} entry: when active and passive are bad there is nothing "
            f"{'to repair the node' if role is Role.RECOVERY else 'to reset it'}",
            f"install the {role.value} UKI and an entry for it",
        )
        for role in (Role.RECOVERY, Role.STATERESET)
        if role not in roles
    ]


def _bk206(v: EspView) -> list[Finding]:
    return [
        Finding(
            "BK206",
            Severity.WARNING,
            f"{v.esp}/{t.path}",
            None,
            f"a temporary left by an interrupted bootkeeper run (kill -9 or a power cut), {t.size} bytes: "
            f"no boot loader reads it, but it takes space on the ESP and later installs can be refused for it",
            "any bootkeeper write verb (bless, arm, rotate, sysext install or remove) removes it, or delete it",
        )
        for t in v.temporaries
    ]


# --- the table ---------------------------------------------------------------------------------------

Subject = TypeVar("Subject", CloudConfigFile, UnitFile, EspView)
ERROR, WARNING = (Severity.ERROR,), (Severity.WARNING,)
EITHER = (Severity.ERROR, Severity.WARNING)


@dataclass(frozen=True)
class Rule(Generic[Subject]):
    """One lint code: the severities its findings can have, a one-line summary (bootkeeper(8)'s LINT
    RULES says the same), what it looks at and the function that finds it."""

    code: str
    severities: tuple[Severity, ...]
    summary: str
    subject: type[Subject]
    check: Callable[[Subject], list[Finding]]


# The order of a subject's rules is the order of its findings (cloud-config findings are then sorted
# by line). bootkeeper(8)'s LINT RULES and docs/services.md's table of codes are checked against this
# one (tests/assess/test_lint.py, tests/project/test_manpages.py).
RULES = (
    Rule("BK100", EITHER, "not YAML, or a step lint cannot read (warning)", CloudConfigFile, _bk100),
    Rule("BK101", ERROR, "a step meant for a role whose if: is false on that role", CloudConfigFile, _bk101),
    Rule("BK102", ERROR, "a step that never runs; steps writing one file differently", CloudConfigFile, _bk102),
    Rule("BK106", WARNING, "a role-conditional drop-in written under /etc", CloudConfigFile, _bk106),
    Rule("BK103", ERROR, "FailureAction=reboot in effect on a fallback role: a boot loop", UnitFile, _bk103),
    Rule("BK107", WARNING, "sed -i on the ESP in a unit (no fsync on FAT)", UnitFile, _bk107),
    Rule("BK108", WARNING, "remount,ro in ExecStartPost=, skipped when ExecStart= fails", UnitFile, _bk108),
    Rule("BK105", WARNING, "Before=boot-complete.target that nothing makes it need", UnitFile, _bk105),
    Rule("BK104", ERROR, "RequiredBy=boot-complete.target on a unit nothing enables", UnitFile, _bk104),
    Rule("BK109", ERROR, "after boot-complete.target, wanted by multi-user.target: a cycle", UnitFile, _bk109),
    Rule("BK201", EITHER, "a role entry using 'efi' where systemd-boot does not count it", EspView, _bk201),
    Rule("BK207", EITHER, "a role entry using 'uki' where systemd-boot does not know it", EspView, _bk207),
    Rule("BK209", ERROR, "Type #2 UKIs whose menu order is not the role order", EspView, _bk209),
    Rule("BK208", ERROR, "a counted role entry with the FAT read-only attribute", EspView, _bk208),
    Rule("BK202", ERROR, "a default that can pin an entry once it is bad", EspView, _bk202),
    Rule("BK203", ERROR, "the same entry with and without a counter", EspView, _bk203),
    Rule("BK204", WARNING, "role entries without sort-key", EspView, _bk204),
    Rule("BK205", WARNING, "no recovery or no statereset entry", EspView, _bk205),
    Rule("BK206", WARNING, "a temporary left on the ESP by a killed write", EspView, _bk206),
)


def run_rules(subject: Subject) -> list[Finding]:
    """The findings of every rule for ``subject``'s kind, in table order."""
    out: list[Finding] = []
    for rule in RULES:
        if isinstance(subject, rule.subject):
            out += cast("Rule[Subject]", rule).check(subject)
    return out


# --- the linter --------------------------------------------------------------------------------------


def lint_unit(
    file: str, path: str, text: str, first_line: int, roles: set[Role], enabled: set[str] | None
) -> list[Finding]:
    """Findings for one unit file or drop-in that is in effect on ``roles``. ``enabled``: units the
    same cloud-config enables (None: unknown, e.g. a unit file given alone)."""
    return run_rules(UnitFile(file, _unit_of(path) or "this unit", parse_unit(text, first_line), roles, enabled))


def read_cloud_config(text: str, file: str) -> CloudConfigFile:
    """Parse, then lint: the steps and where each runs, or why the file cannot be read (BK100)."""
    try:
        cfg = cloudconfig.load(text, file)
    except InputError as exc:
        m = re.match(rf"{re.escape(file)}:(\d+): (.*)", str(exc))
        line, msg = (int(m.group(1)), m.group(2)) if m else (None, str(exc))
        return CloudConfigFile(file, None, unreadable=(line, msg, "fix the YAML (indentation, quotes)"))
    except RecursionError:  # yaml.compose() recurses once per level of nesting
        msg = "not YAML lint can read: lists or mappings nested too deeply"
        return CloudConfigFile(
            file, None, unreadable=(None, msg, "flatten the nesting (cloud-config needs a few levels)")
        )
    return CloudConfigFile(file, cfg, tuple(StepView(s, *runs_on(s.condition)) for s in cfg.steps))


def lint_cloud_config(text: str, file: str) -> list[Finding]:
    doc = read_cloud_config(text, file)
    out = run_rules(doc)
    if doc.cfg is not None:
        enabled = cloudconfig.enabled_units(doc.cfg)
        required_links = {w.path.rsplit("/", 1)[-1] for s in doc.cfg.steps for w in s.files if ".requires/" in w.path}
        for s in doc.steps:
            for w in s.step.files:
                if _unit_of(w.path) is not None:
                    out += lint_unit(file, w.path, w.content, w.content_line, s.roles, enabled | required_links)
    return sorted(out, key=lambda f: (f.line or 0, f.code))


def lint_text(text: str, file: str) -> list[Finding]:
    """A cloud-config (YAML) or, when it starts with a ``[Section]``, a unit file or drop-in."""
    first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
    if first.startswith("["):
        return lint_unit(file, file, text, 1, set(ROLES), None)
    return lint_cloud_config(text, file)


def _open_store(esp: str) -> EspStore | None:
    try:
        return EspStore(Path(esp))
    except BootkeeperError:
        return None


def lint_esp(
    snap: Snapshot,
    esp: str,
    cfg: BootAssessment,
    entry_default: str | None = None,
    temporaries: Sequence[Temporary] = (),
    *,
    store: EspStore | None = None,
) -> list[Finding]:
    """Findings for the ESP ``snap`` was read from. The loader-key checks also look at the files
    (entry text, whether a loader is a UKI, both systemd-boot binaries): through ``store``, else the
    ESP at ``esp`` when it is a folder."""
    store = store if store is not None else _open_store(esp)
    return run_rules(EspView(snap, esp, cfg, entry_default, temporaries, store))
