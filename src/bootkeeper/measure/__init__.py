"""Measured boot: what systemd-boot and systemd-stub extend into the TPM for each boot entry (PCR 11,
12, 13), the node's event log against it, and the signed PCR 11 policy that keeps disks unlocking.

Built on ``esp/`` (UKI sections, entries, ``.extra.d``) only; joined to the rest in the CLI."""
