"""PCR banks: the hash algorithms a TPM keeps PCRs in, with their TPM 2.0 algorithm ids
(TPM 2.0 Library, Part 2, 6.3 ``TPM_ALG_ID``) and the extend operation."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bootkeeper.errors import UsageError

__all__ = ["BANKS", "Bank", "bank", "extend", "zero"]


@dataclass(frozen=True)
class Bank:
    name: str  # systemd's name, as in /sys/class/tpm/tpm0/pcr-<name>/ and systemd-measure --bank
    alg_id: int  # TPM_ALG_ID
    size: int  # digest size in bytes

    def hash(self, data: bytes = b"") -> hashlib._Hash:
        return hashlib.new(self.name, data)

    def digest(self, data: bytes) -> bytes:
        return hashlib.new(self.name, data).digest()


BANKS: dict[str, Bank] = {
    b.name: b
    for b in (
        Bank("sha1", 0x0004, 20),
        Bank("sha256", 0x000B, 32),
        Bank("sha384", 0x000C, 48),
        Bank("sha512", 0x000D, 64),
    )
}
BY_ALG: dict[int, Bank] = {b.alg_id: b for b in BANKS.values()}


def bank(name: str) -> Bank:
    b = BANKS.get(name.lower())
    if b is None:
        raise UsageError(f"unknown PCR bank {name!r} (known: {', '.join(BANKS)})")
    return b


def zero(b: Bank) -> bytes:
    """PCRs 8-15 start at zero after a TPM reset (no locality event touches them)."""
    return bytes(b.size)


def extend(b: Bank, value: bytes, digest: bytes) -> bytes:
    """TPM2_PCR_Extend: new = H(old || digest)."""
    return b.digest(value + digest)
