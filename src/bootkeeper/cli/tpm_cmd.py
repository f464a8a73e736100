"""``bootkeeper tpm predict|sign-policy|verify|pcrlock|audit``: measured boot, per boot entry."""

from __future__ import annotations

from pathlib import Path

import click

from bootkeeper.cli.common import F, esp_option, find_esp, json_option, print_json, table
from bootkeeper.cli.main import LazyGroup
from bootkeeper.shown import echo

# verb -> "module:attribute", imported when it runs (the group stays cheap to list)
TPM_VERBS = {
    "predict": ("bootkeeper.cli.tpm_cmd:predict", "PCR 11, 12 and 13 of each boot entry, from the ESP."),
    "sign-policy": ("bootkeeper.cli.tpm_cmd:sign_policy", "The signed PCR 11 policy (.pcrsig) of an entry's UKI."),
    "verify": ("bootkeeper.cli.tpm_verify_cmd:verify", "The event log against the live PCRs and the ESP's prediction."),
    "audit": ("bootkeeper.cli.tpm_audit_cmd:audit", "What LUKS2 TPM2 tokens are bound to; what an upgrade breaks."),
    "pcrlock": ("bootkeeper.cli.tpm_pcrlock_cmd:pcrlock", "systemd-pcrlock components: each entry's UKI, extensions."),
}


class _TpmGroup(LazyGroup):
    verbs = TPM_VERBS


@click.group(cls=_TpmGroup)
def tpm() -> None:
    """What the TPM sees of each boot entry and its extensions, and the policy that unlocks disks."""


def bank_option(f: F) -> F:
    return click.option(
        "--bank",
        "banks",
        multiple=True,
        type=click.Choice(["sha1", "sha256", "sha384", "sha512"]),
        help="PCR bank (repeatable; default: sha256 for predict, all four for sign-policy as systemd-measure).",
    )(f)


@click.command()
@esp_option
@click.option("--entry", "entries", multiple=True, help="Only this role or entry name (repeatable).")
@bank_option
@click.option(
    "--secure-boot",
    type=click.Choice(["on", "off"]),
    default="off",
    show_default=True,
    help="Under Secure Boot the stub drops a passed command line when the UKI has .cmdline.",
)
@json_option
def predict(
    esp: Path | None, entries: tuple[str, ...], banks: tuple[str, ...], secure_boot: str, as_json: bool
) -> None:
    """For each entry that runs a UKI: every event systemd-boot and systemd-stub 257 log into PCRs 11,
    12 and 13, the PCRs when the stub hands over to the kernel, and PCR 11 after each boot phase."""
    from bootkeeper.node import tpm as node

    found = node.predict(find_esp(esp), node.banks(banks), secure_boot == "on", entries)
    if as_json:
        print_json({"entries": [p.to_json() for p in found]})
        return
    for n, p in enumerate(found):
        if n:
            echo()
        echo(f"{p.role or p.entry}: {p.uki}")
        rows = []
        for b, pcrs in p.pcrs().items():
            for pcr, v in pcrs.items():
                rows.append((b, pcr, v.hex()))
        table(("BANK", "PCR", "AT HANDOVER"), rows)
        for b, vals in p.phases().items():
            table(("BANK", "PHASE", "PCR 11"), [(b, ph, v.hex()) for ph, v in vals.items()])
        first = p.banks[0].name
        table(
            ("PCR", "BY", "EVENT", first.upper()),
            [(e.pcr, e.source, e.what, e.digests[first].hex()[:16] + "…") for e in p.events],
        )
        for note in p.notes:
            echo(f"note: {note}")


@click.command(name="sign-policy")
@esp_option
@click.option("--entry", help="The entry (role or name) whose UKI to sign for.")
@click.option("--uki", "uki_path", type=click.Path(path_type=Path), help="A UKI file instead of an entry.")
@click.option("--key", "key_path", type=click.Path(path_type=Path), help="The PEM private key (RSA or EC).")
@click.option(
    "--print-digests", is_flag=True, help="HSM form, step 1: print the policy digests to sign, as JSON; no key needed."
)
@click.option(
    "--signatures",
    "sigs_path",
    type=click.Path(path_type=Path),
    help="HSM form, step 2: a JSON list of base64 signatures over step 1's digests, in its order.",
)
@click.option(
    "--public-key", "pub_path", type=click.Path(path_type=Path), help="With --signatures: the signing key's public key."
)
@bank_option
@click.option(
    "--phase", "phases", multiple=True, help="A phase path to sign for (repeatable; default: systemd-measure's four)."
)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Write the policy here (atomically) instead of stdout."
)
def sign_policy(
    esp: Path | None, entry: str | None, uki_path: Path | None, key_path: Path | None, print_digests: bool,
    sigs_path: Path | None, pub_path: Path | None, banks: tuple[str, ...], phases: tuple[str, ...],
    output: Path | None,
) -> None:  # fmt: skip
    """The signed PCR 11 policy for a UKI, as ``systemd-measure sign`` computes it and ukify embeds it
    as ``.pcrsig``: with ukify's defaults the same bytes. Offline; no TPM."""
    from bootkeeper import fsutil
    from bootkeeper.node import tpm as node

    req = node.PolicySigning(entry, uki_path, key_path, print_digests, sigs_path, pub_path, banks, phases)
    text = node.sign_policy(req, lambda: find_esp(esp))
    if output is None:
        click.echo(text.rstrip("\n"))  # JSON, or the .pcrsig bootkeeper wrote: many lines of its own
    else:
        fsutil.write_atomic(output, text.encode())


__all__ = ["predict", "sign_policy", "tpm"]
