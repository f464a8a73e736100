"""The two loaders every parser of the ``tpm`` verbs reads hostile bytes through: JSON (``.pcrsig``,
LUKS2 metadata and its tokens, ``tpm-verify.json``-style results, ``--expect``, ``--signatures``) and
public keys (a token's ``tpm2_pubkey``, a UKI's ``.pcrpkey``, ``--public-key``).

Whatever the bytes, each gives back the value or raises :class:`MalformedError` with one line that
names the input and what was expected: never ``RecursionError`` (JSON nested past the interpreter's
stack), ``UnsupportedAlgorithm`` (a key type OpenSSL does not know) or a key the signed PCR policy
cannot use (Ed25519, DSA, ...), which used to reach the CLI as an internal error or as a usage error
naming neither the token nor the field."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn

from bootkeeper.errors import MalformedError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    # a key a signed PCR policy can use (:func:`policy_key`)
    PolicyKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

__all__ = ["MAX_DEPTH", "load_json", "load_public_key", "policy_key"]

# Deeper than any document these verbs read (a .pcrsig is 3 levels, LUKS2 metadata 4): also keeps
# later walks and repr() of the value far from the interpreter's recursion limit.
MAX_DEPTH = 64


def _depth(obj: object) -> int:
    """The nesting depth of a parsed JSON value, without recursion."""
    deepest = 0
    todo: list[tuple[object, int]] = [(obj, 1)]
    while todo:
        v, d = todo.pop()
        values: Iterable[object]
        if isinstance(v, dict):
            values = v.values()
        elif isinstance(v, list):
            values = v
        else:
            continue
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            break
        todo.extend((c, d + 1) for c in values)
    return deepest


def _no_constant(name: str) -> NoReturn:
    """NaN, Infinity and -Infinity are Python's, not JSON's (RFC 8259 section 6): a number no
    producer of these files writes, and one ``int()`` cannot take (OverflowError)."""
    raise ValueError(f"{name} is not a JSON number")


def load_json(data: bytes | str, what: str, limit: int, kind: str = "JSON") -> Any:
    """``data`` parsed as JSON, at most ``limit`` bytes (characters for ``str``) and :data:`MAX_DEPTH`
    levels deep. ``kind`` names what was expected in the message ("not <kind>"). Untyped, not ``object``:
    two callers (metrics' reader of ``tpm verify --json``, luks' pcrlock policy) index it under a
    ``try`` that turns a wrong shape into their own error; the others narrow it with isinstance."""
    if len(data) > limit:
        raise MalformedError(f"{what}: {len(data)} bytes, more than the {limit} {kind} may have")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedError(f"{what}: not {kind}: not UTF-8 at byte {exc.start}") from None
    else:
        text = data
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise MalformedError(f"{what}: not {kind}: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, and an integer of more digits than int() takes
        msg = " ".join(str(exc).split())
        raise MalformedError(f"{what}: not {kind}: {msg}") from None
    if _depth(obj) > MAX_DEPTH:
        raise MalformedError(f"{what}: not {kind}: nested deeper than {MAX_DEPTH} levels")
    return obj


def policy_key(key: object, what: str) -> PolicyKey:
    """``key`` if the signed PCR policy can use it: RSA or EC, the two kinds systemd-measure signs
    with and :func:`bootkeeper.measure.policy.fingerprint` (``i2d_PublicKey()``) knows."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        return key
    kind = type(key).__name__.removeprefix("_").replace("PublicKey", "") or "unknown"
    raise MalformedError(f"{what}: a {kind} key; a signed PCR policy takes an RSA or EC key")


def load_public_key(data: bytes, what: str, certificate: bool = False) -> PolicyKey:
    """A PEM or DER public key (with ``certificate``, the key of a PEM certificate too), RSA or EC."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

    expected = "a PEM public key or certificate" if certificate else "a PEM or DER public key"
    key: object
    try:
        if certificate and b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        elif data.lstrip().startswith(b"-----BEGIN"):
            key = load_pem_public_key(data)
        else:
            key = load_der_public_key(data)
    except UnsupportedAlgorithm:
        raise MalformedError(f"{what}: a public key of a type OpenSSL does not know; expected RSA or EC") from None
    except (ValueError, TypeError):
        raise MalformedError(f"{what}: not {expected}") from None
    return policy_key(key, what)
