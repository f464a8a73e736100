"""``bootkeeper keys generate|list|export``: signing keys for trying out, and the trust anchors."""

from __future__ import annotations

from pathlib import Path

import click

from bootkeeper.cli.common import (
    config_option,
    json_option,
    load_config,
    options,
    print_json,
    root_efivars_option,
    root_option,
    table,
)
from bootkeeper.shown import echo


@click.group()
def keys() -> None:
    """Signing keys, and the certificates extension signatures are checked against."""


@keys.command()
@click.option("--key", "key_path", required=True, type=click.Path(path_type=Path))
@click.option("--cert", "cert_path", required=True, type=click.Path(path_type=Path))
@click.option("--cn", default="bootkeeper test signing key", show_default=True)
@click.option("--days", type=click.IntRange(1, 36500), default=3650, show_default=True)
def generate(key_path: Path, cert_path: Path, cn: str, days: int) -> None:
    """Make an RSA-2048 key and a self-signed certificate (the key written with umask 077)."""
    from bootkeeper.node.trust import generate_pair

    generate_pair(key_path, cert_path, cn, days)
    echo(f"key {key_path} (mode 0600), certificate {cert_path}")


@keys.command(name="list")
@options(config_option, root_option, root_efivars_option, json_option)
def list_(config_files: tuple[Path, ...], root: Path, efivars: Path | None, as_json: bool) -> None:
    """Trusted certificates: config, verity.d folders, firmware db (minus dbx)."""
    from bootkeeper.sysext import trust

    cfg = load_config(config_files, root)
    store = trust.load(cfg.sysext, root, efivars)
    if as_json:
        print_json(
            {
                "trusted": [a.as_json() for a in store.anchors],
                "revoked": [a.as_json(why) for a, why in store.revoked],
            }
        )
        return
    listed = [*((a, "") for a in store.anchors), *store.revoked]  # trusted, then revoked (and by what)
    rows = [[a.subject, a.fingerprint[:16], a.cert.not_valid_after_utc.date(), a.source, why] for a, why in listed]
    table(["subject", "sha256", "expires", "source", "revoked by"], rows)
    if not store.anchors:
        echo("no trusted certificates: enforced mode will refuse every extension", err=True)


@keys.command()
@options(config_option, root_option, root_efivars_option)
@click.option("--dest", type=click.Path(path_type=Path), default=None, help="Default: ROOT/run/verity.d.")
@json_option
def export(config_files: tuple[Path, ...], root: Path, efivars: Path | None, dest: Path | None, as_json: bool) -> None:
    """Write the trusted certificates as .crt into /run/verity.d for systemd and the kernel."""
    from bootkeeper.sysext import trust

    cfg = load_config(config_files, root)
    store = trust.load(cfg.sysext, root, efivars)
    dest = dest if dest is not None else root / trust.EXPORT_DIR
    written, removed = trust.export(store, dest)
    if as_json:
        print_json({"dest": str(dest), "written": written, "removed": removed, "trusted": len(store.anchors)})
        return
    echo(f"{dest}: {len(store.anchors)} trusted, wrote {len(written)}, removed {len(removed)}")
