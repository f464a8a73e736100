"""Malformed PKCS#7 blobs, crafted field by field: every one is a failed SignatureCheck with a
one-line reason, never an exception (issue 12, item 1). ``malformed()`` is also used by
tests/sysext/test_attack_activate.py to put these blobs into real images."""

from __future__ import annotations

import hashlib

import pytest
from asn1crypto import cms, core
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from bootkeeper.errors import MalformedError
from bootkeeper.sysext import signature

SIGNED_DATA = "1.2.840.113549.1.7.2"
DATA = "1.2.840.113549.1.7.1"
DIGESTED_DATA = "1.2.840.113549.1.7.5"


def tlv(tag: int, body: bytes) -> bytes:
    """One DER element (definite length)."""
    n = len(body)
    if n < 0x80:
        length = bytes([n])
    else:
        b = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(b)]) + b
    return bytes([tag]) + length + body


def _oid(dotted: str) -> bytes:
    return bytes(core.ObjectIdentifier(dotted).dump())


def _rebuild(
    der: bytes, *, encap: bytes | None = None, certs: bytes | None = None, signer_infos: bytes | None = None
) -> bytes:
    """``der`` (a ContentInfo/SignedData) re-encoded with some of its parts replaced by raw bytes."""
    sd = cms.ContentInfo.load(der)["content"]
    parts = [sd["version"].dump(), sd["digest_algorithms"].dump()]
    parts.append(encap if encap is not None else sd["encap_content_info"].dump())
    if certs is not None:
        parts.append(certs)
    elif sd["certificates"].native is not None:
        parts.append(tlv(0xA0, sd["certificates"].contents))
    parts.append(signer_infos if signer_infos is not None else sd["signer_infos"].dump())
    return tlv(0x30, _oid(SIGNED_DATA) + tlv(0xA0, tlv(0x30, b"".join(parts))))


def _with_attributes(root_hash: bytes, key: object, cert: x509.Certificate) -> bytes:
    return bytes(
        pkcs7.PKCS7SignatureBuilder()
        .set_data(root_hash.hex().encode())
        .add_signer(cert, key, hashes.SHA256())  # type: ignore[arg-type]
        .sign(Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary])
    )


def malformed(root_hash: bytes, key: object, cert: x509.Certificate) -> dict[str, bytes]:
    """Named hostile variants of a real signature by ``key``/``cert`` over ``root_hash``; the first
    ones each made ``verify`` raise before issue 12 (ValueError, IndexError)."""
    plain = signature.sign(root_hash, key, cert).signature  # type: ignore[arg-type]
    attr = _with_attributes(root_hash, key, cert)
    assert _rebuild(plain) == plain  # the re-encoder changes nothing by itself
    si = cms.ContentInfo.load(attr)["content"]["signer_infos"][0]

    def signer(attrs: bytes) -> bytes:
        body = (
            si["version"].dump()
            + si["sid"].dump()
            + si["digest_algorithm"].dump()
            + tlv(0xA0, attrs)
            + si["signature_algorithm"].dump()
            + si["signature"].dump()
        )
        return _rebuild(attr, signer_infos=tlv(0x31, tlv(0x30, body)))

    def digest_attr(values: bytes) -> bytes:
        return b"".join(
            tlv(0x30, a["type"].dump() + tlv(0x31, values)) if a["type"].native == "message_digest" else a.dump()
            for a in si["signed_attrs"]
        )

    assert signer(b"".join(a.dump() for a in si["signed_attrs"])) == attr
    return {
        # econtent.native decoded a present (non-detached) content outside any handling
        "encapsulated SignedData without fields": _rebuild(
            plain, encap=tlv(0x30, _oid(SIGNED_DATA) + tlv(0xA0, tlv(0x30, b"")))
        ),
        "encapsulated DigestedData with junk": _rebuild(
            plain, encap=tlv(0x30, _oid(DIGESTED_DATA) + tlv(0xA0, tlv(0x30, tlv(0x02, b"\x01") + tlv(0x04, b"x"))))
        ),
        # a[\"values\"][0] on an empty SET
        "message digest attribute without a value": signer(digest_attr(b"")),
        "message digest attribute not an OCTET STRING": signer(digest_attr(tlv(0x02, b"\x05"))),
        "attribute without values": signer(b"\x30\x03\x06\x01\xff"),
        "unknown signer identifier choice": _rebuild(
            attr,
            signer_infos=tlv(
                0x31,
                tlv(
                    0x30,
                    si["version"].dump()
                    + tlv(0xA5, b"")
                    + si["digest_algorithm"].dump()
                    + si["signature_algorithm"].dump()
                    + si["signature"].dump(),
                ),
            ),
        ),
        "signer info without fields": _rebuild(plain, signer_infos=tlv(0x31, b"\x30\x02\x05\x00")),
        "signer infos not a SET": _rebuild(plain, signer_infos=tlv(0x02, b"\x01")),
        "encapsulated content of type data": _rebuild(
            plain, encap=tlv(0x30, _oid(DATA) + tlv(0xA0, tlv(0x04, b"hello")))
        ),
        "encapsulated NULL": _rebuild(plain, encap=tlv(0x30, _oid("1.2.3.4") + tlv(0xA0, b"\x05\x00"))),
        "four stray bytes": b"\x00\x01\x02\x03",
        "truncated": plain[: len(plain) // 2],
    }


KEY, CERT = signature.self_signed("ec", "vendor")
ROOT_HASH = hashlib.sha256(b"root").digest()
VARIANTS = malformed(ROOT_HASH, KEY, CERT)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_malformed_pkcs7_is_a_failed_check_with_one_line(name: str) -> None:
    sig = signature.SigJson(ROOT_HASH, signature.fingerprint(CERT), VARIANTS[name])
    r = signature.verify(sig, ROOT_HASH, [CERT])
    assert not r.ok and r.reason
    assert "\n" not in r.reason and len(r.reason) <= 300, r.reason
    assert isinstance(signature.embedded_subjects(VARIANTS[name]), list)


def test_the_variants_differ_from_a_good_signature_only_where_named() -> None:
    good = signature.sign(ROOT_HASH, KEY, CERT)
    assert signature.verify(good, ROOT_HASH, [CERT]).ok
    attr = signature.SigJson(ROOT_HASH, good.fingerprint, _with_attributes(ROOT_HASH, KEY, CERT))
    assert signature.verify(attr, ROOT_HASH, [CERT]).ok


def test_reasons_name_what_did_not_parse() -> None:
    fp = signature.fingerprint(CERT)
    r = signature.verify(
        signature.SigJson(ROOT_HASH, fp, VARIANTS["message digest attribute without a value"]), ROOT_HASH, [CERT]
    )
    assert r.reason == "PKCS#7 signer info does not parse (IndexError: list index out of range)"
    r = signature.verify(
        signature.SigJson(ROOT_HASH, fp, VARIANTS["encapsulated SignedData without fields"]), ROOT_HASH, [CERT]
    )
    assert r.reason == "PKCS#7 is not detached"


@pytest.mark.parametrize("raw", [b"[" * 65536, b'{"a":' * 30000])
def test_deeply_nested_signature_json_is_a_parse_error(raw: bytes) -> None:
    with pytest.raises(MalformedError, match=r"^verity-sig partition: not valid JSON \(nested too deeply\)$"):
        signature.parse_sig_json(raw)
