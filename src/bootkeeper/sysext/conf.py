"""Lint of the node's own systemd-sysext setup: what systemd 259–261 made possible around bootkeeper.

* **BK301** ``ImagePolicy=`` in ``[SysExt]`` of ``sysext.conf`` (v259, commit 72d51c3ebf66, PR #38250)
  becomes systemd-sysext's explicit policy, and an explicit policy always wins (``pick_image_policy()``,
  a594288d79f2): it replaces the strict ``root=signed+absent:usr=signed+absent`` that images under
  ``/.extra/sysext`` get in the initrd too. One that admits more than bootkeeper's ``sysext.policy``
  is an error in enforced mode, a warning otherwise. A value systemd's parser refuses, and a section
  or key in the wrong case (systemd matches both exactly, ``[Sysext]`` is an unknown section), are
  warnings: the setting has no effect.
* **BK302** ``systemd-sysext-sysroot.service`` (v261, c70b17daad3a, PR #41161) runs
  ``systemd-sysext --root=/sysroot refresh`` in the initrd without ``--image-policy``; under
  ``--root`` the normal default applies (unsigned and unprotected images merge), so in enforced mode
  whatever lies in ``/sysroot/{etc,run,var/lib}/extensions`` bypasses bootkeeper. Not reported when
  the unit is masked, ``rd.systemd.sysext=0`` is on the kernel command line, or sysext.conf sets a
  policy no weaker than bootkeeper's.
* **BK303** a mount below a merged hierarchy that would be hidden or frozen (:mod:`bootkeeper.submounts`):
  ``sysext.hierarchies`` listing a hierarchy below another (``[/usr, /opt, /usr/local]``: systemd-sysext
  puts a read-only overlay of its own on ``/usr/local``: 252 shows the persistent folder read-only, 257
  hides it when an extension ships ``/usr/local``); and, on a systemd older than v257, a mount below
  a hierarchy now (``/proc/self/mountinfo``, inside ROOT) while the installed drop-in of
  ``systemd-sysext.service`` does not run bootkeeper's ``sysext-submounts`` step (installed by an
  older bootkeeper, or replaced): the next refresh hides it; on v257 and later, a mount nested inside
  such a mount (257.13 aborts while moving them, Flatcar #2111). Warnings.
* **BK304** what lies in ``/etc/extensions`` and ``/var/lib/extensions`` (:mod:`bootkeeper.sysext.extdirs`):
  what the next activation will move into the quarantine, and what the quarantine holds.

The configuration is read as systemd's conf-parser reads it (``config_parse_many_files()``): the first
main file found of ``ROOT/{etc,run,usr/local/lib,usr/lib}/systemd/sysext.conf``, then the drop-ins
``sysext.conf.d/*.conf`` of all four, one per file name (``/etc`` first), in file name order; a link to
``/dev/null`` or an empty file masks; the last assignment wins, an empty one resets; the first line
the parser refuses stops it (nothing after it, drop-ins included, is read).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bootkeeper import submounts
from bootkeeper.config import Sysext, SysextMode
from bootkeeper.errors import InputError
from bootkeeper.findings import Finding, Severity
from bootkeeper.systemd_version import SYSEXT_CONF_SINCE, NodeSystemd, is_null, read_in, resolve_in

CONF_DIRS = ("etc/systemd", "run/systemd", "usr/local/lib/systemd", "usr/lib/systemd")
SYSEXT_CONF = "sysext.conf"
SECTION = "SysExt"
KEY = "ImagePolicy"
SYSROOT_UNIT = "systemd-sysext-sysroot.service"
UNIT_DIRS = (
    "etc/systemd/system",
    "run/systemd/system",
    "usr/local/lib/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
)
CMDLINES = ("etc/kernel/cmdline", "proc/cmdline")
SYSROOT_DIRS = ("etc/extensions", "var/lib/extensions")  # ROOT's own; /sysroot/run is empty then
# systemd's image_policy_sysext_strict (src/shared/image-policy.c), for images under /.extra/sysext in the initrd
SYSTEMD_STRICT = "root=signed+absent:usr=signed+absent"
_LINE_MAX = 1 << 20  # systemd's LONG_LINE_MAX
_FILE_MAX = 16 << 20  # a real sysext.conf is a few lines
_DROPINS_MAX = 1000


@dataclass(frozen=True)
class Assignment:
    file: str
    line: int
    value: str | None  # None: an empty assignment, which resets to the built-in choice


@dataclass(frozen=True)
class SysextConf:
    """What systemd-sysext would take from the node's sysext.conf, and what it would not."""

    policy: Assignment | None  # the effective ImagePolicy=
    ignored: tuple[Finding, ...]


def _files(root: Path) -> list[tuple[str, bytes]]:
    """(path as the node sees it, contents) in the order systemd parses them."""
    out: list[tuple[str, bytes]] = []
    for d in CONF_DIRS:
        rel = f"{d}/{SYSEXT_CONF}"
        if is_null(root, rel):
            break  # found, and empty: masks the lower ones
        data = read_in(root, rel, _FILE_MAX + 1)
        if data is not None:
            out.append((f"/{rel}", data))
            break
    chosen: dict[str, str] = {}
    for d in CONF_DIRS:
        rel_dir = f"{d}/{SYSEXT_CONF}.d"
        folder = resolve_in(root, rel_dir)
        if folder is None:
            continue
        try:
            names = sorted(os.listdir(folder))[:_DROPINS_MAX]
        except OSError:
            continue
        for n in names:
            if n.endswith(".conf") and not n.startswith(".") and n not in chosen:
                chosen[n] = f"{rel_dir}/{n}"
    for n in sorted(chosen):
        rel = chosen[n]
        if is_null(root, rel):
            continue
        data = read_in(root, rel, _FILE_MAX + 1)
        if data is not None:
            out.append((f"/{rel}", data))
    return out


def _continues(text: str) -> bool:
    """The line ends in a backslash that is not itself escaped (conf-parser's continuation)."""
    escaped = False
    for c in text:
        escaped = not escaped and c == "\\"
    return escaped


def read_conf(root: Path) -> SysextConf:
    """Parse the node's sysext.conf as systemd-sysext would (see the module's docstring)."""
    from bootkeeper.sysext import policy

    effective: Assignment | None = None
    ignored: list[Finding] = []
    for path, data in _files(root):
        where = str(root / path.lstrip("/")) if str(root) != "/" else path
        if len(data) > _FILE_MAX:
            ignored.append(
                Finding(
                    "BK301",
                    Severity.WARNING,
                    where,
                    None,
                    f"larger than {_FILE_MAX >> 20} MiB: not checked, nor anything systemd reads after it",
                    "keep sysext.conf to its few lines",
                )
            )
            return SysextConf(effective, tuple(ignored))
        section: str | None = None
        lines = data.decode("utf-8", "replace").split("\n")
        continuation = ""
        for number, raw in enumerate(lines, 1):
            stripped = raw.strip()
            if stripped[:1] in ("#", ";"):
                continue
            text = continuation + raw
            if len(text) > _LINE_MAX:
                ignored.append(
                    Finding(
                        "BK301",
                        Severity.WARNING,
                        where,
                        number,
                        f"a line longer than {_LINE_MAX >> 20} MiB: systemd stops reading its configuration here "
                        "('Line too long'): this line and everything after it, drop-ins included, has no effect",
                        "keep sysext.conf to its few lines",
                    )
                )
                return SysextConf(effective, tuple(ignored))
            if _continues(text):
                continuation = text[:-1] + " "
                continue
            continuation = ""
            text = text.strip()
            if not text:
                continue
            if text.startswith("["):
                if not text.endswith("]"):
                    return SysextConf(effective, tuple(ignored))  # "Invalid section header": parsing stops
                section = text[1:-1]
                continue
            name, eq, value = text.partition("=")
            name, value = name.strip(), value.strip()
            if not eq or section is None or name.lower() != KEY.lower():
                continue
            if section != SECTION or name != KEY:
                wrong = f"[{section}]" if section != SECTION else name
                ignored.append(
                    Finding(
                        "BK301",
                        Severity.WARNING,
                        where,
                        number,
                        f"{wrong} is not [{SECTION}] {KEY}=: systemd matches section and key names exactly "
                        f"and ignores this line, so {name}={value} has no effect",
                        f"write it as [{SECTION}] {KEY}=…",
                    )
                )
                continue
            if not value:
                effective = Assignment(where, number, None)
                continue
            try:
                policy.parse(value, KEY)
            except InputError as exc:
                ignored.append(
                    Finding(
                        "BK301",
                        Severity.WARNING,
                        where,
                        number,
                        f"systemd refuses this value ({exc.message}) and stops reading its configuration "
                        "there: this line and everything after it, drop-ins included, has no effect",
                        "fix the policy (systemd.image-policy(7)) or remove the line",
                    )
                )
                return SysextConf(effective, tuple(ignored))
            effective = Assignment(where, number, value)
    return SysextConf(effective, tuple(ignored))


_PROTECTION = ("verity", "signed", "encrypted", "unprotected")


def _extra(configured: str, bootkeeper: str) -> dict[str, list[str]]:
    """Per data designator, the protection levels ``configured`` admits that ``bootkeeper`` does not."""
    from bootkeeper.sysext import policy

    conf, bk = policy.parse(configured), policy.parse(bootkeeper)
    out: dict[str, list[str]] = {}
    for d in ("root", "usr"):
        more = [f for f in _PROTECTION if policy.Flag(f) in conf.flags(d) and policy.Flag(f) not in bk.flags(d)]
        if more:
            out[d] = more
    return out


def _admits_nothing(configured: str) -> bool:
    from bootkeeper.sysext import policy

    conf = policy.parse(configured)
    return not any(policy.Flag(f) in conf.flags(d) for d in ("root", "usr") for f in _PROTECTION)


def no_weaker(conf: SysextConf, cfg: Sysext) -> bool:
    """sysext.conf sets a policy that admits nothing bootkeeper's would not."""
    return conf.policy is not None and conf.policy.value is not None and not _extra(conf.policy.value, cfg.policy)


def bk301(conf: SysextConf, cfg: Sysext, node: NodeSystemd) -> list[Finding]:
    findings = list(conf.ignored)
    a = conf.policy
    if a is None or a.value is None:
        return findings
    later = ""
    if node.found and not node.reads_sysext_conf:
        later = f" (systemd {node.major} does not read sysext.conf; it takes effect from {SYSEXT_CONF_SINCE})"
    severity = Severity.ERROR if cfg.mode is SysextMode.ENFORCED and not later else Severity.WARNING
    extra = _extra(a.value, cfg.policy)
    if extra:
        what = "; ".join(f"{d}: {'+'.join(fs)}" for d, fs in extra.items())
        findings.append(
            Finding(
                "BK301",
                severity,
                a.file,
                a.line,
                f"{KEY}={a.value} admits more than bootkeeper's sysext.policy {cfg.policy} ({what}){later}: "
                f"systemd-sysext uses it wherever it runs without --image-policy= (systemd-sysext-sysroot.service, a "
                f"manual refresh), and as an explicit policy it also replaces the strict "
                f"{SYSTEMD_STRICT} for /.extra/sysext in the initrd",
                f"remove it, or set {KEY}={cfg.policy}",
            )
        )
    elif _admits_nothing(a.value):
        findings.append(
            Finding(
                "BK301",
                Severity.WARNING,
                a.file,
                a.line,
                f"{KEY}={a.value} admits no root or usr partition: systemd-sysext merges no image, "
                "bootkeeper's included",
                f"set {KEY}={cfg.policy}",
            )
        )
    return findings


def _rd_sysext_off(root: Path) -> str | None:
    """The file whose kernel command line turns the initrd's sysext off (``rd.systemd.sysext=0``)."""
    for rel in CMDLINES:
        data = read_in(root, rel, 64 << 10)
        if data is None:
            continue
        value: str | None = None
        for word in data.decode("utf-8", "replace").split():
            key, eq, v = word.partition("=")
            if key == "rd.systemd.sysext":
                value = v if eq else "1"
        if value is not None and value.lower() in ("0", "no", "n", "false", "f", "off"):
            return f"/{rel}"
    return None


def _count(root: Path, rel: str) -> int:
    d = resolve_in(root, rel)
    if d is None:
        return 0
    try:
        return sum(1 for n in os.listdir(d) if not n.startswith("."))
    except OSError:
        return 0


def bk302(root: Path, conf: SysextConf, cfg: Sysext) -> list[Finding]:
    if cfg.mode is not SysextMode.ENFORCED:
        return []
    for d in UNIT_DIRS:
        rel = f"{d}/{SYSROOT_UNIT}"
        if is_null(root, rel):
            return []  # masked
        p = resolve_in(root, rel)
        if p is not None and p.is_file():
            break
    else:
        return []
    if _rd_sysext_off(root) is not None or no_weaker(conf, cfg):
        return []
    now = [f"ROOT/{r}: {n}" for r in SYSROOT_DIRS if (n := _count(root, r))]
    held = f" (now: {', '.join(now)})" if now else ""
    where = str(root / rel) if str(root) != "/" else f"/{rel}"
    return [
        Finding(
            "BK302",
            Severity.ERROR,
            where,
            None,
            f"{SYSROOT_UNIT} merges the images in /sysroot/etc/extensions, /sysroot/run/extensions and "
            f"/sysroot/var/lib/extensions in the initrd ('systemd-sysext --root=/sysroot refresh', no "
            f"--image-policy): under --root the normal default policy applies, so unsigned and unprotected "
            f"images merge, bypassing bootkeeper's sysext.policy {cfg.policy}{held}",
            f"mask it (ln -s /dev/null /etc/systemd/system/{SYSROOT_UNIT}, then rebuild the initrd), add "
            f"rd.systemd.sysext=0 to the kernel command line, or set [{SECTION}] {KEY}={cfg.policy} in "
            "/etc/systemd/sysext.conf (systemd 259+)",
        )
    ]


DROPIN = "etc/systemd/system/systemd-sysext.service.d/10-bootkeeper.conf"  # assess/units.py's SYSEXT_DROPIN


def bk303(root: Path, cfg: Sysext, node: NodeSystemd, mountinfo: str = submounts.MOUNTINFO) -> list[Finding]:
    out = [
        Finding(
            "BK303",
            Severity.WARNING,
            "sysext.hierarchies",
            None,
            f"{inner} is below {outer}: systemd-sysext mounts a read-only overlay of its own on {inner}, so "
            f"what is mounted there (a persistent {inner}) turns read-only (systemd 252) or is hidden when an "
            "extension ships files in it (257)",
            f"drop {inner} from sysext.hierarchies: the mounts below {outer} stay visible and writable over "
            f"the merged {outer} (systemd 257 moves them itself, bootkeeper's drop-in puts them back before)",
        )
        for inner, outer in submounts.nested(cfg.hierarchies)
    ]
    top = "" if str(root) == "/" else str(root.resolve())
    below = submounts.mounts_below(
        submounts.read_mountinfo(mountinfo), cfg.hierarchies or submounts.DEFAULT_HIERARCHIES, root
    )
    if node.major >= submounts.PRESERVED_SINCE:
        return out + _nested_mounts(root, below, top, node)
    data = read_in(root, DROPIN, _FILE_MAX)
    if data is not None and f"/{submounts.SCRIPT}".encode() in data:
        return out  # the step runs around every refresh
    seen: set[str] = set()
    for m in below:
        target = m.target.removeprefix(top) or "/"
        if target in seen:
            continue
        seen.add(target)
        where = str(root / DROPIN) if top else f"/{DROPIN}"
        why = "runs no sysext-submounts step" if data is not None else "is missing"
        out.append(
            Finding(
                "BK303",
                Severity.WARNING,
                where,
                None,
                f"{target} ({m.fstype} {m.source}) is mounted below a hierarchy systemd-sysext merges, and the "
                f"node's systemd-sysext ({node.describe()}) mounts its overlay on top of it at the next "
                f"refresh: hidden, writes fail; the drop-in {why}",
                "run 'bootkeeper install-units' (its drop-in keeps such mounts over the overlay)",
            )
        )
    return out


def _nested_mounts(root: Path, below: list[submounts.Mount], top: str, node: NodeSystemd) -> list[Finding]:
    """systemd 257's move_submounts() aborts on a mount nested in a mount below a hierarchy (seen with
    257.13: ``Assertion 'original_path' failed``, Flatcar #2111; fixed by PR #41875) after it moved the
    outer one away: the outer mount is missing until the next refresh."""
    targets = sorted({m.target for m in below})
    inner = [t for t in targets if any(t != o and t.startswith(o.rstrip("/") + "/") for o in targets)]
    return [
        Finding(
            "BK303",
            Severity.WARNING,
            t.removeprefix(top) or "/",
            None,
            f"{t.removeprefix(top)} is mounted inside another mount below a hierarchy systemd-sysext merges: the "
            f"node's systemd-sysext ({node.describe()}) can abort while it moves them over its overlay (seen "
            "with 257.13: Assertion 'original_path' failed, Flatcar #2111) and leave the outer mount missing",
            "mount it elsewhere, or take a systemd-sysext with PR #41875 (it clones submounts privately)",
        )
        for t in inner
    ]


def lint_node(root: Path, cfg: Sysext, node: NodeSystemd) -> list[Finding]:
    """BK301, BK302, BK303 and BK304 for the node tree at ``root``."""
    conf = read_conf(root)
    return bk301(conf, cfg, node) + bk302(root, conf, cfg) + bk303(root, cfg, node) + bk304(root, cfg)


def bk304(root: Path, cfg: Sysext) -> list[Finding]:
    """**BK304**: what lies in ``/etc/extensions`` and ``/var/lib/extensions``, judged as activation
    judges it (:mod:`bootkeeper.sysext.extdirs`, nothing moved here): an error for what the next
    activation will refuse and move into the quarantine (in permissive mode: what systemd-sysext
    cannot open, which makes it merge nothing), a warning for an image only bootkeeper's checks fail
    (permissive: merged unchecked) and for what the quarantine already holds."""
    if cfg.mode is SysextMode.DISABLED:
        return []
    from bootkeeper.sysext import extdirs, policy, trust
    from bootkeeper.sysext.activate import host_os_release

    store = trust.load(cfg, root, strict=False)
    judge = extdirs.Judge(
        cfg.mode, policy.parse(cfg.policy, "sysext.policy"), store.certificates, host_os_release(root), False
    )
    out = []
    for r in extdirs.sweep(root, judge, move=False):
        why = "; ".join(r.reasons)
        if not r.kept:
            out.append(
                Finding(
                    "BK304",
                    Severity.ERROR,
                    r.path,
                    None,
                    f"{cfg.mode.value} mode: activation will move it to {root / extdirs.QUARANTINE_DIR} ({why})",
                    "rebuild or re-sign it with a trusted key, or remove it",
                )
            )
        elif r.verdict == "failed-but-kept":
            out.append(
                Finding(
                    "BK304",
                    Severity.WARNING,
                    r.path,
                    None,
                    f"permissive mode: systemd-sysext merges it although it fails the checks ({why})",
                    "rebuild or re-sign it with a trusted key",
                )
            )
    for q in extdirs.quarantined(root):
        out.append(
            Finding(
                "BK304",
                Severity.WARNING,
                str(q),
                None,
                "moved aside by activation: not merged",
                "inspect it (bootkeeper sysext list), then delete it or put a fixed image back",
            )
        )
    return out
