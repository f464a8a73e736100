"""``bootkeeper tpm audit DEVICE``: what a LUKS2 volume's TPM2 tokens are bound to, and what an upgrade
would break (measure/luks.py holds the rules)."""

from __future__ import annotations

from pathlib import Path

import click

from bootkeeper.cli.common import esp_option, find_esp, json_option, options, print_json, refused_exit
from bootkeeper.shown import echo


@click.command()
@click.argument("device", type=click.Path(path_type=Path, dir_okay=False))
@options(esp_option, json_option)
def audit(device: Path, esp: Path | None, as_json: bool) -> None:
    """Read DEVICE's LUKS2 TPM2 tokens and say what an upgrade would break: PCR 11 or 13 bound by value,
    no signed policy, a key no UKI on the ESP is signed for. Exit 0 when nothing would, 1 otherwise."""
    from bootkeeper.node.tpm import audit as read_audit

    found = read_audit(device, lambda: find_esp(esp))
    what, tokens, findings = found.device, found.tokens, found.findings
    if as_json:
        print_json(found.as_json())
    else:
        if not tokens:
            echo(f"{what}: no systemd-tpm2 token: the TPM does not unlock this volume")
        for t in tokens:
            j = t.as_json()
            bound = []
            if t.pcrs:
                bound.append(f"PCR {'+'.join(map(str, t.pcrs))} by value")
            if t.pubkey_pcrs:
                bound.append(f"PCR {'+'.join(map(str, t.pubkey_pcrs))} signed by {j['pubkey_fingerprint']}")
            if t.pcrlock:
                bound.append("a systemd-pcrlock policy")
            keyslots = ",".join(t.keyslots)
            echo(f"token {t.id} (keyslot {keyslots}, {t.bank or 'any bank'}): {'; '.join(bound) or 'no PCR'}")
        for f in findings:
            echo(f"{f.level.value}: token {f.token}: {f.message}")
    if found.bad:
        refused_exit()
