"""``bootkeeper tpm pcrlock``: .pcrlock components for systemd-pcrlock, per boot entry."""

from __future__ import annotations

from pathlib import Path

import click

from bootkeeper.cli.common import esp_option, find_esp, json_option, print_json, table
from bootkeeper.shown import echo


@click.command()
@esp_option
@click.option(
    "--dest",
    type=click.Path(path_type=Path),
    required=True,
    help="The pcrlock.d folder to write the components into (e.g. /var/lib/pcrlock.d).",
)
@click.option("--entry", "entries", multiple=True, help="Only this role or entry name (repeatable).")
@click.option(
    "--secure-boot",
    type=click.Choice(["on", "off"]),
    default="off",
    show_default=True,
    help="Under Secure Boot the firmware does not measure the kernel systemd-stub loads: no record for it.",
)
@json_option
def pcrlock(esp: Path | None, dest: Path, entries: tuple[str, ...], secure_boot: str, as_json: bool) -> None:
    """systemd-pcrlock components for every entry that runs a UKI: 650-bootkeeper-uki (the UKI and
    the kernel in it in PCR 4, its sections in PCR 11) and 660-bootkeeper-sysext (its extensions in
    PCR 13), one variant per entry, named for its role. Offline; no TPM."""
    from bootkeeper.node.tpm import write_pcrlock

    variants, removed = write_pcrlock(find_esp(esp), dest, secure_boot == "on", entries)
    if as_json:
        print_json(
            {
                "dest": str(dest),
                "secure_boot": secure_boot == "on",
                "variants": [v.summary() for v in variants],
                "removed": removed,
            }
        )
        return
    rows = []
    for v in variants:
        pcrs = ",".join(str(p) for p in sorted({r.pcr for r in v.records})) or "-"
        rows.append((v.relpath, v.entry, pcrs, len(v.records)))
    table(("FILE", "ENTRY", "PCRS", "RECORDS"), rows)
    for r in removed:
        echo(f"removed {dest / r}")


__all__ = ["pcrlock"]
