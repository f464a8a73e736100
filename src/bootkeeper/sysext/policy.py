"""Image policies: the systemd.image-policy(7) grammar and its evaluation against an image.

``DESIGNATOR=FLAG+FLAG:...``; an empty designator (``=FLAGS``) sets the default for designators not
listed (otherwise ``ignore``: may exist, not used); ``*`` allows everything, ``-`` (or the empty
string) ignores everything, ``~`` requires everything absent. Flags: the use flags ``verity``,
``signed``, ``encrypted``, ``unprotected``, ``unused``, ``absent`` with the shortcuts ``open`` (all of
them) and ``ignore`` (``unused+absent``); ``read-only-on|off``; ``growfs-on|off``; file system types
(``erofs``, ``squashfs``, … as newer systemd accepts them). A flag group that says nothing about
use, read-only or growfs allows all of it. A designator given twice, an unknown designator or flag,
a missing ``=``, or an empty rule is an error naming it (systemd's own parser is equally strict).

Verity and verity-sig partitions without a rule of their own derive one from their data partition,
as systemd's ``image_policy_get()`` does. The seed's policy ``root=verity+signed+absent`` therefore
admits an image whose signature failed, as plain verity: :func:`evaluate` says under which flag a
partition qualified, so a user sees "verity, not signed".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bootkeeper.config import ENFORCED_POLICY
from bootkeeper.errors import InputError, MalformedError


class Flag(StrEnum):
    VERITY = "verity"
    SIGNED = "signed"
    ENCRYPTED = "encrypted"
    UNPROTECTED = "unprotected"
    UNUSED = "unused"
    ABSENT = "absent"
    READ_ONLY_ON = "read-only-on"
    READ_ONLY_OFF = "read-only-off"
    GROWFS_ON = "growfs-on"
    GROWFS_OFF = "growfs-off"
    BTRFS = "btrfs"
    EROFS = "erofs"
    EXT4 = "ext4"
    F2FS = "f2fs"
    SQUASHFS = "squashfs"
    VFAT = "vfat"
    XFS = "xfs"


USE = frozenset({Flag.VERITY, Flag.SIGNED, Flag.ENCRYPTED, Flag.UNPROTECTED, Flag.UNUSED, Flag.ABSENT})
READ_ONLY = frozenset({Flag.READ_ONLY_ON, Flag.READ_ONLY_OFF})
GROWFS = frozenset({Flag.GROWFS_ON, Flag.GROWFS_OFF})
FSTYPES = frozenset({Flag.BTRFS, Flag.EROFS, Flag.EXT4, Flag.F2FS, Flag.SQUASHFS, Flag.VFAT, Flag.XFS})
OPEN = USE
IGNORE = frozenset({Flag.UNUSED, Flag.ABSENT})
SHORTCUTS = {"open": OPEN, "ignore": IGNORE}

DESIGNATORS = (
    "root",
    "usr",
    "home",
    "srv",
    "esp",
    "xbootldr",
    "swap",
    "root-verity",
    "root-verity-sig",
    "usr-verity",
    "usr-verity-sig",
    "tmp",
    "var",
)
VERITY_OF = {"root": "root-verity", "usr": "usr-verity"}
SIG_OF = {"root": "root-verity-sig", "usr": "usr-verity-sig"}
DATA_OF_VERITY = {v: k for k, v in VERITY_OF.items()}
DATA_OF_SIG = {v: k for k, v in SIG_OF.items()}

ENFORCED_DEFAULT = ENFORCED_POLICY  # one home: config.py, where the default is
SEED_POLICY = "root=verity+signed+absent:usr=verity+signed+absent"
# What systemd-sysext applies when it is given no --image-policy (bootkeeper passes one in enforced
# mode only): systemd v257 src/shared/image-policy.c: image_policy_sysext (root and usr: verity,
# signed, encrypted, unprotected or absent; the rest ignored). systemd 252 has no image policies and
# dissects any of these too. Whether an image would merge in permissive mode is judged against it.
NODE_SYSEXT_POLICY = "root=verity+signed+encrypted+unprotected+absent:usr=verity+signed+encrypted+unprotected+absent"


def _normalize(designator: str, flags: frozenset[Flag]) -> frozenset[Flag]:
    """systemd's partition_policy_normalized_flags(): fill in what was left unspecified."""
    f = set(flags)
    if not f & USE:
        f |= OPEN
    if not f & READ_ONLY:
        f |= READ_ONLY
    if not f & GROWFS:
        f |= GROWFS
    if designator in DATA_OF_VERITY or designator in DATA_OF_SIG:
        f -= {Flag.VERITY, Flag.SIGNED, Flag.ENCRYPTED}
    if designator not in VERITY_OF:
        f -= {Flag.VERITY, Flag.SIGNED}
    if f & USE == {Flag.ABSENT}:
        f -= READ_ONLY | GROWFS
    return frozenset(f)


@dataclass(frozen=True)
class ImagePolicy:
    rules: tuple[tuple[str, frozenset[Flag]], ...]  # sorted by designator order
    default: frozenset[Flag] = IGNORE

    def explicit(self, designator: str) -> frozenset[Flag] | None:
        for d, f in self.rules:
            if d == designator:
                return f
        return None

    def get(self, designator: str) -> frozenset[Flag] | None:
        """image_policy_get(): the rule for a designator, derived for verity/sig partitions."""
        own = self.explicit(designator)
        if own is not None:
            return _normalize(designator, own)
        if designator in DATA_OF_VERITY or designator in DATA_OF_SIG:
            data = self.get(DATA_OF_VERITY.get(designator) or DATA_OF_SIG[designator])
            if data is None:
                return None
            needed = {Flag.SIGNED} if designator in DATA_OF_SIG else {Flag.SIGNED, Flag.VERITY}
            if not data & needed:
                return None
            derived = {Flag.UNPROTECTED} | (data & {Flag.UNUSED, Flag.ABSENT}) | (data & (READ_ONLY | GROWFS | FSTYPES))
            return _normalize(designator, frozenset(derived))
        return None

    def flags(self, designator: str) -> frozenset[Flag]:
        """image_policy_get_exhaustively(): falls back to the default."""
        got = self.get(designator)
        return got if got is not None else _normalize(designator, self.default)

    def ignores(self, designator: str) -> bool:
        """systemd-dissect drops a partition whose rule allows nothing but ``unused`` (and ``absent``)
        before it judges the partition table ("policy dictates to ignore it" in its debug log):
        ``usr=unused`` or an unlisted designator under the ``ignore`` default; ``usr=absent`` is not
        ignoring, it refuses. Checked against systemd-dissect --validate 257 (tests/sysext/test_interop.py)."""
        return self.flags(designator) & USE - {Flag.ABSENT} == {Flag.UNUSED}

    def __str__(self) -> str:
        def fmt(flags: frozenset[Flag]) -> str:
            if not flags:
                return "-"
            return "+".join(f.value for f in Flag if f in flags)

        parts = [f"{d}={fmt(f)}" for d, f in self.rules]
        if self.default != IGNORE or not parts:
            parts.append(f"={fmt(self.default)}")
        return ":".join(parts)


def _flags(text: str, where: str) -> frozenset[Flag]:
    text = text.strip()
    if text in ("", "-"):
        return frozenset()
    out: set[Flag] = set()
    for word in text.split("+"):
        w = word.strip()
        if w in SHORTCUTS:
            out |= SHORTCUTS[w]
            continue
        try:
            out.add(Flag(w))
        except ValueError:
            known = ", ".join([*(f.value for f in Flag), "open", "ignore"])
            raise MalformedError(f"{where}: unknown policy flag {w!r} (known: {known})") from None
    return frozenset(out)


def parse(text: str, source: str = "image policy") -> ImagePolicy:
    s = text
    if s in ("", "-"):
        return ImagePolicy((), IGNORE)
    if s == "*":
        return ImagePolicy((), OPEN)
    if s == "~":
        return ImagePolicy((), frozenset({Flag.ABSENT}))
    rules: dict[str, frozenset[Flag]] = {}
    default: frozenset[Flag] | None = None
    for rule in s.split(":"):
        where = f"{source} {text!r}: rule {rule!r}"
        if "=" not in rule:
            raise MalformedError(f"{where}: missing '=' (expected DESIGNATOR=FLAGS)")
        name, _, flags = rule.partition("=")
        name = name.strip()
        parsed = _flags(flags, where)
        if not name:
            if default is not None:
                raise MalformedError(f"{where}: the default ('=FLAGS') is given more than once")
            default = parsed
            continue
        if name not in DESIGNATORS:
            raise MalformedError(f"{where}: unknown partition designator {name!r} (known: {', '.join(DESIGNATORS)})")
        if name in rules:
            raise MalformedError(f"{where}: designator {name!r} is given more than once")
        rules[name] = parsed
    ordered = tuple((d, rules[d]) for d in DESIGNATORS if d in rules)
    return ImagePolicy(ordered, default if default is not None else IGNORE)


# ---------------------------------------------------------------------------------------------
# Evaluation


class Protection(StrEnum):
    SIGNED = "signed"
    VERITY = "verity"
    UNPROTECTED = "unprotected"
    ENCRYPTED = "encrypted"


@dataclass(frozen=True)
class Observed:
    """What an image offers for one data designator."""

    designator: str
    best: Protection  # the strongest protection that checked out
    read_only: bool
    growfs: bool
    fstype: str | None = None
    why_not_better: str | None = None  # e.g. why it is not "signed"


@dataclass(frozen=True)
class Decision:
    designator: str
    ok: bool
    used_as: str | None  # the flag it qualified under: signed / verity / unprotected / absent / unused
    reason: str


def _protection_choices(best: Protection) -> list[Flag]:
    order = {
        Protection.SIGNED: [Flag.SIGNED, Flag.VERITY, Flag.UNPROTECTED],
        Protection.VERITY: [Flag.VERITY, Flag.UNPROTECTED],
        Protection.UNPROTECTED: [Flag.UNPROTECTED],
        Protection.ENCRYPTED: [Flag.ENCRYPTED],
    }
    return order[best]


def evaluate(policy: ImagePolicy, present: dict[str, Observed], other: list[str] | None = None) -> list[Decision]:
    """Decide, like systemd-dissect, whether each designator of the image is acceptable."""
    out = [_decide(d, policy.flags(d), present.get(d)) for d in ("root", "usr")]
    for d in other or []:
        flags = policy.flags(d)
        if not flags & {Flag.UNUSED, Flag.UNPROTECTED, Flag.VERITY, Flag.SIGNED, Flag.ENCRYPTED}:
            out.append(Decision(d, False, None, f"a {d} partition is present, the policy requires it absent"))
    return out


def _decide(d: str, flags: frozenset[Flag], obs: Observed | None) -> Decision:
    """The decision for the root or usr designator ``d``: absent, then its protection, then its flags."""
    if obs is None:
        if Flag.ABSENT in flags:
            return Decision(d, True, "absent", "absent, as allowed")
        return Decision(d, False, None, f"{d} partition is missing, the policy requires it")
    allowed = [f for f in _protection_choices(obs.best) if f in flags]
    if not allowed:
        if flags & USE <= IGNORE and Flag.UNUSED in flags:
            return Decision(d, True, "unused", "present, not used (the policy says unused)")
        want = "+".join(f.value for f in Flag if f in flags & USE) or "nothing"
        why = f"; {obs.why_not_better}" if obs.why_not_better else ""
        return Decision(d, False, None, f"{d} is {obs.best.value}, the policy allows {want}{why}")
    refused = _refused_flag(d, flags, obs)
    if refused is not None:
        return Decision(d, False, None, refused)
    use = allowed[0]
    note = f"qualified as {use.value}"
    if use is not Flag.SIGNED and obs.why_not_better:
        note += f", not signed ({obs.why_not_better})"
    return Decision(d, True, use.value, note)


def _refused_flag(d: str, flags: frozenset[Flag], obs: Observed) -> str | None:
    """Why the read-only, growfs or file system flag of a protected designator is not allowed, or None."""
    ro_flag = Flag.READ_ONLY_ON if obs.read_only else Flag.READ_ONLY_OFF
    if ro_flag not in flags:
        return f"{d} read-only flag is {'on' if obs.read_only else 'off'}, the policy does not allow that"
    gf = Flag.GROWFS_ON if obs.growfs else Flag.GROWFS_OFF
    if gf not in flags:
        return f"{d} growfs flag is {'on' if obs.growfs else 'off'}, not allowed"
    fs_flag = next((f for f in FSTYPES if f.value == obs.fstype), None)
    if obs.fstype and flags & FSTYPES and fs_flag not in flags:
        return f"{d} file system {obs.fstype} is not allowed by the policy"
    return None


def check_config(text: str, where: str) -> tuple[ImagePolicy, list[str]]:
    """``sysext.policy`` of the config, parsed (a ConfigError naming ``where``, the file and key, when it
    does not parse), and the warning the seed's policy gets."""
    from bootkeeper.errors import ConfigError

    try:
        pol = parse(text, where)
    except InputError as exc:
        raise ConfigError(str(exc)) from None
    warnings = []
    if pol == parse(SEED_POLICY):
        warnings.append(
            f"{where}: {text!r} also admits unsigned verity images (a failed signature passes as "
            f"verity); {ENFORCED_DEFAULT} requires a signature"
        )
    return pol, warnings
