"""The signed PCR 11 policy: what ``systemd-measure sign`` computes and ukify embeds as ``.pcrsig``,
and the check that a UKI's ``.pcrsig`` authorizes the PCR 11 it will produce.

For each bank and each phase path (systemd-measure 257, src/measure/measure.c ``verb_sign()``):
PCR 11 after the stub's measurements and the path's phase words; ``pol``, the TPM2 PolicyPCR digest of
that one value (always SHA-256: H(0³² ‖ TPM_CC_PolicyPCR ‖ TPML_PCR_SELECTION ‖ H(PCR value)),
``tpm2_calculate_policy_pcr()`` in src/shared/tpm2-util.c); ``sig``, the key's signature over ``pol``
with the bank's hash (``digest_and_sign()``: RSA PKCS#1 v1.5, which is deterministic, or ECDSA);
``pkfp``, SHA-256 of the public key as ``i2d_PublicKey()`` writes it (an RSA key's PKCS#1
RSAPublicKey DER). Banks come out sorted by name, each with its phase paths in order. ukify joins the
objects of every systemd-measure call and writes ``json.dumps()`` of them (src/ukify/ukify.py,
``combine_signatures()``): that text is the ``.pcrsig`` section, byte for byte.

``systemd-cryptsetup`` and ``systemd-creds`` take the entry whose ``pol`` is the PolicyPCR of the
current PCR 11 and whose ``pkfp`` is the enrolled key's, and have the TPM check ``sig``
(TPM2_PolicyAuthorize): a LUKS volume bound with ``--tpm2-public-key`` opens for any UKI signed
with that key, whatever its contents."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bootkeeper.errors import MalformedError, UsageError
from bootkeeper.measure.banks import BANKS, Bank, extend
from bootkeeper.measure.uki import PHASES

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
    from cryptography.hazmat.primitives.hashes import HashAlgorithm

__all__ = [
    "DEFAULT_PHASE_PATHS",
    "Signed",
    "ToSign",
    "authorized",
    "dump_pcrsig",
    "fingerprint",
    "normalize_phase_path",
    "parse_pcrsig",
    "policy_pcr",
    "sign",
    "to_sign",
]

TPM_CC_POLICY_PCR = 0x0000017F
PCR = 11
# systemd-measure's default (parse_argv(), v257.9): from the initrd to the start of shutdown
DEFAULT_PHASE_PATHS = tuple(":".join(PHASES[: i + 1]) for i in range(len(PHASES)))
MAX_PCRSIG = 1 << 20


def normalize_phase_path(s: str) -> str:
    """``normalize_phase()``: empty words dropped."""
    words = [w for w in s.split(":") if w]
    return ":".join(words)


def phase_paths(given: tuple[str, ...]) -> tuple[str, ...]:
    """The paths systemd-measure signs for: its default four, else the given ones sorted, unique."""
    if not given:
        return DEFAULT_PHASE_PATHS
    return tuple(sorted({normalize_phase_path(p) for p in given}))


def pcr_selection(b: Bank, pcrs: tuple[int, ...] = (PCR,)) -> bytes:
    """TPML_PCR_SELECTION with one TPMS_PCR_SELECTION (sizeofSelect 3), big-endian as the TPM
    marshals it."""
    bitmap = bytearray(3)
    for n in pcrs:
        bitmap[n // 8] |= 1 << (n % 8)
    return struct.pack(">IHB", 1, b.alg_id, 3) + bytes(bitmap)


def policy_pcr(b: Bank, value: bytes) -> bytes:
    pcr_digest = hashlib.sha256(value).digest()
    return hashlib.sha256(bytes(32) + struct.pack(">I", TPM_CC_POLICY_PCR) + pcr_selection(b) + pcr_digest).digest()


def _after(b: Bank, handover: bytes, path: str) -> bytes:
    v = handover
    for w in path.split(":"):
        if w:
            v = extend(b, v, b.digest(w.encode()))
    return v


@dataclass(frozen=True)
class ToSign:
    """One policy digest to sign: for the HSM form, printed, signed elsewhere, joined back."""

    bank: Bank
    phase_path: str
    pcr11: bytes
    pol: bytes

    def to_json(self) -> dict[str, object]:
        return {
            "bank": self.bank.name,
            "phase": self.phase_path,
            "pcr": PCR,
            "hash": self.pcr11.hex(),
            "pol": self.pol.hex(),
        }


def to_sign(handover: dict[str, bytes], banks: tuple[Bank, ...], paths: tuple[str, ...]) -> list[ToSign]:
    out = []
    for b in sorted(banks, key=lambda b: b.name):
        for p in paths:
            v = _after(b, handover[b.name], p)
            out.append(ToSign(b, p, v, policy_pcr(b, v)))
    return out


def _hash_for(b: Bank) -> HashAlgorithm:
    """The bank's hash, which systemd-measure also signs with (``digest_and_sign(p->md, ...)``)."""
    from cryptography.hazmat.primitives import hashes

    if b.name == "sha1":
        return hashes.SHA1()
    if b.name == "sha384":
        return hashes.SHA384()
    if b.name == "sha512":
        return hashes.SHA512()
    return hashes.SHA256()


def fingerprint(public_key: PublicKeyTypes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    if isinstance(public_key, rsa.RSAPublicKey):
        der = public_key.public_bytes(Encoding.DER, PublicFormat.PKCS1)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        der = public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    else:
        raise UsageError("a PCR policy key must be RSA or EC")
    return hashlib.sha256(der).digest()


@dataclass(frozen=True)
class Signed:
    item: ToSign
    pkfp: bytes
    sig: bytes

    def to_json(self) -> dict[str, object]:
        return {
            "pcrs": [PCR],
            "pkfp": self.pkfp.hex(),
            "pol": self.item.pol.hex(),
            "sig": base64.b64encode(self.sig).decode(),
        }


def sign(items: list[ToSign], private_key: PrivateKeyTypes) -> list[Signed]:
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    fp = fingerprint(private_key.public_key())
    out = []
    for it in items:
        if isinstance(private_key, rsa.RSAPrivateKey):
            sig = private_key.sign(it.pol, padding.PKCS1v15(), _hash_for(it.bank))
        elif isinstance(private_key, ec.EllipticCurvePrivateKey):
            sig = private_key.sign(it.pol, ec.ECDSA(_hash_for(it.bank)))
        else:
            raise UsageError("a PCR policy key must be RSA or EC")
        out.append(Signed(it, fp, sig))
    return out


def join(items: list[ToSign], signatures: list[bytes], public_key: PublicKeyTypes) -> list[Signed]:
    """The HSM form's second step: signatures made elsewhere, in the order of ``items``; each is
    checked against the public key before it is written."""
    if len(signatures) != len(items):
        raise UsageError(f"{len(signatures)} signatures for {len(items)} policy digests")
    fp = fingerprint(public_key)
    out = []
    for n, (it, sig) in enumerate(zip(items, signatures, strict=True), 1):
        if not _verifies(public_key, it.bank, it.pol, sig):
            raise MalformedError(
                f"signature {n} ({it.bank.name}, {it.phase_path}) does not verify against the public key"
            )
        out.append(Signed(it, fp, sig))
    return out


def as_object(signed: list[Signed]) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for s in signed:
        obj = s.to_json()
        bucket = out.setdefault(s.item.bank.name, [])
        if obj not in bucket:  # combine_signatures(): an identical object is kept once
            bucket.append(obj)
    return out


def dump_pcrsig(obj: dict[str, list[dict[str, object]]]) -> str:
    """ukify's text (``json.dumps()`` with Python's default separators)."""
    return json.dumps(obj)


@dataclass(frozen=True)
class PcrSig:
    bank: str
    pcrs: tuple[int, ...]
    pkfp: bytes
    pol: bytes
    sig: bytes


def parse_pcrsig(data: bytes, what: str) -> list[PcrSig]:
    """A ``.pcrsig`` section or a ``tpm2-pcr-signature.json``; hostile input is a MalformedError
    naming the field."""
    from bootkeeper.measure.untrusted import load_json

    obj = load_json(data.rstrip(b"\0"), what, MAX_PCRSIG)
    if not isinstance(obj, dict):
        raise MalformedError(f"{what}: not a JSON object of banks")
    out = []
    for bank, items in obj.items():
        if bank not in BANKS:
            raise MalformedError(f"{what}: unknown bank {bank!r}")
        if not isinstance(items, list):
            raise MalformedError(f"{what}: {bank}: not a list")
        for i, it in enumerate(items):
            where = f"{what}: {bank}[{i}]"
            if not isinstance(it, dict):
                raise MalformedError(f"{where}: not an object")
            pcrs = it.get("pcrs")
            if not isinstance(pcrs, list) or not all(
                isinstance(p, int) and not isinstance(p, bool) and 0 <= p < 24 for p in pcrs
            ):
                raise MalformedError(f"{where}: pcrs: not a list of PCR numbers")
            try:
                pkfp = bytes.fromhex(_str(it, "pkfp", where))
                pol = bytes.fromhex(_str(it, "pol", where))
            except ValueError as exc:
                raise MalformedError(f"{where}: pkfp/pol: not hex") from exc
            try:
                sig = base64.b64decode(_str(it, "sig", where), validate=True)
            except binascii.Error as exc:
                raise MalformedError(f"{where}: sig: not base64") from exc
            out.append(PcrSig(bank, tuple(pcrs), pkfp, pol, sig))
    return out


def _str(it: dict[str, Any], key: str, where: str) -> str:
    v = it.get(key)
    if not isinstance(v, str):
        raise MalformedError(f"{where}: {key}: missing or not a string")
    return v


def _verifies(public_key: PublicKeyTypes, b: Bank, pol: bytes, sig: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(sig, pol, padding.PKCS1v15(), _hash_for(b))
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(sig, pol, ec.ECDSA(_hash_for(b)))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def authorized(sigs: list[PcrSig], public_key: PublicKeyTypes, b: Bank, pcr11: bytes) -> bool:
    """Whether one of ``sigs`` lets ``public_key``'s PolicyAuthorize pass for PCR 11 = ``pcr11``."""
    fp = fingerprint(public_key)
    pol = policy_pcr(b, pcr11)
    return any(
        s.bank == b.name and s.pcrs == (PCR,) and s.pkfp == fp and s.pol == pol and _verifies(public_key, b, pol, s.sig)
        for s in sigs
    )
