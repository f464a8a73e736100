"""``bootkeeper sysext inspect|validate|build|install|remove|list|activate``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from bootkeeper.cli.common import (
    F,
    ProgressBar,
    config_option,
    efivars_opt,
    esp_option,
    find_esp,
    json_option,
    load_config,
    options,
    print_json,
    refused_exit,
    root_option,
    say,
    table,
)
from bootkeeper.cli.tpm_gate import luks_option
from bootkeeper.shown import echo

if TYPE_CHECKING:
    from bootkeeper.node.extensions import Listing
    from bootkeeper.sysext.image import Validation


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
    images: tuple[Path, ...], policy_text: str | None, certs: tuple[Path, ...], os_release: Path | None,
    arch: str | None, full: bool, as_json: bool,
) -> None:  # fmt: skip
    """Validate each IMAGE; exit 0 only if all pass."""
    from bootkeeper.node import extensions

    rules = extensions.image_rules(policy_text, certs, os_release, arch, full, say)
    results = extensions.validate_images(images, rules, ProgressBar)
    if as_json:
        print_json({"policy": str(rules.policy), "images": [r.as_json() for r in results]})
    else:
        _print_validations(results)
    if not all(r.ok for r in results):
        refused_exit()


def _print_validations(results: list[Validation]) -> None:
    for r in results:
        verdict = f"PASS ({r.qualified_as})" if r.ok else "FAIL"
        echo(f"{r.image}: {verdict}" + (f", signed by {r.signer}" if r.signer else ""))
        for why in r.reasons:
            echo(f"  - {why}")
        for d in r.decisions:
            if d.ok and d.used_as not in ("absent",):
                echo(f"  {d.designator}: {d.reason}")


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
    from bootkeeper.node import extensions

    rh = extensions.build(
        extensions.BuildSpec(tree, output, key_path, cert_path, fs, arch, os_release), say, ProgressBar
    )
    echo(f"{output}: root hash {rh.hex() if rh else '?'}")


def _entry_option(what: str) -> Callable[[F], F]:
    """``--entry``, for ``install`` and ``remove``: ``what`` says what the entries named are for."""
    return click.option(
        "--entry",
        "entries",
        multiple=True,
        help=f"Boot entry name (active, passive, recovery…; with sysext.store: persistent also common); "
        f"repeatable. {what}",
    )


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
@options(luks_option("whose TPM2 tokens must survive the change of PCR 13"), esp_option, config_option, root_option)
@json_option
def install(
    image_path: Path, name: str | None, entries: tuple[str, ...], force: bool, luks: tuple[Path, ...],
    esp: Path | None, config_files: tuple[Path, ...], root: Path, as_json: bool,
) -> None:  # fmt: skip
    """Copy IMAGE into EFI/<vendor>/<entry>.efi.extra.d/ for the entries that should load it (with
    sysext.store: persistent, into the store and its folders of links).

    Refused (nothing written) unless IMAGE validates, its extension-release fits the OS each of
    those entries boots (its UKI's .osrel; without one, ROOT's os-release) and, on the ESP, every LUKS
    volume still unlocks from the TPM with PCR 13 changed; the systemd-pcrlock components set up by
    tpm pcrlock are made again for the entries changed."""
    from bootkeeper.node import extensions

    name = extensions.install_name(image_path, name)
    cfg = load_config(config_files, root)
    done = extensions.install(cfg, root, find_esp(esp), image_path, name, entries, force, luks, say, ProgressBar)
    if as_json:
        print_json(done.as_json())
        return
    for who, path in zip((*done.written, *done.same), done.where, strict=True):
        echo(f"{who}: {path} {'written' if who in done.written else 'already there'}")
    signer = done.validation.signer
    echo(f"({done.why}; signed by {signer})" if signer else f"({done.why})")


@sysext.command()
@click.argument("name")
@_entry_option("Remove from these entries only. Default: from every entry.")
@click.option("--force", is_flag=True, help="Remove even if a LUKS volume would not unlock from the TPM after it.")
@options(luks_option("whose TPM2 tokens must survive the change of PCR 13"), esp_option, config_option, root_option)
@json_option
def remove(
    name: str, entries: tuple[str, ...], force: bool, luks: tuple[Path, ...], esp: Path | None,
    config_files: tuple[Path, ...], root: Path, as_json: bool,
) -> None:  # fmt: skip
    """Remove extension NAME (k3s-v1.30.sysext.raw, or its short name k3s-v1.30) from the entries' .extra.d
    folders (default: from every entry); with sysext.store: persistent, its links (and the image once
    nothing links to it). On the ESP, refused (nothing removed) when a LUKS volume would not unlock from
    the TPM with PCR 13 changed, unless --force; the systemd-pcrlock components set up by tpm pcrlock
    are made again for the entries changed."""
    from bootkeeper.node import extensions

    cfg = load_config(config_files, root)
    gone = extensions.remove(cfg, root, lambda: find_esp(esp), name, entries, force, luks, say)
    if as_json:
        print_json(gone.as_json(name))
        return
    prefix = f"{gone.store}/" if gone.store is not None else ""
    for g in gone.removed:
        echo(f"removed {prefix}{g}")
    for g in gone.images:
        echo(f"removed {prefix}{g} (no folder links to it)")
    if not gone.removed:
        echo(f"{name}: nothing matched in {gone.where}")


@sysext.command(name="list")
@options(esp_option, config_option, root_option, json_option)
def list_(esp: Path | None, config_files: tuple[Path, ...], root: Path, as_json: bool) -> None:
    """Per boot entry: the extensions installed, their version, signer and verdict (with
    sysext.store: persistent, per folder of links: active/, passive/, recovery/, statereset/, common/)."""
    from bootkeeper.node import extensions

    cfg = load_config(config_files, root)
    _list_out(as_json, extensions.listing(cfg, root, lambda: find_esp(esp), say, ProgressBar))


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


def _list_out(as_json: bool, listing: Listing) -> None:
    if as_json:
        print_json(listing.doc)
        return
    rows = listing.rows
    table(
        ["entry", "extension", "version", "built for", "size", "signer", "verdict"],
        [
            [
                r["entry"],
                r["name"],
                r["version"] or "-",
                r["built_for"] or "-",
                _human(cast("int | None", r["size"])),
                r["signer"],
                "ok" if r["ok"] else "; ".join(cast("list[str]", r["reasons"])),
            ]
            for r in rows
        ],
    )
    if not rows:
        echo(f"no extensions installed for {listing.where}")


@sysext.command()
@root_option
@click.option(
    "--mode",
    type=click.Choice(["disabled", "permissive", "enforced"]),
    default=None,
    help="Override sysext.mode from the config.",
)
@options(config_option, efivars_opt("Default: ROOT/sys/firmware/efi/efivars.", readable=True))
@click.option(
    "--refresh/--no-refresh",
    "do_refresh",
    default=None,
    help="Run systemd-sysext refresh afterwards (default: sysext.refresh from the config).",
)
@json_option
def activate(
    root: Path, mode: str | None, config_files: tuple[Path, ...], efivars: Path | None, do_refresh: bool | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Boot time: validate each image of /.extra/sysext and place those the mode allows in /run/extensions."""
    from bootkeeper.node import extensions
    from bootkeeper.sysext import activate as act

    cfg = load_config(config_files, root)
    log = None if as_json else lambda line: echo(f"bootkeeper-sysext: {line}")
    report = extensions.activate(root, cfg, mode, efivars, do_refresh, log, say)
    if not as_json and (r := report.refresh) is not None:
        echo(f"bootkeeper-sysext: {' '.join(r['argv'])}: {'ok' if r['ok'] else r['error']}")
    if as_json:
        print_json(report.as_json())
    else:
        placed = sum(o.placed for o in report.images)
        echo(
            f"bootkeeper-sysext: mode {report.mode}: {placed} of {len(report.images)} placed in "
            f"{root / act.DEST_DIR} ({report.seconds:.2f} s); report {root / act.REPORT}"
        )
    if (failed := extensions.refresh_failed(root, report)) is not None:
        raise failed


@sysext.command(name="required")
@options(root_option, config_option)
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
    from bootkeeper.node import extensions
    from bootkeeper.sysext import required

    why = extensions.required_failed(root)
    if why is None:
        echo("bootkeeper: the required extensions are merged (or none are required)")
        return
    if record:
        extensions.record_not_good(root, boot_id, why)
    echo(f"bootkeeper: this boot is not good: {why}", err=True)
    refused = RefusedError(
        f"this boot is not good: {why}",
        hint=f"the verdict is {root / required.FAILED}; 'bootkeeper status' shows the activation's report",
    )
    if reboot != "active":
        raise refused
    # the error is said before the reboot is queued: its SIGTERM may end this process before it returns
    from bootkeeper.cli.common import say_error

    say_error(refused.message, refused.hint)
    extensions.reboot_if_active(root, load_config(config_files, root).boot_assessment.tries, say)
    sys.exit(refused.exit_code)
