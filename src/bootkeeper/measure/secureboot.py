"""Would Secure Boot load this UKI? Its Authenticode signatures judged as UEFI firmware judges them,
before a downloaded release reaches the ESP.

EDK2's image verification (SecurityPkg/Library/DxeImageVerificationLib ``DxeImageVerificationHandler``)
is the model: an image whose Authenticode hash is in ``dbx`` is refused; each PKCS#7 SignedData of its
certificate table (:func:`bootkeeper.measure.authenticode.signatures`) carries an SpcIndirectDataContent
(OID 1.3.6.1.4.1.311.2.1.4) whose digest must equal the image's Authenticode hash in the digest's own
algorithm (sha1, sha256, sha384, sha512; the PE hash as sbsign and the firmware compute it, not
systemd-pcrlock's padded variant); the signer's signature over its authenticated attributes must verify
(their messageDigest being the hash of the SpcIndirectDataContent's value octets, Authenticode's quirk);
a signature whose signer chains to a revoked certificate (a ``dbx`` X.509 entry, or the SHA-256 of a
chain certificate's TBS part as an ``EFI_CERT_X509_SHA256`` entry) refuses the image whatever the other
signatures say; one signature whose signer chains to a trust anchor (the anchor itself, or issued by it
through the SignedData's own certificates; the signer's certificate must be one the signature carries,
as OpenSSL's PKCS7_verify looks for it) admits it. Kairos checks this before an upgrade rotates the sets:
kairos-io/kairos-agent 027116d785eb8ced1a0d5261f5e79be2a54369da pkg/uki/upgrade.go calls
``checkArtifactsignatureIsValid`` (pkg/uki/common.go: ``db`` only), which later moved to kairos-io/kairos-sdk
0723b763a2a1c7202f5054dacbf2c24e8160f935 signatures/signatures.go ``CheckArtifactSignatureIsValid``
(``dbx`` hashes and certificates first, then ``db``), both with go-uefi; here with asn1crypto for the
structure and cryptography for the keys, as sysext/signature.py verifies extension signatures.

Like the firmware (and sbverify 0.9.4, whose ``x509_verify_cb`` accepts expired certificates: "UEFI
explicitly allows expired certificates") no validity dates and no key usages are checked: a node's
clock is not a trust input at boot. Stricter than the firmware, and as sbverify: a signature whose digest
does not match the image, or that does not parse, refuses the image (the firmware skips it and tries the
next one); the firmware ``db``'s image hashes (``EFI_CERT_SHA256`` entries of ``db``) admit nothing here.

Input is hostile: every length is bounded (the table by authenticode.py, the certificates and the chain
here), and whatever does not decode is a refusal with one line, never an exception."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from bootkeeper.errors import MalformedError, RefusedError, UnreadableError
from bootkeeper.measure import authenticode
from bootkeeper.measure.banks import BANKS

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["Revoked", "SbVerdict", "verify_uki"]

SPC_INDIRECT_DATA = "1.3.6.1.4.1.311.2.1.4"
MAX_CERTS = 32  # certificates one SignedData may carry
MAX_CHAIN = 8  # certificates between a signer and its anchor, the signer included
_HASHES = ("sha1", "sha256", "sha384", "sha512")


@dataclass(frozen=True)
class Revoked:
    """What ``dbx`` forbids: Authenticode SHA-256 hashes of images (``EFI_CERT_SHA256``), certificates
    (``EFI_CERT_X509``) and SHA-256 hashes of certificates' TBS parts (``EFI_CERT_X509_SHA256``)."""

    image_hashes: frozenset[bytes] = frozenset()
    certificates: tuple[x509.Certificate, ...] = ()
    tbs_hashes: frozenset[bytes] = frozenset()


@dataclass(frozen=True)
class SbVerdict:
    """``ok``: Secure Boot with these anchors would load the image. ``signer``: the subject of the
    certificate whose signature admitted it. ``reason``: one line, why or why not."""

    ok: bool
    reason: str
    signer: str | None = None

    def require(self, what: str) -> None:
        """Raise :class:`RefusedError` naming ``what`` unless the verdict is ok."""
        if not self.ok:
            raise RefusedError(f"{what}: Secure Boot signature: {self.reason}")


@dataclass
class _Sig:
    """One signature, decoded: what it claims of the image and who signed it."""

    algorithm: str
    digest: bytes
    content: bytes  # the SpcIndirectDataContent's value octets: what messageDigest is a hash of
    signer_infos: list[Any]
    certs: list[Any] = field(default_factory=list)  # asn1crypto certificates carried in the SignedData


def verify_uki(path: Path, anchors: Sequence[x509.Certificate], revoked: Revoked | None = None) -> SbVerdict:
    """The verdict on the PE image at ``path`` against ``anchors`` (``db`` minus ``dbx``, and the
    configured certificates: node/trust.py ``uki_anchors``) and ``revoked``. An image that is not a PE,
    or whose table or signatures do not decode, is a refusal; a file that cannot be read raises
    :class:`UnreadableError`."""
    try:
        f = path.open("rb")
    except OSError as exc:
        raise UnreadableError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with f:
        img = authenticode.Image(f, str(path), os.fstat(f.fileno()).st_size)
        try:
            return _verify(img, anchors, revoked or Revoked())
        except MalformedError as exc:
            return SbVerdict(False, str(exc))


def _verify(img: authenticode.Image, anchors: Sequence[x509.Certificate], revoked: Revoked) -> SbVerdict:
    hashes: dict[str, bytes] = {"sha256": authenticode.digests(img, [BANKS["sha256"]])["sha256"]}
    if hashes["sha256"] in revoked.image_hashes:
        return SbVerdict(False, f"its Authenticode SHA-256 {hashes['sha256'].hex()} is in dbx")
    blobs = authenticode.signatures(img)
    if not blobs:
        return SbVerdict(False, "not signed (no certificate table, or no PKCS#7 signature in it)")
    admitted: tuple[str, str] | None = None
    why_not: list[str] = []
    for n, blob in enumerate(blobs, 1):
        try:
            sig = _decode(blob)
        except _errors() as exc:
            return SbVerdict(False, f"signature {n} does not parse ({_one_line(exc)})")
        if sig.algorithm not in hashes:
            hashes[sig.algorithm] = authenticode.digests(img, [BANKS[sig.algorithm]])[sig.algorithm]
        if sig.digest != hashes[sig.algorithm]:
            return SbVerdict(
                False,
                f"signature {n}: its {sig.algorithm} digest {sig.digest.hex()[:16]}… is not the image's Authenticode "
                f"hash {hashes[sig.algorithm].hex()[:16]}… (changed after signing?)",
            )
        try:
            verdict = _judge(sig, anchors, revoked)
        except _errors() as exc:
            return SbVerdict(False, f"signature {n} does not parse ({_one_line(exc)})")
        if verdict[0] == "revoked":
            return SbVerdict(False, f"signature {n}: {verdict[1]}")
        if verdict[0] == "trusted" and admitted is None:
            admitted = (verdict[1], verdict[2])
        elif verdict[0] == "untrusted":
            why_not.append(f"signature {n}: {verdict[1]}")
    if admitted is not None:
        return SbVerdict(True, f"signed by {admitted[0]}, trusted through {admitted[1]}", admitted[0])
    return SbVerdict(False, "; ".join(why_not[:4]))


def _errors() -> tuple[type[Exception], ...]:
    """What decoding a hostile blob can raise: asn1crypto parses lazily, so any field access may fail
    (ValueError, TypeError for bad encodings; the others from odd shapes and nesting)."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm

    return (
        x509.InvalidVersion,
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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"


def _decode(blob: bytes) -> _Sig:
    from asn1crypto import algos, cms, core

    class DigestInfo(core.Sequence):  # type: ignore[misc]  # Authenticode's DigestInfo (the PKCS#1 one, RFC 8017 A.2.4)
        _fields: ClassVar = [("digest_algorithm", algos.DigestAlgorithm), ("digest", core.OctetString)]

    class SpcIndirectDataContent(core.Sequence):  # type: ignore[misc]
        _fields: ClassVar = [("data", core.Any), ("message_digest", DigestInfo)]

    info = cms.ContentInfo.load(blob, strict=True)
    if info["content_type"].native != "signed_data":
        raise ValueError(f"content type {info['content_type'].dotted}, not SignedData")
    sd = info["content"]
    encap = sd["encap_content_info"]
    if encap["content_type"].dotted != SPC_INDIRECT_DATA:
        raise ValueError(f"content type {encap['content_type'].dotted}, not SpcIndirectDataContent")
    content = encap["content"]
    if isinstance(content, core.Void):
        raise ValueError("no SpcIndirectDataContent")
    idc = content.parse(SpcIndirectDataContent) if isinstance(content, core.Any) else content
    algorithm = idc["message_digest"]["digest_algorithm"]["algorithm"].native
    if algorithm not in _HASHES:
        raise ValueError(f"digest algorithm {algorithm} is not one of {', '.join(_HASHES)}")
    certs = (
        [] if sd["certificates"].native is None else [c.chosen for c in sd["certificates"] if c.name == "certificate"]
    )
    if len(certs) > MAX_CERTS:
        raise ValueError(f"{len(certs)} certificates, more than {MAX_CERTS}")
    signer_infos = list(sd["signer_infos"])
    if len(signer_infos) != 1:  # Authenticode: exactly one SignerInfo
        raise ValueError(f"{len(signer_infos)} signer infos, Authenticode has one")
    return _Sig(algorithm, idc["message_digest"]["digest"].native, idc.contents, signer_infos, certs)


def _judge(sig: _Sig, anchors: Sequence[x509.Certificate], revoked: Revoked) -> tuple[str, str, str]:
    """("trusted", signer, anchor), ("revoked", why, ""), or ("untrusted", why, "")."""
    from cryptography import x509

    si = sig.signer_infos[0]
    found = [c for c in sig.certs if _names(si["sid"], c)]
    if not found:
        return "untrusted", "its signer's certificate is not in the signature", ""
    signer = x509.load_der_x509_certificate(found[0].dump())
    name = signer.subject.rfc4514_string() or "(empty subject)"
    why = _check_signer(si, sig.content, signer)
    if why is not None:
        return "untrusted", f"{name}: {why}", ""
    pool = [x509.load_der_x509_certificate(c.dump()) for c in sig.certs]
    bad = _chain(signer, pool, revoked.certificates, need_ca=False)
    if bad is not None:
        return "revoked", f"{name} chains to {bad[-1].subject.rfc4514_string()}, which dbx revokes", ""
    for c in _upward(signer, pool, anchors):
        if hashlib.sha256(c.tbs_certificate_bytes).digest() in revoked.tbs_hashes:
            return "revoked", f"dbx revokes {c.subject.rfc4514_string()} (SHA-256 of its TBS part)", ""
    path = _chain(signer, pool, anchors, need_ca=True)
    if path is None:
        return "untrusted", f"{name} does not chain to a trusted certificate ({len(anchors)} anchors)", ""
    return "trusted", name, path[-1].subject.rfc4514_string()


def _names(sid: Any, acert: Any) -> bool:
    """Whether the SignerIdentifier names the (asn1crypto) certificate."""
    if sid.name == "issuer_and_serial_number":
        v = sid.chosen
        return bool(v["serial_number"].native == acert.serial_number and v["issuer"] == acert.issuer)
    if sid.name == "subject_key_identifier":
        return bool(acert.key_identifier is not None and sid.chosen.native == acert.key_identifier)
    return False


def _check_signer(si: Any, content: bytes, cert: x509.Certificate) -> str | None:
    """None if ``cert``'s key made the SignerInfo's signature over ``content`` (through the authenticated
    attributes when there are some); else why not."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    digest_name = si["digest_algorithm"]["algorithm"].native
    if digest_name not in _HASHES:
        return f"digest algorithm {digest_name} is not supported"
    algo = getattr(hashes, digest_name.upper())()
    signed = content
    attrs = si["signed_attrs"]
    if attrs.native is not None and len(attrs):
        digests = [a["values"][0].native for a in attrs if a["type"].native == "message_digest"]
        if len(digests) != 1 or digests[0] != hashlib.new(digest_name, content).digest():
            return "the messageDigest attribute is not the hash of the SpcIndirectDataContent"
        signed = b"\x31" + attrs.dump()[1:]  # signed as a SET OF, not as the [0] IMPLICIT it is sent as
    value = si["signature"].native
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            if si["signature_algorithm"].signature_algo == "rsassa_pss":
                pss = padding.PSS(padding.MGF1(algo), padding.PSS.AUTO)
                key.verify(value, signed, pss, algo)
            else:
                key.verify(value, signed, padding.PKCS1v15(), algo)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(value, signed, ec.ECDSA(algo))
        else:
            return f"a {type(key).__name__.removeprefix('_')} key, not RSA or EC"
    except InvalidSignature:
        return "the signature does not verify with its certificate's key"
    return None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _may_issue(cert: x509.Certificate) -> bool:
    """A CA certificate (basicConstraints cA), or a version 1 certificate, which has no extensions (as
    OpenSSL's X509_check_ca, which the firmware's and sbverify's chain building use)."""
    from cryptography import x509

    if cert.version == x509.Version.v1:
        return True
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bool(bc.ca)


def _der(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


def _chain(
    leaf: x509.Certificate, pool: list[x509.Certificate], roots: Sequence[x509.Certificate], need_ca: bool
) -> list[x509.Certificate] | None:
    """The path from ``leaf`` to one of ``roots``: ``leaf`` a root itself, or issued by one through
    certificates of ``pool`` (the SignedData's, never trusted for being there); None when there is none.
    ``need_ca``: every issuer must be allowed to issue (for trust; revocation takes any issuer)."""
    root_ders = {_der(r) for r in roots}
    path = [leaf]
    cur = leaf
    while len(path) <= MAX_CHAIN:
        if _der(cur) in root_ders:
            return path
        for r in roots:
            if (not need_ca or _may_issue(r)) and _issued_by(cur, r):
                return [*path, r]
        used = {_der(c) for c in path}
        nxt = next(
            (c for c in pool if _der(c) not in used and (not need_ca or _may_issue(c)) and _issued_by(cur, c)), None
        )
        if nxt is None:
            return None
        path.append(nxt)
        cur = nxt
    return None


def _upward(
    leaf: x509.Certificate, pool: list[x509.Certificate], anchors: Sequence[x509.Certificate]
) -> list[x509.Certificate]:
    """Every certificate above ``leaf`` it can be chained to (the pool's and the anchors'), ``leaf``
    first: what the TBS hashes of dbx are checked against."""
    out = [leaf]
    cur = leaf
    while len(out) <= MAX_CHAIN:
        used = {_der(c) for c in out}
        nxt = next((c for c in [*pool, *anchors] if _der(c) not in used and _issued_by(cur, c)), None)
        if nxt is None:
            break
        out.append(nxt)
        cur = nxt
    return out
