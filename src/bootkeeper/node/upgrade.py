"""``upgrade NEW.efi``'s transaction: a new OS over role sets, gated before the first write.

The gate is where assess and sysext meet (docs/design.md, "An upgrade is a transaction", 1. Gate, and
"Layers"): the plan and the order check come from ``assess/upgrade.py``; each extension the new set will
load is validated as ``sysext install`` does (configured policy and trust anchors), with the new UKI's
``.osrel`` as the host's os-release. What is judged is what lands: the gate reads private copies (0700),
and the ESP gets those bytes; every message names the files the user gave.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bootkeeper.errors import RefusedError

if TYPE_CHECKING:
    from bootkeeper.assess import history
    from bootkeeper.assess.upgrade import Op, OrderCheck, UkiCheck, UpgradePlan
    from bootkeeper.config import Config
    from bootkeeper.esp.linkstore import LinkStore
    from bootkeeper.esp.store import EspStore, Snapshot
    from bootkeeper.measure.luks import GateResult

Say = Callable[[str], None]


@dataclass(frozen=True)
class UpgradeOptions:
    """How ``upgrade`` goes: the set it replaces, whether it writes, whether a refusal is overridden."""

    recovery: bool = False
    dry_run: bool = False
    force: bool = False
    sdboot_version: str | None = None
    luks: tuple[Path, ...] = ()
    rebuild: bool = False  # repair: active and passive rebuilt, every role re-armed (docs/upgrades.md, "Rebuild")


@dataclass(frozen=True)
class ExtVerdict:
    name: str
    source: str
    carried: bool
    ok: bool
    reasons: tuple[str, ...]
    signer: str | None
    origin: str  # carried | --extension | common

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "source": self.source,
            "carried": self.carried,
            "origin": self.origin,
            "verdict": "ok" if self.ok else "refused",
            "reasons": list(self.reasons),
            "signer": self.signer,
        }


@dataclass(frozen=True)
class Copies:
    """The private copies the gate reads, each mapped to the path the user gave."""

    given: dict[str, str]

    def name(self, path: Path | str) -> str:
        """The path the user gave for a copy; any other path as it is."""
        return self.given.get(str(path), str(path))

    def line(self, op: Op) -> str:
        """A step of the plan as text, naming the user's file where it copies a private copy."""
        return op.line(self.given.get(op.src) if op.src is not None else None)


@dataclass(frozen=True)
class Gate:
    """The gate's verdict on the new set: the UKI, each extension, the menu order, each LUKS volume."""

    uki_path: str
    uki: UkiCheck
    verdicts: tuple[ExtVerdict, ...]
    order: OrderCheck
    tpm: tuple[GateResult, ...]
    reasons: tuple[str, ...]
    forced: bool

    def as_json(self) -> dict[str, object]:
        return {
            "verdict": "ok" if not self.reasons else ("forced" if self.forced else "refused"),
            "uki": {"path": self.uki_path, **self.uki.as_json()},
            "extensions": [v.as_json() for v in self.verdicts],
            "order": self.order.as_json(),
            "tpm": [g.as_json() for g in self.tpm],
            "forced": self.forced,
        }


@dataclass(frozen=True)
class Outcome:
    """What ``upgrade`` did: ``result`` is unchanged, refused, dry-run or upgraded; ``refusal`` the error
    to raise once the outcome is shown (refused)."""

    result: str
    plan: UpgradePlan
    gate: Gate
    actions: tuple[str, ...]  # the plan's steps, naming the user's files
    store: str | None
    history: dict[str, object] | None = None
    refusal: RefusedError | None = None

    def as_json(self) -> dict[str, object]:
        plan = self.plan
        return {
            "layout": plan.layout.value,
            "role": plan.role.value,
            "actions": list(self.actions),
            "gate": self.gate.as_json(),
            "warnings": plan.warnings,
            "left_behind": list(plan.left_behind),
            "store": self.store,
            "history": self.history,
            "result": self.result,
        }


def check_extensions(extensions: tuple[Path, ...]) -> list[str]:
    """The file names the ``--extension`` images get: each readable, none named twice."""
    from bootkeeper.errors import UnreadableError, UsageError
    from bootkeeper.sysext import deploy

    for x in extensions:
        if not x.is_file():
            raise UnreadableError(f"{x}: not a readable file")
    names = [deploy.check_name(x.name) for x in extensions]
    stems = [deploy.unversioned(n) for n in names]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise UsageError(f"--extension: more than one image named {', '.join(twice)} (a build of one extension each)")
    return names


def extension_key(name: str, path: Path) -> str:
    """Which extension an image is a build of (docs/upgrades.md, "Versioned extensions"): the ``SYSEXT_ID``
    of its extension-release (os-release(5)), else its name without the version
    (:func:`bootkeeper.sysext.deploy.unversioned`). An image whose extension-release cannot be read is
    known by its name: the gate refuses it anyway when the new set would load it."""
    from bootkeeper.errors import BootkeeperError
    from bootkeeper.sysext import deploy, image
    from bootkeeper.sysext.release import Release

    try:
        info = image.inspect(path, name=name)
    except (BootkeeperError, OSError):
        return deploy.unversioned(name)
    for rel in info.release.values():
        if isinstance(rel, Release) and rel.fields.get("SYSEXT_ID"):
            return rel.fields["SYSEXT_ID"]
    return deploy.unversioned(name)


def _same_extension_twice(added: list[tuple[str, Path]], copies: Copies) -> None:
    """Two ``--extension`` images that are builds of one extension (one ``SYSEXT_ID``): the new set would
    hold both, and systemd-sysext would merge both."""
    from bootkeeper.errors import UsageError

    keys: dict[str, list[str]] = {}
    for n, path in added:
        keys.setdefault(extension_key(n, path), []).append(copies.name(path))
    twice = [f"{k} ({', '.join(v)})" for k, v in sorted(keys.items()) if len(v) > 1]
    if twice:
        raise UsageError(f"--extension: more than one build of the extension {'; '.join(twice)}")


def private_copy(src: Path, dst: Path) -> Path:
    """A copy of ``src`` in bootkeeper's own temporary folder, read through one descriptor."""
    from bootkeeper import fsutil
    from bootkeeper.errors import MalformedError, UnreadableError

    try:
        sfd = os.open(src, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise UnreadableError(f"{src}: cannot read ({exc.strerror})") from exc
    try:
        if not stat.S_ISREG(os.fstat(sfd).st_mode):
            raise MalformedError(f"{src}: not a regular file")
        dst.parent.mkdir(mode=0o700)
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fsutil.copy_into(sfd, fd, os.fstat(sfd).st_size)
        finally:
            os.close(fd)
    finally:
        os.close(sfd)
    return dst


def upgrade(
    cfg: Config,
    root: Path,
    esp: Path | None,
    new_uki: Path,
    extensions: tuple[Path, ...],
    opts: UpgradeOptions,
    say: Say,
    boot_id: Callable[[], str],
) -> Outcome:
    """The gate and the transaction, on private copies of ``new_uki`` and ``extensions``."""
    names = check_extensions(extensions)
    with tempfile.TemporaryDirectory(prefix="bootkeeper-upgrade-") as tmp:
        priv = Path(tmp)
        given = {str(priv / "new" / new_uki.name): str(new_uki)}
        given.update({str(priv / str(i) / n): str(x) for i, (n, x) in enumerate(zip(names, extensions, strict=True))})
        new_copy = private_copy(new_uki, priv / "new" / new_uki.name)
        added = [
            (n, private_copy(x, priv / str(i) / n)) for i, (n, x) in enumerate(zip(names, extensions, strict=True))
        ]
        _same_extension_twice(added, Copies(given))
        return _Transaction(cfg, root, esp, opts, say, Copies(given)).run(new_copy, added, boot_id)


class _Transaction:
    """One upgrade: the plan, the gate over it, then (unless refused or a dry run) the writes."""

    store: EspStore
    links: LinkStore | None
    new_uki: Path
    added: list[tuple[str, Path]]

    def __init__(
        self, cfg: Config, root: Path, esp: Path | None, opts: UpgradeOptions, say: Say, copies: Copies
    ) -> None:
        self.cfg, self.root, self.esp, self.opts, self.say, self.copies = cfg, root, esp, opts, say, copies
        if opts.rebuild and opts.recovery:
            from bootkeeper.errors import UsageError

            raise UsageError("--rebuild rebuilds active and passive; it does not go with --recovery")
        self.role = "recovery" if opts.recovery else "active"
        self.digests: dict[str, str] = {}

    def carry(self, name: str) -> bool:
        from bootkeeper.sysext import deploy

        if self.opts.rebuild:  # a rebuild installs the release as it is: nothing of a broken set travels
            return False
        return deploy.stays_with(name, self.cfg.sysext.entries, self.role)

    def make(self, snap: Snapshot) -> UpgradePlan:
        from bootkeeper.assess import upgrade as up
        from bootkeeper.sysext import deploy

        return up.plan(
            self.store, snap, self.cfg.boot_assessment, self.new_uki, self.added, deploy.image_stem,
            recovery=self.opts.recovery, links=self.links, carry=self.carry, key=extension_key,
            rebuild=self.opts.rebuild,
        )  # fmt: skip

    def outcome(
        self,
        result: str,
        plan: UpgradePlan,
        gate: Gate,
        recorded: dict[str, object] | None = None,
        refusal: RefusedError | None = None,
        rest: tuple[str, ...] = (),
    ) -> Outcome:
        actions = tuple(self.copies.line(op) for op in plan.ops) + rest
        store = str(self.links.root) if self.links is not None else None
        return Outcome(result, plan, gate, actions, store, recorded, refusal)

    def run(self, new_uki: Path, added: list[tuple[str, Path]], boot_id: Callable[[], str]) -> Outcome:
        from bootkeeper.assess import upgrade as up
        from bootkeeper.esp.store import EspStore
        from bootkeeper.node.store import find_esp, links_if_persistent
        from bootkeeper.node.tpm import uki_gate

        self.new_uki, self.added = new_uki, added
        uki = up.check_uki(new_uki, self.copies.name(new_uki))
        if not uki.ok:  # never overridden: the boot loader could not start it
            raise RefusedError(f"upgrade refused: {uki.reason}; nothing was changed")
        tpm = uki_gate(self.root, self.opts.luks, new_uki, self.copies.name(new_uki), self.say)
        self.digests[str(new_uki)] = up.sha256(new_uki)  # what was judged is what lands
        self.store = EspStore(find_esp(self.esp))
        snap = self.store.snapshot(self.opts.sdboot_version)
        self.links = links_if_persistent(self.cfg, self.root)
        plan = self.make(snap)
        gate = self.judge(plan, snap, uki, tpm)
        self.warn(plan)
        if plan.done and not self.opts.rebuild:
            if plan.ops:  # the store's tidying after a crash that came after the commit
                self.apply(plan)
            return self.outcome("unchanged", plan, gate)
        if gate.reasons and not gate.forced:
            return self.outcome("refused", plan, gate, refusal=_refusal(gate))
        if gate.forced:
            self.say(f"bootkeeper: warning: upgrading with --force although: {'; '.join(gate.reasons)}")
        if self.opts.dry_run:
            return self.outcome("dry-run", plan, gate, rest=self.rebuild_preview())
        before = _before(self.store, plan, self.digests, self.links)
        if plan.ops:
            self.apply(plan)
        rest = self.rebuild_rest() if self.opts.rebuild else ()
        if plan.done and not rest:
            return self.outcome("unchanged", plan, gate)
        result = "rebuilt" if self.opts.rebuild else "replaced-bad" if plan.replaced is not None else "upgraded"
        recorded = _record(self.root, plan, before, uki.osrel, self.digests, gate.forced, boot_id(), self.say, result)
        return self.outcome("upgraded" if result != "rebuilt" else "rebuilt", plan, gate, recorded, rest=rest)

    def rebuild_preview(self) -> tuple[str, ...]:
        if not self.opts.rebuild:
            return ()
        return (
            "then: passive stays if it is blessed or has not failed a try, else it is rebuilt from the new set",
            "then: active, passive, recovery and statereset get fresh counters",
        )

    def rebuild_rest(self) -> tuple[str, ...]:
        """A rebuild's second half, on the ESP the first left (assess/upgrade.py, "Rebuild")."""
        from bootkeeper.assess import upgrade as up

        lines = up.finish_rebuild(self.store, self.cfg.boot_assessment, links=self.links,
                                  sdboot_version=self.opts.sdboot_version)  # fmt: skip
        return tuple(lines)

    def judge(self, plan: UpgradePlan, snap: Snapshot, uki: UkiCheck, tpm: list[GateResult]) -> Gate:
        from bootkeeper.assess import upgrade as up
        from bootkeeper.sysext import release

        verdicts = _judge(self.cfg, self.root, plan, release.parse_release(uki.text), self.copies, self.say)
        self.digests.update({str(x.source): up.sha256(x.source) for x in plan.extensions})
        order = up.order_check(self.store, snap, plan, uki.text.encode())
        reasons = [f"{v.name}: {r}" for v in verdicts for r in v.reasons]
        reasons += list(order.reasons)
        reasons += [g.reason() for g in tpm if not g.ok]
        forced = bool(reasons) and self.opts.force
        shown = self.copies.name(self.new_uki)
        return Gate(shown, uki, tuple(verdicts), order, tuple(tpm), tuple(reasons), forced)

    def warn(self, plan: UpgradePlan) -> None:
        """The plan's warnings, with the old set's extensions it leaves behind."""
        for n in () if self.opts.rebuild else plan.left_behind:  # a rebuild carries nothing, by design
            plan.warnings.append(
                f"{n}: not carried to the new {self.role} (the sysext.entries rules give it to other entries); "
                + ("passive keeps it with the old OS" if self.role == "active" else "it goes with the old recovery")
            )
        if plan.replaced is not None:
            pas = plan.kept_passive.entry.path if plan.kept_passive is not None else "no passive"
            self.say(
                f"bootkeeper: {plan.replaced.entry.path}: the active entry "
                + ("is bad (no tries left)" if plan.replaced.entry.name.tries_left == 0 else "was never blessed")
                + f"; the new OS replaces it and {pas} stays as it is"
            )
        for w in plan.warnings:
            self.say(f"bootkeeper: warning: {w}")

    def apply(self, plan: UpgradePlan) -> None:
        from bootkeeper.assess import upgrade as up

        up.apply(
            self.store, self.make, plan, sdboot_version=self.opts.sdboot_version, digests=self.digests,
            links=self.links,
        )  # fmt: skip


def _refusal(gate: Gate) -> RefusedError:
    return RefusedError(
        "upgrade refused: " + "; ".join(gate.reasons) + "; nothing was changed",
        hint=(
            "sign the new UKI for the key the LUKS token trusts (ukify --pcr-private-key)"
            if any(not g.ok for g in gate.tpm)
            else "build the extensions for the new OS"
        )
        + " (or pass --force to upgrade anyway; it is logged)",
    )


def _judge(
    cfg: Config, root: Path, plan: UpgradePlan, host: dict[str, str], copies: Copies, say: Say
) -> list[ExtVerdict]:
    from bootkeeper.node.trust import anchors
    from bootkeeper.sysext import image, policy

    exts = [*plan.extensions, *plan.common]  # common/ stays, and the new OS loads it too
    if not exts:
        return []
    pol = policy.parse(cfg.sysext.policy, "sysext.policy")
    trusted = anchors(cfg, root, say)
    out = []
    for x in exts:
        shown = copies.name(x.source)
        v = image.validate(x.source, pol, trusted, full=True, os_release=host, name=x.name, shown_as=shown)
        origin = "common" if x.common else "carried" if x.carried else "--extension"
        out.append(ExtVerdict(x.name, shown, x.carried, v.ok, tuple(v.reasons), v.signer, origin))
    return out


def _before(store: EspStore, plan: UpgradePlan, digests: dict[str, str], links: LinkStore | None) -> history.RoleOs:
    """The set the upgrade replaces, as the boot history records it: read before the first write moves it."""
    from bootkeeper.assess import history
    from bootkeeper.assess import upgrade as up
    from bootkeeper.errors import BootkeeperError
    from bootkeeper.esp import pe
    from bootkeeper.esp.entries import parse_osrel

    old = plan.replaced or plan.old or plan.kept_passive  # a bad active replaced; resume: the old active, moved
    if old is None:
        return history.role_os(None, [])
    try:
        raw = pe.read_osrel(store.path(old.uki))
    except (OSError, BootkeeperError):
        raw = None
    images = []
    where = [(n, store.path(f"{old.extra_dir}/{n}")) for n in old.extensions]
    where += [(n, links.root / image) for n, image in old.links] if links is not None else []
    for n, path in where:
        try:
            size: int | None = path.stat().st_size
            digest: str | None = digests.get(str(path)) or up.sha256(path)
        except OSError:
            size = digest = None
        images.append(history.Image(n, size, digest))
    return history.role_os(parse_osrel(raw.decode("utf-8", "replace")) if raw is not None else None, images)


def _record(
    root: Path,
    plan: UpgradePlan,
    before: history.RoleOs,
    osrel: dict[str, str],
    digests: dict[str, str],
    forced: bool,
    boot_id: str,
    say: Say,
    result: str = "upgraded",
) -> dict[str, object]:
    """The upgrade in the boot history; a failure to write it is a warning, never the upgrade's failure.
    Returns ``upgrade --json``'s ``history``: the file, and ``recorded`` with the error when it failed."""
    import time

    from bootkeeper.assess import history
    from bootkeeper.errors import BootkeeperError

    after = history.role_os(
        osrel, [history.Image(x.name, _size(x.source), digests.get(str(x.source))) for x in plan.extensions]
    )
    rec = history.upgrade_record(boot_id, time.time(), plan.role, before, after, result, forced)
    where = str(root / history.HISTORY)
    try:
        history.append(root, rec)
    except BootkeeperError as exc:
        say(f"bootkeeper: warning: upgraded, but not recorded in the boot history: {exc}")
        return {"file": where, "recorded": False, "error": str(exc)}
    return {"file": where, "recorded": True, "error": None}


def _size(p: Path) -> int | None:
    try:
        return p.stat().st_size
    except OSError:
        return None
