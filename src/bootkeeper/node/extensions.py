"""``sysext install|remove|list``: an extension onto the boot set and off it, and what is installed, joined
from sysext (validation, placement), esp (the ESP, the persistent store) and measure (the TPM gate).
The verbs render what these return; each warning line goes to ``say`` as it happens."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from cryptography import x509

    from bootkeeper.config import Config, SysextMode
    from bootkeeper.errors import CommandError
    from bootkeeper.esp.extra import Target
    from bootkeeper.esp.linkstore import LinkStore
    from bootkeeper.esp.store import EspStore
    from bootkeeper.measure.luks import ExtensionGate
    from bootkeeper.node.tpm import PcrlockRun
    from bootkeeper.sysext.activate import Report as ActivationReport
    from bootkeeper.sysext.deploy import Misfit, TargetOs
    from bootkeeper.sysext.image import Validation
    from bootkeeper.sysext.policy import ImagePolicy

Say = Callable[[str], None]
Row = dict[str, object]  # one image of ``sysext list``, as its JSON has it


class Bar(Protocol):
    """Progress over bytes (``(done, total)``) that the caller draws, and closes when the step ends."""

    def __call__(self, n: int, total: int) -> None: ...

    def close(self) -> None: ...


Bars = Callable[[str], Bar]  # a label ("verifying k3s.raw") -> its bar


def validate_for(
    cfg: Config, trusted: list[x509.Certificate], path: Path, full: bool, bars: Bars, name: str | None = None
) -> Validation:
    """:func:`bootkeeper.node.trust.validate_for` with a bar labelled for the image."""
    from bootkeeper.node.trust import validate_for as validate

    bar = bars(f"verifying {name or path.name}")
    try:
        return validate(cfg, trusted, path, full, name, bar)
    finally:
        bar.close()


# -- install ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    """What ``sysext install`` did: the placement (JSON), who got it written or had it already, and the
    verdicts it was judged by."""

    plan: dict[str, object]
    written: tuple[str, ...]
    same: tuple[str, ...]
    where: tuple[str, ...]  # per entry (written, then same): the path it is at
    validation: Validation
    oses: tuple[TargetOs, ...]
    misfits: tuple[Misfit, ...]
    gates: tuple[ExtensionGate, ...]
    pcrlock: PcrlockRun | None
    forced: bool
    why: str

    def as_json(self) -> dict[str, object]:
        return {
            **self.plan,
            "validation": self.validation.as_json(),
            "os": [o.as_json() for o in self.oses],
            "misfits": [m.as_json() for m in self.misfits],
            "tpm": [g.as_json() for g in self.gates],
            "pcrlock": self.pcrlock.as_json() if self.pcrlock is not None else None,
            "forced": self.forced,
        }


Judged = tuple["Validation", list["TargetOs"], list["Misfit"]]  # the staged copy: validation, OSes, misfits


@dataclass(frozen=True)
class _Placed:
    plan: dict[str, object]
    written: list[str]
    same: list[str]
    where: list[str]
    judged: Judged
    changed: set[str]  # the .extra.d folders written


class _Install:
    """One ``sysext install``: where it goes, the TPM gate, then the copy judged under the ESP's lock."""

    anchors: list[x509.Certificate]
    node: tuple[str, dict[str, str]] | None

    def __init__(self, cfg: Config, root: Path, esp: Path, name: str, force: bool, say: Say, bars: Bars) -> None:
        from bootkeeper.esp import extra
        from bootkeeper.esp.store import EspStore
        from bootkeeper.node.store import persistent

        self.cfg, self.root, self.name, self.force, self.say, self.bars = cfg, root, name, force, say, bars
        self.store = EspStore(esp)
        self.available = extra.targets(self.store.snapshot(), self.store, cfg.sysext.vendor)
        self.persistent = persistent(cfg)
        self.folders: list[str] = []
        self.bar: Bar | None = None

    def choose(self, entries: tuple[str, ...]) -> tuple[list[Target], str]:
        """The entries (or folders of links) that will load the image, and why those."""
        from bootkeeper.errors import NotApplicableError
        from bootkeeper.sysext import deploy

        if self.persistent:
            self.folders, why = deploy.store_folders(self.name, self.cfg.sysext.entries, entries)
            return deploy.folder_targets(self.folders, self.available), why  # the OSes that will load it
        if not self.available:
            raise NotApplicableError(
                f"{self.store.root}: no boot entry runs a UKI, so no .extra.d folder would be read"
            )
        chosen, why = deploy.select(self.name, self.available, self.cfg.sysext.entries, entries)
        if not chosen:
            raise NotApplicableError(f"{self.name}: {why}, but none of those entries is on the ESP")
        return chosen, why

    def validated(self, staged: Path, image_path: Path) -> Validation:
        """The staged copy validated (refused unless ``force``)."""
        from bootkeeper.errors import RefusedError

        sx = self.cfg.sysext
        v = validate_for(self.cfg, self.anchors, staged, True, self.bars, self.name)
        if v.ok:
            return v
        if not self.force:
            raise RefusedError(
                f"{image_path}: refused under policy {sx.policy}: {'; '.join(v.reasons)}; nothing was installed",
                hint="fix the image or its signature (trusted are the certificates of sysext.certificates, "
                f"the verity.d folders {', '.join(sx.verity_dirs) or '(none configured)'} and the "
                f"firmware's {', '.join(sx.firmware) or '(none)'}), or pass --force to install it anyway",
            )
        self.say(
            f"bootkeeper: warning: installing {self.name} with --force although it fails validation: "
            f"{'; '.join(v.reasons)}"
        )
        return v

    def fits(self, staged: Path, chosen: list[Target]) -> tuple[list[TargetOs], list[Misfit]]:
        """The OS each chosen entry boots (read under the lock), and where the image does not fit it."""
        from bootkeeper.errors import RefusedError
        from bootkeeper.sysext import deploy, image

        oses = [deploy.target_os(self.store, t, self.node) for t in chosen]
        for o in oses:
            if not o.from_uki:
                what = f"checked against {o.source}" if o.fields is not None else "not checked against any OS"
                self.say(f"bootkeeper: warning: {o.target.entry}: {o.target.uki} has no .osrel; {self.name} is {what}")
        rels = [r for r in image.inspect(staged, self.name).release.values() if not isinstance(r, str)]
        bad = deploy.misfits(self.name, rels, oses, image.host_architecture())
        if bad and not self.force:
            misfit = {m.os.target.entry for m in bad}
            fits = [t.entry for t in chosen if t.entry not in misfit]
            if self.persistent:
                fits = [f for f in self.folders if f in fits]
            where = f"install it only where it fits (--entry {' --entry '.join(fits)}), " if fits else ""
            raise RefusedError(
                "; ".join(m.line for m in bad) + "; nothing was installed",
                hint=f"build {self.name} for the OS of that entry, {where}or pass --force to install it anyway",
            )
        for m in bad:
            self.say(f"bootkeeper: warning: installing {self.name} with --force although {m.line}")
        return oses, bad

    def check(self, image_path: Path, chosen: list[Target]) -> Callable[[Path], Judged]:
        """The judge of the copy that is renamed into place, not the source (which could be swapped meanwhile)."""

        def judge(staged: Path) -> Judged:
            if self.bar is not None:
                self.bar.close()
            v = self.validated(staged, image_path)
            # read under the lock: the UKIs the targets boot now, judged as systemd-sysext will at boot
            oses, bad = self.fits(staged, chosen)
            return v, oses, bad

        return judge

    def place(self, image_path: Path, chosen: list[Target], why: str) -> _Placed:
        from bootkeeper.node.store import link_store
        from bootkeeper.sysext import deploy

        check = self.check(image_path, chosen)
        self.bar = bar = self.bars(f"copying {self.name}")
        try:
            if self.persistent:
                ls = link_store(self.cfg, self.root)
                sp, got = deploy.install_persistent(ls, image_path, self.name, self.folders, why, check, progress=bar)
                where = [f"{ls.root}/{f}/{self.name} -> ../{self.name}" for f in (*sp.linked, *sp.unchanged)]
                return _Placed(sp.as_json(), list(sp.linked), list(sp.unchanged), where, got, set())
            p, got = deploy.install(self.store, image_path, self.name, chosen, why, check, progress=bar)
            where = [f"{t.extra_dir}/{self.name}" for t in (*p.write, *p.same)]
            written, same = [t.entry for t in p.write], [t.entry for t in p.same]
            return _Placed(p.as_json(), written, same, where, got, {t.extra_dir for t in p.write})
        finally:
            bar.close()


def install_name(image_path: Path, name: str | None) -> str:
    """The file name ``sysext install`` gives IMAGE (``--name``, else its own), checked, IMAGE readable."""
    from bootkeeper.errors import UnreadableError
    from bootkeeper.sysext import deploy

    name = deploy.check_name(name if name is not None else image_path.name)
    if not image_path.is_file():
        raise UnreadableError(f"{image_path}: not a readable file")
    return name


def install(
    cfg: Config,
    root: Path,
    esp: Path,
    image_path: Path,
    name: str,
    entries: tuple[str, ...],
    force: bool,
    luks: tuple[Path, ...],
    say: Say,
    bars: Bars,
) -> Installed:
    """Copy IMAGE as ``name`` for the entries (or folders of links) that should load it, judged first
    by the TPM gate (ESP only: the persistent store is measured by nothing) and then, on the staged
    copy, by validation and the OS each entry boots."""
    from bootkeeper.node import tpm
    from bootkeeper.node.trust import anchors
    from bootkeeper.sysext.activate import host_os_release

    job = _Install(cfg, root, esp, name, force, say, bars)
    chosen, why = job.choose(entries)
    gates: list[ExtensionGate] = []
    tpm_forced = False
    # systemd-stub measures .extra.d into PCR 13; the persistent store is measured by nothing
    if not job.persistent and _changing(job.store, image_path, name, chosen):
        gates = tpm.extension_gate(root, luks, say)
        tpm_forced = tpm.refuse_or_warn(gates, force, f"installing {name}", say)
    job.anchors = anchors(cfg, root, say)
    node_fields = host_os_release(root)
    job.node = (f"the os-release under {root}", node_fields) if node_fields is not None else None
    done = job.place(image_path, chosen, why)
    v, oses, bad = done.judged
    pcrlock = None if job.persistent else tpm.rerun_pcrlock(root, job.store, done.changed, say)
    forced = force and (not v.ok or bool(bad) or tpm_forced)
    return Installed(
        done.plan, tuple(done.written), tuple(done.same), tuple(done.where), v, tuple(oses), tuple(bad),
        tuple(gates), pcrlock, forced, why,
    )  # fmt: skip


def _changing(store: EspStore, src: Path, name: str, chosen: list[Target]) -> list[Target]:
    """The targets whose .extra.d the install changes: those without these very bytes under ``name``
    (an identical copy already there changes no PCR). Read before the ESP's lock, for the TPM gate."""
    from bootkeeper.sysext import deploy

    fd = deploy.open_source(src)
    try:
        return deploy.plan(store, fd, name, chosen, "").write
    finally:
        os.close(fd)


# -- remove ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Removed:
    """What ``sysext remove`` took away: on the ESP, the files (ESP-relative) and the TPM gate; in the
    persistent store (``store`` set), the links and the images nothing links to any more."""

    removed: tuple[str, ...]
    where: str  # what was looked in, for "nothing matched"
    store: str | None = None
    images: tuple[str, ...] = ()
    gates: tuple[ExtensionGate, ...] = ()
    pcrlock: PcrlockRun | None = None

    def as_json(self, name: str) -> dict[str, object]:
        if self.store is not None:
            # the persistent store is measured by nothing: no TPM gate, no pcrlock component to make again
            return {"name": name, "removed": list(self.removed), "images_removed": list(self.images),
                    "store": self.store, "tpm": [], "pcrlock": None}  # fmt: skip
        return {
            "name": name,
            "removed": list(self.removed),
            "tpm": [g.as_json() for g in self.gates],
            "pcrlock": self.pcrlock.as_json() if self.pcrlock is not None else None,
        }


def remove(
    cfg: Config, root: Path, esp: Callable[[], Path], name: str, entries: tuple[str, ...], force: bool,
    luks: tuple[Path, ...], say: Say,
) -> Removed:  # fmt: skip
    """Remove extension ``name`` (or its short name) from the entries' .extra.d folders (default: every
    entry), refused when a LUKS volume would not unlock after it unless ``force``; with the persistent
    store, its links (and the image once nothing links to it)."""
    from bootkeeper.esp import extra
    from bootkeeper.esp.store import EspStore
    from bootkeeper.node import tpm
    from bootkeeper.node.store import persistent
    from bootkeeper.sysext import deploy

    if persistent(cfg):
        return _remove_persistent(cfg, root, name, entries)
    store = EspStore(esp())
    available = extra.targets(store.snapshot(), store, cfg.sysext.vendor)
    chosen = deploy.select(name, available, (), entries)[0] if entries else available
    here = extra.installed(store, chosen)
    names = deploy.resolve_name(name, [i.name for i in here])
    gates: list[ExtensionGate] = []
    if {i.target.extra_dir for i in here if i.name in names}:
        gates = tpm.extension_gate(root, luks, say)
        tpm.refuse_or_warn(gates, force, f"removing {name}", say)
    gone = []
    for n in names:
        gone += deploy.remove(store, n, chosen)
    pcrlock = tpm.rerun_pcrlock(root, store, {g.rpartition("/")[0] for g in gone}, say)
    looked = f"the .extra.d of {', '.join(t.entry for t in chosen) or 'any entry'}"
    return Removed(tuple(gone), looked, gates=tuple(gates), pcrlock=pcrlock)


def _remove_persistent(cfg: Config, root: Path, name: str, entries: tuple[str, ...]) -> Removed:
    from bootkeeper.esp.linkstore import FOLDERS
    from bootkeeper.node.store import link_store
    from bootkeeper.sysext import deploy

    folders = deploy.store_folders(name, (), entries)[0] if entries else list(FOLDERS)
    ls = link_store(cfg, root)
    names = deploy.resolve_name(name, [lk.name for f in folders for lk in ls.links(f)])
    links: list[str] = []
    images: list[str] = []
    for n in names:
        got = deploy.remove_persistent(ls, n, folders)
        links += got[0]
        images += got[1]
    looked = f"{', '.join(f + '/' for f in folders)} of {ls.root}"
    return Removed(tuple(links), looked, str(ls.root), tuple(images))


# -- list ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """``sysext list``: its JSON document, the rows in it, and what was looked in (for "none")."""

    doc: dict[str, object]
    rows: list[Row]
    where: str


def listing(cfg: Config, root: Path, esp: Callable[[], Path], say: Say, bars: Bars) -> Listing:
    """Per boot entry (or folder of links), the extensions installed with version, signer and verdict;
    then those of /etc/extensions, /var/lib/extensions and the quarantine."""
    from bootkeeper.esp import extra
    from bootkeeper.esp.store import EspStore
    from bootkeeper.node.store import persistent
    from bootkeeper.node.trust import anchors

    trusted = anchors(cfg, root, say)
    if persistent(cfg):
        return _store_listing(cfg, root, trusted, bars)
    store = EspStore(esp())
    available = extra.targets(store.snapshot(), store, cfg.sysext.vendor)
    rows: list[Row] = [
        {
            "entry": it.target.entry,
            "path": f"{it.target.extra_dir}/{it.name}",
            "name": it.name,
            **_listed(cfg, trusted, it.path, it.name, bars),
        }
        for it in extra.installed(store, available)
    ]
    rows += _resident_rows(cfg, trusted, root, bars)
    where = ", ".join(t.entry for t in available) or "any entry"
    return Listing({"entries": [t.entry for t in available], "extensions": rows}, rows, where)


_UNREAD: Row = {"size": None, "version": None, "built_for": None, "signer": None, "ok": False}


def _store_listing(cfg: Config, root: Path, trusted: list[x509.Certificate], bars: Bars) -> Listing:
    from bootkeeper.esp.linkstore import FOLDERS
    from bootkeeper.node.store import link_store
    from bootkeeper.sysext import deploy

    ls: LinkStore = link_store(cfg, root)
    rows: list[Row] = []
    for lk in deploy.installed_persistent(ls):
        row: Row = {"entry": lk.folder, "path": f"{lk.folder}/{lk.name}", "name": lk.name}
        if lk.image is None:
            rows.append({**row, **_UNREAD, "reasons": [lk.problem]})
            continue
        rows.append({**row, "image": lk.image, **_listed(cfg, trusted, ls.root / lk.image, lk.name, bars)})
    rows += _resident_rows(cfg, trusted, root, bars)
    where = f"{ls.root} ({', '.join(f + '/' for f in FOLDERS)})"
    return Listing({"store": str(ls.root), "entries": list(FOLDERS), "extensions": rows}, rows, where)


def _resident_rows(cfg: Config, trusted: list[x509.Certificate], root: Path, bars: Bars) -> list[Row]:
    """Rows for /etc/extensions and /var/lib/extensions (systemd-sysext merges them too) and for the
    quarantine activation moved refused ones to (entry: the folder, or ``quarantine``)."""
    from bootkeeper.sysext import extdirs

    rows: list[Row] = []
    found = [(f"/{rel}", root / rel / n) for rel in extdirs.FOLDERS for n in _names(root / rel)]
    found += [("quarantine", p) for p in extdirs.quarantined(root)]
    for entry, p in found:
        row: Row = {"entry": entry, "path": str(p), "name": p.name}
        if p.is_symlink() or not p.is_file():
            kind = "a symbolic link" if p.is_symlink() else "not a regular file"
            rows.append({**row, **_UNREAD, "reasons": [f"{kind}: activation refuses it in enforced mode"]})
            continue
        rows.append({**row, **_listed(cfg, trusted, p, p.name, bars)})
    return rows


def _names(d: Path) -> list[str]:
    """What systemd-sysext reads in an extension folder: not hidden, not a temporary; files *.raw."""
    from bootkeeper import fsutil

    try:
        names = sorted(os.listdir(d))
    except OSError:
        return []
    return [
        n for n in names
        if not n.startswith(".") and not fsutil.is_temporary(n) and (n.endswith(".raw") or not (d / n).is_file())
    ]  # fmt: skip


def _listed(cfg: Config, trusted: list[x509.Certificate], path: Path, name: str, bars: Bars) -> Row:
    """One image's row of ``sysext list``: size, version, signer, verdict (hash tree only). An image
    that cannot be read or parsed is a row that says why, never the end of the list (one broken file
    never stops the verdict on the others: docs/extensions.md, "Extensions on the node")."""
    from bootkeeper.errors import BootkeeperError

    try:
        return _inspected(cfg, trusted, path, name, bars)
    except (OSError, BootkeeperError) as exc:
        why = f"{path}: cannot read ({exc.strerror})" if isinstance(exc, OSError) else str(exc)
        return {**_UNREAD, "reasons": [why]}


def _inspected(cfg: Config, trusted: list[x509.Certificate], path: Path, name: str, bars: Bars) -> Row:
    from bootkeeper.sysext import image

    size = path.stat().st_size
    info = image.inspect(path) if size else None
    rel = info.release.get("root") if info else None
    version = built_for = None
    if rel is not None and not isinstance(rel, str):
        version = rel.fields.get("SYSEXT_VERSION_ID")  # the extension's own version
        host = [f"{k}={rel.fields[k]}" for k in ("ID", "VERSION_ID", "SYSEXT_LEVEL") if rel.fields.get(k)]
        built_for = " ".join(host) or None  # the OS it is for, not its version
    v = validate_for(cfg, trusted, path, False, bars, name)
    return {
        "size": size,
        "version": version,
        "built_for": built_for,
        "signer": v.signer,
        "ok": v.ok,
        "reasons": v.reasons,
    }


# -- required --------------------------------------------------------------------------------------


def required_failed(root: Path) -> str | None:
    """Why this boot's required extensions (sysext.required) were not merged, as the last activation
    judged them; None when they were (or none are required)."""
    from bootkeeper.sysext import required
    from bootkeeper.sysext.activate import printable

    lines = required.read_failed(root)
    return None if lines is None else "; ".join(printable(line) for line in lines)


def record_not_good(root: Path, boot_id: str | None, why: str) -> None:
    """The boot history's not-good record of this boot, for bootkeeper-sysext-required.service."""
    import time

    from bootkeeper.assess import history
    from bootkeeper.node.history import current_boot_id
    from bootkeeper.sysext import required

    history.append(root, history.not_good_record(current_boot_id(boot_id), time.time(), required.UNIT, why))


def reboot_if_active(root: Path, tries: int, say: Say) -> None:
    """``reboot_on_failure: active`` for the failing check itself: the rule bootkeeper-generator applies to
    enrolled services (``generator.on_failure``: the active entry, counting, a try used), decided now
    rather than by a ``FailureAction=`` drop-in, because what fails is known only after the activation.
    The reboot is ``systemctl reboot``, what ``FailureAction=reboot`` does; never under another ``--root``."""
    from bootkeeper.assess import generator
    from bootkeeper.errors import BootkeeperError
    from bootkeeper.run import run

    try:
        role, source = generator.booted_role(str(root))
        count_path = selected = None
        if role == "active":
            count_path = generator._efivar(str(root), "LoaderBootCountPath")
            selected = generator._efivar(str(root), "LoaderEntrySelected")
        reboots, why = generator.on_failure("active", role, count_path, selected, tries)
    except generator.GeneratorError as exc:
        reboots, why, source = False, f"{exc}: no reboot", "?"
    if not reboots:
        say(f"bootkeeper: booted {role or 'unknown'} ({source}): {why}; the node stays up")
        return
    if root.resolve() != Path("/"):
        say(f"bootkeeper: {why} (not rebooting: --root is not /)")
        return
    say(f"bootkeeper: {why}: rebooting")
    try:
        run(["systemctl", "reboot", "--no-block"], timeout=30)
    except BootkeeperError as exc:
        say(f"bootkeeper: cannot reboot: {exc}")


# -- activate --------------------------------------------------------------------------------------


def activate(
    root: Path, cfg: Config, mode: str | None, efivars: Path | None, do_refresh: bool | None,
    log: Callable[[str], None] | None, say: Say,
) -> ActivationReport:  # fmt: skip
    """``sysext activate``: the activation under ``mode`` (default: sysext.mode), the trust sources it
    skipped said, then ``systemd-sysext refresh`` when ``do_refresh`` (default: sysext.refresh) asks."""
    from bootkeeper.config import SysextMode
    from bootkeeper.sysext import activate as act

    chosen = SysextMode(mode) if mode else cfg.sysext.mode
    report = act.activate(root, cfg.sysext, chosen, efivars=efivars, log=log)
    for problem in report.trust.get("problems", []):  # fewer anchors: images may be refused for it
        say(f"bootkeeper-sysext: warning: trust source skipped: {act.printable(problem)}")
    if do_refresh if do_refresh is not None else cfg.sysext.refresh:
        refresh(root, cfg, chosen, report, say)
    return report


def refresh(root: Path, cfg: Config, mode: SysextMode, report: ActivationReport, say: Say) -> None:
    """``systemd-sysext refresh`` after an activation, its result put in the report (written again)."""
    from bootkeeper.config import SysextMode
    from bootkeeper.sysext import activate as act
    from bootkeeper.systemd_version import resolve

    node = resolve(root, cfg.sysext.systemd_version)
    if mode is SysextMode.ENFORCED and (w := node.warning(root)) is not None:  # only the policy depends on it
        say(f"bootkeeper: warning: {w}")
    report.refresh = act.refresh(root, cfg.sysext, mode, node)
    act.write_report(root, report)


def refresh_failed(root: Path, report: ActivationReport) -> CommandError | None:
    """The error a failed refresh leaves the verb with (the images stay placed); None when it did not fail."""
    from bootkeeper.errors import CommandError
    from bootkeeper.sysext import activate as act

    if report.refresh is None or report.refresh["ok"]:
        return None
    error = str(report.refresh["error"])
    hint = f"the images stay placed in {root / act.DEST_DIR}; the report is {root / act.REPORT}"
    if "--image-policy" in error and "unrecognized option" in error:
        hint = f"the node's systemd-sysext is older than 254: set sysext.systemd_version; {hint}"
    return CommandError(error, hint)


# -- validate, build -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRules:
    """What ``sysext validate`` judges by: the policy, the trusted certificates and the host."""

    policy: ImagePolicy
    certs: tuple[Path, ...]  # --cert files
    os_release: Path | None
    arch: str | None
    full: bool


def image_rules(
    policy_text: str | None, certs: tuple[Path, ...], os_release: Path | None, arch: str | None, full: bool, say: Say
) -> ImageRules:
    """``sysext validate``'s rules: ``--policy`` (default: the enforced one), its warnings said."""
    from bootkeeper.sysext import policy

    pol, warnings = policy.check_config(policy_text if policy_text is not None else policy.ENFORCED_DEFAULT, "--policy")
    for w in warnings:
        say(f"bootkeeper: warning: {w}")
    return ImageRules(pol, certs, os_release, arch, full)


def validate_images(images: tuple[Path, ...], rules: ImageRules, bars: Bars) -> list[Validation]:
    """Each image validated; one that cannot be read at all stops the run before any verdict (exit 7)."""
    from bootkeeper.errors import UnreadableError
    from bootkeeper.fsutil import read_input_text
    from bootkeeper.node.trust import certificates
    from bootkeeper.sysext import image, release

    for p in images:
        if not os.access(p, os.R_OK) or not p.is_file():
            why = "does not exist" if not p.exists() else "not a file" if not p.is_file() else "not readable"
            raise UnreadableError(f"{p}: {why}")
    trusted = certificates(rules.certs)
    host = release.parse_release(read_input_text(rules.os_release, "the os-release")) if rules.os_release else None
    results = []
    for p in images:
        bar = bars(f"verifying {p.name}")
        try:
            results.append(
                image.validate(
                    p, rules.policy, trusted, full=rules.full, architecture=rules.arch, os_release=host, progress=bar
                )
            )
        finally:
            bar.close()
    return results


@dataclass(frozen=True)
class BuildSpec:
    """``sysext build``: the tree, the image to write, the signing pair and what the image is for."""

    tree: Path
    output: Path
    key_path: Path
    cert_path: Path
    fs: str
    arch: str | None
    os_release: Path | None


def build(spec: BuildSpec, say: Say, bars: Bars) -> bytes | None:
    """Build the signed image (like systemd-repart -S); its root hash."""
    from bootkeeper.fsutil import read_input_text
    from bootkeeper.node.trust import signing_pair
    from bootkeeper.sysext import image, release

    key, cert = signing_pair(spec.key_path, spec.cert_path)
    host = release.parse_release(read_input_text(spec.os_release, "the os-release")) if spec.os_release else None
    output, tree = spec.output, spec.tree
    if not output.name.endswith(".raw"):
        say(f"bootkeeper: warning: {output.name} does not end in .raw: systemd-stub and systemd-sysext load *.raw only")
    if not list((tree / release.RELEASE_DIR).glob("extension-release.*")):
        rel = f"ID={host.get('ID', '_any')}" if host else "ID=_any (any OS)"
        say(
            f"bootkeeper: warning: {tree} has no {release.RELEASE_DIR}/extension-release.*: writing one with {rel}"
            + ("" if host else "; pass --os-release to tie the image to the OS it was built for")
        )
    bar = bars(f"hashing {output.name}")
    try:
        image.build(tree, output, key, cert, fs=spec.fs, arch=spec.arch, os_release=host, progress=bar)
    finally:
        bar.close()
    return image.inspect(output).root_hash("root")
