"""``bootkeeper sysext inspect|validate|build|install|remove|list|activate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bootkeeper.cli.common import json_option, print_json, table


def _certs(paths: tuple[Path, ...]) -> list[Any]:
    from cryptography import x509

    from bootkeeper.errors import ParseError

    out = []
    for p in paths:
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ParseError(f"{p}: cannot read certificate ({exc.strerror})") from exc
        try:
            out.extend(
                x509.load_pem_x509_certificates(data)
                if b"-----BEGIN" in data
                else [x509.load_der_x509_certificate(data)]
            )
        except ValueError as exc:
            raise ParseError(f"{p}: not a PEM or DER certificate ({exc})") from exc
    return out


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
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

            self.bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=total)
        self.bar.advance(self.task, n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


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
    click.echo(f"{image_path}: {info.size} bytes, disk {info.table.disk_uuid}")
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
            click.echo(f"{d}: {x['fstype']}, root hash {x['root_hash']}, {signed}")
            rel = x["extension_release"] or {}
            if "fields" in rel:
                fields = " ".join(f"{k}={v}" for k, v in rel["fields"].items())
                click.echo(f"{d}: {rel['file']}: {fields}")
            elif "error" in rel:
                click.echo(f"{d}: extension-release: {rel['error']}")
    for p in info.problems:
        click.echo(f"problem: {p}", err=True)


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
@click.option("--arch", default=None, help="Architecture to require (default: this machine's).")
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

    pol = policy.parse(policy_text if policy_text is not None else policy.ENFORCED_DEFAULT, "--policy")
    if policy_text is not None and policy.parse(policy.SEED_POLICY) == pol:
        click.echo(
            "warning: this policy also admits unsigned verity images (a failed signature passes as "
            "verity); use root=signed+absent:usr=signed+absent to require signatures",
            err=True,
        )
    trusted = _certs(certs)
    host = release.parse_release(os_release.read_text()) if os_release else None
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
            click.echo(f"{r.image}: {verdict}{signer}")
            for why in r.reasons:
                click.echo(f"  - {why}")
            for d in r.decisions:
                if d.ok and d.used_as not in ("absent",):
                    click.echo(f"  {d.designator}: {d.reason}")
    if not all(r.ok for r in results):
        raise SystemExit(1)


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
@click.option("--arch", default=None, help="x86-64 or arm64 (default: this machine's)")
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

    from bootkeeper.errors import ParseError
    from bootkeeper.sysext import image, release

    try:
        key = load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ParseError(f"{key_path}: not a readable unencrypted PEM private key ({exc})") from exc
    cert = _certs((cert_path,))[0]
    host = release.parse_release(os_release.read_text()) if os_release else None
    bar = _Bar(f"hashing {output.name}")
    try:
        image.build(tree, output, key, cert, fs=fs, arch=arch, os_release=host, progress=bar)
    finally:
        bar.close()
    info = image.inspect(output)
    rh = info.root_hash("root")
    click.echo(f"{output}: root hash {rh.hex() if rh else '?'}")
