"""One fuzzing target per parser: ``run(data)`` feeds the bytes to the parser the way the verb
that reads that input does, and ``expected`` names the errors the parser documents. Anything
else escaping is a crash (the CLI would print a traceback). Importable without atheris: the
regression test (``tests/project/test_fuzz_regressions.py``) runs the same code on every kept input.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import os
import shutil
import struct
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootkeeper import config
from bootkeeper.assess import cloudconfig, generator, history, lint, services
from bootkeeper.errors import MalformedError, UsageError
from bootkeeper.esp import counter, efivars, entries, keyvalue, loader, pe, sdboot
from bootkeeper.esp.efiglob import efi_fnmatch
from bootkeeper.measure import eventlog
from bootkeeper.sysext import erofs, gpt, image, policy, release, signature, trust, verity

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CORPUS = REPO / "tests" / "data" / "fuzz"  # <target>/seed-* (valid inputs) and crash-<sha1>
SIGNER = HERE / "signer.pem"  # the certificates the seed signatures and images were signed with
# What the seed PKCS#7 blobs sign (the hex of this, as the kernel checks it).
ROOT_HASH = hashlib.sha256(b"bootkeeper fuzz root hash").digest()
HOST_OS_RELEASE = {"ID": "debian", "VERSION_ID": "13", "ID_LIKE": "", "SYSEXT_LEVEL": "1.0"}


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    expected: tuple[type[BaseException], ...]  # documented: fine for hostile input
    one_line: bool  # a documented error must carry a one-line, non-empty message
    max_len: int
    doc: str


TARGETS: dict[str, Target] = {}


def target(
    name: str, *, expected: tuple[type[BaseException], ...] = (), one_line: bool = True, max_len: int = 8192
) -> Callable[[Callable[[bytes], None]], Callable[[bytes], None]]:
    def register(fn: Callable[[bytes], None]) -> Callable[[bytes], None]:
        TARGETS[name] = Target(name, fn, expected, one_line, max_len, (fn.__doc__ or "").strip())
        return fn

    return register


class FailOpen(AssertionError):
    """The trust side let more through because something could not be read."""


class BadMessage(AssertionError):
    """A documented error whose message is empty or spans lines (the CLI prints one line)."""


def check(name: str, data: bytes) -> None:
    """Run target ``name`` on ``data``; raise only if the parser misbehaved."""
    t = TARGETS[name]
    try:
        t.run(data)
    except t.expected as exc:
        msg = str(exc)
        if t.one_line and (not msg.strip() or "\n" in msg or "\r" in msg):
            raise BadMessage(f"{type(exc).__name__} message is not one non-empty line: {msg[:200]!r}") from exc


def signature_of(exc: BaseException) -> str:
    """What identifies a crash: the exception type and the innermost frame in bootkeeper (else the
    innermost frame at all), e.g. ``ValueError at bootkeeper/esp/counter.py:43``."""
    if isinstance(exc, BadMessage) and exc.__cause__ is not None:
        return f"BadMessage from {signature_of(exc.__cause__)}"
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/bootkeeper/" in f.filename and "/fuzz/" not in f.filename]
    at = (ours or frames)[-1] if frames else None
    where = "?" if at is None else f"{_short(at.filename)}:{at.lineno}"
    return f"{type(exc).__name__} at {where}"


def _short(filename: str) -> str:
    for marker in ("/bootkeeper/", "/fuzz/"):
        i = filename.rfind(marker)
        if i >= 0:
            return filename[i + 1 :]
    return filename.rsplit("/site-packages/", 1)[-1]


def corpus(name: str) -> list[Path]:
    d = CORPUS / name
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []


# --- scratch files (parsers that take a path) ---------------------------------------------------

_scratch: list[Path] = []


def scratch() -> Path:
    """One private directory per process, in memory when /dev/shm exists."""
    if not _scratch:
        given = os.environ.get("BOOTKEEPER_FUZZ_SCRATCH")  # run.py's, removed by it: libFuzzer exits
        if given:  # without running atexit handlers
            _scratch.append(Path(given))
        else:
            base = "/dev/shm" if os.path.isdir("/dev/shm") else None
            d = Path(tempfile.mkdtemp(prefix="bootkeeper-fuzz-", dir=base))
            atexit.register(shutil.rmtree, d, True)
            _scratch.append(d)
    return _scratch[0]


def _write(rel: str, data: bytes) -> Path:
    p = scratch() / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _signers() -> list[Any]:
    from cryptography import x509

    return list(x509.load_pem_x509_certificates(SIGNER.read_bytes())) if SIGNER.exists() else []


_cache: dict[str, Any] = {}


def _cached(key: str, make: Callable[[], Any]) -> Any:
    if key not in _cache:
        _cache[key] = make()
    return _cache[key]


# --- esp/ ---------------------------------------------------------------------------------------


@target("counter")
def _counter(data: bytes) -> None:
    """esp/counter.py parse(): a file name (the `bless --entry` argument, every ESP file name);
    documented to never fail: a malformed counter means "not counted"."""
    name = _text(data)
    for suffix in (".conf", ".efi"):
        c = counter.parse(name, suffix)
        _ = (c.counted, c.state, c.base, c.stem, c.next_name, c.bad_name)


@target("keyvalue")
def _keyvalue(data: bytes) -> None:
    """esp/keyvalue.py split_lines() with both separators (entries/loader.conf, os-release)."""
    text = _text(data)
    list(keyvalue.split_lines(text, " \t"))
    list(keyvalue.split_lines(text, "="))


@target("entry_conf")
def _entry_conf(data: bytes) -> None:
    """esp/entries.py parse_type1() + menu order: first line the file name, the rest the .conf;
    oddities become problems, never errors."""
    first, _, rest = _text(data).partition("\n")
    name = first or "active+3.conf"
    other = entries.parse_type1("passive+2-1.conf", "title p\nsort-key 2-passive\nlinux /vmlinuz\n")
    for v in ("252.39", "257.9", "257.13", "258.1", "262.1"):
        e = entries.parse_type1(name, rest, loader_exists=True, sdboot_version=v)
        _ = (e.entry_id(v), e.next_name(v), e.state, e.role, e.file_name)
        entries.menu_order([e, other, e], v)


@target("uki_osrel")
def _uki_osrel(data: bytes) -> None:
    """esp/entries.py parse_type2(): a UKI's .osrel section (os-release text)."""
    e = entries.parse_type2("active+3.efi", data)
    other = entries.parse_type2("passive.efi", b"ID=kairos\nVERSION=1\n")
    entries.menu_order([e, other])


@target("loader_conf")
def _loader_conf(data: bytes) -> None:
    """esp/loader.py parse(), set_default(), default_after_rename(): loader/loader.conf."""
    text = _text(data)
    conf = loader.parse(text)
    _ = conf.default_pattern
    loader.default_after_rename(conf, "active+3.conf", "active+2-1.conf")
    loader.parse(loader.set_default(text, "active.conf"))
    loader.parse(loader.set_default(text, None))


@target("pe", expected=(MalformedError,), max_len=16384)
def _pe(data: bytes) -> None:
    """esp/pe.py read_osrel(), sdboot_version(): UKIs in EFI/Linux and BOOTX64.EFI."""
    p = _write("EFI/Linux/active+3.efi", data)
    pe.read_sections(io.BytesIO(data), str(p))
    pe.read_osrel(p)
    pe.read_profiles(p)
    pe.sdboot_version(p)


@target("sdboot_version", expected=(UsageError,))
def _sdboot_version(data: bytes) -> None:
    """esp/sdboot.py SdBoot.parse(): the version string of .sdmagic, LoaderInfo or --systemd-boot-version."""
    v = sdboot.SdBoot.parse(_text(data))
    _ = (v.counts_efi_key, v.knows_uki_key, v.ids_drop_counter, v.has_preferred, v.profile_sorts_after_version)


@target("efivars", expected=(MalformedError, generator.GeneratorError))
def _efivars(data: bytes) -> None:
    """esp/efivars.py decode_string()/LoaderVars.read() and the generator's own reader: UTF-16
    EFI variables (attribute word, then UTF-16LE)."""
    efivars.decode_string(data, "LoaderEntrySelected")
    d = scratch() / "efivars"
    d.mkdir(exist_ok=True)
    for n in ("LoaderEntryDefault", "LoaderEntryOneShot", "LoaderEntrySelected", "LoaderBootCountPath"):
        efivars.var_path(d, n).write_bytes(data)
    efivars.LoaderVars.read(d)
    root = scratch() / "genroot"
    gd = root / generator.EFIVARS
    gd.mkdir(parents=True, exist_ok=True)
    (gd / f"LoaderEntrySelected-{generator.LOADER_GUID}").write_bytes(data)
    generator._efivar(str(root), "LoaderEntrySelected")


@target("fnmatch", max_len=2048)
def _fnmatch(data: bytes) -> None:
    """esp/efiglob.py efi_fnmatch(): loader.conf `default` / LoaderEntryDefault patterns
    (pattern, NUL, the id)."""
    pat, _, s = _text(data).partition("\0")
    efi_fnmatch(pat.lower(), s.lower())


# --- sysext/ ------------------------------------------------------------------------------------


@target("gpt", expected=(MalformedError,), max_len=65536)
def _gpt(data: bytes) -> None:
    """sysext/gpt.py read(): the partition table of a .sysext.raw."""
    t = gpt.read(io.BytesIO(data), len(data), "image")
    for p in t.partitions:
        _ = (p.offset, p.size, p.designator, p.architecture)


@target("verity_superblock", expected=(MalformedError,), max_len=1024)
def _verity(data: bytes) -> None:
    """sysext/verity.py Superblock.unpack(): the first 512 bytes of a verity partition."""
    sb = verity.Superblock.unpack(data)
    sb.pack()
    verity.levels(min(sb.data_blocks, 1 << 40), sb.hash_block_size, hashlib.new(sb.algorithm).digest_size)


@target("sig_json", expected=(MalformedError,))
def _sig_json(data: bytes) -> None:
    """sysext/signature.py parse_sig_json(): the verity-sig partition."""
    signature.parse_sig_json(data)


@target("pkcs7")
def _pkcs7(data: bytes) -> None:
    """sysext/signature.py verify() and embedded_subjects() on a hostile DER PKCS#7 blob;
    documented to return a failed check / an empty list, never to raise."""
    certs = _cached("signers", _signers)
    for fp in [signature.fingerprint(c) for c in certs[:1]] + [b"\0" * 32]:
        signature.verify(signature.SigJson(ROOT_HASH, fp, data), ROOT_HASH, certs)
    signature.embedded_subjects(data)


@target("erofs", expected=(MalformedError,), max_len=65536)
def _erofs(data: bytes) -> None:
    """sysext/erofs.py: superblock, inodes, directories, file contents (the root partition)."""
    e = erofs.Erofs(lambda off, n: data[off : off + n], len(data), "root")
    todo: list[int] = [e.root_nid]
    seen: set[int] = set()
    while todo and len(seen) < 64:
        nid = todo.pop()
        if nid in seen:
            continue
        seen.add(nid)
        ino = e.inode(nid)
        if ino.mode & 0o170000 == 0o040000:
            todo.extend(v for k, v in e.listdir(ino).items() if k not in (".", ".."))
        else:
            e.read(ino)
    e.lookup("usr/lib/extension-release.d/extension-release.tiny")


@target("release_fs", expected=(MalformedError,), max_len=65536)
def _release_fs(data: bytes) -> None:
    """sysext/release.py read_from_fs() + check(): the extension-release in an erofs root."""
    rel = release.read_from_fs(data, "erofs", "tiny", "tiny (root file system)")
    release.check(rel, HOST_OS_RELEASE, "x86-64")
    release.check(rel, None, "x86-64")


@target("release")
def _release(data: bytes) -> None:
    """sysext/release.py parse_release() + check(): extension-release text, NUL, host os-release."""
    ext, _, host = _text(data).partition("\0")
    rel = release.Release("extension-release.tiny", release.parse_release(ext), False)
    release.check(rel, release.parse_release(host) if host else HOST_OS_RELEASE, "x86-64")
    release.check(rel, None, "arm64", "portable")


@target("policy", expected=(MalformedError,))
def _policy(data: bytes) -> None:
    """sysext/policy.py parse(): --image-policy strings and sysext.policy in the config; what it
    prints must parse again."""
    pol = policy.parse(_text(data))
    again = policy.parse(str(pol))
    for d in policy.DESIGNATORS:
        _ = (pol.flags(d), again.flags(d))
    policy.evaluate(pol, {})


@target("eventlog", expected=(MalformedError,), max_len=65536)
def _eventlog(data: bytes) -> None:
    """measure/eventlog.py parse() and replay(): the firmware's TPM event log (`tpm verify`)."""
    log = eventlog.parse(data, "binary_bios_measurements")
    for b in log.banks:
        log.replay(b)


@target("tpm_measure_log", expected=(MalformedError,))
def _tpm_measure_log(data: bytes) -> None:
    """measure/eventlog.py parse_user_log(): systemd-pcrextend's JSON-SEQ log, whole and cut off."""
    for aborted in (False, True):
        eventlog.parse_user_log(data, "tpm2-measure.log", aborted).phases()


@target("esl", expected=(MalformedError,))
def _esl(data: bytes) -> None:
    """sysext/trust.py parse_esl(): firmware db/dbx (EFI_SIGNATURE_LISTs)."""
    trust.parse_esl(data, "firmware dbx")


@target("trust_cert", expected=(MalformedError,))
def _trust_cert(data: bytes) -> None:
    """sysext/trust.py certificate loading (verity.d *.crt, PEM or DER) and what `keys list`
    and activate then read from each certificate."""
    for c in trust.load_certificates(data, "/etc/verity.d/x.crt"):
        a = trust.Anchor(c, "/etc/verity.d/x.crt")
        a.as_json(trust.revocation(a, []))


@target("trust_load", expected=(MalformedError,))
def _trust_load(data: bytes) -> None:
    """sysext/trust.py load(): firmware db and dbx from efivarfs (2-byte length of db, db, dbx),
    strict (keys verbs: MalformedError) and not strict (boot: never raises, and an unreadable dbx
    leaves nothing trusted)."""
    (n,) = struct.unpack_from("<H", data.ljust(2, b"\0"))
    db, dbx = data[2 : 2 + n], data[2 + n :]
    d = scratch() / "trustroot" / "efivars"
    d.mkdir(parents=True, exist_ok=True)
    for name, body in (("db", db), ("dbx", dbx)):
        (d / f"{name}-{trust.VARIABLE_GUID[name]}").write_bytes(b"\x07\0\0\0" + body)
    cfg = config.Sysext(firmware=("db",), verity_dirs=())
    store = trust.load(cfg, d.parent, d, strict=False)
    for a in store.anchors:
        a.as_json()
    try:
        trust.parse_esl(dbx, "dbx")
    except MalformedError:
        # Revocation must fail closed (docs/extensions.md, "Under attack and faults"): a dbx that does not
        # parse trusts nothing.
        if store.anchors:
            raise FailOpen(f"dbx does not parse, yet {len(store.anchors)} anchor(s) are trusted") from None
    trust.load(cfg, d.parent, d, strict=True)


def _image_path(data: bytes) -> Path:
    return _write("img/tiny.sysext.raw", data)


@target("image_inspect", expected=(MalformedError,), max_len=65536)
def _image_inspect(data: bytes) -> None:
    """sysext/image.py inspect() on a file (`sysext inspect`)."""
    info = image.inspect(_image_path(data))
    json.dumps(info.as_json())


@target("image_validate", max_len=65536)
def _image_validate(data: bytes) -> None:
    """sysext/image.py validate() as activate runs it: returns a verdict, never raises."""
    pol = _cached("policy", lambda: policy.parse(config.ENFORCED_POLICY))
    v = image.validate(_image_path(data), pol, _cached("signers", _signers), full=True, architecture="x86-64")
    json.dumps(v.as_json())


# --- config, assess/ ----------------------------------------------------------------------------


@target("config", expected=(MalformedError,))
def _config(data: bytes) -> None:
    """config.py load(): /oem/*.yaml."""
    config.load([_write("oem/90_bootkeeper.yaml", data)])


@target("cloudconfig", expected=(MalformedError,))
def _cloudconfig(data: bytes) -> None:
    """assess/cloudconfig.py load() + enabled_units(): a Kairos cloud-config."""
    cfg = cloudconfig.load(_text(data), "/oem/90_custom.yaml")
    cloudconfig.enabled_units(cfg)


@target("lint")
def _lint(data: bytes) -> None:
    """assess/lint.py lint_text(): a cloud-config or a unit file (`bootkeeper lint FILE`);
    problems are findings (one line each, as lint prints them), never errors."""
    for f in lint.lint_text(_text(data), "/oem/90_custom.yaml"):
        _ = (str(f), f.as_json())
        if not f.message.strip() or "\n" in f.message or "\r" in f.message:
            raise BadMessage(f"{f.code} message is not one non-empty line: {f.message[:200]!r}")


@target("history")
def _history(data: bytes) -> None:
    """assess/history.py parse() and what `history show` prints: boots.jsonl; malformed lines
    are skipped with a warning, never an error."""
    boots, _warnings = history.parse(_text(data), "boots.jsonl")
    for b in boots:
        json.dumps(b.as_json())
        history._stamp(b.time)
        if b.verdict_time is not None:
            history._stamp(b.verdict_time)


def _services_root(data: bytes) -> Path:
    root = scratch() / "svcroot"
    p = root / generator.CONFIG
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return root


@target("services", expected=(MalformedError,))
def _services(data: bytes) -> None:
    """assess/services.py listing() (`service list`): etc/bootkeeper/services.json."""
    for e in services.listing(_services_root(data)):
        e.as_json()


@target("generator_config", expected=(generator.GeneratorError,))
def _generator_config(data: bytes) -> None:
    """assess/generator.py load_config(): services.json as the boot-time generator reads it."""
    generator.load_config(str(_services_root(data)))


class Disagree(AssertionError):
    """Two readers of the same rule give different answers."""


@target("generator_counter")
def _generator_counter(data: bytes) -> None:
    """assess/generator.py parse_counter() and failure_reboots() (LoaderBootCountPath and
    LoaderEntrySelected, NUL apart): never raise, and parse_counter() reads a counter exactly
    when esp/counter.py does (the generator keeps its own copy: standard library only)."""
    bcp, _, selected = _text(data).partition("\0")
    generator.failure_reboots(bcp, selected or None, 3)
    base = bcp.replace("\\", "/").rsplit("/", 1)[-1]
    low = base.lower()
    if not low.endswith((".conf", ".efi")):
        return
    c = counter.parse(base, ".conf" if low.endswith(".conf") else ".efi")
    g = generator.parse_counter(bcp)
    mine = (c.tries_left, c.tries_done) if c.counted else None
    theirs = (g[1], g[2]) if g is not None else None
    if mine != theirs:
        raise Disagree(f"{base!r}: esp/counter.py reads {mine}, the generator {theirs}")


# --- measure/: the tpm verbs' inputs (docs/measured-boot.md) ------------------------------------
# Not here: the OCI manifests and registry answers of an update channel, which does not exist yet.


def _fuzz_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@target("luks_metadata", expected=(MalformedError,), max_len=65536)
def _luks_metadata(data: bytes) -> None:
    """measure/luks.py parse_metadata() and what `tpm audit` and the upgrade gates then read of each
    systemd-tpm2 token: the JSON of `cryptsetup luksDump --dump-json-metadata` (the LUKS2 header's
    JSON area, tokens included, which anyone who can write the disk writes)."""
    from bootkeeper.measure import luks

    tokens = luks.parse_metadata(_text(data), "/dev/vda2")
    for t in tokens:
        json.dumps(t.as_json())
        t.unlock_bank()
    luks.audit(tokens, [])
    vol = luks.Volume("/dev/vda2", tuple(tokens))
    luks.extension_gate(vol, luks.PcrlockPolicy(luks.PCRLOCK_DEFAULT_PCRS, "default")).reason()


@target("pcrpkey", expected=(MalformedError,))
def _pcrpkey(data: bytes) -> None:
    """measure/untrusted.py load_public_key(): a UKI's .pcrpkey, a token's tpm2_pubkey (base64-decoded),
    `sign-policy --public-key` (a certificate too); what loads is RSA or EC and has a fingerprint."""
    from bootkeeper.measure import policy, untrusted

    for cert in (False, True):
        policy.fingerprint(untrusted.load_public_key(data, ".pcrpkey of x.efi", certificate=cert))


@target("pcrsig", expected=(MalformedError,), max_len=16384)
def _pcrsig(data: bytes) -> None:
    """measure/policy.py parse_pcrsig() and authorized(): a UKI's .pcrsig (or tpm2-pcr-signature.json)
    checked against a token's key, as `tpm audit` and the upgrade gate do."""
    from bootkeeper.measure import policy
    from bootkeeper.measure.banks import BANKS

    key = _cached("rsa", _fuzz_key).public_key()
    sigs = policy.parse_pcrsig(data, ".pcrsig of x.efi")
    for name in ("sha1", "sha256"):
        policy.authorized(sigs, key, BANKS[name], bytes(BANKS[name].size))
    if sigs:  # one that names the key: its signature is really checked
        s = sigs[0]
        b = BANKS[s.bank]
        fp = policy.fingerprint(key)
        policy.authorized([policy.PcrSig(s.bank, (policy.PCR,), fp, s.pol, s.sig)], key, b, bytes(b.size))


class _SmallBound:
    """uki.MAX_ZERO_FILL lowered while a target runs: the same rule, without hashing 256 MiB per input."""

    def __enter__(self) -> None:
        from bootkeeper.measure import uki

        self.saved = uki.MAX_ZERO_FILL
        uki.MAX_ZERO_FILL = 1 << 20

    def __exit__(self, *exc: object) -> None:
        from bootkeeper.measure import uki

        uki.MAX_ZERO_FILL = self.saved


@target("uki_sections", expected=(MalformedError,), max_len=65536)
def _uki_sections(data: bytes) -> None:
    """measure/uki.py sections_of() for the base and two profiles (.profile splits), section_events()
    (PCR 11 as systemd-stub measures it) and read() of the small sections: what `tpm predict`,
    `sign-policy --uki` and `tpm audit` read of a UKI."""
    from bootkeeper.measure import policy, uki
    from bootkeeper.measure.banks import BANKS
    from bootkeeper.measure.events import replay

    p = _write("EFI/Linux/active+3.efi", data)
    banks = (BANKS["sha256"],)
    with _SmallBound():
        for profile in range(3):
            try:
                s = uki.sections_of(p, "EFI/Linux/active+3.efi", profile)
            except MalformedError:
                if profile == 0:
                    raise
                continue
            events = uki.section_events(s, banks)
            for name in (".osrel", ".uname", ".cmdline", ".pcrsig", ".pcrpkey", ".profile"):
                if s.has(name):
                    s.read(name, 64 << 10)
            uki.has_unpredicted(s)
            handover = {"sha256": replay(events, banks[0], policy.PCR)}
            policy.to_sign(handover, banks, policy.DEFAULT_PHASE_PATHS)


@target("tpm_expect", expected=(MalformedError,), max_len=65536)
def _tpm_expect(data: bytes) -> None:
    """measure/verify.py parse_expected() through the untrusted-JSON loader: `tpm verify --expect`, a
    saved `tpm predict --json`."""
    from bootkeeper.measure import untrusted, verify

    obj = untrusted.load_json(data, "expect.json", 1 << 20, "the output of tpm predict --json")
    for e in verify.parse_expected(obj, "expect.json"):
        for ev in e.events:
            verify.diff_files(ev.files, ())


@target("tpm_verify_json", expected=(MalformedError,))
def _tpm_verify_json(data: bytes) -> None:
    """node/metrics.py read_tpm(): ROOT/run/bootkeeper/tpm-verify.json, `tpm verify`'s result, as
    `bootkeeper metrics` reads it (a file root can write, so hostile in the same way)."""
    from bootkeeper.node import metrics

    root = scratch() / "tpmroot"
    _write(f"tpmroot/{metrics.TPM_VERIFY}", data)
    metrics.read_tpm(root)


@target("pcrlock_policy")
def _pcrlock_policy(data: bytes) -> None:
    """measure/luks.py pcrlock_policy(): /var/lib/systemd/pcrlock.json; documented never to raise
    (what it cannot read gates more: pcrlock's default PCRs)."""
    from bootkeeper.measure import luks

    _write(f"pcrlockroot/{luks.PCRLOCK_POLICY}", data)
    pol = luks.pcrlock_policy(scratch() / "pcrlockroot")
    if "\n" in pol.source:
        raise BadMessage(f"source is not one line: {pol.source[:200]!r}")
