"""``bootkeeper release push``: a UKI and its extensions published as one release, in a registry or an
OCI image layout (docs/updates.md, A release). The publisher's side: it runs where releases are built."""

from __future__ import annotations

from pathlib import Path

import click

from bootkeeper.cli.common import json_option, print_json
from bootkeeper.shown import echo


@click.group()
def release() -> None:
    """Publish releases: a UKI and the extensions built for it."""


@release.command()
@click.argument("files", metavar="FILES…", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--to", "target", required=True, help="oci:REGISTRY/REPO:TAG or ocifile:DIR (an OCI image layout folder)."
)
@click.option("--tag", "tags", multiple=True, help="Another tag for the same release (e.g. the channel); repeatable.")
@click.option(
    "--version", "version", default=None, help="The release's version (default: the UKI's IMAGE_VERSION or VERSION_ID)."
)
@click.option(
    "--auth-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="containers-auth.json(5) credentials.",
)
@click.option(
    "--ca-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="PEM certificates the registry's HTTPS must chain to.",
)
@json_option
def push(
    files: tuple[Path, ...], target: str, tags: tuple[str, ...], version: str | None, auth_file: Path | None,
    ca_file: Path | None, as_json: bool,
) -> None:  # fmt: skip
    """Publish FILES (one UKI, *.efi, and its extensions, *.raw) as one release to an OCI registry or layout."""
    from bootkeeper.node import publish

    done = publish.push(list(files), target, tags, version, auth_file, ca_file)
    if as_json:
        print_json(done.as_json())
        return
    for name, digest in done.blobs:
        echo(f"pushed {name} ({digest})")
    echo(f"release {done.version or '(no version)'}: {done.digest} at {', '.join(done.references)}")
