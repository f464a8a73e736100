"""Trust anchors and validation under the configured rules: what ``sysext install``, ``list`` and
``upgrade``'s gate judge an image by, as activation does at boot."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

    from bootkeeper.config import Config
    from bootkeeper.measure.secureboot import Revoked
    from bootkeeper.sysext.image import Validation

Progress = Callable[[int, int], None]


def anchors(cfg: Config, root: Path, say: Callable[[str], None]) -> list[x509.Certificate]:
    """The configured trust anchors; a source that cannot be read is a warning (as at boot)."""
    from bootkeeper.sysext import trust

    store = trust.load(cfg.sysext, root, strict=False)
    for p in store.problems:
        say(f"bootkeeper: warning: trust source skipped: {p}")
    return store.certificates


def uki_anchors(
    cfg: Config, root: Path, efivars: Path | None, say: Callable[[str], None]
) -> tuple[list[x509.Certificate], Revoked]:
    """What a release's UKI is judged by before it reaches the ESP (docs/updates.md, "The UKI's
    signature"): the certificates ``sysext.certificates`` configures and the firmware's ``db`` (and
    shim's ``MokListRT`` when ``sysext.firmware`` names it), less what ``dbx`` and ``MokListXRT`` revoke;
    and what those two revoke, for :func:`bootkeeper.measure.secureboot.verify_uki`. No ``verity.d``
    folder counts (they are systemd-sysext's, not the firmware's), and no validity dates (the firmware
    checks none). A source that cannot be read is said and left out: fewer anchors, never more; an
    unreadable ``dbx`` leaves none at all (sysext/trust.py ``load`` fails closed)."""
    import dataclasses

    from bootkeeper.errors import InputError
    from bootkeeper.esp.efivars import EFIVARFS
    from bootkeeper.fsutil import under
    from bootkeeper.measure.secureboot import Revoked
    from bootkeeper.sysext import trust

    ev = efivars if efivars is not None else under(root, str(EFIVARFS))
    firmware = ("db", "MokListRT") if "MokListRT" in cfg.sysext.firmware else ("db",)
    sysext = dataclasses.replace(cfg.sysext, firmware=firmware, verity_dirs=(), require_valid_dates=False)
    store = trust.load(sysext, root, ev, strict=False)
    for p in store.problems:
        say(f"bootkeeper: warning: UKI trust source skipped: {p}")
    for a, why in store.revoked:
        say(f"bootkeeper: {a.subject} ({a.source}) is not trusted for UKIs: {why}")
    entries: list[trust.EslEntry] = []
    try:
        data = trust.read_efivar(ev, "dbx")
        pieces = [("dbx", data)] if data is not None else []
        pieces += trust.read_mok(ev, "MokListXRT") or []
        for what, raw in pieces:
            entries += trust.parse_esl(raw, what)
    except InputError:
        return [], Revoked()  # said above: load() found it unreadable too, and trusts nothing
    images, tbs, certs = set(), set(), []
    for i, e in enumerate(entries):
        if e.type == trust.EFI_CERT_SHA256:
            images.add(e.data[:32])
        elif e.type == trust.EFI_CERT_X509_SHA256:
            tbs.add(e.data[:32])
        elif e.type == trust.EFI_CERT_X509:
            found: list[str] = []
            certs += trust.load_certificates(e.data, f"dbx entry {i}", found)
            for p in found:
                say(f"bootkeeper: warning: {p}: it revokes nothing")
    return store.certificates, Revoked(frozenset(images), tuple(certs), frozenset(tbs))


def require_signed_uki(
    cfg: Config, root: Path, efivars: Path | None, path: Path, what: str, say: Callable[[str], None]
) -> str:
    """The subject of the certificate that admits the UKI at ``path`` under :func:`uki_anchors`; else
    :class:`RefusedError` "WHAT: Secure Boot signature: REASON" (``what`` names the file as the user
    knows it: the release's file name, not the staging path)."""
    from bootkeeper.measure.secureboot import verify_uki

    anchors, revoked = uki_anchors(cfg, root, efivars, say)
    verdict = verify_uki(path, anchors, revoked)
    verdict.require(what)
    return verdict.signer or ""  # an ok verdict names its signer


def certificates(paths: tuple[Path, ...]) -> list[x509.Certificate]:
    """The certificates of ``--cert`` files (PEM or DER); one that does not load is an error."""
    from bootkeeper.fsutil import read_input
    from bootkeeper.sysext.trust import load_certificates

    out = []
    for p in paths:
        out.extend(load_certificates(read_input(p, "the certificate"), str(p)))
    return out


def validate_for(
    cfg: Config,
    trusted: list[x509.Certificate],
    path: Path,
    full: bool,
    name: str | None = None,
    progress: Progress | None = None,
) -> Validation:
    """Validate ``path`` under the configured policy and the trust anchors (boot-time rules);
    ``name`` is the file name it has once installed (for its extension-release)."""
    from bootkeeper.sysext import image, policy

    pol = policy.parse(cfg.sysext.policy, "sysext.policy")
    return image.validate(path, pol, trusted, full=full, progress=progress, name=name)


def signing_pair(key_path: Path, cert_path: Path) -> tuple[PrivateKeyTypes, x509.Certificate]:
    """The key and the certificate ``sysext build`` signs with: refused unless the key is the certificate's
    (the signature would not verify against it)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

    from bootkeeper.errors import MalformedError, RefusedError
    from bootkeeper.fsutil import read_input

    key_bytes = read_input(key_path, "the key")
    try:
        key = load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError) as exc:
        raise MalformedError(f"{key_path}: not a readable unencrypted PEM private key ({exc})") from exc
    cert = certificates((cert_path,))[0]
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise RefusedError(
            f"{key_path}: not the key of {cert_path} ({cert.subject.rfc4514_string()}): the signature would "
            "not verify against that certificate"
        )
    return key, cert


def generate_pair(key_path: Path, cert_path: Path, cn: str, days: int) -> None:
    """An RSA-2048 key (written with umask 077, never over a file that is there) and its self-signed
    certificate, for trying out signing."""
    import os

    from cryptography.hazmat.primitives import serialization

    from bootkeeper.sysext.signature import self_signed

    key, cert = self_signed("rsa", cn, days)
    old = os.umask(0o077)
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
    finally:
        os.umask(old)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
