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
    from bootkeeper.esp.store import EspStore
    from bootkeeper.measure import luks
    from bootkeeper.node.tpm import esp_ukis

    what = str(device)
    tokens = luks.parse_metadata(luks.dump_metadata(device), what)
    ukis = esp_ukis(EspStore(find_esp(esp))) if any(t.signed for t in tokens) else []
    findings, checked = luks.audit(tokens, ukis)
    bad = [f for f in findings if f.level is luks.Level.FINDING]
    if as_json:
        print_json(
            {
                "device": what,
                "tokens": [{**t.as_json(), "ukis": [a.as_json() for a in checked.get(t.id, [])]} for t in tokens],
                "findings": [f.as_json() for f in findings],
                "verdict": "findings" if bad else "ok",
            }
        )
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
    if bad:
        refused_exit()
