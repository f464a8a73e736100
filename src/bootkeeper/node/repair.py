"""``bootkeeper repair``: from a recovery (or statereset) boot, rebuild active **and** passive from a release
and boot active again (docs/updates.md, "Repair").

The steps, each a named call: the booted role must be recovery or statereset (:func:`booted_role`;
``--force`` overrides, said); on statereset only while active and passive are still bad (:func:`ab_bad`:
statereset's own hand-back, assess/handback.py, re-arms them otherwise); the source is ``--source``, else
``update.source`` with ``update.channel``, and when that one fails or there is none, the first removable
medium holding a release (node/media.py); the release is fetched into the staging folder and applied
with the upgrade transaction's ``rebuild`` (node/update.py: verified as any update, then active and
passive rebuilt and the chain re-armed). Every attempt, repaired or failed and why, is one ``repair``
record in the boot history (assess/history.py), which ``status``, ``motd``, ``history show`` and the
metrics read.

Recovery is never blessed (assess/bless.py), so an attempt that cannot finish costs one of recovery's
tries: the CLI reboots after it (:func:`reboot`), and after those tries statereset boots, which repairs
too while A/B are bad. The fetch is bounded by ``update.repair_timeout`` (:data:`FETCH_SHARE` of it), so
that a source that hangs ends as a recorded failure before systemd's ``TimeoutStartSec=`` ends the unit.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bootkeeper.errors import BootkeeperError, CommandError, NotApplicableError, RefusedError, UnreadableError

if TYPE_CHECKING:
    from bootkeeper.config import Config
    from bootkeeper.node.media import Host
    from bootkeeper.update.origin import Progress
    from bootkeeper.update.source import Source

Say = Callable[[str], None]
REPAIR_ROLES = ("recovery", "statereset")
REPAIRED, FAILED, NOT_NEEDED = "repaired", "failed", "not-needed"
FETCH_SHARE = 0.8  # of update.repair_timeout: the rest is for the transaction and the reboot


class RepairTimeout(CommandError):
    """The fetch used its share of ``update.repair_timeout``."""


@dataclass(frozen=True)
class RepairOptions:
    """``--force`` (repair from any role, and on statereset whatever A/B's state), where removable media
    are looked for (tests point it at their own devices), and the download's progress."""

    force: bool = False
    media: Host | None = None  # None: the node's own (/sys/block, /dev)
    progress: Progress | None = None


@dataclass(frozen=True)
class RepairOutcome:
    """What an attempt did. ``result``: repaired | failed | not-needed; ``error``: why it failed (the CLI
    exits with its code); ``reboots``: the CLI reboots after saying this (:func:`reboot`)."""

    result: str
    role: str | None
    role_source: str
    source: str | None = None
    version: str | None = None
    reason: str | None = None
    forced: bool = False
    reboots: bool = False
    applied: dict[str, object] | None = None
    tried: tuple[str, ...] = ()  # each source tried, with why it failed
    error: BootkeeperError | None = field(default=None, compare=False)

    def as_json(self) -> dict[str, object]:
        return {
            "result": self.result,
            "role": self.role,
            "role_source": self.role_source,
            "source": self.source,
            "version": self.version,
            "reason": self.reason,
            "forced": self.forced,
            "reboots": self.reboots,
            "tried": list(self.tried),
            "applied": self.applied,
        }


def booted_role(root: Path) -> tuple[str | None, str]:
    """The role this boot runs (``/run/cos/<role>_mode``, else ``LoaderEntrySelected``) and where that came
    from: assess/generator.py's rule, the one the generator applies."""
    from bootkeeper.assess import generator

    try:
        return generator.booted_role(str(root))
    except generator.GeneratorError as exc:
        raise UnreadableError(f"cannot tell the booted role: {exc}") from exc


def ab_bad(esp: Path) -> str | None:
    """Why active and passive cannot boot (each missing or with no tries left), or None when one can."""
    from bootkeeper.esp.counter import EntryState
    from bootkeeper.esp.entries import Role
    from bootkeeper.esp.store import EspStore

    snap = EspStore(esp).snapshot()
    ab = [e for e in snap.entries if e.role in (Role.ACTIVE, Role.PASSIVE)]
    if any(e.state is not EntryState.BAD for e in ab):
        return None
    return "; ".join(f"{e.path}: no tries left" for e in ab) or "no active or passive entry"


def needed(root: Path, esp: Path) -> tuple[bool, str]:
    """Whether this boot should repair (``repair --needed``, the unit's ``ExecCondition=``), and why."""
    role, where = booted_role(root)
    if role not in REPAIR_ROLES:
        return False, f"booted {role or 'an unknown role'} ({where}): repair runs on recovery and statereset"
    if role == "statereset" and (bad := ab_bad(esp)) is None:
        return False, "statereset, and active or passive can boot: statereset's hand-back is enough"
    return True, f"booted {role} ({where})" + (f"; active and passive are bad: {bad}" if role == "statereset" else "")


def repair(
    cfg: Config, root: Path, esp: Path | None, given_source: str | None, say: Say, boot_id: Callable[[], str],
    reboot: bool, opts: RepairOptions = RepairOptions(),
) -> RepairOutcome:  # fmt: skip
    """One attempt, recorded. Refuses (NotApplicableError, nothing recorded) on a role other than recovery
    or statereset unless ``opts.force``; on statereset with a bootable active or passive, does nothing."""
    from bootkeeper.node.store import esp_under

    role, where = booted_role(root)
    if role not in REPAIR_ROLES:
        if not opts.force:
            raise NotApplicableError(
                f"booted {role or 'an unknown role'} ({where}): repair runs on recovery and statereset boots only",
                hint="--force repairs from this boot too",
            )
        say(f"bootkeeper: warning: --force: repairing from a {role or 'boot of unknown role'} ({where})")
    esp_dir = esp_under(esp, root)
    if role == "statereset" and not opts.force and ab_bad(esp_dir) is None:
        return RepairOutcome(NOT_NEEDED, role, where, reason="active or passive can boot: statereset hands back")
    attempt = _Attempt(cfg, root, esp_dir, say, boot_id, opts)
    attempt.run(given_source)
    out = RepairOutcome(
        REPAIRED if attempt.error is None else FAILED, role, where, attempt.source, attempt.version,
        str(attempt.error) if attempt.error is not None else None, opts.force and role not in REPAIR_ROLES,
        _reboots(reboot, root, role, attempt.error is None, say), attempt.applied, tuple(attempt.tried), attempt.error,
    )  # fmt: skip
    _record(root, boot_id(), out, say)
    return out


@dataclass
class _Attempt:
    """The attempt's state as it goes: the source that served, the release, what failed."""

    cfg: Config
    root: Path
    esp: Path
    say: Say
    boot_id: Callable[[], str]
    opts: RepairOptions
    source: str | None = None
    version: str | None = None
    applied: dict[str, object] | None = None
    tried: list[str] = field(default_factory=list)
    error: BootkeeperError | None = None

    def run(self, given: str | None) -> None:
        from bootkeeper.node import update

        try:
            staged = self.fetch(given)
            self.version = staged.version
            applied = update.apply_staged(
                self.cfg, self.root, self.esp, staged, update.ApplyOptions(rebuild=True), self.say, self.boot_id
            )
            self.applied = applied.as_json()
            self.version = applied.version or self.version
            if applied.result == "refused":
                raise RefusedError(f"{self.source}: the release was refused")
        except BootkeeperError as exc:
            self.error = exc

    def fetch(self, given: str | None) -> Any:
        """The release staged from ``given`` (only it), else the configured source, else the first medium."""
        from bootkeeper.node import update

        budget = _seconds(self.cfg.update.repair_timeout)
        with _bounded(budget * FETCH_SHARE if budget else None, self.cfg.update.repair_timeout):
            src = update.source_for(self.cfg, given)
            if src is not None:
                try:
                    return self._fetch_from(src)
                except RepairTimeout:
                    raise
                except BootkeeperError as exc:
                    self.tried.append(f"{src}: {exc}")
                    if given is not None:
                        raise
                    self.say(f"bootkeeper: {src}: {exc}; looking for a removable medium")
            return self._from_media()

    def _fetch_from(self, src: Source) -> Any:
        self.source = str(src)
        self.say(f"bootkeeper: fetching the release from {src}")
        from bootkeeper.node import update

        return update.fetch(self.cfg, self.root, src, self.say, self.opts.progress)

    def _from_media(self) -> Any:
        from bootkeeper.node import media
        from bootkeeper.update import source as source_mod

        host = self.opts.media or media.Host()
        with media.find_release(host, self.root / media.MEDIA_DIR, self.say) as found:
            if found is None:
                self.source = None
                tried = "; ".join(self.tried)
                raise UnreadableError(
                    (tried or "no source configured (update.source)") + "; no removable medium holds a release",
                    hint=f"plug in a medium with an OCI layout, *{media.OCI_TAR} or {media.RELEASE_DIR}/ "
                    f"(a filesystem labelled {media.LABELS[0]} on a disk that is not removable), or pass --source",
                )
            src = _channel_on_medium(source_mod.parse(found.source, found.medium.text), self.cfg.update.channel)
            try:
                return self._fetch_from(src)
            except BootkeeperError as exc:
                self.tried.append(f"{src}: {exc}")
                raise


def _channel_on_medium(src: Source, channel: str) -> Source:
    """A layout on a medium holding several releases (``release push --tag stable`` tags one twice):
    the one ``update.channel`` names, when it is there; else the source as found (one release)."""
    from bootkeeper.errors import BootkeeperError
    from bootkeeper.update import layout
    from bootkeeper.update.source import Kind
    from bootkeeper.update.source import Source as Src

    if src.kind is not Kind.OCIFILE or layout.split(src.path)[1] is not None:
        return src
    try:
        with layout.Layout(Path(src.path)) as lay:
            lay.manifest(channel)
    except BootkeeperError:
        return src
    return Src(Kind.OCIFILE, path=f"{src.path}:{channel}")


def _seconds(span: str) -> float | None:
    """A time span config.py accepted, in seconds; None for ``infinity`` (no bound)."""
    from bootkeeper.config import seconds

    value = seconds(span)
    return None if value == float("inf") else value


@contextlib.contextmanager
def _bounded(seconds: float | None, span: str) -> Iterator[None]:
    """SIGALRM after ``seconds`` raises :class:`RepairTimeout` in the fetch (which resumes next time):
    only around the fetch, never while the transaction writes the ESP."""
    import threading

    if not seconds or threading.current_thread() is not threading.main_thread():  # signals: main thread only
        yield
        return

    def expired(signo: int, frame: object) -> None:
        raise RepairTimeout(
            f"the fetch did not finish in {seconds:.0f} s ({FETCH_SHARE:.0%} of update.repair_timeout {span})"
        )

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _reboots(asked: bool, root: Path, role: str | None, repaired: bool, say: Say) -> bool:
    """Reboot after a repair (into active), and after a failed one on recovery (costing one of its tries,
    then statereset); a failed one on statereset leaves the node up: rebooting it would reset it again."""
    if not asked or not (repaired or role == "recovery"):
        return False
    if root.resolve() != Path("/"):
        say("bootkeeper: not rebooting: --root is not /")
        return False
    return True


def reboot(say: Say) -> None:
    """``systemctl reboot --no-block``: the CLI calls it after it said the outcome, as the reboot's SIGTERM
    may end this process before anything after it runs."""
    from bootkeeper.run import run

    try:
        run(["systemctl", "reboot", "--no-block"], timeout=30)
    except BootkeeperError as exc:
        say(f"bootkeeper: cannot reboot: {exc}")


def _record(root: Path, boot_id: str, out: RepairOutcome, say: Say) -> None:
    """The attempt in the boot history; a history that cannot be written is said, never the repair's fault."""
    from bootkeeper.assess import history
    from bootkeeper.errors import WriteError

    rec = history.repair_record(
        boot_id, time.time(), out.role, out.source, out.version, out.result, out.reason, out.forced
    )
    try:
        history.append(root, rec)
    except WriteError as exc:
        say(f"bootkeeper: warning: the attempt is not recorded: {exc}")
