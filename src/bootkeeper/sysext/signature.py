"""The ``*-verity-sig`` partition and its PKCS#7 signature, as systemd-repart writes them.

The partition holds JSON ``{"rootHash": hex, "certificateFingerprint": sha256-hex of the DER
certificate, "signature": base64 DER PKCS#7}`` padded with NULs to 4096 bytes. The signature is a
detached PKCS#7 SignedData over the ASCII hex root hash (no newline), as the kernel checks it.

Verification trusts only the certificates it is given: a certificate embedded in the PKCS#7 blob is
never trusted for being there. cryptography cannot verify PKCS#7, so the SignedData is parsed with
asn1crypto and the signer's signature checked with cryptography's public keys (RSA PKCS#1 v1.5 and
ECDSA; with or without signed attributes).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bootkeeper.errors import MalformedError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

SIG_PARTITION_SIZE = 4096
_HASHES = {"sha256": "SHA256", "sha384": "SHA384", "sha512": "SHA512", "sha1": "SHA1"}


@dataclass(frozen=True)
class SigJson:
    root_hash: bytes
    fingerprint: bytes
    signature: bytes  # DER PKCS#7

    def dump(self) -> bytes:
        obj = {
            "rootHash": self.root_hash.hex(),
            "certificateFingerprint": self.fingerprint.hex(),
            "signature": base64.b64encode(self.signature).decode(),
        }
        raw = json.dumps(obj, separators=(",", ":")).encode()
        if len(raw) >= SIG_PARTITION_SIZE:
            raise ValueError(f"signature JSON is {len(raw)} bytes, over {SIG_PARTITION_SIZE - 1}")
        return raw.ljust(SIG_PARTITION_SIZE, b"\0")


def parse_sig_json(raw: bytes, what: str = "verity-sig partition") -> SigJson:
    body = raw.split(b"\0", 1)[0]
    if raw[len(body) :].strip(b"\0"):
        raise MalformedError(f"{what}: data after the JSON's NUL padding")
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedError(f"{what}: not valid JSON ({one_line(exc)})") from exc
    except RecursionError:  # '[[[[…' nested deeper than the interpreter's stack
        raise MalformedError(f"{what}: not valid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise MalformedError(f"{what}: JSON is not an object")
    out: dict[str, bytes] = {}
    for key, kind in (("rootHash", "hex"), ("certificateFingerprint", "hex"), ("signature", "base64")):
        v = obj.get(key)
        if not isinstance(v, str) or not v:
            raise MalformedError(f"{what}: '{key}' is missing or not a string")
        try:
            out[key] = bytes.fromhex(v) if kind == "hex" else base64.b64decode(v, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise MalformedError(f"{what}: '{key}' is not valid {kind}") from exc
    if len(out["certificateFingerprint"]) != 32:
        raise MalformedError(
            f"{what}: 'certificateFingerprint' is not a SHA-256 ({len(out['certificateFingerprint'])} bytes)"
        )
    return SigJson(out["rootHash"], out["certificateFingerprint"], out["signature"])


def fingerprint(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()


def sign(root_hash: bytes, key: PrivateKeyTypes, cert: x509.Certificate) -> SigJson:
    """Detached, binary, no signed attributes, SHA-256: byte for byte what systemd-repart makes."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

    content = root_hash.hex().encode()
    der = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(content)
        .add_signer(cert, key, hashes.SHA256())  # type: ignore[arg-type]
        .sign(
            Encoding.DER,
            [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoAttributes],
        )
    )
    return SigJson(root_hash, fingerprint(cert), der)


@dataclass(frozen=True)
class SignatureCheck:
    ok: bool
    reason: str
    signer: str | None = None  # subject of the trusted certificate that verified it


def _signer_matches(sid: Any, cert: x509.Certificate) -> bool:
    from cryptography.hazmat.primitives.serialization import Encoding

    return _sid_names(sid.dump(), cert.public_bytes(Encoding.DER))


@functools.lru_cache(maxsize=256)
def _sid_names(sid_der: bytes, cert_der: bytes) -> bool:
    """Whether the SignerIdentifier ``sid_der`` names the certificate ``cert_der``: a function of
    the two byte strings alone, remembered (at boot every image names the same few certificates,
    and comparing X.509 names costs more than the signature check)."""
    from asn1crypto import cms
    from asn1crypto import x509 as ax509

    sid = cms.SignerIdentifier.load(sid_der)
    acert = ax509.Certificate.load(cert_der)
    if sid.name == "issuer_and_serial_number":
        v = sid.chosen
        return bool(v["serial_number"].native == acert.serial_number and v["issuer"] == acert.issuer)
    if sid.name == "subject_key_identifier":
        return bool(acert.key_identifier is not None and sid.chosen.native == acert.key_identifier)
    return False


def _check_one(signer_info: Any, content: bytes, cert: x509.Certificate) -> str | None:
    """None if ``cert`` verifies this signer over ``content``; else why not."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    digest_name = signer_info["digest_algorithm"]["algorithm"].native
    if digest_name not in _HASHES:
        return f"digest algorithm {digest_name} is not supported"
    algo = getattr(hashes, _HASHES[digest_name])()
    signed = content
    attrs = signer_info["signed_attrs"]
    if attrs.native is not None and len(attrs):
        md = None
        for a in attrs:
            if a["type"].native == "message_digest":
                md = a["values"][0].native
        if md != hashlib.new(digest_name, content).digest():
            return "the message digest attribute does not match the root hash"
        signed = b"\x31" + attrs.dump()[1:]  # signed over the attributes as a SET, not [0] IMPLICIT
    sig = signer_info["signature"].native
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(sig, signed, padding.PKCS1v15(), algo)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig, signed, ec.ECDSA(algo))
        else:
            return f"certificate key type {type(key).__name__} is not supported"
    except InvalidSignature:
        return "the signature does not verify with this certificate"
    return None


def decode_errors() -> tuple[type[Exception], ...]:
    """What decoding a hostile blob (asn1crypto is lazy: any field access may parse) or using a
    hostile certificate can raise. asn1crypto raises ValueError and TypeError for bad encodings,
    and the others from its own code on odd shapes (an empty SET where one value is read, a
    64-bit field too large, a nesting too deep)."""
    from cryptography.exceptions import UnsupportedAlgorithm

    return (
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        IndexError,
        OverflowError,
        RecursionError,
        NotImplementedError,
        UnsupportedAlgorithm,
    )


def one_line(exc: BaseException) -> str:
    """An exception as one line: asn1crypto's messages carry ``\n    while parsing …`` tails."""
    text = " ".join(str(exc).split())
    if not isinstance(exc, ValueError) or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:299] + "…"


def verify(sig: SigJson, root_hash: bytes, trusted: list[x509.Certificate]) -> SignatureCheck:
    """Check the JSON against ``root_hash`` and the PKCS#7 signature against ``trusted`` only.
    Never raises on a hostile blob: whatever does not decode is a failed check with its reason."""
    if sig.root_hash != root_hash:
        return SignatureCheck(
            False,
            f"rootHash in the signature JSON ({sig.root_hash.hex()[:16]}…) differs from "
            f"the image's root hash ({root_hash.hex()[:16]}…)",
        )
    try:
        return _verify(sig, root_hash, trusted)
    except decode_errors() as exc:
        return SignatureCheck(False, f"PKCS#7 blob does not parse ({one_line(exc)})")


def _verify(sig: SigJson, root_hash: bytes, trusted: list[x509.Certificate]) -> SignatureCheck:
    from asn1crypto import cms
    from asn1crypto.core import Void

    info = cms.ContentInfo.load(sig.signature)
    if info["content_type"].native != "signed_data":
        return SignatureCheck(False, "PKCS#7 blob is not SignedData")
    sd = info["content"]
    signer_infos = list(sd["signer_infos"])
    # detached means no content at all; a present one is never decoded (its decoding can fail,
    # and nothing in it would be used)
    if not isinstance(sd["encap_content_info"]["content"], Void):
        return SignatureCheck(False, "PKCS#7 is not detached")
    if not signer_infos:
        return SignatureCheck(False, "PKCS#7 has no signer")
    by_fp = {fingerprint(c): c for c in trusted}
    named = by_fp.get(sig.fingerprint)
    content = root_hash.hex().encode()
    reasons = []
    candidates = [named] if named is not None else list(trusted)
    for si in signer_infos:
        try:
            sid = si["sid"]
            for cert in candidates:
                if cert is None or not _signer_matches(sid, cert):
                    continue
                why = _check_one(si, content, cert)
                if why is None:
                    if named is None:
                        return SignatureCheck(
                            False,
                            "signed by a trusted certificate, but certificateFingerprint names another certificate",
                        )
                    return SignatureCheck(True, "signature verified", cert.subject.rfc4514_string())
                reasons.append(why)
        except decode_errors() as exc:
            return SignatureCheck(False, f"PKCS#7 signer info does not parse ({one_line(exc)})")
    if reasons:
        return SignatureCheck(False, reasons[0])
    if named is None:
        return SignatureCheck(
            False,
            "no trusted certificate has the fingerprint the signature names, and no trusted certificate signed it",
        )
    return SignatureCheck(False, "the signer is not the trusted certificate the fingerprint names")


def embedded_subjects(der: bytes) -> list[str]:
    """Subjects of the certificates carried inside the PKCS#7 blob — for display only: they are
    what the signer *claims*, never a reason to trust the signature."""
    from asn1crypto import cms

    try:
        sd = cms.ContentInfo.load(der)["content"]
        certs = sd["certificates"]
        if certs.native is None:
            return []
        return [str(c.chosen.subject.human_friendly) for c in certs]
    except decode_errors():
        return []


def self_signed(kind: str = "rsa", cn: str = "bootkeeper test signing key", days: int = 3650) -> tuple[Any, Any]:
    """A fresh key (``rsa``: RSA-2048, ``ec``: P-256) and a self-signed CA certificate for it —
    for trying bootkeeper out and for tests, not for production signing."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    key: Any = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert
