"""What a LUKS2 volume's TPM2 tokens are bound to, and whether a UKI's signed policy unlocks them.

The tokens are the JSON ``systemd-cryptenroll`` writes into the LUKS2 header (``cryptsetup luksDump
--dump-json-metadata``), as systemd 257 writes and reads them (src/shared/tpm2-util.c, v257.9,
``tpm2_make_luks2_json()`` and ``tpm2_parse_luks2_json()``): type ``systemd-tpm2``; ``tpm2-pcrs``, the
PCRs bound by value (a policy hash over their current values); ``tpm2-pcr-bank``; ``tpm2_pubkey``
(base64 of the PEM key given to ``--tpm2-public-key``) and ``tpm2_pubkey_pcrs``, the PCRs bound to
whatever that key signs (TPM2_PolicyAuthorize); ``tpm2_pcrlock``, a policy kept in an NV index by
systemd-pcrlock; ``tpm2-pin``. The older names with "-" stay for the fields that had them.

At unlock, systemd-cryptsetup (src/cryptsetup/cryptsetup-tokens/luks2-tpm2.c and tpm2-util.c
``tpm2_unseal()``) finds in ``/.extra/tpm2-pcr-signature.json`` (the stub's copy of the UKI's
``.pcrsig``) the signature whose ``pkfp`` is the token key's and whose ``pol`` is the PolicyPCR of
the current PCR 11, and the TPM checks it. So a token bound to *signed* PCR 11 opens under any UKI
signed with its key and survives every upgrade; a token bound to PCR 11 or 13 *by value* opens only
under the exact UKI and extensions it was enrolled under. This is the binding Kairos uses (kcrypt
``bind-public-pcrs``, default 11), and the one bootkeeper recommends."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bootkeeper.errors import InputError, MalformedError, NotApplicableError, UnreadableError
from bootkeeper.measure import policy, uki, untrusted
from bootkeeper.measure.banks import BANKS, Bank
from bootkeeper.measure.events import replay

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

__all__ = [
    "GATE_PHASE_PATHS",
    "Authorization",
    "ExtensionGate",
    "Finding",
    "Level",
    "PcrlockPolicy",
    "Token",
    "Volume",
    "audit",
    "authorization",
    "dump_metadata",
    "extension_gate",
    "load_key",
    "node_volumes",
    "parse_metadata",
    "pcrlock_policy",
]

TOKEN_TYPE = "systemd-tpm2"
MAX_METADATA = 4 << 20  # LUKS2's largest JSON area (4 MiB minus the binary header)
# Phase paths a token's volume may be opened at (units/systemd-pcrphase-initrd.service.in and
# -sysinit.service.in, v257.9): in the initrd after "enter-initrd"; a volume of the root's /etc/crypttab
# (cryptsetup.target, before sysinit.target) after "leave-initrd" too. Both are in systemd-measure's
# and ukify's default paths.
GATE_PHASE_PATHS = ("enter-initrd", "enter-initrd:leave-initrd")
SIGNED_PCRS = (policy.PCR,)  # what ukify and systemd-measure sign: PCR 11, nothing else
# PCRs that change when bootkeeper upgrades a UKI or its extensions: the firmware measures the UKI's
# PE image and the inner kernel (4), the kernel its initrd (9), the stub the UKI's sections (11), the
# credentials and confexts (12) and the system extensions (13)
CHANGES_ON_UPGRADE = {
    4: "the UKI and its kernel, as the firmware loads them",
    9: "the initrd, as the kernel measures it",
    11: "the UKI's sections",
    12: "the credentials and configuration extensions",
    13: "the system extensions",
}


def load_key(data: bytes, what: str) -> PublicKeyTypes:
    """A public key as systemd-cryptenroll stores it (the PEM file's bytes), DER accepted too; RSA or
    EC (:func:`bootkeeper.measure.untrusted.load_public_key`), else a MalformedError naming ``what``."""
    key: PublicKeyTypes = untrusted.load_public_key(data, what)
    return key


@dataclass(frozen=True)
class Token:
    id: str
    keyslots: tuple[str, ...]
    pcrs: tuple[int, ...]  # bound by value
    bank: str | None  # None: systemd-cryptsetup picks the best the TPM has (sha256 when it has it)
    pubkey: bytes | None
    pubkey_pcrs: tuple[int, ...]  # bound to what the key signs
    pcrlock: bool
    pin: bool
    where: str = field(default="", compare=False)

    @property
    def signed(self) -> bool:
        return self.pubkey is not None and bool(self.pubkey_pcrs)

    def key(self) -> PublicKeyTypes:
        assert self.pubkey is not None
        return load_key(self.pubkey, f"{self.where}: tpm2_pubkey")

    def unlock_bank(self) -> Bank:
        return BANKS[self.bank or "sha256"]

    def as_json(self) -> dict[str, object]:
        fp = policy.fingerprint(self.key()).hex() if self.pubkey is not None else None
        return {
            "token": self.id,
            "keyslots": list(self.keyslots),
            "pcrs": list(self.pcrs),
            "pcr_bank": self.bank,
            "pubkey_pcrs": list(self.pubkey_pcrs),
            "pubkey_fingerprint": fp,
            "pcrlock": self.pcrlock,
            "pin": self.pin,
        }


def _number(s: str) -> bool:
    """A LUKS2 token or keyslot id: ASCII digits (luksDump prints them as "0", "1", ...)."""
    return s.isascii() and s.isdecimal() and len(s) <= 10


def _pcr_list(v: Any, where: str) -> tuple[int, ...]:
    """``tpm2_parse_pcr_json_array()``: an array of PCR numbers below 24."""
    if not isinstance(v, list) or not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p < 24 for p in v):
        raise MalformedError(f"{where}: not a list of PCR numbers 0-23")
    return tuple(sorted(set(v)))


def _bool(tok: dict[str, Any], key: str, where: str) -> bool:
    v = tok.get(key, False)
    if not isinstance(v, bool):
        raise MalformedError(f"{where}: {key}: not a boolean")
    return v


def _shards(tok: dict[str, Any], key: str, where: str) -> None:
    """``tpm2_parse_shard_array()``: a string, or a non-empty array of strings."""
    v = tok.get(key)
    if isinstance(v, str):
        return
    if isinstance(v, list) and v and all(isinstance(s, str) for s in v):
        return
    raise MalformedError(f"{where}: {key}: missing, or not a string or a list of strings")


def parse_token(tid: str, tok: dict[str, Any], what: str) -> Token:
    where = f"{what}: token {tid}"
    keyslots = tok.get("keyslots")
    if not isinstance(keyslots, list) or not all(isinstance(k, str) and _number(k) for k in keyslots):
        raise MalformedError(f"{where}: keyslots: not a list of strings of keyslot numbers")
    if "tpm2-pcrs" not in tok:
        raise MalformedError(f"{where}: tpm2-pcrs: missing")
    pcrs = _pcr_list(tok["tpm2-pcrs"], f"{where}: tpm2-pcrs")
    bank = tok.get("tpm2-pcr-bank")
    if bank is not None and (not isinstance(bank, str) or bank not in BANKS):
        raise MalformedError(f"{where}: tpm2-pcr-bank: {bank!r} is not one of {', '.join(BANKS)}")
    _shards(tok, "tpm2-blob", where)
    _shards(tok, "tpm2-policy-hash", where)
    pubkey = None
    if "tpm2_pubkey" in tok:
        raw = tok["tpm2_pubkey"]
        if not isinstance(raw, str):
            raise MalformedError(f"{where}: tpm2_pubkey: not a string")
        try:
            pubkey = base64.b64decode(raw, validate=True)
        except binascii.Error as exc:
            raise MalformedError(f"{where}: tpm2_pubkey: not base64") from exc
    pubkey_pcrs = _pcr_list(tok["tpm2_pubkey_pcrs"], f"{where}: tpm2_pubkey_pcrs") if "tpm2_pubkey_pcrs" in tok else ()
    if pubkey_pcrs and pubkey is None:  # tpm2_parse_luks2_json() refuses this too
        raise MalformedError(f"{where}: tpm2_pubkey_pcrs is set but tpm2_pubkey is missing")
    t = Token(
        tid,
        tuple(keyslots),
        pcrs,
        bank,
        pubkey,
        pubkey_pcrs,
        _bool(tok, "tpm2_pcrlock", where),
        _bool(tok, "tpm2-pin", where),
        where,
    )
    if pubkey is not None:
        t.key()  # a key that does not load is the token's fault, named here
    return t


def parse_metadata(text: str, what: str) -> list[Token]:
    """The ``systemd-tpm2`` tokens of ``luksDump --dump-json-metadata``'s output, by token number."""
    obj = untrusted.load_json(text, f"{what}: LUKS2 metadata", MAX_METADATA)
    if not isinstance(obj, dict):
        raise MalformedError(f"{what}: LUKS2 metadata is not a JSON object")
    tokens = obj.get("tokens", {})
    if not isinstance(tokens, dict):
        raise MalformedError(f"{what}: tokens: not an object")
    out = []
    for tid in sorted(tokens, key=lambda k: (len(k), k)):
        if not _number(tid):  # shown in every message and line about the token: a number, as LUKS2 has them
            raise MalformedError(f"{what}: tokens: {tid[:32]!r} is not a token number")
        tok = tokens[tid]
        if not isinstance(tok, dict):
            raise MalformedError(f"{what}: token {tid}: not an object")
        if tok.get("type") != TOKEN_TYPE:
            continue  # fido2, pkcs11, a passphrase keyring token: none of the TPM's business
        out.append(parse_token(tid, tok, what))
    return out


LUKS_MAGIC = b"LUKS\xba\xbe"


def dump_metadata(device: Path) -> str:
    """``cryptsetup luksDump --dump-json-metadata``, after a look at the header so that a file that
    is no LUKS2 volume gets a one-line reason and not cryptsetup's."""
    import os
    import stat

    from bootkeeper.run import check_tool, run

    try:
        # never blocking: a FIFO given as a volume must not hang the verb; a block device or an image file
        fd = os.open(device, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise UnreadableError(f"{device}: cannot read (neither a block device nor a file)")
            head = f.read(8)
    except OSError as exc:
        raise UnreadableError(f"{device}: cannot read ({exc.strerror or exc})") from exc
    if head[:6] != LUKS_MAGIC:
        raise MalformedError(f"{device}: not a LUKS volume (no LUKS header magic)")
    version = int.from_bytes(head[6:8], "big")
    if version != 2:
        raise NotApplicableError(f"{device}: a LUKS{version} volume; TPM2 tokens need LUKS2")
    check_tool("cryptsetup", "to read the LUKS2 tokens")
    return run(["cryptsetup", "luksDump", "--dump-json-metadata", str(device)]).stdout


@dataclass(frozen=True)
class Authorization:
    """Whether a UKI's ``.pcrsig`` unlocks a token's key, at each phase path it needs."""

    uki: str
    bank: str
    has_pcrsig: bool
    pcrpkey_matches: bool | None  # None: the UKI has no .pcrpkey
    signed_for_key: bool  # some .pcrsig entry of the bank carries the key's fingerprint
    missing: tuple[str, ...]  # phase paths whose PCR 11 no signature with this key authorizes

    @property
    def ok(self) -> bool:
        return self.has_pcrsig and not self.missing

    def reason(self, fp: str) -> str:
        after = f"PCR 11 after {', '.join(self.missing)}"
        if not self.has_pcrsig:
            return f"{self.uki} has no .pcrsig, so nothing signed with key {fp} authorizes its {after}"
        if not self.signed_for_key:
            return f"{self.uki}'s .pcrsig has no {self.bank} signature with key {fp} (for its {after})"
        return f"{self.uki}'s .pcrsig does not authorize its {after} ({self.bank}) with key {fp}"

    def as_json(self) -> dict[str, object]:
        return {
            "uki": self.uki,
            "bank": self.bank,
            "has_pcrsig": self.has_pcrsig,
            "pcrpkey_matches": self.pcrpkey_matches,
            "signed_for_key": self.signed_for_key,
            "missing_phases": list(self.missing),
            "ok": self.ok,
        }


def authorization(
    path: Path,
    what: str,
    public_key: PublicKeyTypes,
    b: Bank,
    paths: tuple[str, ...] = GATE_PHASE_PATHS,
    profile: int = 0,
) -> Authorization:
    """Compute the PCR 11 the UKI gives after each of ``paths`` and ask ``policy.authorized``."""
    sections = uki.sections_of(path, what, profile)
    fp = policy.fingerprint(public_key)
    pcrpkey: bool | None = None
    if sections.has(".pcrpkey"):
        try:
            pcrpkey = policy.fingerprint(load_key(sections.read(".pcrpkey"), f"{what}: .pcrpkey")) == fp
        except (InputError, ValueError):
            pcrpkey = False
    if not sections.has(".pcrsig"):
        return Authorization(what, b.name, False, pcrpkey, False, paths)
    sigs = policy.parse_pcrsig(sections.read(".pcrsig"), f"{what}: .pcrsig")
    handover = replay(uki.section_events(sections, (b,)), b, policy.PCR)
    items = policy.to_sign({b.name: handover}, (b,), paths)
    missing = tuple(it.phase_path for it in items if not policy.authorized(sigs, public_key, b, it.pcr11))
    return Authorization(what, b.name, True, pcrpkey, any(s.pkfp == fp and s.bank == b.name for s in sigs), missing)


class Level(StrEnum):
    FINDING = "finding"  # would break, or does not protect: exit 1
    NOTE = "note"
    FINE = "fine"


@dataclass(frozen=True)
class Finding:
    level: Level
    token: str
    code: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"level": self.level.value, "token": self.token, "code": self.code, "message": self.message}


@dataclass(frozen=True)
class EntryUki:
    """An entry's UKI to check a token's key against."""

    entry: str
    role: str | None
    path: Path
    what: str
    profile: int = 0


def _binding_findings(t: Token, literal: list[int]) -> list[Finding]:
    """What a token's PCRs bound by value and its pcrlock binding mean for upgrades."""
    out = [
        Finding(
            Level.FINDING,
            t.id,
            "literal-pcr",
            f"PCR {n} is bound by value: it holds {CHANGES_ON_UPGRADE[n]}, so every upgrade of them "
            "needs a new enrolment (bind it through a signed policy: --tpm2-public-key-pcrs=11)",
        )
        for n in literal
    ]
    others = [n for n in t.pcrs if n not in CHANGES_ON_UPGRADE]
    if others:
        out.append(
            Finding(
                Level.NOTE,
                t.id,
                "literal-pcr",
                f"PCR {'+'.join(map(str, others))} bound by value: upgrades of the UKI and its extensions leave "
                "it alone; firmware or Secure Boot database updates change it",
            )
        )
    if t.pcrlock:
        out.append(
            Finding(
                Level.NOTE,
                t.id,
                "pcrlock",
                "bound to a systemd-pcrlock policy: make it again (systemd-pcrlock make-policy, with "
                "bootkeeper tpm pcrlock's components) before each upgrade",
            )
        )
    return out


def _unsigned_finding(t: Token, literal: list[int]) -> list[Finding]:
    """A token with no signed policy and nothing else tying it to this OS opens under any OS."""
    if literal or t.pcrlock:
        return []
    what = f"PCR {'+'.join(map(str, t.pcrs))} by value only" if t.pcrs else "no PCR at all"
    return [
        Finding(
            Level.FINDING,
            t.id,
            "no-signed-policy",
            f"no signed policy (no tpm2_pubkey) and {what}: the volume opens under any OS "
            "this machine boots, not only under your signed UKIs",
        )
    ]


def _signed_findings(
    t: Token, fp: str, literal: list[int], ukis: list[EntryUki], results: list[Authorization]
) -> list[Finding]:
    """A signed PCR 11 token against every entry's UKI: the entries that will not unlock it, and
    whether any will (``fp``: the key's fingerprint)."""
    out = [
        Finding(
            Level.FINDING if u.role == "active" else Level.NOTE,
            t.id,
            "unsigned-entry",
            f"entry {u.entry}: {a.reason(fp)}: booting it will not unlock",
        )
        for u, a in zip(ukis, results, strict=True)
        if not a.ok
    ]
    good = [u for u, a in zip(ukis, results, strict=True) if a.ok]
    if not good:
        out.append(
            Finding(
                Level.FINDING,
                t.id,
                "unknown-key",
                f"no UKI on the ESP is signed for key {fp}: the volume will not unlock under any of them",
            )
        )
    elif not literal:
        out.append(
            Finding(
                Level.FINE,
                t.id,
                "signed-pcr11",
                f"signed PCR 11 policy, key {fp} ({t.unlock_bank().name}), authorized by "
                f"{', '.join(u.entry for u in good)}: survives upgrades signed with this key",
            )
        )
    return out


def audit(tokens: list[Token], ukis: list[EntryUki]) -> tuple[list[Finding], dict[str, list[Authorization]]]:
    """Per token: what breaks on upgrade, what does not protect, what is fine; and, for each signed
    token, every entry's UKI checked against its key."""
    out: list[Finding] = []
    checked: dict[str, list[Authorization]] = {}
    for t in tokens:
        literal = [n for n in t.pcrs if n in CHANGES_ON_UPGRADE]
        out += _binding_findings(t, literal)
        if not t.signed:
            out += _unsigned_finding(t, literal)
            continue
        fp = policy.fingerprint(t.key()).hex()
        if t.pubkey_pcrs != SIGNED_PCRS:
            out.append(
                Finding(
                    Level.FINDING,
                    t.id,
                    "signed-pcrs",
                    f"the signed policy covers PCR {'+'.join(map(str, t.pubkey_pcrs))}; ukify and systemd-measure "
                    "sign PCR 11 only, so no UKI's .pcrsig can open it",
                )
            )
            continue
        results = [authorization(u.path, u.what, t.key(), t.unlock_bank(), GATE_PHASE_PATHS, u.profile) for u in ukis]
        checked[t.id] = results
        out += _signed_findings(t, fp, literal, ukis, results)
    return out, checked


CRYPTTAB = "etc/crypttab"
_BY = {"UUID": "by-uuid", "PARTUUID": "by-partuuid", "LABEL": "by-label", "PARTLABEL": "by-partlabel"}


def crypttab_devices(root: Path) -> list[tuple[str, Path]]:
    """(volume name, device under ``root``) of each line of the node's /etc/crypttab (crypttab(5):
    NAME DEVICE [KEY [OPTIONS]]; ``UUID=`` and the like resolved through /dev/disk/by-*, as
    systemd-cryptsetup-generator does). No crypttab: none."""
    from bootkeeper.fsutil import read_input_text, under

    path = under(root, CRYPTTAB)
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(read_input_text(path, "crypttab").splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) < 2:
            raise MalformedError(f"{path}:{n}: no device after the volume name {words[0]!r}")
        dev = words[1]
        tag, eq, value = dev.partition("=")
        if eq and tag.upper() in _BY:
            dev = f"/dev/disk/{_BY[tag.upper()]}/{value}"
        elif not dev.startswith("/"):
            raise MalformedError(f"{path}:{n}: device {words[1]!r} is neither a path nor UUID=, PARTUUID=, LABEL=")
        out.append((words[0], under(root, dev)))
    return out


@dataclass(frozen=True)
class GateResult:
    """One LUKS volume's verdict on a new UKI."""

    device: str
    keys: tuple[str, ...]  # fingerprints of the keys its signed tokens trust
    authorizations: tuple[Authorization, ...]

    @property
    def ok(self) -> bool:
        return not self.keys or any(a.ok for a in self.authorizations)

    def reason(self) -> str:
        why = "; ".join(a.reason(k) for a, k in zip(self.authorizations, self.keys, strict=True))
        return f"{self.device} would not unlock after the upgrade: {why}"

    def as_json(self) -> dict[str, object]:
        return {
            "device": self.device,
            "keys": list(self.keys),
            "ukis": [a.as_json() for a in self.authorizations],
            "ok": self.ok,
        }


def gate(device: str, tokens: list[Token], new_uki: Path, what: str) -> GateResult:
    """Whether ``new_uki``'s .pcrsig opens one of the volume's signed tokens at every phase path of
    :data:`GATE_PHASE_PATHS`. A volume with no signed token has no gate (its literal PCRs are
    ``tpm audit``'s business)."""
    keys = []
    auths = []
    for t in tokens:
        if not t.signed:
            continue
        key = t.key()
        keys.append(policy.fingerprint(key).hex())
        if t.pubkey_pcrs != SIGNED_PCRS:
            pcrs = "+".join(map(str, t.pubkey_pcrs))
            auths.append(
                Authorization(
                    f"{what} (token {t.id} trusts signed PCR {pcrs}, not 11)",
                    t.unlock_bank().name,
                    False,
                    None,
                    False,
                    GATE_PHASE_PATHS,
                )
            )
            continue
        auths.append(authorization(new_uki, what, key, t.unlock_bank()))
    return GateResult(device, tuple(keys), tuple(auths))


@dataclass(frozen=True)
class Volume:
    """A LUKS2 volume the node opens, as shown to the user, and its ``systemd-tpm2`` tokens."""

    device: str
    tokens: tuple[Token, ...]


def node_volumes(root: Path, given: tuple[Path, ...]) -> tuple[list[Volume], list[str]]:
    """The volumes a change of the boot set is gated on, and the warnings for those skipped: the
    ``given`` devices (``--luks``; one that cannot be read is an error), else every volume of the
    node's /etc/crypttab under ``root`` that is there (one missing or unreadable is a warning: it is
    not checked). One home for the rule, used by ``upgrade`` and ``sysext install|remove``."""
    from bootkeeper.errors import BootkeeperError

    devices = [(str(d), d) for d in given] or [(str(p), p) for _, p in crypttab_devices(root)]
    out: list[Volume] = []
    warnings: list[str] = []
    for shown, dev in devices:
        if not given and not dev.exists():
            warnings.append(f"{shown} (from /etc/crypttab) is not there; its TPM token is not checked")
            continue
        try:
            tokens = parse_metadata(dump_metadata(dev), shown)
        except BootkeeperError as exc:  # a volume of crypttab that cannot be read is not checked
            if given:
                raise
            warnings.append(f"{exc}; its TPM token is not checked")
            continue
        out.append(Volume(shown, tuple(tokens)))
    return out, warnings


# --- extension changes: PCR 13 -------------------------------------------------------------------

SYSEXT_PCR = 13  # systemd-stub measures the .extra.d/*.raw it passes on here (and nothing else does)
# where ``systemd-pcrlock make-policy`` keeps the policy it put into the TPM's NV index, and the PCRs it
# covers when --pcr= is not given: "0-5, 7, 11-15", each only when the event log is fully recognized
# (systemd v257 man/systemd-pcrlock.xml: make-policy, --policy=, --pcr=; as Debian's 257.9 ships it)
PCRLOCK_POLICY = "var/lib/systemd/pcrlock.json"
PCRLOCK_DEFAULT_PCRS = frozenset({0, 1, 2, 3, 4, 5, 7, 11, 12, 13, 14, 15})


@dataclass(frozen=True)
class PcrlockPolicy:
    """The PCRs the node's systemd-pcrlock policy covers: read from :data:`PCRLOCK_POLICY` when it is
    there, else pcrlock's default (which covers PCR 13). ``source`` says which, for messages."""

    pcrs: frozenset[int]
    source: str

    def covers(self, pcr: int) -> bool:
        return pcr in self.pcrs


def pcrlock_policy(root: Path) -> PcrlockPolicy:
    """The node's pcrlock policy file, read for its ``pcrValues``. Missing, unreadable or malformed:
    pcrlock's default PCRs, so that what cannot be read gates more, never less."""
    from bootkeeper.errors import UnreadableError
    from bootkeeper.fsutil import read_bounded, under

    path = under(root, PCRLOCK_POLICY)
    default = f"systemd-pcrlock's default PCRs ({path} "
    try:
        raw = read_bounded(path, MAX_METADATA, "a pcrlock policy")
    except FileNotFoundError:
        return PcrlockPolicy(PCRLOCK_DEFAULT_PCRS, default + "is not there)")
    except OSError as exc:
        return PcrlockPolicy(PCRLOCK_DEFAULT_PCRS, default + f"cannot be read: {exc.strerror or exc})")
    except UnreadableError as exc:  # not a regular file, or larger than any policy
        return PcrlockPolicy(PCRLOCK_DEFAULT_PCRS, default + f"cannot be read: {exc})")
    try:
        obj = untrusted.load_json(raw, "pcrlock policy", MAX_METADATA)
        values = obj["pcrValues"]
        pcrs = frozenset(v["pcr"] for v in values)
        if not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p < 24 for p in pcrs):
            raise ValueError("a pcr is not a number 0-23")
    except MalformedError as exc:
        return PcrlockPolicy(PCRLOCK_DEFAULT_PCRS, default + f"is not a pcrlock policy: {exc})")
    except (ValueError, KeyError, TypeError) as exc:
        return PcrlockPolicy(PCRLOCK_DEFAULT_PCRS, default + f"is not a pcrlock policy: {type(exc).__name__}: {exc})")
    return PcrlockPolicy(pcrs, str(path))


@dataclass(frozen=True)
class ExtensionGate:
    """One LUKS volume's verdict on a change of the extensions systemd-stub measures into PCR 13:
    the tokens the change breaks (and why) and those it leaves working. The volume still unlocks
    when one of its TPM2 tokens does (systemd-cryptsetup tries each), as :class:`GateResult` has it."""

    device: str
    broken: tuple[tuple[str, str], ...]  # (token, why)
    working: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.broken or bool(self.working)

    def reason(self) -> str:
        return f"{self.device} would not unlock from the TPM after the change: {self._why()}"

    def note(self) -> str:
        """For a volume that still unlocks: which tokens stop working."""
        return f"{self.device} still unlocks with token {', '.join(self.working)} after the change, but {self._why()}"

    def _why(self) -> str:
        return "; ".join(f"token {t} {w}" for t, w in self.broken)

    def as_json(self) -> dict[str, object]:
        return {
            "device": self.device,
            "broken": [{"token": t, "why": w} for t, w in self.broken],
            "working": list(self.working),
            "ok": self.ok,
        }


def extension_gate(volume: Volume, policy_of_pcrlock: PcrlockPolicy) -> ExtensionGate:
    """Which of the volume's tokens an extension change breaks: one bound to PCR 13 by value (a
    policy hash over its current value), or to a systemd-pcrlock policy that covers PCR 13 (the NV
    index holds the old prediction until ``systemd-pcrlock make-policy`` runs again). A token bound
    to the signed PCR 11 policy, or by value to PCRs the extensions leave alone, keeps working."""
    broken: list[tuple[str, str]] = []
    working: list[str] = []
    for t in volume.tokens:
        if SYSEXT_PCR in t.pcrs:
            broken.append((t.id, f"binds PCR {SYSEXT_PCR} by value, which holds {CHANGES_ON_UPGRADE[SYSEXT_PCR]}"))
        elif t.pcrlock and policy_of_pcrlock.covers(SYSEXT_PCR):
            broken.append(
                (
                    t.id,
                    f"is bound to a systemd-pcrlock policy that covers PCR {SYSEXT_PCR} ({policy_of_pcrlock.source}): "
                    "it opens again only once systemd-pcrlock make-policy has run with the new components",
                )
            )
        else:
            working.append(t.id)
    return ExtensionGate(volume.device, tuple(broken), tuple(working))
