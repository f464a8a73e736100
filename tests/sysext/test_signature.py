"""verity-sig JSON and PKCS#7: the reference image signed by systemd-repart 257 verifies with its
certificate only; our signatures pass openssl cms -verify; hostile signatures are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from hypothesis import given, settings
from hypothesis import strategies as st

from bootkeeper.errors import MalformedError
from bootkeeper.sysext import gpt, signature
from helpers import openssl_cms_verify

REF = Path(__file__).resolve().parents[1] / "data"  # copied from shared/reference (see data/README.md)
ROOT_HASH = bytes.fromhex("d436759650939e5864323298c629d3c6b1cce030e2c72e49d6ec20fc225fff48")


def _ref_sig() -> bytes:
    img = REF / "kairos-test.sysext.raw"
    with img.open("rb") as f:
        t = gpt.read(f, img.stat().st_size)
        p = next(x for x in t.partitions if x.designator == "root-verity-sig")
        f.seek(p.offset)
        return f.read(p.size)


def test_reference_image_signature() -> None:
    sig = signature.parse_sig_json(_ref_sig())
    cert = x509.load_pem_x509_certificate((REF / "cert.pem").read_bytes())
    assert sig.root_hash == ROOT_HASH and sig.fingerprint == signature.fingerprint(cert)
    ok = signature.verify(sig, ROOT_HASH, [cert])
    assert ok.ok, ok.reason
    _, other = signature.self_signed()
    assert not signature.verify(sig, ROOT_HASH, [other]).ok
    assert not signature.verify(sig, ROOT_HASH, []).ok
    bad = signature.verify(sig, bytes(32), [cert])
    assert not bad.ok and "differs" in bad.reason


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_our_signature_passes_openssl(tmp_path: Path, kind: str) -> None:
    key, cert = signature.self_signed(kind)
    sig = signature.sign(ROOT_HASH, key, cert)
    assert signature.verify(sig, ROOT_HASH, [cert]).ok
    assert signature.parse_sig_json(sig.dump()) == sig
    rc, err = openssl_cms_verify(
        tmp_path, sig.signature, ROOT_HASH.hex(), cert.public_bytes(serialization.Encoding.PEM)
    )
    assert rc == 0, err


def test_signed_attributes_are_verified() -> None:
    key, cert = signature.self_signed()
    der = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(ROOT_HASH.hex().encode())
        .add_signer(cert, key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary])
    )
    sig = signature.SigJson(ROOT_HASH, signature.fingerprint(cert), der)
    assert signature.verify(sig, ROOT_HASH, [cert]).ok
    other_hash = bytes(reversed(ROOT_HASH))
    moved = signature.SigJson(other_hash, sig.fingerprint, der)  # a signature copied onto another root hash
    r = signature.verify(moved, other_hash, [cert])
    assert not r.ok and "message digest" in r.reason


def test_embedded_certificate_is_not_trusted() -> None:
    key, cert = signature.self_signed(cn="attacker")
    _, trusted = signature.self_signed(cn="vendor")
    sig = signature.sign(ROOT_HASH, key, cert)  # embeds the attacker's cert
    r = signature.verify(sig, ROOT_HASH, [trusted])
    assert not r.ok
    named = signature.SigJson(ROOT_HASH, signature.fingerprint(trusted), sig.signature)
    assert not signature.verify(named, ROOT_HASH, [trusted]).ok


def test_fingerprint_naming_another_certificate() -> None:
    key, cert = signature.self_signed(cn="a")
    _, other = signature.self_signed(cn="b")
    sig = signature.sign(ROOT_HASH, key, cert)
    lying = signature.SigJson(ROOT_HASH, signature.fingerprint(other), sig.signature)
    r = signature.verify(lying, ROOT_HASH, [cert, other])
    assert not r.ok


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=600))
def test_pkcs7_fuzz(blob: bytes) -> None:
    sig = signature.SigJson(ROOT_HASH, bytes(32), blob)
    r = signature.verify(sig, ROOT_HASH, [])
    assert not r.ok and r.reason


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode)))
def test_json_fuzz(raw: bytes) -> None:
    try:
        signature.parse_sig_json(raw)
    except MalformedError as exc:
        assert str(exc)
