"""The TPM's say in a change of the boot set, and ``tpm verify|sign-policy|audit``'s reading of the
node: which LUKS2 volumes are checked (``--luks``, else /etc/crypttab's), whether a change leaves them
unlocking, the systemd-pcrlock components made again for the entries it changed. The rules live in
``measure/``; this module reads the node, and hands each warning line to ``say``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from bootkeeper.config import Config
    from bootkeeper.errors import NotApplicableError
    from bootkeeper.esp.store import EspStore
    from bootkeeper.measure.banks import Bank
    from bootkeeper.measure.events import FileRef
    from bootkeeper.measure.luks import Authorization, EntryUki, ExtensionGate, Finding, GateResult, Token, Volume
    from bootkeeper.measure.pcrlock import Variant
    from bootkeeper.measure.predict import Prediction
    from bootkeeper.measure.verify import Report

Say = Callable[[str], None]

FIRMWARE_LOG = "sys/kernel/security/tpm0/binary_bios_measurements"
USER_LOG = "run/log/systemd/tpm2-measure.log"
LIVE_PCRS = "sys/class/tpm/tpm0"
STUB_IMAGE = "StubImageIdentifier"
# EFI_GLOBAL_VARIABLE (UEFI 2.10, 3.3): SecureBoot is one byte, 1 when on
SECURE_BOOT = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
MAX_EXPECT = 64 << 20  # a saved `tpm predict --json`: a few KiB an entry, file lists included
MAX_SIGNATURES = 1 << 20  # a JSON list of base64 signatures, one per policy digest


def volumes(root: Path, luks: tuple[Path, ...], say: Say) -> list[Volume]:
    """:func:`bootkeeper.measure.luks.node_volumes`, its warnings said."""
    from bootkeeper.measure import luks as luks_mod

    found, warnings = luks_mod.node_volumes(root, luks)
    for w in warnings:
        say(f"bootkeeper: warning: {w}")
    return found


def extension_gate(root: Path, luks: tuple[Path, ...], say: Say) -> list[ExtensionGate]:
    """Per volume, what an extension change on the ESP does to its TPM2 tokens (PCR 13)."""
    from bootkeeper.measure import luks as luks_mod

    found = volumes(root, luks, say)
    if not found:
        return []
    pol = luks_mod.pcrlock_policy(root)
    return [luks_mod.extension_gate(v, pol) for v in found]


def uki_gate(root: Path, luks: tuple[Path, ...], new_uki: Path, shown: str, say: Say) -> list[GateResult]:
    """The TPM gate of an upgrade, before the first write: the LUKS2 volumes given with ``--luks``,
    else every volume of the node's /etc/crypttab (under ``--root``) that is there; for each volume with a
    signed-policy TPM2 token, whether the new UKI's .pcrsig opens it. No such volume: no gate
    (docs/measured-boot.md, "The upgrade gate")."""
    from bootkeeper.measure import luks as luks_mod

    return [luks_mod.gate(v.device, list(v.tokens), new_uki, shown) for v in volumes(root, luks, say)]


def refuse_or_warn(gates: list[ExtensionGate], force: bool, verb: str, say: Say) -> bool:
    """Raise the refusal (nothing was written yet) unless ``force``; with it, warn. Also warn about
    broken tokens on a volume that still unlocks with another one. True when forced past a refusal."""
    from bootkeeper.errors import RefusedError

    bad = [g for g in gates if not g.ok]
    for g in gates:
        if g.ok and g.broken:
            say(f"bootkeeper: warning: {g.note()}")
    if not bad:
        return False
    reasons = "; ".join(g.reason() for g in bad)
    if not force:
        raise RefusedError(
            f"{verb} refused: {reasons}; nothing was changed",
            hint="bind the volume to the signed PCR 11 policy (systemd-cryptenroll --tpm2-public-key-pcrs=11 "
            "--tpm2-pcrs=), or pass --force and enrol it again (or run systemd-pcrlock make-policy) before "
            "the next boot",
        )
    say(f"bootkeeper: warning: {verb} with --force although {reasons}")
    return True


@dataclass(frozen=True)
class PcrlockRun:
    """``tpm pcrlock`` made again for the entries a change touched, in each folder it was set up in."""

    dirs: tuple[str, ...]
    written: tuple[str, ...] = ()
    error: str | None = None

    def as_json(self) -> dict[str, object]:
        return {"dirs": list(self.dirs), "written": list(self.written), "error": self.error}


def rerun_pcrlock(root: Path, store: EspStore, extra_dirs: set[str], say: Say) -> PcrlockRun | None:
    """The 660-bootkeeper-sysext variants of the changed entries, written again where ``tpm pcrlock``
    was set up (under ``root``); None when it was not, or nothing changed. A failure here comes after
    the change was made: it is a warning, never the verb's failure."""
    from bootkeeper.errors import BootkeeperError
    from bootkeeper.measure import pcrlock

    dirs = pcrlock.setup_dirs(root)
    if not dirs or not extra_dirs:
        return None
    written: list[str] = []
    try:
        variants = pcrlock.sysext_variants(store, extra_dirs)
        for d in dirs:
            written += [str(d / w) for w in pcrlock.update(d, variants)]
    except BootkeeperError as exc:
        say(
            f"bootkeeper: warning: the systemd-pcrlock components were not made again ({exc}); "
            "run bootkeeper tpm pcrlock"
        )
        return PcrlockRun(tuple(str(d) for d in dirs), tuple(written), str(exc))
    for w in written:
        say(f"bootkeeper: pcrlock: {w} written; run systemd-pcrlock make-policy before the next boot")
    return PcrlockRun(tuple(str(d) for d in dirs), tuple(written))


def esp_ukis(store: EspStore) -> list[EntryUki]:
    """Every entry on the ESP that boots a UKI, with the profile it boots."""
    from bootkeeper.esp import extra
    from bootkeeper.measure.luks import EntryUki

    return [
        EntryUki(t.entry, t.role.value if t.role is not None else None, store.path(t.uki), t.uki, t.profile)
        for t in extra.targets(store.snapshot(), store)
    ]


# -- tpm verify --------------------------------------------------------------------------------------


def no_tpm(root: Path) -> str | None:
    """Why there is nothing to verify (no event log and no TPM), or None when there is a TPM."""
    log_path, tpm = root / FIRMWARE_LOG, root / LIVE_PCRS
    if os.path.lexists(log_path) or os.path.lexists(tpm):
        return None
    return f"{log_path}: no TPM event log and no {tpm} (no TPM)"


def leave_result(dest: Path, root: Path, result: Report, say: Say) -> None:
    """The result for ``bootkeeper metrics`` (its TPM series and the TpmVerifyFailed alert), written
    atomically to ``dest``; a root without /run keeps none. Failing to write it is a warning: the
    verdict and the exit code stand."""
    import json

    from bootkeeper import fsutil

    if not (root / "run").is_dir():
        return
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_atomic(dest, (json.dumps(result.to_json(), indent=2) + "\n").encode())
    except OSError as exc:
        say(f"bootkeeper: warning: {dest}: not written ({exc.strerror or exc})")


def _secure_boot(efivars: Path) -> bool:
    from bootkeeper.esp.efivars import read_raw

    raw = read_raw(efivars / SECURE_BOOT)
    return raw is not None and len(raw) == 5 and raw[4] == 1


def _booted(root: Path, cfg: Config) -> tuple[tuple[FileRef, ...] | None, str | None]:
    """The extension files this boot loaded, and the folder they were found in."""
    from bootkeeper import fsutil
    from bootkeeper.measure import verify as verify_mod
    from bootkeeper.sysext.activate import EXTRA_DIR

    for folder in [root / EXTRA_DIR, *(fsutil.under(root, s) for s in cfg.sysext.sources)]:
        found = verify_mod.booted_files(folder)
        if found:
            return found, str(folder)
    return None, None


def verify(root: Path, esp: Callable[[], Path], config: Callable[[], Config], expect_path: Path | None) -> Report:
    """Read the machine (the event logs, the live PCRs, the efivars, the ESP, the config) and verify;
    an entry the ESP cannot predict is part of the report (:class:`~bootkeeper.measure.verify.Report`),
    any other input at fault raises its :class:`~bootkeeper.errors.InputError`. A TPM without its event
    log cannot be verified: an :class:`~bootkeeper.errors.UnreadableError`."""
    from bootkeeper import fsutil
    from bootkeeper.errors import UnreadableError
    from bootkeeper.esp import efivars as ev
    from bootkeeper.esp.store import EspStore
    from bootkeeper.measure import eventlog
    from bootkeeper.measure import predict as predict_mod
    from bootkeeper.measure import verify as verify_mod

    if not os.path.lexists(root / FIRMWARE_LOG):
        raise UnreadableError(
            f"{root / FIRMWARE_LOG}: no TPM event log, but {root / LIVE_PCRS} is there (is securityfs mounted?)"
        )
    log = eventlog.read_log(root / FIRMWARE_LOG)
    user = eventlog.read_user_log(root / USER_LOG)
    live = verify_mod.live_pcrs(root / LIVE_PCRS, log.banks)
    efivars = ev.under(root)
    stub_image = ev.read_string(efivars, STUB_IMAGE) if efivars.is_dir() else None
    selected = ev.LoaderVars.read(efivars).entry_selected
    secure_boot = _secure_boot(efivars) if efivars.is_dir() else False
    predictions, unpredictable = predict_mod.predict_each(EspStore(esp()), log.banks, secure_boot)
    booted, where = _booted(root, config())
    expected = None
    if expect_path is not None:
        from bootkeeper.measure.untrusted import load_json

        raw = fsutil.read_input(expect_path, "the expected prediction")
        obj = load_json(raw, str(expect_path), MAX_EXPECT, "the output of tpm predict --json")
        expected = verify_mod.parse_expected(obj, str(expect_path))
    return verify_mod.verify(
        log,
        user,
        live,
        predictions,
        stub_image=stub_image,
        selected=selected,
        booted=booted,
        booted_where=where,
        expected=expected,
        expect_what=str(expect_path),
        unpredictable=unpredictable,
    )


# -- tpm sign-policy ---------------------------------------------------------------------------------


def uki_handover(uki_path: Path, chosen: tuple[Bank, ...]) -> dict[str, bytes]:
    """PCR 11 at handover, per bank, for a UKI file (its sections as systemd-stub measures them)."""
    from bootkeeper.errors import UnreadableError
    from bootkeeper.measure import uki
    from bootkeeper.measure.events import replay

    if not uki_path.is_file():
        raise UnreadableError(f"{uki_path}: not a readable file")
    events = uki.section_events(uki.sections_of(uki_path, str(uki_path)), chosen)
    return {b.name: replay(events, b, 11) for b in chosen}


def entry_handover(store: EspStore, entry: str, chosen: tuple[Bank, ...]) -> dict[str, bytes]:
    """PCR 11 at handover, per bank, for the one entry (role or name) ``entry`` names."""
    from bootkeeper.errors import NotApplicableError, UsageError
    from bootkeeper.measure import predict as predict_mod

    found = predict_mod.predict(store, chosen, False, (entry,))
    if not found:
        raise NotApplicableError(f"{store.root}: no boot entry {entry} runs a UKI")
    if len(found) > 1:
        raise UsageError(f"{entry}: {len(found)} entries match ({', '.join(p.entry for p in found)}); name one")
    return {b: v[11] for b, v in found[0].pcrs().items()}


def signatures(sigs_path: Path) -> list[bytes]:
    """The HSM's signatures: a JSON list of base64 strings, decoded."""
    import base64

    from bootkeeper import fsutil
    from bootkeeper.errors import MalformedError
    from bootkeeper.measure.untrusted import load_json

    kind = "a JSON list of base64 signatures"
    raw = load_json(fsutil.read_input(sigs_path, "the signatures"), str(sigs_path), MAX_SIGNATURES, kind)
    try:
        if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
            raise ValueError("not a list of strings")
        return [base64.b64decode(s, validate=True) for s in raw]
    except ValueError as exc:
        raise MalformedError(f"{sigs_path}: not {kind}: {exc}") from exc


def private_key(path: Path) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """The PEM private key (RSA or EC, unencrypted) that signs the PCR 11 policy."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from bootkeeper.errors import MalformedError
    from bootkeeper.fsutil import read_input
    from bootkeeper.measure.untrusted import policy_key

    data = read_input(path, "the private key")
    try:
        key = load_pem_private_key(data, password=None)
    except UnsupportedAlgorithm:
        raise MalformedError(f"{path}: a private key of a type OpenSSL does not know; expected RSA or EC") from None
    except (ValueError, TypeError) as exc:
        raise MalformedError(f"{path}: not an unencrypted PEM private key") from exc
    policy_key(key.public_key(), str(path))
    return cast("rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey", key)  # policy_key refused any other type


def public_key(path: Path) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """A PEM public key, or the key of a PEM certificate; RSA or EC."""
    from bootkeeper.fsutil import read_input
    from bootkeeper.measure.untrusted import load_public_key

    return load_public_key(read_input(path, "the public key"), str(path), certificate=True)


def banks(names: tuple[str, ...], default: tuple[str, ...] = ("sha256",)) -> tuple[Bank, ...]:
    """The ``--bank`` names as banks, each once, in the order given (``default`` when none is)."""
    from bootkeeper.measure.banks import bank

    return tuple(bank(n) for n in dict.fromkeys(names or default))


@dataclass(frozen=True)
class PolicySigning:
    """What ``tpm sign-policy`` signs for (an entry or a UKI file) and how: with a key, as the digests
    an HSM signs (step 1), or joining the HSM's signatures (step 2)."""

    entry: str | None
    uki_path: Path | None
    key_path: Path | None
    print_digests: bool
    sigs_path: Path | None
    pub_path: Path | None
    banks: tuple[str, ...]
    phases: tuple[str, ...]


def sign_policy(req: PolicySigning, esp: Callable[[], Path]) -> str:
    """The signed PCR 11 policy (``.pcrsig`` JSON), or step 1's digests to sign as JSON."""
    import json

    from bootkeeper.errors import UsageError
    from bootkeeper.measure import policy

    if (req.entry is None) == (req.uki_path is None):
        raise UsageError("give one of --entry ROLE or --uki FILE")
    modes = sum((req.key_path is not None, req.print_digests, req.sigs_path is not None))
    if modes != 1:
        raise UsageError("give one of --key KEY.pem, --print-digests, or --signatures FILE with --public-key")
    if req.sigs_path is not None and req.pub_path is None:
        raise UsageError("--signatures needs --public-key, to check them before they are written")
    # systemd-measure's default: every bank it knows (parse_argv(), v257.9), as ukify signs without --pcr-banks
    chosen = banks(req.banks, ("sha1", "sha256", "sha384", "sha512"))
    if req.uki_path is not None:
        handover = uki_handover(req.uki_path, chosen)
    else:
        from bootkeeper.esp.store import EspStore

        handover = entry_handover(EspStore(esp()), req.entry or "", chosen)
    items = policy.to_sign(handover, chosen, policy.phase_paths(req.phases))
    if req.print_digests:
        return json.dumps([i.to_json() for i in items], indent=2) + "\n"
    if req.key_path is not None:
        return policy.dump_pcrsig(policy.as_object(policy.sign(items, private_key(req.key_path))))
    assert req.sigs_path is not None and req.pub_path is not None
    signed = policy.join(items, signatures(req.sigs_path), public_key(req.pub_path))
    return policy.dump_pcrsig(policy.as_object(signed))


def verify_kept(
    root: Path, esp: Callable[[], Path], config: Callable[[], Config], expect_path: Path | None, say: Say
) -> Report:
    """``tpm verify``: :func:`verify`, its result kept for ``bootkeeper metrics`` whatever it is, a
    failed one when the verification cannot complete (then the error is raised)."""
    from bootkeeper.errors import InputError, NotApplicableError
    from bootkeeper.measure import verify as verify_mod
    from bootkeeper.node.metrics import TPM_VERIFY

    dest = root / TPM_VERIFY
    why = no_tpm(root)
    if why is not None:
        # no TPM at all: nothing to verify, and no result is written. A result an earlier run left is
        # replaced by a failed one (a node does not lose its TPM: a result there that this run cannot
        # back is not kept agreeing: docs/measured-boot.md, tpm verify; docs/fleet.md, "The metrics and
        # their labels"); with none there, none is written
        if os.path.lexists(dest):
            leave_result(dest, root, verify_mod.failed(f"{why}; an earlier tpm verify left a result"), say)
        raise NotApplicableError(why)
    try:
        # a TPM without its event log (securityfs not mounted, the file removed) cannot be verified:
        # a failed verification with the reason, never the last result kept (docs/measured-boot.md, tpm
        # verify; docs/fleet.md, "The metrics and their labels")
        report = verify(root, esp, config, expect_path)
    except InputError as exc:
        # a verification that cannot complete is a failed one: left for metrics (agree 0, the reason),
        # then the error's exit code; never no result, which would keep the alert silent
        leave_result(dest, root, verify_mod.failed(str(exc)), say)
        raise
    leave_result(dest, root, report, say)
    return report


def predict(esp: Path, chosen: tuple[Bank, ...], secure_boot: bool, entries: tuple[str, ...]) -> list[Prediction]:
    """``tpm predict``: each entry (of ``entries``, when given) that runs a UKI, predicted; none is an error."""
    from bootkeeper.esp.store import EspStore
    from bootkeeper.measure import predict as predict_mod

    store = EspStore(esp)
    found = predict_mod.predict(store, chosen, secure_boot, entries)
    if not found:
        raise _no_uki(store, entries)
    return found


def _no_uki(store: EspStore, entries: tuple[str, ...]) -> NotApplicableError:
    from bootkeeper.errors import NotApplicableError

    which = f" of {', '.join(entries)}" if entries else ""
    return NotApplicableError(f"{store.root}: no boot entry{which} runs a UKI")


def write_pcrlock(
    esp: Path, dest: Path, secure_boot: bool, entries: tuple[str, ...]
) -> tuple[list[Variant], list[str]]:
    """``tpm pcrlock``: the components of every entry (of ``entries``) that runs a UKI, written into
    ``dest``; the variants and the files removed (none is an error)."""
    from bootkeeper.esp.store import EspStore
    from bootkeeper.measure import pcrlock

    store = EspStore(esp)
    variants = pcrlock.components(store, secure_boot, entries)
    if not variants:
        raise _no_uki(store, entries)
    return variants, pcrlock.write(dest, variants)


@dataclass(frozen=True)
class Audit:
    """``tpm audit``: DEVICE's TPM2 tokens, what an upgrade would break, and the UKIs each signed token was
    checked against."""

    device: str
    tokens: list[Token]
    findings: list[Finding]
    checked: dict[str, list[Authorization]]

    @property
    def bad(self) -> bool:
        from bootkeeper.measure.luks import Level

        return any(f.level is Level.FINDING for f in self.findings)

    def as_json(self) -> dict[str, object]:
        return {
            "device": self.device,
            "tokens": [{**t.as_json(), "ukis": [a.as_json() for a in self.checked.get(t.id, [])]} for t in self.tokens],
            "findings": [f.as_json() for f in self.findings],
            "verdict": "findings" if self.bad else "ok",
        }


def audit(device: Path, esp: Callable[[], Path]) -> Audit:
    """Read DEVICE's LUKS2 TPM2 tokens, and the ESP's UKIs when a token has a signed policy."""
    from bootkeeper.esp.store import EspStore
    from bootkeeper.measure import luks

    what = str(device)
    tokens = luks.parse_metadata(luks.dump_metadata(device), what)
    ukis = esp_ukis(EspStore(esp())) if any(t.signed for t in tokens) else []
    findings, checked = luks.audit(tokens, ukis)
    return Audit(what, tokens, findings, checked)
