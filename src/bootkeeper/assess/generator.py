"""bootkeeper-generator: ``FailureAction=reboot`` for enrolled services, on the active entry only.

A systemd generator (systemd.generator(7)): runs on every boot before any unit is loaded, gets the
generator output directories as arguments and writes drop-ins into the first (normal priority) one.
It must be fast and must never fail the boot, so it is standard library only and self-contained:
``bootkeeper install-units`` copies this file verbatim to ``/etc/systemd/system-generators/`` with a
``python3 -IS`` shebang. Any problem (unreadable or malformed config, a role it cannot tell) is
logged and nothing at all is written; the exit status is always 0.

Which services: ``/etc/bootkeeper/services.json`` (written by ``bootkeeper service enroll``),
``{"version": 1, "services": {"k3s.service": "active", ...}}``; those with ``active`` get
``<unit>.d/50-bootkeeper-failure-action.conf`` with ``FailureAction=reboot`` when

* the booted role is ``active``: ``/run/cos/<role>_mode`` (exactly one of them), else the role named
  by the ``LoaderEntrySelected`` EFI variable; and
* boot counting is in effect for this boot (``LoaderBootCountPath`` is set). Once active has been
  blessed its entry carries no counter, and a reboot would come back to the same entry, forever; so a
  failure then leaves the node up instead; and
* this boot used one of the entry's tries (:func:`failure_reboots`, the one rule the simulator uses
  too). An entry booted with no tries left (a ``default`` or ``LoaderEntryDefault`` that matches it,
  or the only entry) would be booted again after a reboot, forever.

``services.json`` may carry ``"tries"`` (``boot_assessment.tries``, what ``arm`` and ``rotate`` give
active); without it the configuration's default, 3, is assumed.

``BOOTKEEPER_GENERATOR_ROOT`` makes it read ``/run``, ``/etc`` and efivarfs under another root (tests).
"""

from __future__ import annotations

import json
import os
import re
import sys

LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
EFIVARS = "sys/firmware/efi/efivars"
CONFIG = "etc/bootkeeper/services.json"
COS_DIR = "run/cos"
ROLES = ("active", "passive", "recovery", "statereset")
DROPIN = "50-bootkeeper-failure-action.conf"
# The FailureAction line every writer uses (services.py for ``always``, cloudconfig.py's step for
# ``active``), and the whole drop-in ``active`` gets on the active entry, here or from cloud-config.
FAILURE_ACTION = "FailureAction=reboot"
DROPIN_TEXT = f"# bootkeeper: this boot is the active entry, still being assessed.\n[Unit]\n{FAILURE_ACTION}\n"
UNIT_TYPES = ("service", "socket", "target", "mount", "path", "timer", "swap", "device", "automount", "scope")
# \Z, not $: "$" also matches before a trailing newline (unittext.unit_name_problem is the same rule)
UNIT_NAME = re.compile(rf"^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.({'|'.join(UNIT_TYPES)})\Z")
POLICIES = ("never", "active", "always")
DEFAULT_TRIES = 3  # config.BootAssessment.tries (tests/assess/test_services.py checks they agree)
MAX_TRIES = 100  # the bound config.py puts on boot_assessment.tries
INT_MAX = 2**31 - 1
# The counter grammar of esp/counter.py (systemd-boot's boot_entry_parse_tries()), restated here
# because this file runs alone (python3 -IS, bootkeeper not importable); tests/assess/test_services.py
# checks that both agree. The counter follows the last "+": no "+" may come after it.
_COUNTER = re.compile(r"\+([0-9]+)(?:-([0-9]+))?(\.conf|\.efi)$", re.IGNORECASE)


def with_unit_suffix(name: str) -> str:
    """``k3s`` → ``k3s.service``; a name that already ends in a unit type is kept. What systemctl does
    with a bare name (systemd src/basic/unit-name.c: unit_name_mangle_with_suffix()); the one
    rule services.py, cloudconfig.py and their warnings use."""
    return name if name.endswith(tuple(f".{t}" for t in UNIT_TYPES)) else name + ".service"


class GeneratorError(Exception):
    """Something the generator cannot decide on; it then writes nothing."""


class GeneratorUnreadable(GeneratorError):
    """A file the generator needs exists but cannot be read (the CLI's UnreadableError)."""


def _efivar(root: str, name: str) -> str | None:
    path = os.path.join(root, EFIVARS, f"{name}-{LOADER_GUID}")
    try:
        with open(path, "rb") as f:
            raw = f.read(4096)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise GeneratorError(f"{path}: {exc.strerror}") from None
    data = raw[4:]
    if len(raw) < 4 or len(data) % 2:
        raise GeneratorError(f"{path}: not an EFI string variable ({len(raw)} bytes)")
    try:
        return data.decode("utf-16-le").split("\0", 1)[0]
    except UnicodeDecodeError:
        raise GeneratorError(f"{path}: not UTF-16LE") from None


def role_from_entry(name: str) -> str | None:
    """``active+2-1.conf``, ``\\EFI\\Linux\\passive_1.efi``, ``recovery`` → the role, else None."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].lower()
    m = re.match(r"(active|passive|recovery|statereset)(?:$|[-_.@ +])", base)
    return m.group(1) if m else None


def booted_role(root: str) -> tuple[str | None, str]:
    """The role and where it came from."""
    cos = os.path.join(root, COS_DIR)
    found = [r for r in ROLES if os.path.exists(os.path.join(cos, f"{r}_mode"))]
    if len(found) > 1:
        raise GeneratorError(f"{cos}: more than one mode file ({', '.join(f + '_mode' for f in found)})")
    if found:
        return found[0], f"{cos}/{found[0]}_mode"
    selected = _efivar(root, "LoaderEntrySelected")
    if selected is None:
        return None, "no /run/cos/<role>_mode and no LoaderEntrySelected"
    return role_from_entry(selected), f"LoaderEntrySelected={selected}"


def parse_counter(name: str) -> tuple[str, int, int] | None:
    """``active+1-2.conf`` → ``("active.conf", 1, 2)`` (base in lower case, LEFT, DONE), or None when
    the name carries no counter systemd-boot would count (values above INT_MAX included)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    m = _COUNTER.search(base)
    if m is None:
        return None
    numbers = []
    for digits in (m.group(1), m.group(2) or "0"):
        if len(digits.lstrip("0")) > 10:  # above INT_MAX; and int() refuses over 4300 digits
            return None
        numbers.append(int(digits))
    left, done = numbers
    if left > INT_MAX or done > INT_MAX:
        return None
    return (base[: m.start()] + m.group(3)).lower(), left, done


def failure_reboots(boot_count_path: str | None, selected: str | None, tries: int) -> tuple[bool, str]:
    """Whether a failing service on active should reboot the node, and why: only while the booted
    entry had a try left when systemd-boot picked it. Used by this generator and by the simulator.

    ``boot_count_path`` is ``LoaderBootCountPath``: the name systemd-boot renamed the entry to
    *before* this boot (``+L-D`` → ``+max(L-1,0)-(D+1)``, systemd-boot's config_entry_bump_counters(),
    as modelled in assess/bootloader.py and checked against 252 and 257 by tests/vm/test_vm_bootcount.py).
    With LEFT above 0 there, a try was left. With LEFT 0 the name before was ``+1-(D-1)`` (the last
    try: a reboot falls back) or ``+0-(D-1)`` (booted while bad: pinned by a ``default`` or
    ``LoaderEntryDefault``, or the only entry; a reboot boots it again, forever). The name alone
    cannot tell them apart:

    * ``selected`` (``LoaderEntrySelected``) does on systemd-boot 252 (253 assumed alike), where the id
      is the file name found, counter included, before the rename (tests/vm/test_vm_bootcount.py);
    * else ``tries`` (``boot_assessment.tries``, the counter ``arm``/``rotate`` give active): counted
      down from ``+tries``, LEFT + DONE stays ``tries``; DONE above it means boots while bad. An entry
      marked bad early (``bless bad`` keeps DONE) may still reboot, but every boot raises DONE, so the
      reboots stop after at most ``tries`` more.
    """
    if boot_count_path is None:
        return False, "without boot counting (already blessed): no FailureAction"
    after = parse_counter(boot_count_path)
    if after is None:
        return False, f"LoaderBootCountPath {boot_count_path!r} has no boot counter: no FailureAction"
    base, left, done = after
    if left > 0:
        return True, f"counting, {left} tries left after this boot: FailureAction=reboot"
    before = parse_counter(selected) if selected else None
    if before is not None and before[0] == base and (max(before[1] - 1, 0), min(before[2] + 1, INT_MAX)) == (0, done):
        had = before[1]
        how = f"LoaderEntrySelected={selected}"
    else:
        had = 1 if done <= tries else 0
        how = f"+0-{done}, {'at most' if had else 'more than'} the {tries} tries an entry is armed with"
    if had:
        return True, f"counting, this was its last try ({how}): FailureAction=reboot"
    return False, f"booted with no tries left ({how}): a reboot would boot it again, so no FailureAction"


def on_failure(
    policy: str, role: str | None, boot_count_path: str | None, selected: str | None, tries: int
) -> tuple[bool, str]:
    """The reboot-on-failure rule (the simulator's and the node's are the same: docs/services.md, "Proven"):
    whether a service enrolled with ``policy`` (``never``, ``active``, ``always``) reboots the node when
    it fails on this boot, and why. ``always`` is the static drop-in services.py writes; ``active`` is
    what this generator adds, on the active entry only and while :func:`failure_reboots` says so.
    :func:`plan` applies it to ``active``, assess/simulate.py to all three."""
    if policy == "always":
        return True, "reboot_on_failure: always: FailureAction=reboot on every entry"
    if policy != "active":
        return False, "reboot_on_failure: never: no FailureAction"
    if role != "active":
        return False, f"booted role {role or 'unknown'}: no FailureAction"
    return failure_reboots(boot_count_path, selected, tries)


def _load(root: str) -> tuple[dict[str, str], int]:
    """Enrolled services and their policy, and the tries active is armed with; raises
    GeneratorError on anything malformed."""
    path = os.path.join(root, CONFIG)
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 20)
    except FileNotFoundError:
        return {}, DEFAULT_TRIES
    except OSError as exc:
        raise GeneratorUnreadable(f"{path}: cannot read ({exc.strerror})") from None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise GeneratorError(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("services"), dict):
        raise GeneratorError(f'{path}: expected {{"version": 1, "services": {{UNIT: POLICY}}}}')
    services: dict[str, str] = {}
    for unit, policy in doc["services"].items():
        if not isinstance(unit, str) or not UNIT_NAME.match(unit) or len(unit) > 255:
            raise GeneratorError(f"{path}: services: {unit!r} is not a unit name")
        if policy not in POLICIES:
            raise GeneratorError(f"{path}: services.{unit}: {policy!r} is not one of {', '.join(POLICIES)}")
        services[unit] = policy
    tries = doc.get("tries", DEFAULT_TRIES)
    if type(tries) is not int or not 1 <= tries <= MAX_TRIES:
        raise GeneratorError(f"{path}: tries: {tries!r} is not a whole number from 1 to {MAX_TRIES}")
    return services, tries


def load_config(root: str) -> dict[str, str]:
    """Enrolled services and their policy; raises GeneratorError on anything malformed."""
    return _load(root)[0]


def plan(root: str) -> tuple[dict[str, str], str]:
    """``{relative drop-in path: text}`` to write, and a one-line reason."""
    services, tries = _load(root)
    wanted = sorted(u for u, p in services.items() if p == "active")
    if not wanted:
        return {}, "no service enrolled with reboot_on_failure: active"
    role, source = booted_role(root)
    count_path = selected = None
    if role == "active":  # the variables are read (and may be malformed) only where the rule needs them
        count_path, selected = _efivar(root, "LoaderBootCountPath"), _efivar(root, "LoaderEntrySelected")
    reboots, why = on_failure("active", role, count_path, selected, tries)
    if not reboots:
        return {}, f"{why} ({source})" if role != "active" else f"active ({source}) {why}"
    return {f"{u}.d/{DROPIN}": DROPIN_TEXT for u in wanted}, f"active ({source}), {why}"


_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def shown_line(text: str) -> str:
    """bootkeeper.shown.shown_line, written again: the generator runs as ``python3 -IS`` and cannot import
    bootkeeper (tests/base/test_shown.py checks that the two agree)."""
    import unicodedata

    out = []
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch in _BIDI or unicodedata.category(ch) == "Cs":
            out.append(f"\\u{o:04x}")
        elif unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _log(msg: str, root_override: bool) -> None:
    # one kmsg record per message: what an efivar or the command line holds cannot add one
    line = shown_line(f"bootkeeper-generator: {msg}")
    if not root_override:
        try:
            with open("/dev/kmsg", "w") as k:
                k.write(f"<5>{line}\n")
            return
        except OSError:
            pass
    print(line, file=sys.stderr)


def _write(outdir: str, files: dict[str, str]) -> None:
    """All or nothing: on an error, the files already written are removed again."""
    done: list[str] = []
    try:
        for rel, text in files.items():
            path = os.path.join(outdir, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = os.path.join(os.path.dirname(path), f".bootkeeper-{os.getpid()}.tmp")
            with open(tmp, "w") as f:
                f.write(text)
            os.rename(tmp, path)
            done.append(path)
    except OSError as exc:
        for path in done:
            os.unlink(path)
        raise GeneratorError(f"{outdir}: cannot write ({exc.strerror})") from None


def main(argv: list[str]) -> int:
    override = os.environ.get("BOOTKEEPER_GENERATOR_ROOT")
    root = override or "/"
    if len(argv) not in (2, 4):
        _log(f"expected 1 or 3 output directories, got {len(argv) - 1}; writing nothing", bool(override))
        return 0
    try:
        files, why = plan(root)
        _write(argv[1], files)
    except GeneratorError as exc:
        _log(f"{exc}; writing nothing", bool(override))
        return 0
    except Exception as exc:  # never fail the boot
        _log(f"unexpected {type(exc).__name__}: {exc}; writing nothing", bool(override))
        return 0
    _log(why, bool(override))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
