"""``update``: a release found, fetched and applied (docs/updates.md). Where the update wing (what a
source holds, fetched into the staging folder with every digest checked) meets the trust the node
keeps (the UKI's Secure Boot signature, its version against the running OS) and the upgrade
transaction (node/upgrade.py: the extensions judged against the new OS, the crash-safe writes).

Check, acquire and apply are separate steps, as systemd-sysupdate and bootc separate them, so a fleet
downloads in the day and switches in a maintenance window. Nothing the transport says is trusted: the
version a manifest announces decides only whether a download is worth it; what is applied is decided
from the downloaded UKI's own ``.osrel`` once its signature verified.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bootkeeper.errors import BootkeeperError, NotApplicableError, RefusedError, UsageError

if TYPE_CHECKING:
    from bootkeeper.config import Config
    from bootkeeper.node.upgrade import Outcome
    from bootkeeper.update.acquire import Staged
    from bootkeeper.update.origin import Net, Progress
    from bootkeeper.update.release import Release
    from bootkeeper.update.source import Source

Say = Callable[[str], None]
VERSION_KEYS = ("IMAGE_VERSION", "VERSION_ID")  # the order the running OS's version is read in


@dataclass(frozen=True)
class ApplyOptions:
    """How a staged release is applied: ``rebuild`` (repair) rebuilds active and passive from it and
    skips the version rule (recovery installs the channel's release, whatever recovery runs)."""

    allow_downgrade: bool = False
    rebuild: bool = False
    dry_run: bool = False
    force: bool = False
    luks: tuple[Path, ...] = ()
    sdboot_version: str | None = None


@dataclass(frozen=True)
class Check:
    """What a source offers against what the node runs (``update --check``)."""

    source: str
    version: str | None  # as the manifest announces it (not trusted: a hint whether to download)
    running: str | None
    newer: bool
    files: tuple[tuple[str, str, int], ...]  # name, kind, size
    size: int
    room: int | None  # free bytes in the staging folder's file system
    staged: str | None  # the version already downloaded, when it is this release

    def as_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "version": self.version,
            "running": self.running,
            "newer": self.newer,
            "files": [{"name": n, "kind": k, "size": s} for n, k, s in self.files],
            "size": self.size,
            "staging_free": self.room,
            "downloaded": self.staged,
        }


@dataclass(frozen=True)
class Applied:
    """A staged release applied: the version its verified UKI carries, the signer, the transaction's outcome."""

    version: str | None
    signer: str | None
    outcome: Outcome

    @property
    def result(self) -> str:
        return self.outcome.result

    def as_json(self) -> dict[str, object]:
        return {"version": self.version, "signer": self.signer, "upgrade": self.outcome.as_json()}


def net_for(cfg: Config, root: Path, limit_rate: int | None = None) -> Net:
    """The ``update`` section as the fetchers take it (paths under ``root``)."""
    from bootkeeper import fsutil
    from bootkeeper.config import seconds
    from bootkeeper.update.origin import Net

    u = cfg.update
    return Net(
        auth_file=fsutil.under(root, u.auth_file) if u.auth_file else None,
        ca_file=fsutil.under(root, u.ca_file) if u.ca_file else None,
        mirrors=u.mirrors,
        timeout=seconds(u.timeout),
        deadline=seconds(u.deadline),
        limit_rate=u.limit_rate if limit_rate is None else limit_rate,
    )


def source_for(cfg: Config, given: str | None) -> Source | None:
    """``--source``, else ``update.source``; an ``oci:`` one naming no tag takes ``update.channel``."""
    from bootkeeper.update import source

    if given is not None:
        return source.parse(given, "--source").with_channel(cfg.update.channel)
    if cfg.update.source is None:
        return None
    return source.parse(cfg.update.source, "update.source").with_channel(cfg.update.channel)


def need_source(cfg: Config, given: str | None) -> Source:
    src = source_for(cfg, given)
    if src is None:
        raise UsageError("no release source: give --source, or set update.source in the config")
    return src


def staging_for(cfg: Config, root: Path) -> Path:
    from bootkeeper import fsutil

    return fsutil.under(root, cfg.update.staging_dir)


def running_version(root: Path) -> str | None:
    """The running OS's version: its os-release's ``IMAGE_VERSION``, else ``VERSION_ID``."""
    from bootkeeper.esp.entries import parse_osrel

    for rel in ("etc/os-release", "usr/lib/os-release"):
        try:
            fields = parse_osrel((root / rel).read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
        return next((fields[k] for k in VERSION_KEYS if fields.get(k)), None)
    return None


def newer(candidate: str | None, running: str | None) -> bool:
    """Whether ``candidate`` sorts after ``running`` by systemd's version comparison (an unknown
    running version: anything is newer; an unknown candidate: never)."""
    from bootkeeper.esp.entries import strverscmp_improved

    if candidate is None:
        return False
    return running is None or strverscmp_improved(candidate, running) > 0


def check(cfg: Config, root: Path, src: Source) -> Check:
    """What ``src`` offers, whether it is newer than what runs, and whether the staging folder has room."""
    from bootkeeper.update import acquire

    rel = acquire.resolve(src, net_for(cfg, root))
    announced = rel.version if rel.version is not None else _local_version(src, rel)
    running = running_version(root)
    staging = staging_for(cfg, root)
    done = acquire.downloaded(staging)
    staged = done.version if done is not None and done.manifest_digest == rel.manifest_digest else None
    return Check(str(src), announced, running, newer(announced, running), _files(rel), rel.size, _room(staging), staged)


def _local_version(src: Source, rel: Release) -> str | None:
    """A ``dir:`` or ``file:`` release announces no version: its UKI's ``.osrel`` says it (a hint
    here, as a manifest's is; apply reads it again once the signature verified)."""
    from bootkeeper.esp import pe
    from bootkeeper.esp.entries import parse_osrel
    from bootkeeper.update.source import Kind

    if src.kind not in (Kind.DIR, Kind.FILE):
        return None
    uki = next((f.name for f in rel.files if f.kind == "uki"), None)
    path = Path(src.path) if src.kind is Kind.FILE else Path(src.path) / (uki or "")
    try:
        raw = pe.read_osrel(path)
    except (OSError, BootkeeperError):
        return None
    fields = parse_osrel(raw.decode("utf-8", "replace")) if raw is not None else {}
    return next((fields[k] for k in VERSION_KEYS if fields.get(k)), None)


def _files(rel: Release) -> tuple[tuple[str, str, int], ...]:
    return tuple((f.name, f.kind, f.desc.size) for f in rel.files)


def _room(folder: Path) -> int | None:
    """Free bytes where ``folder`` is or would be made (its nearest existing parent)."""
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def fetch(cfg: Config, root: Path, src: Source, say: Say, progress: Progress | None = None) -> Staged:
    """``src``'s release downloaded into the staging folder, every file checked against its digest."""
    from bootkeeper.update import acquire

    staging = staging_for(cfg, root)
    staged = acquire.acquire(src, net_for(cfg, root), staging, progress)
    say(f"bootkeeper: downloaded {staged.version or 'a release'} from {src} into {staged.folder}")
    return staged


def downloaded(cfg: Config, root: Path) -> Staged:
    from bootkeeper.update import acquire

    staged = acquire.downloaded(staging_for(cfg, root))
    if staged is None:
        raise NotApplicableError(
            f"{staging_for(cfg, root)}: no downloaded release", hint="run 'bootkeeper update --download-only' first"
        )
    return staged


def apply_staged(
    cfg: Config,
    root: Path,
    esp: Path | None,
    staged: Staged,
    opts: ApplyOptions,
    say: Say,
    boot_id: Callable[[], str],
) -> Applied:
    """The staged release through the trust checks, then the upgrade transaction (its gate judges each
    extension against the new UKI's ``.osrel``). Refused releases leave the ESP untouched."""
    from bootkeeper.assess import upgrade as up
    from bootkeeper.node import upgrade as node
    from bootkeeper.node.trust import require_signed_uki

    shown = f"{staged.source}: {staged.uki.name}"
    uki = up.check_uki(staged.uki, shown)
    if not uki.ok:
        raise RefusedError(f"upgrade refused: {uki.reason}; nothing was changed")
    signer = require_signed_uki(cfg, root, None, staged.uki, shown, say)
    version = next((uki.osrel[k] for k in VERSION_KEYS if uki.osrel.get(k)), None)
    if not opts.rebuild:
        running = running_version(root)
        if not newer(version, running) and not opts.allow_downgrade:
            raise RefusedError(
                f"{shown}: version {version or '(none in its .osrel)'} is not newer than the running "
                f"{running or '(unknown)'}; nothing was changed",
                hint="pass --allow-downgrade to install it anyway",
            )
    up_opts = node.UpgradeOptions(
        dry_run=opts.dry_run, force=opts.force, sdboot_version=opts.sdboot_version, luks=opts.luks,
        rebuild=opts.rebuild,
    )  # fmt: skip
    if not opts.force:
        _refuse_a_release_that_failed(esp, staged.uki, shown, opts.sdboot_version)
    outcome = node.upgrade(cfg, root, esp, staged.uki, staged.extensions, up_opts, say, boot_id)
    return Applied(version, signer, outcome)


def _refuse_a_release_that_failed(esp: Path | None, uki: Path, shown: str, sdboot_version: str | None) -> None:
    """A release whose UKI is the bad active's, byte for byte, failed on this node already: after a
    fallback the running passive is older, so a channel that still names that release would offer it
    as newer, and installing it again would fail the same way. Refused until the channel moves (or
    ``--force``)."""
    from bootkeeper.assess import upgrade as up
    from bootkeeper.esp.counter import EntryState
    from bootkeeper.esp.entries import Role
    from bootkeeper.esp.store import EspStore
    from bootkeeper.node.store import find_esp

    store = EspStore(find_esp(esp))
    found = up.find_sets(store, store.snapshot(sdboot_version))
    bad = found.sets.get(Role.ACTIVE)
    if bad is not None and bad.entry.state is EntryState.BAD and up.same_bytes(store.path(bad.uki), uki):
        raise RefusedError(
            f"{shown}: this release is the active entry that failed here ({bad.entry.path}); nothing was changed",
            hint="publish a fixed release on the channel (or pass --force to install it again)",
        )


def reboot(root: Path, why: str, say: Say) -> bool:
    """``systemctl reboot`` into the new active (``update --scheduled`` with ``update.auto_apply``,
    ``repair``); never under another ``--root``. Returns whether the reboot was queued."""
    from bootkeeper.errors import BootkeeperError
    from bootkeeper.run import run

    if root.resolve() != Path("/"):
        say(f"bootkeeper: {why} (not rebooting: --root is not /)")
        return False
    say(f"bootkeeper: {why}: rebooting")
    try:
        run(["systemctl", "reboot", "--no-block"], timeout=30)
    except BootkeeperError as exc:
        say(f"bootkeeper: cannot reboot: {exc}")
        return False
    return True
