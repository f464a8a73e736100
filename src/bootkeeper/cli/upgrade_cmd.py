"""``bootkeeper upgrade NEW.efi``: a new OS as one transaction over role sets, gated before the first write.

The gate is where assess and sysext meet (DESIGN.md): the plan and the order check come from
``assess/upgrade.py``; each extension the new set will load is validated here as ``sysext install`` does
(configured policy and trust anchors), with the new UKI's ``.osrel`` as the host's os-release.
"""

from __future__ import annotations

import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from bootkeeper.cli.common import (
    config_option,
    esp_option,
    find_esp,
    json_option,
    load_config,
    print_json,
    root_option,
    version_option,
)
from bootkeeper.cli.tpm_gate import luks_option, volumes
from bootkeeper.shown import echo


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


def _judge(cfg: Any, root: Path, plan: Any, host: dict[str, str], show: Any) -> list[ExtVerdict]:
    from bootkeeper.cli.sysext_cmd import _anchors
    from bootkeeper.sysext import image, policy

    exts = [*plan.extensions, *plan.common]  # common/ stays, and the new OS loads it too
    if not exts:
        return []
    pol = policy.parse(cfg.sysext.policy, "sysext.policy")
    anchors = _anchors(cfg, root)
    out = []
    for x in exts:
        v = image.validate(x.source, pol, anchors, full=True, os_release=host, name=x.name)
        origin = "common" if x.common else "carried" if x.carried else "--extension"
        out.append(ExtVerdict(x.name, show(str(x.source)), x.carried, v.ok, tuple(v.reasons), v.signer, origin))
    return out


def _private(src: Path, dst: Path) -> Path:
    """A copy of ``src`` in bootkeeper's own temporary folder, read through one descriptor."""
    import os

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


@click.command()
@click.argument("new_uki", metavar="NEW.efi", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--extension",
    "extensions",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="An extension image for the new OS; repeatable. Replaces a carried one of the same extension name.",
)
@click.option("--recovery", is_flag=True, help="Replace the recovery set instead; active and passive stay.")
@click.option("--dry-run", is_flag=True, help="Print the plan and the gate; write nothing.")
@click.option("--force", is_flag=True, help="Go on although extensions or the menu order fail the gate (logged).")
@luks_option("whose signed-policy TPM2 token the new UKI must open")
@esp_option
@config_option
@version_option
@root_option
@json_option
def upgrade(
    new_uki: Path,
    extensions: tuple[Path, ...],
    recovery: bool,
    dry_run: bool,
    force: bool,
    luks: tuple[Path, ...],
    esp: Path | None,
    config_files: tuple[Path, ...],
    sdboot_version: str | None,
    root: Path,
    as_json: bool,
) -> None:
    """Install NEW.efi as active: the old active's set (UKI, extensions) becomes passive, the old passive goes.

    Refused (exit 1, nothing changed) unless NEW.efi is a UKI, every extension it will load validates and
    matches its .osrel, and (Type #2) the menu order stays active, passive, recovery, statereset."""
    from bootkeeper.errors import UnreadableError, UsageError
    from bootkeeper.sysext import deploy

    cfg = load_config(config_files, root)
    for x in extensions:
        if not x.is_file():
            raise UnreadableError(f"{x}: not a readable file")
    names = [deploy.check_name(x.name) for x in extensions]
    stems = [deploy.image_stem(n) for n in names]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise UsageError(f"--extension: more than one image named {', '.join(twice)}")
    with tempfile.TemporaryDirectory(prefix="bootkeeper-upgrade-") as tmp:
        # what is judged is what lands: the gate reads private copies (0700), and the ESP gets those bytes
        priv = Path(tmp)
        shown = {str(priv / "new" / new_uki.name): str(new_uki)}
        shown.update({str(priv / str(i) / n): str(x) for i, (n, x) in enumerate(zip(names, extensions, strict=True))})
        new_copy = _private(new_uki, priv / "new" / new_uki.name)
        added = [(n, _private(x, priv / str(i) / n)) for i, (n, x) in enumerate(zip(names, extensions, strict=True))]
        _upgrade(cfg, root, new_copy, added, shown, (recovery, dry_run, force, as_json), esp, sdboot_version, luks)


def _upgrade(
    cfg: Any,
    root: Path,
    new_uki: Path,
    added: list[tuple[str, Path]],
    shown: dict[str, str],
    flags: tuple[bool, bool, bool, bool],
    esp: Path | None,
    sdboot_version: str | None,
    luks: tuple[Path, ...] = (),
) -> None:
    """The gate and the transaction, on private copies; ``shown``: copy -> the path the user gave."""
    from bootkeeper.assess import upgrade as up
    from bootkeeper.errors import RefusedError
    from bootkeeper.esp.store import EspStore
    from bootkeeper.sysext import deploy, release

    recovery, dry_run, force, as_json = flags

    def show(text: str) -> str:
        for copy, given in shown.items():
            text = text.replace(copy, given)
        return text

    uki = up.check_uki(new_uki)
    if not uki.ok:  # never overridden: the boot loader could not start it
        raise RefusedError(show(f"upgrade refused: {uki.reason}; nothing was changed"))
    tpm = _tpm_gate(root, luks, new_uki, show(str(new_uki)))
    digests = {str(new_uki): up.sha256(new_uki)}  # what was judged is what lands
    store = EspStore(find_esp(esp))
    snap = store.snapshot(sdboot_version)
    links = _links(cfg, root)
    role = "recovery" if recovery else "active"

    def carry(name: str) -> bool:
        return deploy.stays_with(name, cfg.sysext.entries, role)

    def make(s: Any) -> Any:
        return up.plan(
            store, s, cfg.boot_assessment, new_uki, added, deploy.image_stem,
            recovery=recovery, links=links, carry=carry,
        )  # fmt: skip

    plan = make(snap)
    verdicts = _judge(cfg, root, plan, release.parse_release(uki.text), show)
    digests.update({str(x.source): up.sha256(x.source) for x in plan.extensions})
    order = up.order_check(store, snap, plan, uki.text.encode())
    reasons = [f"{v.name}: {r}" for v in verdicts for r in v.reasons]
    reasons += list(order.reasons)
    reasons += [g.reason() for g in tpm if not g.ok]
    forced = bool(reasons) and force
    gate = {
        "verdict": "ok" if not reasons else ("forced" if forced else "refused"),
        "uki": {"path": show(str(new_uki)), **uki.as_json()},
        "extensions": [v.as_json() for v in verdicts],
        "order": order.as_json(),
        "tpm": [g.as_json() for g in tpm],
        "forced": forced,
    }

    recorded: dict[str, Any] | None = None  # the boot history's line, once written (or why not)

    def report(result: str) -> None:
        if as_json:
            print_json(
                {
                    "layout": plan.layout.value,
                    "role": plan.role.value,
                    "actions": [show(op.line()) for op in plan.ops],
                    "gate": gate,
                    "warnings": plan.warnings,
                    "left_behind": list(plan.left_behind),
                    "store": str(links.root) if links is not None else None,
                    "history": recorded,
                    "result": result,
                }
            )
            return
        echo(f"gate: {show(str(new_uki))}: a UKI ({', '.join(f'{k}={v}' for k, v in uki.osrel.items())})")
        for v in verdicts:
            where = "carried" if v.carried else "--extension"
            state = f"ok, signed by {v.signer}" if v.ok else f"refused: {'; '.join(v.reasons)}"
            echo(f"gate: {v.name} ({where}): {state}")
        if order.order:
            echo(f"gate: menu order after the upgrade: {' → '.join(order.order)}")
        for g in tpm:
            echo(f"gate: {g.device}: {'unlocks with the new UKI' if g.ok else g.reason()}")
        for op in plan.ops:
            echo(("would " if result == "dry-run" else "") + show(op.line()))
        echo(f"result: {result}")

    for n in plan.left_behind:
        plan.warnings.append(
            f"{n}: not carried to the new {role} (the sysext.entries rules give it to other entries); "
            + ("passive keeps it with the old OS" if role == "active" else "it goes with the old recovery")
        )
    for w in plan.warnings:
        echo(f"bootkeeper: warning: {w}", err=True)
    if plan.done:
        if plan.ops:  # the store's tidying after a crash that came after the commit
            up.apply(store, make, plan, sdboot_version=sdboot_version, digests=digests, links=links)
        if not as_json:
            tidy = "; finished tidying the extension store" if plan.ops else ": nothing to do"
            echo(f"{show(str(new_uki))} is the active UKI already{tidy}")
        report("unchanged")
        return
    if reasons and not force:
        if as_json or dry_run:
            report("refused")
        raise RefusedError(
            show("upgrade refused: " + "; ".join(reasons) + "; nothing was changed"),
            hint=(
                "sign the new UKI for the key the LUKS token trusts (ukify --pcr-private-key)"
                if any(not g.ok for g in tpm)
                else "build the extensions for the new OS"
            )
            + " (or pass --force to upgrade anyway; it is logged)",
        )
    if forced:
        echo(show(f"bootkeeper: warning: upgrading with --force although: {'; '.join(reasons)}"), err=True)
    if dry_run:
        report("dry-run")
        return
    before = _before(store, plan, digests, links)
    up.apply(store, make, plan, sdboot_version=sdboot_version, digests=digests, links=links)
    recorded = _record(root, plan, before, uki.osrel, digests, forced)
    report("upgraded")


def _tpm_gate(root: Path, luks: tuple[Path, ...], new_uki: Path, show_path: str) -> list[Any]:
    """The TPM gate (issue 16, item 6), before the first write: the LUKS2 volumes given with ``--luks``,
    else every volume of the node's /etc/crypttab (under ``--root``) that is there; for each volume with a
    signed-policy TPM2 token, whether the new UKI's .pcrsig opens it. No such volume: no gate."""
    from bootkeeper.measure import luks as luks_mod

    return [luks_mod.gate(v.device, list(v.tokens), new_uki, show_path) for v in volumes(root, luks)]


def _links(cfg: Any, root: Path) -> Any:
    """The persistent extension store when ``sysext.store: persistent``, else None."""
    from bootkeeper import fsutil
    from bootkeeper.config import SysextStore
    from bootkeeper.esp.linkstore import LinkStore

    if cfg.sysext.store is not SysextStore.PERSISTENT:
        return None
    return LinkStore(fsutil.under(root, cfg.sysext.store_dir))


def _before(store: Any, plan: Any, digests: dict[str, str], links: Any) -> Any:
    """The set the upgrade replaces, as the boot history records it: read before the first write moves it."""
    from bootkeeper.assess import history
    from bootkeeper.assess import upgrade as up
    from bootkeeper.errors import BootkeeperError
    from bootkeeper.esp import pe
    from bootkeeper.esp.entries import parse_osrel

    old = plan.old if plan.old is not None else plan.kept_passive  # resume: the old active, moved already
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
    root: Path, plan: Any, before: Any, osrel: dict[str, str], digests: dict[str, str], forced: bool
) -> dict[str, Any]:
    """The upgrade in the boot history; a failure to write it is a warning, never the upgrade's failure.
    Returns ``upgrade --json``'s ``history``: the file, and ``recorded`` with the error when it failed."""
    import time

    from bootkeeper.assess import history
    from bootkeeper.cli.history_cmd import current_boot_id
    from bootkeeper.errors import BootkeeperError

    after = history.role_os(
        osrel, [history.Image(x.name, _size(x.source), digests.get(str(x.source))) for x in plan.extensions]
    )
    rec = history.upgrade_record(current_boot_id(None), time.time(), plan.role, before, after, "upgraded", forced)
    where = str(root / history.HISTORY)
    try:
        history.append(root, rec)
    except BootkeeperError as exc:
        echo(f"bootkeeper: warning: upgraded, but not recorded in the boot history: {exc}", err=True)
        return {"file": where, "recorded": False, "error": str(exc)}
    return {"file": where, "recorded": True, "error": None}


def _size(p: Path) -> int | None:
    try:
        return p.stat().st_size
    except OSError:
        return None
