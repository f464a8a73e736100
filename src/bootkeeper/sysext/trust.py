"""Trust anchors for extension signatures.

Three sources, in this order: the config (``sysext.certificates``: PEM text or file paths), the
``verity.d`` folders (``/run``, ``/etc``, ``/usr/lib``; ``*.crt`` and ``*.pem``, PEM or DER), and the
firmware's Secure Boot ``db`` (``KEK`` and ``PK`` when configured) read from efivarfs — minus anything
``dbx`` revokes: an X.509 entry (the same certificate), an ``EFI_CERT_SHA256`` entry equal to the
certificate's DER SHA-256, or an ``EFI_CERT_X509_SHA256`` entry equal to the SHA-256 of its TBS part.

``MokListRT`` (shim's Machine Owner Keys, ``sysext.firmware: [..., MokListRT]``) is one more firmware
source, and ``MokListXRT`` one more revocation list beside ``dbx``; both are read as the kernel reads
them for its keyrings (security/integrity/platform_certs/load_uefi.c: load_moklist_certs()): the
kernel's copy of shim's MOKvar configuration table first (``/sys/firmware/efi/mok-variables/NAME``,
the whole list, no attribute word), else the efivarfs variable, to which we add shim's numbered
continuations (``NAME1``, ``NAME2``, ...: shim mok.c mirror_mok_db() splits a list too large for
one variable). shim creates the RT mirrors volatile (mirror_one_mok_variable(): BOOTSERVICE|RUNTIME);
one with the NON_VOLATILE attribute is not shim's and is refused as unreadable.

An efivarfs file is a 4-byte attribute word followed by the variable's data; ``db``/``dbx`` data are
EFI_SIGNATURE_LISTs back to back (UEFI 2.10, 32.4.1):
``SignatureType (GUID) | ListSize u32 | HeaderSize u32 | SignatureSize u32 | header | entries``
where each entry is ``SignatureOwner (GUID) | SignatureData``.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bootkeeper.errors import InputError, MalformedError
from bootkeeper.esp.efivars import EFIVARFS as EFIVARS
from bootkeeper.fsutil import under

if TYPE_CHECKING:
    from cryptography import x509

    from bootkeeper.config import Sysext

EFI_CERT_X509 = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_SHA256 = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")
EFI_CERT_X509_SHA256 = uuid.UUID("3bd2a492-96c0-4079-b420-fcf98ef103ed")
IMAGE_SECURITY_DATABASE = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"  # db, dbx
GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"  # PK, KEK
SHIM_LOCK = "605dab50-e046-4300-abb6-3dd810dd8b23"  # shim's MokListRT, MokListXRT
VARIABLE_GUID = {
    "db": IMAGE_SECURITY_DATABASE,
    "dbx": IMAGE_SECURITY_DATABASE,
    "KEK": GLOBAL_VARIABLE,
    "PK": GLOBAL_VARIABLE,
    "MokListRT": SHIM_LOCK,
    "MokListXRT": SHIM_LOCK,
}
MOK_LISTS = ("MokListRT", "MokListXRT")
MOKVAR_DIR = "mok-variables"  # beside efivars: /sys/firmware/efi/mok-variables (kernel mokvar-table.c)
MOK_PARTS_MAX = 64  # shim's numbered continuations read at most (NAME1..NAME64): a bound, not a limit met
NON_VOLATILE = 0x1
_ESL_HEADER = struct.Struct("<16sIII")
EXPORT_PREFIX = "bootkeeper-"
EXPORT_DIR = "run/verity.d"  # under the root: where keys export and activate write the anchors
T = TypeVar("T")


@dataclass(frozen=True)
class EslEntry:
    type: uuid.UUID
    owner: uuid.UUID
    data: bytes


def parse_esl(data: bytes, what: str) -> list[EslEntry]:
    """All entries of the EFI_SIGNATURE_LISTs in ``data``; a truncated or inconsistent list is an
    error naming ``what`` and the byte offset."""
    out: list[EslEntry] = []
    off = 0
    while off < len(data):
        if len(data) - off < _ESL_HEADER.size:
            raise MalformedError(f"{what}: signature list at byte {off} is truncated ({len(data) - off} bytes left)")
        guid, list_size, hdr_size, sig_size = _ESL_HEADER.unpack_from(data, off)
        where = f"{what}: signature list at byte {off}"
        if list_size < _ESL_HEADER.size + hdr_size or off + list_size > len(data):
            raise MalformedError(
                f"{where}: size {list_size} does not fit the {len(data) - off} bytes left (truncated?)"
            )
        if sig_size <= 16:
            raise MalformedError(f"{where}: signature size {sig_size} is too small")
        body = list_size - _ESL_HEADER.size - hdr_size
        if body % sig_size:
            raise MalformedError(f"{where}: {body} bytes of entries is not a multiple of the entry size {sig_size}")
        typ = uuid.UUID(bytes_le=guid)
        pos = off + _ESL_HEADER.size + hdr_size
        for _ in range(body // sig_size):
            owner = uuid.UUID(bytes_le=data[pos : pos + 16])
            out.append(EslEntry(typ, owner, data[pos + 16 : pos + sig_size]))
            pos += sig_size
        off += list_size
    return out


def read_efivar(efivars: Path, name: str) -> bytes | None:
    """The data of an efivarfs variable (without its 4 attribute bytes), or None when it is absent."""
    found = _efivar_with_attrs(efivars, name, VARIABLE_GUID[name])
    return None if found is None else found[1]


def _efivar_with_attrs(efivars: Path, name: str, guid: str) -> tuple[int, bytes] | None:
    from bootkeeper.esp.efivars import read_raw

    p = efivars / f"{name}-{guid}"
    raw = read_raw(p)
    if raw is None:
        return None
    if len(raw) < 4:
        raise MalformedError(f"{p}: {len(raw)} bytes, shorter than the 4-byte attribute header")
    return int.from_bytes(raw[:4], "little"), raw[4:]


def read_mok(efivars: Path, name: str) -> list[tuple[str, bytes]] | None:
    """The pieces (where, data) of shim's ``MokListRT`` or ``MokListXRT``, or None when shim left
    none: the kernel's MOKvar table copy when it has one (all of it), else the efivarfs variable and
    its numbered continuations up to the first one absent. An unreadable, truncated or
    non-volatile one is an error naming the file (each piece must parse: the caller's parse_esl)."""
    from bootkeeper.esp.efivars import read_raw

    table = efivars.parent / MOKVAR_DIR / name
    raw = read_raw(table)
    if raw is not None:  # the kernel's sysfs copy: the data alone, no attribute word
        return [(f"firmware {name} ({table})", raw)]
    pieces: list[tuple[str, bytes]] = []
    for i in range(MOK_PARTS_MAX + 1):
        var = name if i == 0 else f"{name}{i}"
        got = _efivar_with_attrs(efivars, var, SHIM_LOCK)
        if got is None:
            break
        attrs, data = got
        where = f"firmware {name} ({efivars}/{var}-{SHIM_LOCK})"
        if attrs & NON_VOLATILE:
            # shim mirrors MokList to a volatile BOOTSERVICE|RUNTIME variable; the OS cannot create a
            # volatile variable after ExitBootServices, so a non-volatile one was not written by shim
            raise MalformedError(f"{where}: attributes {attrs:#x} include NON_VOLATILE: not shim's mirror, not read")
        pieces.append((where, data))
    return pieces or None


@dataclass(frozen=True)
class Anchor:
    cert: x509.Certificate
    source: str  # "config …", "/run/verity.d/x.crt", "firmware db #2"

    @property
    def fingerprint(self) -> str:
        from bootkeeper.sysext.signature import fingerprint

        return fingerprint(self.cert).hex()

    @property
    def subject(self) -> str:
        return str(self.cert.subject.rfc4514_string())

    def as_json(self, revoked_by: str | None = None) -> dict[str, object]:
        return {
            "subject": self.subject,
            "fingerprint": self.fingerprint,
            "source": self.source,
            "not_after": self.cert.not_valid_after_utc.isoformat(),
            "revoked_by": revoked_by,
        }


@dataclass
class TrustStore:
    anchors: list[Anchor] = field(default_factory=list)
    revoked: list[tuple[Anchor, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def certificates(self) -> list[x509.Certificate]:
        return [a.cert for a in self.anchors]


_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)


def _load_errors() -> tuple[type[Exception], ...]:
    """What loading or reading a hostile certificate raises: ValueError for bad DER, InvalidVersion
    for an unknown X.509 version, and cryptography decodes some fields (subject, dates) only when
    they are read, raising ValueError and others then."""
    from cryptography import x509

    from bootkeeper.sysext.signature import decode_errors

    return (*decode_errors(), x509.InvalidVersion)


def _probe(cert: x509.Certificate) -> x509.Certificate:
    """Read now everything bootkeeper reads of an anchor later (report, export, revocation, dates),
    so a certificate that cannot be decoded fails here, alone, and not the run that uses it."""
    from cryptography.hazmat.primitives.serialization import Encoding

    cert.subject.rfc4514_string()
    _ = cert.not_valid_before_utc, cert.not_valid_after_utc, cert.tbs_certificate_bytes
    cert.public_bytes(Encoding.PEM)
    cert.public_bytes(Encoding.DER)
    return cert


def load_certificates(data: bytes, what: str, problems: list[str] | None = None) -> list[x509.Certificate]:
    """Every certificate of a PEM file (each block on its own) or one DER certificate; one that
    does not load is a problem naming it, and the others still count. Without ``problems`` the
    first one is a MalformedError. The one loader of certificates: trust anchors here, ``--cert`` of
    ``sysext build`` and ``validate``."""

    from bootkeeper.sysext.signature import one_line

    if problems is None:
        found: list[str] = []
        certs = load_certificates(data, what, found)
        if found:
            raise MalformedError(found[0])
        return certs

    if b"-----BEGIN" in data:
        blocks = _PEM_BLOCK.findall(data)
        if not blocks:
            problems.append(f"{what}: no PEM CERTIFICATE block")
        items = [(f"{what}: certificate {i}" if len(blocks) > 1 else what, b, True) for i, b in enumerate(blocks)]
    else:
        items = [(what, data, False)]
    out = []
    for where, raw, pem in items:
        try:
            out.append(_load_one(raw, pem))
        except _load_errors() as exc:
            problems.append(f"{where}: not a usable PEM or DER X.509 certificate ({one_line(exc)})")
    return out


def _load_one(raw: bytes, pem: bool) -> x509.Certificate:
    """The one place a certificate is decoded (PEM block or DER), and probed."""
    from cryptography import x509

    return _probe(x509.load_pem_x509_certificate(raw) if pem else x509.load_der_x509_certificate(raw))


def _config_anchors(cfg: Sysext, root: Path, problems: list[str]) -> list[Anchor]:
    out: list[Anchor] = []
    for c in cfg.certificates:
        if "-----BEGIN" in c.value:
            out.extend(Anchor(x, c.where) for x in load_certificates(c.value.encode(), c.where, problems))
            continue
        p = under(root, c.value)
        try:
            data = p.read_bytes()
        except OSError as exc:
            problems.append(f"{c.where}: {c.value}: cannot read ({exc.strerror})")
            continue
        out.extend(
            Anchor(x, f"{c.where} ({c.value})") for x in load_certificates(data, f"{c.where}: {c.value}", problems)
        )
    return out


def _dir_anchors(d: Path, problems: list[str]) -> list[Anchor]:
    out: list[Anchor] = []
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return out
    except OSError as exc:
        problems.append(f"{d}: cannot list ({exc.strerror})")
        return out
    for n in names:
        if not n.endswith((".crt", ".pem")) or n.startswith((".", EXPORT_PREFIX)):
            continue  # our own exports are copies of the other sources
        p = d / n
        try:
            data = p.read_bytes()
        except OSError as exc:
            problems.append(f"{p}: cannot read ({exc.strerror})")
            continue
        out.extend(Anchor(x, str(p)) for x in load_certificates(data, str(p), problems))
    return out


def _firmware_anchors(efivars: Path, name: str, problems: list[str]) -> list[Anchor]:
    """The X.509 entries of a firmware variable. A list that does not parse is a MalformedError (no
    entry of it can be told apart); one entry that is not a usable certificate is a problem, and
    the other entries still count."""

    from bootkeeper.sysext.signature import one_line

    out = []
    i = 0
    for what, data in _firmware_lists(efivars, name):
        for e in parse_esl(data, what):
            i += 1
            if e.type != EFI_CERT_X509:
                continue  # image hashes are not certificates
            try:
                out.append(Anchor(_load_one(e.data, pem=False), f"firmware {name} #{i - 1}"))
            except _load_errors() as exc:
                problems.append(f"{what}: entry {i - 1} is not a usable X.509 certificate ({one_line(exc)})")
    return out


def _firmware_lists(efivars: Path, name: str) -> list[tuple[str, bytes]]:
    """(where, data) of a firmware list: shim's in pieces (:func:`read_mok`), the others whole."""
    if name in MOK_LISTS:
        return read_mok(efivars, name) or []
    data = read_efivar(efivars, name)
    return [] if data is None else [(f"firmware {name} ({efivars}/{name}-{VARIABLE_GUID[name]})", data)]


def _dbx(efivars: Path, name: str = "dbx") -> list[EslEntry]:
    """The entries of a revocation list (``dbx``, or shim's ``MokListXRT``); every piece must parse."""
    return [e for what, data in _firmware_lists(efivars, name) for e in parse_esl(data, what)]


def revocation(anchor: Anchor, dbx: list[EslEntry], label: str = "dbx") -> str | None:
    from cryptography.hazmat.primitives.serialization import Encoding

    der = anchor.cert.public_bytes(Encoding.DER)
    digest = hashlib.sha256(der).digest()
    tbs = hashlib.sha256(anchor.cert.tbs_certificate_bytes).digest()
    for i, e in enumerate(dbx):
        if e.type == EFI_CERT_X509 and e.data == der:
            return f"{label} #{i} (the certificate itself)"
        if e.type == EFI_CERT_SHA256 and e.data == digest:
            return f"{label} #{i} (SHA-256 of the certificate)"
        if e.type == EFI_CERT_X509_SHA256 and e.data[:32] == tbs:
            return f"{label} #{i} (SHA-256 of the certificate's TBS part)"
    return None


def load(
    cfg: Sysext,
    root: Path = Path("/"),
    efivars: Path | None = None,
    *,
    strict: bool = True,
    now: datetime.datetime | None = None,
) -> TrustStore:
    """Collect the anchors. ``strict``: the first unreadable source is an error (``keys`` verbs);
    otherwise it is recorded in ``problems`` and the others still count (boot time: a bad source
    can only make fewer images pass, never more). ``now``: when ``sysext.require_valid_dates``
    is set, the time the anchors must be valid at (default: the clock)."""
    store = TrustStore()
    efivars = efivars if efivars is not None else under(root, str(EFIVARS))

    def collect(fn: Callable[[], list[T]]) -> list[T]:
        try:
            return fn()
        except InputError as exc:
            if strict:
                raise
            store.problems.append(str(exc))
            return []

    found: list[Anchor] = _config_anchors(cfg, root, store.problems)
    for d in cfg.verity_dirs:
        found.extend(_dir_anchors(under(root, d), store.problems))
    for name in cfg.firmware:
        found.extend(collect(partial(_firmware_anchors, efivars, name, store.problems)))
    if strict and store.problems:
        raise MalformedError(store.problems[0])
    dbx: list[EslEntry] = []
    mokx: list[EslEntry] = []
    unreadable: str | None = None
    # firmware: [] reads no firmware variable at all, dbx included (docs/extensions.md, "Trust anchors")
    if cfg.firmware:
        try:
            dbx = _dbx(efivars)
            # MokListXRT revokes as dbx does, whichever source trusts the certificate (the kernel
            # puts both on its blacklist keyring: load_uefi.c, get_handler_for_dbx); read whenever
            # dbx is, so a revocation shim enrolled is never skipped by leaving MokListRT out
            mokx = _dbx(efivars, "MokListXRT")
        except InputError as exc:
            if strict:
                raise
            # Revocation fails closed. dbx revokes by certificate, whichever source trusts it, so
            # when it is present but cannot be read or parsed (a torn write, a hostile edit, EIO)
            # no anchor can be shown to be unrevoked: every one is treated as revoked, and in
            # enforced mode every image is refused until dbx reads again. Skipping it instead
            # would trust exactly the certificates it was written to revoke. An absent dbx is
            # not this case: nothing is revoked then.
            unreadable = f"{exc}; revocation cannot be checked"
            store.problems.append(f"{unreadable}: every trust anchor is treated as revoked")
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    seen: set[str] = set()
    for a in found:
        fp = a.fingerprint
        if fp in seen:
            continue
        seen.add(fp)
        why = unreadable or revocation(a, dbx) or revocation(a, mokx, "MokListXRT")
        if why is None and cfg.require_valid_dates:
            why = _outside_validity(a, now)
            if why is not None:
                store.problems.append(f"{a.source}: {a.subject}: {why}")
        if why:
            store.revoked.append((a, why))
        else:
            store.anchors.append(a)
    return store


def _outside_validity(a: Anchor, now: datetime.datetime) -> str | None:
    """Why ``a`` is not valid at ``now`` (``sysext.require_valid_dates``), or None. By default the
    dates are not checked, as systemd does not: it verifies with PKCS7_NOVERIFY, and the kernel
    checks no validity dates of the keys it verifies dm-verity signatures with."""
    before, after = a.cert.not_valid_before_utc, a.cert.not_valid_after_utc
    if now < before:
        return f"not valid before {before.isoformat()} (sysext.require_valid_dates)"
    if now > after:
        return f"expired {after.isoformat()} (sysext.require_valid_dates)"
    return None


def export(store: TrustStore, dest: Path) -> tuple[list[str], list[str]]:
    """Write every anchor that is not already in ``dest`` as ``bootkeeper-<fp16>.crt`` (PEM, crash-safe),
    and remove earlier ``bootkeeper-*.crt`` no longer trusted. Returns (written, removed) names."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from bootkeeper import fsutil
    from bootkeeper.errors import WriteError  # writing failed: I/O (exit 6), not malformed input

    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"{dest}: cannot create ({exc.strerror})") from None
    want: dict[str, bytes] = {}
    for a in store.anchors:
        if Path(a.source).parent == dest:
            continue  # already there
        want[f"{EXPORT_PREFIX}{a.fingerprint[:16]}.crt"] = a.cert.public_bytes(Encoding.PEM)
    written, removed = [], []
    for name, pem in sorted(want.items()):
        p = dest / name
        try:
            if p.is_file() and p.read_bytes() == pem:
                continue
            fsutil.write_atomic(p, pem)
        except OSError as exc:
            raise WriteError(f"{p}: cannot write ({exc.strerror})") from None
        written.append(name)
    for name in sorted(os.listdir(dest)):
        if name.startswith(EXPORT_PREFIX) and name.endswith(".crt") and name not in want:
            try:
                (dest / name).unlink()
            except OSError as exc:
                raise WriteError(f"{dest / name}: cannot remove ({exc.strerror})") from None
            removed.append(name)
    return written, removed
