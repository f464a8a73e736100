"""``bootkeeper sysext inspect|validate|build|install|remove|list|activate``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bootkeeper.cli.common import (
    F,
    config_option,
    esp_option,
    find_esp,
    json_option,
    load_config,
    print_json,
    root_option,
    table,
)
from bootkeeper.cli.tpm_gate import extension_gate, luks_option, refuse_or_warn, rerun_pcrlock
from bootkeeper.shown import echo


def _certs(paths: tuple[Path, ...]) -> list[Any]:
    from bootkeeper.fsutil import read_input
    from bootkeeper.sysext.trust import load_certificates

    out = []
    for p in paths:
        out.extend(load_certificates(read_input(p, "the certificate"), str(p)))
    return out


def _arch(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--arch`` in systemd's name; a name neither systemd nor ``uname -m`` uses is a usage error."""
    if value is None:
        return None
    from bootkeeper.errors import MalformedError
    from bootkeeper.sysext import image

    try:
        return image.architecture(value)
    except MalformedError as exc:
        raise click.BadParameter(str(exc)) from exc


class _Bar:
    """A rich progress bar on a terminal for work over 8 MiB; nothing otherwise (logs, pipes)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None
        self.task: Any = None

    def __call__(self, n: int, total: int) -> None:
        import sys

        if self.bar is None:
            if total < (8 << 20) or not sys.stderr.isatty():
                return
            from rich.console import Console
            from rich.markup import escape
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

            from bootkeeper.shown import raw_stream, shown_line

            self.bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=Console(file=raw_stream(sys.stderr)),  # rich's own drawing; the label escaped below
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(escape(shown_line(self.label)), total=total)  # an image's name: text
        self.bar.advance(self.task, n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None  # a later call starts a new bar (rich allows one live display at a time)


@click.group()
def sysext() -> None:
    """Signed system extension images: build, inspect, validate."""


@sysext.command()
@click.argument("image_path", metavar="IMAGE", type=click.Path(path_type=Path))
@json_option
def inspect(image_path: Path, as_json: bool) -> None:
    """Partitions, root hash, verity superblock, signature and file system of IMAGE."""
    from bootkeeper.sysext import image

    info = image.inspect(image_path)
    j = info.as_json()
    if as_json:
        print_json(j)
        return
    echo(f"{image_path}: {info.size} bytes, disk {info.table.disk_uuid}")
    table(
        ["#", "designator", "arch", "name", "offset", "size", "uuid"],
        [
            [p["number"], p["designator"], p["architecture"], p["name"], p["offset"], p["size"], p["uuid"]]
            for p in j["partitions"]
        ],
    )
    for d in ("root", "usr"):
        if d in j:
            x = j[d]
            signed = "unsigned"
            if x["signature"]:
                who = ", ".join(x["signature"]["claimed_signer"]) or "no certificate embedded"
                signed = f"signed (claims: {who}; not checked here, see validate)"
            echo(f"{d}: {x['fstype']}, root hash {x['root_hash']}, {signed}")
            rel = x["extension_release"] or {}
            if "fields" in rel:
                fields = " ".join(f"{k}={v}" for k, v in rel["fields"].items())
                echo(f"{d}: {rel['file']}: {fields}")
            elif "error" in rel:
                echo(f"{d}: extension-release: {rel['error']}")
    for p in info.problems:
        echo(f"problem: {p}", err=True)


@sysext.command()
@click.argument("images", metavar="IMAGE...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--policy",
    "policy_text",
    default=None,
    help="Image policy (systemd.image-policy). Default: root=signed+absent:usr=signed+absent.",
)
@click.option(
    "--cert",
    "certs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A trusted certificate (PEM or DER); repeatable. Embedded certificates are never trusted.",
)
@click.option(
    "--os-release",
    "os_release",
    type=click.Path(path_type=Path),
    default=None,
    help="Check the extension-release against this os-release.",
)
@click.option(
    "--arch",
    default=None,
    callback=_arch,
    help="Architecture to require, systemd's or uname -m's name (default: this machine's).",
)
@click.option("--full", is_flag=True, help="Also verify every data block against the hash tree.")
@json_option
def validate(
    images: tuple[Path, ...],
    policy_text: str | None,
    certs: tuple[Path, ...],
    os_release: Path | None,
    arch: str | None,
    full: bool,
    as_json: bool,
) -> None:
    """Validate each IMAGE; exit 0 only if all pass."""
    from bootkeeper.sysext import image, policy, release

    pol, warnings = policy.check_config(policy_text if policy_text is not None else policy.ENFORCED_DEFAULT, "--policy")
    for w in warnings:
        echo(f"bootkeeper: warning: {w}", err=True)
    from bootkeeper.errors import ExitCode, UnreadableError
    from bootkeeper.fsutil import read_input_text

    for p in images:  # an image that cannot be read at all stops the run before any verdict (exit 7)
        if not os.access(p, os.R_OK) or not p.is_file():
            why = "does not exist" if not p.exists() else "not a file" if not p.is_file() else "not readable"
            raise UnreadableError(f"{p}: {why}")
    trusted = _certs(certs)
    host = release.parse_release(read_input_text(os_release, "the os-release")) if os_release else None
    results = []
    for p in images:
        bar = _Bar(f"verifying {p.name}")
        try:
            results.append(image.validate(p, pol, trusted, full=full, architecture=arch, os_release=host, progress=bar))
        finally:
            bar.close()
    if as_json:
        print_json({"policy": str(pol), "images": [r.as_json() for r in results]})
    else:
        for r in results:
            verdict = f"PASS ({r.qualified_as})" if r.ok else "FAIL"
            signer = f", signed by {r.signer}" if r.signer else ""
            echo(f"{r.image}: {verdict}{signer}")
            for why in r.reasons:
                echo(f"  - {why}")
            for d in r.decisions:
                if d.ok and d.used_as not in ("absent",):
                    echo(f"  {d.designator}: {d.reason}")
    if not all(r.ok for r in results):
        raise SystemExit(ExitCode.REFUSED)


@sysext.command()
@click.argument("tree", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(path_type=Path),
    help="The image to write, e.g. NAME.sysext.raw",
)
@click.option("--key", "key_path", required=True, type=click.Path(path_type=Path))
@click.option("--cert", "cert_path", required=True, type=click.Path(path_type=Path))
@click.option("--fs", type=click.Choice(["erofs", "squashfs"]), default="erofs", show_default=True)
@click.option(
    "--arch", default=None, callback=_arch, help="x86-64, arm64, ... or uname -m's name (default: this machine's)"
)
@click.option(
    "--os-release",
    "os_release",
    type=click.Path(path_type=Path),
    default=None,
    help="Take ID/VERSION_ID/SYSEXT_LEVEL for the extension-release from this file.",
)
def build(
    tree: Path, output: Path, key_path: Path, cert_path: Path, fs: str, arch: str | None, os_release: Path | None
) -> None:
    """Build a signed sysext image from TREE (like systemd-repart -S)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from bootkeeper.errors import MalformedError, RefusedError
    from bootkeeper.fsutil import read_input, read_input_text
    from bootkeeper.sysext import image, release

    key_bytes = read_input(key_path, "the key")
    try:
        key = load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError) as exc:
        raise MalformedError(f"{key_path}: not a readable unencrypted PEM private key ({exc})") from exc
    cert = _certs((cert_path,))[0]
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise RefusedError(
            f"{key_path}: not the key of {cert_path} ({cert.subject.rfc4514_string()}): the signature would "
            "not verify against that certificate"
        )
    host = release.parse_release(read_input_text(os_release, "the os-release")) if os_release else None
    if not output.name.endswith(".raw"):
        echo(
            f"bootkeeper: warning: {output.name} does not end in .raw: systemd-stub and systemd-sysext load *.raw only",
            err=True,
        )
    if not list((tree / release.RELEASE_DIR).glob("extension-release.*")):
        rel = f"ID={host.get('ID', '_any')}" if host else "ID=_any (any OS)"
        echo(
            f"bootkeeper: warning: {tree} has no {release.RELEASE_DIR}/extension-release.*: writing one with {rel}"
            + ("" if host else "; pass --os-release to tie the image to the OS it was built for"),
            err=True,
        )
    bar = _Bar(f"hashing {output.name}")
    try:
        image.build(tree, output, key, cert, fs=fs, arch=arch, os_release=host, progress=bar)
    finally:
        bar.close()
    info = image.inspect(output)
    rh = info.root_hash("root")
    echo(f"{output}: root hash {rh.hex() if rh else '?'}")


def _anchors(cfg: Any, root: Path) -> list[Any]:
    """The configured trust anchors; a source that cannot be read is a warning (as at boot)."""
    from bootkeeper.sysext import trust

    store = trust.load(cfg.sysext, root, strict=False)
    for p in store.problems:
        echo(f"bootkeeper: warning: trust source skipped: {p}", err=True)
    return store.certificates


def _validate_for(cfg: Any, anchors: list[Any], path: Path, full: bool, name: str | None = None) -> Any:
    """Validate ``path`` under the configured policy and the trust anchors (boot-time rules);
    ``name`` is the file name it has once installed (for its extension-release)."""
    from bootkeeper.sysext import image, policy

    pol = policy.parse(cfg.sysext.policy, "sysext.policy")
    bar = _Bar(f"verifying {name or path.name}")
    try:
        return image.validate(path, pol, anchors, full=full, progress=bar, name=name)
    finally:
        bar.close()


def _entry_option(what: str) -> Callable[[F], F]:
    def deco(f: F) -> F:
        return click.option(
            "--entry",
            "entries",
            multiple=True,
            help=f"Boot entry name (active, passive, recovery…; with sysext.store: persistent also common); "
            f"repeatable. {what}",
        )(f)

    return deco


@sysext.command()
@click.argument("image_path", metavar="IMAGE", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--name", default=None, help="File name on the ESP (default: IMAGE's own name).")
@_entry_option("Install for these entries. Default: the sysext.entries rules, else active and passive.")
@click.option(
    "--force",
    is_flag=True,
    help="Install even if validation fails, an entry's OS would refuse it at boot or a LUKS volume would not "
    "unlock from the TPM after it (logged).",
)
@luks_option("whose TPM2 tokens must survive the change of PCR 13")
@esp_option
@config_option
@root_option
@json_option
def install(
    image_path: Path,
    name: str | None,
    entries: tuple[str, ...],
    force: bool,
    luks: tuple[Path, ...],
    esp: Path | None,
    config_files: tuple[Path, ...],
    root: Path,
    as_json: bool,
) -> None:
    """Copy IMAGE into EFI/<vendor>/<entry>.efi.extra.d/ for the entries that should load it (with
    sysext.store: persistent, into the store and its folders of links).

    Refused (nothing written) unless IMAGE validates, its extension-release fits the OS each of
    those entries boots (its UKI's .osrel; without one, ROOT's os-release) and, on the ESP, every LUKS
    volume still unlocks from the TPM with PCR 13 changed; the systemd-pcrlock components set up by
    tpm pcrlock are made again for the entries changed."""
    from bootkeeper.config import SysextStore
    from bootkeeper.errors import NotApplicableError, UnreadableError
    from bootkeeper.esp import extra
    from bootkeeper.esp.store import EspStore
    from bootkeeper.sysext import deploy

    name = deploy.check_name(name if name is not None else image_path.name)
    if not image_path.is_file():
        raise UnreadableError(f"{image_path}: not a readable file")
    cfg = load_config(config_files, root)
    store = EspStore(find_esp(esp))
    available = extra.targets(store.snapshot(), store, cfg.sysext.vendor)
    persistent = cfg.sysext.store is SysextStore.PERSISTENT
    folders: list[str] = []
    if persistent:
        folders, why = deploy.store_folders(name, cfg.sysext.entries, entries)
        chosen = deploy.folder_targets(folders, available)  # the OSes that will load it
    else:
        if not available:
            raise NotApplicableError(f"{store.root}: no boot entry runs a UKI, so no .extra.d folder would be read")
        chosen, why = deploy.select(name, available, cfg.sysext.entries, entries)
        if not chosen:
            raise NotApplicableError(f"{name}: {why}, but none of those entries is on the ESP")
    gates: list[Any] = []
    tpm_forced = False
    # systemd-stub measures .extra.d into PCR 13; the persistent store is measured by nothing
    if not persistent and _changing(store, image_path, name, chosen):
        gates = extension_gate(root, luks)
        tpm_forced = refuse_or_warn(gates, force, f"installing {name}")
    anchors = _anchors(cfg, root)
    from bootkeeper.sysext.activate import host_os_release

    node_fields = host_os_release(root)
    node = (f"the os-release under {root}", node_fields) if node_fields is not None else None

    def check(staged: Path) -> tuple[Any, list[Any], list[Any]]:
        # the copy that is renamed into place, not the source (which could be swapped meanwhile)
        from bootkeeper.errors import RefusedError
        from bootkeeper.sysext import image

        bar.close()
        v = _validate_for(cfg, anchors, staged, full=True, name=name)
        if not v.ok:
            if not force:
                raise RefusedError(
                    f"{image_path}: refused under policy {cfg.sysext.policy}: {'; '.join(v.reasons)}; "
                    "nothing was installed",
                    hint="fix the image or its signature (trusted are the certificates of sysext.certificates, "
                    f"the verity.d folders {', '.join(cfg.sysext.verity_dirs) or '(none configured)'} and the "
                    f"firmware's {', '.join(cfg.sysext.firmware) or '(none)'}), or pass --force to install it anyway",
                )
            msg = f"installing {name} with --force although it fails validation: {'; '.join(v.reasons)}"
            echo(f"bootkeeper: warning: {msg}", err=True)
        # read under the lock: the UKIs the targets boot now, judged as systemd-sysext will at boot
        oses = [deploy.target_os(store, t, node) for t in chosen]
        for o in oses:
            if not o.from_uki:
                what = f"checked against {o.source}" if o.fields is not None else "not checked against any OS"
                echo(
                    f"bootkeeper: warning: {o.target.entry}: {o.target.uki} has no .osrel; {name} is {what}",
                    err=True,
                )
        rels = [r for r in image.inspect(staged, name).release.values() if not isinstance(r, str)]
        bad = deploy.misfits(name, rels, oses, image.host_architecture())
        if bad and not force:
            misfit = {m.os.target.entry for m in bad}
            fits = [t.entry for t in chosen if t.entry not in misfit]
            if persistent:
                fits = [f for f in folders if f in fits]
            where = f"install it only where it fits (--entry {' --entry '.join(fits)}), " if fits else ""
            raise RefusedError(
                "; ".join(m.line for m in bad) + "; nothing was installed",
                hint=f"build {name} for the OS of that entry, {where}or pass --force to install it anyway",
            )
        for m in bad:
            echo(f"bootkeeper: warning: installing {name} with --force although {m.line}", err=True)
        return v, oses, bad

    bar = _Bar(f"copying {name}")
    try:
        if persistent:
            ls = _link_store(cfg, root)
            sp, (v, oses, bad) = deploy.install_persistent(ls, image_path, name, folders, why, check, progress=bar)
            plan_json, written, same = sp.as_json(), sp.linked, sp.unchanged
            where = [f"{ls.root}/{f}/{name} -> ../{name}" for f in (*written, *same)]
        else:
            p, (v, oses, bad) = deploy.install(store, image_path, name, chosen, why, check, progress=bar)
            plan_json, written, same = p.as_json(), [t.entry for t in p.write], [t.entry for t in p.same]
            where = [f"{t.extra_dir}/{name}" for t in (*p.write, *p.same)]
    finally:
        bar.close()
    pcrlock = None if persistent else rerun_pcrlock(root, store, {t.extra_dir for t in p.write})
    if as_json:
        print_json(
            {
                **plan_json,
                "validation": v.as_json(),
                "os": [o.as_json() for o in oses],
                "misfits": [m.as_json() for m in bad],
                "tpm": [g.as_json() for g in gates],
                "pcrlock": pcrlock.as_json() if pcrlock is not None else None,
                "forced": force and (not v.ok or bool(bad) or tpm_forced),
            }
        )
        return
    for who, path in zip((*written, *same), where, strict=True):
        echo(f"{who}: {path} {'written' if who in written else 'already there'}")
    echo(f"({why}; signed by {v.signer})" if v.signer else f"({why})")


def _changing(store: Any, src: Path, name: str, chosen: list[Any]) -> list[Any]:
    """The targets whose .extra.d the install changes: those without these very bytes under ``name``
    (an identical copy already there changes no PCR). Read before the ESP's lock, for the TPM gate."""
    from bootkeeper.sysext import deploy

    fd = deploy.open_source(src)
    try:
        return deploy.plan(store, fd, name, chosen, "").write
    finally:
        os.close(fd)


def _link_store(cfg: Any, root: Path) -> Any:
    from bootkeeper import fsutil
    from bootkeeper.esp.linkstore import LinkStore

    return LinkStore(fsutil.under(root, cfg.sysext.store_dir))


@sysext.command()
@click.argument("name")
@_entry_option("Remove from these entries only. Default: from every entry.")
@click.option("--force", is_flag=True, help="Remove even if a LUKS volume would not unlock from the TPM after it.")
@luks_option("whose TPM2 tokens must survive the change of PCR 13")
@esp_option
@config_option
@root_option
@json_option
def remove(
    name: str,
    entries: tuple[str, ...],
    force: bool,
    luks: tuple[Path, ...],
    esp: Path | None,
    config_files: tuple[Path, ...],
    root: Path,
    as_json: bool,
) -> None:
    """Remove extension NAME (k3s-v1.30.sysext.raw, or its short name k3s-v1.30) from the entries' .extra.d
    folders (default: from every entry); with sysext.store: persistent, its links (and the image once
    nothing links to it). On the ESP, refused (nothing removed) when a LUKS volume would not unlock from
    the TPM with PCR 13 changed, unless --force; the systemd-pcrlock components set up by tpm pcrlock
    are made again for the entries changed."""
    from bootkeeper.config import SysextStore
    from bootkeeper.esp import extra
    from bootkeeper.esp.store import EspStore
    from bootkeeper.sysext import deploy

    cfg = load_config(config_files, root)
    if cfg.sysext.store is SysextStore.PERSISTENT:
        from bootkeeper.esp.linkstore import FOLDERS

        folders = deploy.store_folders(name, (), entries)[0] if entries else list(FOLDERS)
        ls = _link_store(cfg, root)
        names = deploy.resolve_name(name, [lk.name for f in folders for lk in ls.links(f)])
        links: list[str] = []
        images: list[str] = []
        for n in names:
            got = deploy.remove_persistent(ls, n, folders)
            links += got[0]
            images += got[1]
        if as_json:
            # the persistent store is measured by nothing: no TPM gate, no pcrlock component to make again
            print_json(
                {"name": name, "removed": links, "images_removed": images, "store": str(ls.root), "tpm": [],
                 "pcrlock": None}
            )  # fmt: skip
            return
        for g in links:
            echo(f"removed {ls.root}/{g}")
        for g in images:
            echo(f"removed {ls.root}/{g} (no folder links to it)")
        if not links:
            echo(f"{name}: nothing matched in {', '.join(f + '/' for f in folders)} of {ls.root}")
        return
    store = EspStore(find_esp(esp))
    available = extra.targets(store.snapshot(), store, cfg.sysext.vendor)
    chosen = deploy.select(name, available, (), entries)[0] if entries else available
    here = extra.installed(store, chosen)
    names = deploy.resolve_name(name, [i.name for i in here])
    changing = {i.target.extra_dir for i in here if i.name in names}
    gates: list[Any] = []
    if changing:
        gates = extension_gate(root, luks)
        refuse_or_warn(gates, force, f"removing {name}")
    gone = []
    for n in names:
        gone += deploy.remove(store, n, chosen)
    pcrlock = rerun_pcrlock(root, store, {g.rpartition("/")[0] for g in gone})
    if as_json:
        print_json(
            {
                "name": name,
                "removed": gone,
                "tpm": [g.as_json() for g in gates],
                "pcrlock": pcrlock.as_json() if pcrlock is not None else None,
            }
        )
    elif gone:
        for g in gone:
            echo(f"removed {g}")
    else:
        echo(f"{name}: nothing matched in the .extra.d of {', '.join(t.entry for t in chosen) or 'any entry'}")


@sysext.command(name="list")
@esp_option
@config_option
@root_option
@json_option
def list_(esp: Path | None, config_files: tuple[Path, ...], root: Path, as_json: bool) -> None:
    """Per boot entry: the extensions installed, their version, signer and verdict (with
    sysext.store: persistent, per folder of links: active/, passive/, recovery/, statereset/, common/)."""
    from bootkeeper.config import SysextStore
    from bootkeeper.esp import extra
    from bootkeeper.sysext import deploy

    cfg = load_config(config_files, root)
    anchors = _anchors(cfg, root)
    rows = []
    if cfg.sysext.store is SysextStore.PERSISTENT:
        from bootkeeper.esp.linkstore import FOLDERS

        ls = _link_store(cfg, root)
        for lk in deploy.installed_persistent(ls):
            row: dict[str, Any] = {"entry": lk.folder, "path": f"{lk.folder}/{lk.name}", "name": lk.name}
            if lk.image is None:
                rows.append(
                    {
                        **row,
                        "size": None,
                        "version": None,
                        "built_for": None,
                        "signer": None,
                        "ok": False,
                        "reasons": [lk.problem],
                    }
                )
                continue
            rows.append({**row, "image": lk.image, **_listed(cfg, anchors, ls.root / lk.image, lk.name)})
        rows += _resident_rows(cfg, anchors, root)
        where = f"{ls.root} ({', '.join(f + '/' for f in FOLDERS)})"
        _list_out(as_json, {"store": str(ls.root), "entries": list(FOLDERS), "extensions": rows}, rows, where)
        return
    from bootkeeper.esp.store import EspStore

    store = EspStore(find_esp(esp))
    available = extra.targets(store.snapshot(), store, cfg.sysext.vendor)
    for it in extra.installed(store, available):
        rows.append(
            {
                "entry": it.target.entry,
                "path": f"{it.target.extra_dir}/{it.name}",
                "name": it.name,
                **_listed(cfg, anchors, it.path, it.name),
            }
        )
    rows += _resident_rows(cfg, anchors, root)
    where = ", ".join(t.entry for t in available) or "any entry"
    _list_out(as_json, {"entries": [t.entry for t in available], "extensions": rows}, rows, where)


def _resident_rows(cfg: Any, anchors: list[Any], root: Path) -> list[dict[str, Any]]:
    """Rows for /etc/extensions and /var/lib/extensions (systemd-sysext merges them too) and for the
    quarantine activation moved refused ones to (entry: the folder, or ``quarantine``)."""
    from bootkeeper.sysext import extdirs

    rows: list[dict[str, Any]] = []
    found = [(f"/{rel}", root / rel / n) for rel in extdirs.FOLDERS for n in _names(root / rel)]
    found += [("quarantine", p) for p in extdirs.quarantined(root)]
    for entry, p in found:
        row: dict[str, Any] = {"entry": entry, "path": str(p), "name": p.name}
        if p.is_symlink() or not p.is_file():
            kind = "a symbolic link" if p.is_symlink() else "not a regular file"
            rows.append({**row, "size": None, "version": None, "built_for": None, "signer": None, "ok": False,
                         "reasons": [f"{kind}: activation refuses it in enforced mode"]})  # fmt: skip
            continue
        rows.append({**row, **_listed(cfg, anchors, p, p.name)})
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


def _listed(cfg: Any, anchors: list[Any], path: Path, name: str) -> dict[str, Any]:
    """One image's row of ``sysext list``: size, version, signer, verdict (hash tree only). An image
    that cannot be read or parsed is a row that says why, never the end of the list (issue 27: one
    broken file never stops the verdict on the others)."""
    from bootkeeper.errors import BootkeeperError

    try:
        return _inspected(cfg, anchors, path, name)
    except (OSError, BootkeeperError) as exc:
        why = f"{path}: cannot read ({exc.strerror})" if isinstance(exc, OSError) else str(exc)
        return {"size": None, "version": None, "built_for": None, "signer": None, "ok": False, "reasons": [why]}


def _inspected(cfg: Any, anchors: list[Any], path: Path, name: str) -> dict[str, Any]:
    from bootkeeper.sysext import image

    size = path.stat().st_size
    info = image.inspect(path) if size else None
    rel = info.release.get("root") if info else None
    version = built_for = None
    if rel is not None and not isinstance(rel, str):
        version = rel.fields.get("SYSEXT_VERSION_ID")  # the extension's own version
        host = [f"{k}={rel.fields[k]}" for k in ("ID", "VERSION_ID", "SYSEXT_LEVEL") if rel.fields.get(k)]
        built_for = " ".join(host) or None  # the OS it is for, not its version
    v = _validate_for(cfg, anchors, path, full=False, name=name)
    return {
        "size": size,
        "version": version,
        "built_for": built_for,
        "signer": v.signer,
        "ok": v.ok,
        "reasons": v.reasons,
    }


def _human(size: int | None) -> str:
    """1.4 MiB: sizes as people read them (the JSON keeps bytes)."""
    if size is None:
        return "?"
    n = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _list_out(as_json: bool, doc: dict[str, Any], rows: list[dict[str, Any]], where: str) -> None:
    if as_json:
        print_json(doc)
        return
    table(
        ["entry", "extension", "version", "built for", "size", "signer", "verdict"],
        [
            [
                r["entry"],
                r["name"],
                r["version"] or "-",
                r["built_for"] or "-",
                _human(r["size"]),
                r["signer"],
                "ok" if r["ok"] else "; ".join(r["reasons"]),
            ]
            for r in rows
        ],
    )
    if not rows:
        echo(f"no extensions installed for {where}")


@sysext.command()
@root_option
@click.option(
    "--mode",
    type=click.Choice(["disabled", "permissive", "enforced"]),
    default=None,
    help="Override sysext.mode from the config.",
)
@config_option
@click.option(
    "--efivars", type=click.Path(path_type=Path), default=None, help="Default: ROOT/sys/firmware/efi/efivars."
)
@click.option(
    "--refresh/--no-refresh",
    "do_refresh",
    default=None,
    help="Run systemd-sysext refresh afterwards (default: sysext.refresh from the config).",
)
@json_option
def activate(
    root: Path,
    mode: str | None,
    config_files: tuple[Path, ...],
    efivars: Path | None,
    do_refresh: bool | None,
    as_json: bool,
) -> None:
    """Boot time: validate each image of /.extra/sysext and place those the mode allows in /run/extensions."""
    from bootkeeper.config import SysextMode
    from bootkeeper.sysext import activate as act

    cfg = load_config(config_files, root)
    chosen = SysextMode(mode) if mode else cfg.sysext.mode
    report = act.activate(
        root,
        cfg.sysext,
        chosen,
        efivars=efivars,
        log=None if as_json else lambda line: echo(f"bootkeeper-sysext: {line}"),
    )
    for problem in report.trust.get("problems", []):  # fewer anchors: images may be refused for it
        echo(f"bootkeeper-sysext: warning: trust source skipped: {act.printable(problem)}", err=True)
    if do_refresh if do_refresh is not None else cfg.sysext.refresh:
        from bootkeeper.systemd_version import resolve

        node = resolve(root, cfg.sysext.systemd_version)
        if chosen is SysextMode.ENFORCED and (w := node.warning(root)) is not None:  # only the policy depends on it
            echo(f"bootkeeper: warning: {w}", err=True)
        report.refresh = act.refresh(root, cfg.sysext, chosen, node)
        act.write_report(root, report)
        if not as_json:
            r = report.refresh
            echo(f"bootkeeper-sysext: {' '.join(r['argv'])}: {'ok' if r['ok'] else r['error']}")
    if as_json:
        print_json(report.as_json())
    else:
        placed = sum(o.placed for o in report.images)
        echo(
            f"bootkeeper-sysext: mode {report.mode}: {placed} of {len(report.images)} placed in "
            f"{root / act.DEST_DIR} ({report.seconds:.2f} s); report {root / act.REPORT}"
        )
    if report.refresh is not None and not report.refresh["ok"]:
        from bootkeeper.errors import CommandError

        error = str(report.refresh["error"])
        hint = f"the images stay placed in {root / act.DEST_DIR}; the report is {root / act.REPORT}"
        if "--image-policy" in error and "unrecognized option" in error:
            hint = f"the node's systemd-sysext is older than 254: set sysext.systemd_version; {hint}"
        raise CommandError(error, hint)


@sysext.command(name="required")
@root_option
@config_option
@click.option(
    "--record", is_flag=True, help="Also record the reason in the boot history (bootkeeper-sysext-required.service)."
)
@click.option(
    "--reboot-on-failure",
    "reboot",
    type=click.Choice(["never", "active"]),
    default="never",
    show_default=True,
    help="active: when they are not merged, reboot a counted boot of the active entry with a try left "
    "(bootkeeper-generator's rule; only on the node's own root).",
)
@click.option("--boot-id", default=None, help="This boot's id (default: /proc/sys/kernel/random/boot_id).")
def required_(root: Path, config_files: tuple[Path, ...], record: bool, reboot: str, boot_id: str | None) -> None:
    """Whether this boot's required extensions (sysext.required) were merged, as the last activation
    judged them: exit 0 when they were, else exit 1 naming each that was refused or missing."""
    from bootkeeper.errors import RefusedError
    from bootkeeper.sysext import required
    from bootkeeper.sysext.activate import printable

    lines = required.read_failed(root)
    if lines is None:
        echo("bootkeeper: the required extensions are merged (or none are required)")
        return
    why = "; ".join(printable(line) for line in lines)
    if record:
        import time

        from bootkeeper.assess import history
        from bootkeeper.cli.history_cmd import current_boot_id

        history.append(root, history.not_good_record(current_boot_id(boot_id), time.time(), required.UNIT, why))
    echo(f"bootkeeper: this boot is not good: {why}", err=True)
    if reboot == "active":
        _reboot_if_active(root, config_files)
    raise RefusedError(
        f"this boot is not good: {why}",
        hint=f"the verdict is {root / required.FAILED}; 'bootkeeper status' shows the activation's report",
    )


def _reboot_if_active(root: Path, config_files: tuple[Path, ...]) -> None:
    """``reboot_on_failure: active`` for the failing check itself: the rule bootkeeper-generator applies to
    enrolled services (``generator.on_failure``: the active entry, counting, a try used), decided now
    rather than by a ``FailureAction=`` drop-in, because what fails is known only after the activation.
    The reboot is ``systemctl reboot``, what ``FailureAction=reboot`` does; never under another ``--root``."""
    from bootkeeper.assess import generator
    from bootkeeper.errors import BootkeeperError
    from bootkeeper.run import run

    tries = load_config(config_files, root).boot_assessment.tries
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
        echo(f"bootkeeper: booted {role or 'unknown'} ({source}): {why}; the node stays up", err=True)
        return
    if root.resolve() != Path("/"):
        echo(f"bootkeeper: {why} (not rebooting: --root is not /)", err=True)
        return
    echo(f"bootkeeper: {why}: rebooting", err=True)
    try:
        run(["systemctl", "reboot", "--no-block"], timeout=30)
    except BootkeeperError as exc:
        echo(f"bootkeeper: cannot reboot: {exc}", err=True)
