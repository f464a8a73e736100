"""Make the seed corpora (``tests/data/fuzz/<target>/seed-*``): small valid inputs, from the
repository's test data and from the real tools (mkfs.erofs through `bootkeeper sysext build`,
cryptography's PKCS#7 signer). Run by ``fuzz/run.py --seeds``; the outputs are kept in the
repository, so the regression test never needs the tools.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bootkeeper.sysext import gpt, signature, trust
from fuzz.targets import CORPUS, REPO, ROOT_HASH, SIGNER

# the test suite's ESL writer, written apart from the parser these seeds feed
sys.path.insert(0, str(REPO / "tests"))
from helpers import build_esl


def _pe(sections: dict[str, bytes]) -> bytes:
    """A minimal PE32+ file carrying ``sections`` (what systemd-boot reads of a UKI)."""
    pe_off, opt_size = 0x40, 0xF0
    table_off = pe_off + 24 + opt_size
    data_off = (table_off + 40 * len(sections) + 0x1FF) & ~0x1FF
    dos = b"MZ".ljust(0x3C, b"\0") + struct.pack("<I", pe_off)
    coff = b"PE\0\0" + struct.pack("<HHIIIHH", 0x8664, len(sections), 0, 0, 0, opt_size, 0x22)
    opt = struct.pack("<H", 0x20B).ljust(opt_size, b"\0")
    table, body, off = b"", b"", data_off
    for name, data in sections.items():
        size = len(data)
        table += struct.pack("<8sIIIIIIHHI", name.encode(), size, off, size, off, 0, 0, 0, 0, 0x40000040)
        body += data
        off += size
    head = (dos + coff + opt + table).ljust(data_off, b"\0")
    return head + body


def _signed_with_attributes(key: Any, cert: Any) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

    builder = pkcs7.PKCS7SignatureBuilder().set_data(ROOT_HASH.hex().encode()).add_signer(cert, key, hashes.SHA256())
    return builder.sign(Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary])


def _partition(img: bytes, designator: str) -> bytes:
    t = gpt.read(io.BytesIO(img), len(img), "seed image")
    p = next(p for p in t.partitions if p.designator == designator)
    return img[p.offset : p.offset + p.size]


def _build_image(tmp: Path, key: Path, cert: Path) -> bytes:
    tree = tmp / "tree"
    (tree / "usr/lib/extension-release.d").mkdir(parents=True)
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/lib/extension-release.d/extension-release.tiny").write_text("ID=_any\nARCHITECTURE=x86-64\n")
    (tree / "usr/bin/hello").write_text("#!/bin/sh\necho hello\n")
    out = tmp / "tiny.sysext.raw"
    bk = str(Path(sys.executable).with_name("bootkeeper"))
    subprocess.run(
        [bk, "sysext", "build", str(tree), "-o", str(out), "--key", str(key), "--cert", str(cert)], check=True
    )
    return out.read_bytes()


def _event_log(banks: dict[int, int], records: list[tuple[int, int, bytes]]) -> bytes:
    """A TCG2 crypto-agile event log (PC Client PFP 10.2): the Spec ID Event03 header, a
    StartupLocality record, then ``records`` (pcr, type, data) with each bank's digest of the data."""
    names = {0x4: "sha1", 0xB: "sha256", 0xC: "sha384", 0xD: "sha512"}
    spec = b"Spec ID Event03\0" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(banks))
    spec += b"".join(struct.pack("<HH", a, n) for a, n in banks.items()) + b"\0"
    out = struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", len(spec)) + spec
    for pcr, etype, data in [(0, 3, b"StartupLocality\0\3"), *records]:
        out += struct.pack("<III", pcr, etype, len(banks))
        for a, n in banks.items():
            out += struct.pack("<H", a) + (bytes(n) if etype == 3 else hashlib.new(names[a], data).digest())
        out += struct.pack("<I", len(data)) + data
    return out


def _luks_metadata(tmp: Path, token: dict[str, Any] | None) -> bytes:
    """``cryptsetup luksDump --dump-json-metadata`` of a LUKS2 volume by the real cryptsetup, with
    ``token`` put in by ``cryptsetup token import`` (as tests/measure/test_tpm_hostile.py makes them)."""
    vol, key = tmp / "v.luks", tmp / "pass"
    vol.unlink(missing_ok=True)
    with vol.open("wb") as f:
        f.truncate(32 << 20)
    key.write_text("fuzz")
    fmt = ["luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
    subprocess.run(["cryptsetup", *fmt, "--key-file", str(key), str(vol)], check=True, capture_output=True)
    if token is not None:
        (tmp / "t.json").write_text(json.dumps(token))
        imp = ["token", "import", "--disable-external-tokens", "--json-file", str(tmp / "t.json"), str(vol)]
        subprocess.run(["cryptsetup", *imp], check=True, capture_output=True)
    dump = ["cryptsetup", "luksDump", "--dump-json-metadata", str(vol)]
    return subprocess.run(dump, check=True, capture_output=True).stdout


def measure_seeds() -> dict[str, dict[str, bytes]]:
    """The tpm verbs' inputs (docs/measured-boot.md): LUKS2 metadata with a signed-policy token, keys, a
    .pcrsig that `tpm sign-policy` wrote (ukify's format), UKIs with and without profiles, a saved
    `tpm predict --json`, a tpm-verify.json, a pcrlock.json."""
    import base64
    import os

    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from bootkeeper.esp.scratch import stand_in_uki
    from bootkeeper.measure import policy, uki
    from bootkeeper.measure.banks import BANKS
    from bootkeeper.measure.events import replay

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub_pem = rsa_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    ec_der = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    token = {
        "type": "systemd-tpm2",
        "keyslots": [],
        "tpm2-blob": "AA==",
        "tpm2-pcrs": [7],
        "tpm2-pcr-bank": "sha256",
        "tpm2-policy-hash": "00",
        "tpm2_pubkey": base64.b64encode(pub_pem).decode(),
        "tpm2_pubkey_pcrs": [11],
        "tpm2_pcrlock": False,
        "tpm2-pin": False,
    }
    osrel = b"ID=kairos\nVERSION_ID=2\n"
    base = stand_in_uki(((b".linux", b"kernel"), (b".osrel", osrel), (b".uname", b"6.12.0"), (b".pcrpkey", pub_pem)))
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        signed_meta = _luks_metadata(tmp, token)
        plain_meta = _luks_metadata(tmp, None)
        u = tmp / "u.efi"
        u.write_bytes(base)
        banks = (BANKS["sha1"], BANKS["sha256"])
        events = uki.section_events(uki.sections_of(u, "u.efi"), banks)
        handover = {b.name: replay(events, b, policy.PCR) for b in banks}
        items = policy.to_sign(handover, banks, policy.DEFAULT_PHASE_PATHS)
        pcrsig = policy.dump_pcrsig(policy.as_object(policy.sign(items, rsa_key))).encode()
        signed = stand_in_uki(
            ((b".linux", b"kernel"), (b".osrel", osrel), (b".pcrpkey", pub_pem), (b".pcrsig", pcrsig))
        )
        profiles = stand_in_uki(
            (
                (b".linux", b"kernel"),
                (b".osrel", osrel),
                (b".profile", b"ID=main\nTITLE=Main\n"),
                (b".profile", b"ID=debug\nTITLE=Debug\n"),
                (b".cmdline", b"debug"),
                (b".linux", b"debug kernel"),
            )
        )
        esp = tmp / "esp"
        (esp / "EFI/Linux").mkdir(parents=True)
        (esp / "EFI/Linux/active+3.efi").write_bytes(base)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        predict = [sys.executable, "-m", "bootkeeper", "tpm", "predict", "--esp", str(esp), "--json"]
        expect = subprocess.run(predict, check=True, capture_output=True, env=env).stdout
    verify_json = {
        "booted": {"entry": "active.efi", "uki": "EFI/Linux/active+3.efi", "found_by": "the log"},
        "agree": True,
        "pcrs": [{"bank": "sha256", "pcr": 11, "live": "00" * 32, "replayed": "00" * 32, "agree": True}],
        "findings": [],
        "notes": [],
    }
    pcrlock = {"pcrBank": "sha256", "pcrValues": [{"pcr": 7, "value": "00" * 32}, {"pcr": 11, "value": "11" * 32}]}
    return {
        "luks_metadata": {"signed": signed_meta, "plain": plain_meta},
        "pcrpkey": {"rsa-pem": pub_pem, "ec-der": ec_der},
        "pcrsig": {"sign-policy": pcrsig},
        "uki_sections": {"signed": signed, "profiles": profiles},
        "tpm_expect": {"predict": expect},
        "tpm_verify_json": {"agree": json.dumps(verify_json, indent=2).encode()},
        "pcrlock_policy": {"two-pcrs": json.dumps(pcrlock).encode()},
    }


def make() -> dict[str, dict[str, bytes]]:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    seeds: dict[str, dict[str, bytes]] = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        rsa_key, rsa_cert = signature.self_signed("rsa", cn="bootkeeper fuzz rsa")
        ec_key, ec_cert = signature.self_signed("ec", cn="bootkeeper fuzz ec")
        attrs_key, attrs_cert = signature.self_signed("rsa", cn="bootkeeper fuzz rsa attrs")
        SIGNER.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in (rsa_cert, ec_cert, attrs_cert)))
        (tmp / "key.pem").write_bytes(rsa_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        (tmp / "cert.pem").write_bytes(rsa_cert.public_bytes(Encoding.PEM))
        img = _build_image(tmp, tmp / "key.pem", tmp / "cert.pem")
    rsa_sig = signature.sign(ROOT_HASH, rsa_key, rsa_cert)
    ec_sig = signature.sign(ROOT_HASH, ec_key, ec_cert)
    repart = (REPO / "tests/data/kairos-test.sysext.raw").read_bytes()
    repart_sig = _partition(repart, "root-verity-sig")
    lint_dir = REPO / "tests/data/lint"

    seeds["counter"] = {n: n.encode() for n in ("active+3.conf", "passive+2-1.conf", "recovery+0-3.efi", "x.conf")}
    conf = b"title Kairos active\nversion 2.4\nsort-key 1-active\nlinux /vmlinuz\ninitrd /initrd\noptions ro quiet\n"
    seeds["keyvalue"] = {"entry": conf, "osrel": b'ID=kairos\nVERSION="2.4"\n'}
    seeds["entry_conf"] = {"active": b"active+3.conf\n" + conf, "uki": b"passive+1-2.conf\ntitle p\nuki /EFI/p.efi\n"}
    osrel = b'NAME="Kairos"\nID=kairos\nIMAGE_ID=kairos-active\nIMAGE_VERSION=2.4\nPRETTY_NAME="Kairos 2.4"\n'
    seeds["uki_osrel"] = {"osrel": osrel}
    seeds["loader_conf"] = {"loader": b"timeout 3\ndefault active+3.conf\neditor no\n", "saved": b"default @saved\n"}
    sdmagic = b"#### LoaderInfo: systemd-boot 257.9-1~deb13u1 ####\0"
    seeds["pe"] = {"uki": _pe({".osrel": osrel, ".linux": b"\0" * 64}), "sdboot": _pe({".sdmagic": sdmagic})}
    seeds["efivars"] = {
        "selected": b"\x06\0\0\0" + "active+2-1.conf\0".encode("utf-16-le"),
        "countpath": b"\x06\0\0\0" + "\\loader\\entries\\active+2-1.conf\0".encode("utf-16-le"),
    }
    seeds["fnmatch"] = {"star": b"active*\0active+2-1.conf", "set": b"[ab]ctive?.conf\0active1.conf"}
    seeds["gpt"] = {"tiny": img}
    seeds["verity_superblock"] = {
        "tiny": _partition(img, "root-verity")[:512],
        "repart": _partition(repart, "root-verity")[:512],
    }
    seeds["sig_json"] = {"tiny": _partition(img, "root-verity-sig").rstrip(b"\0"), "repart": repart_sig.rstrip(b"\0")}
    seeds["pkcs7"] = {
        "rsa": rsa_sig.signature,
        "ec": ec_sig.signature,
        "rsa-attrs": _signed_with_attributes(attrs_key, attrs_cert),  # and the certificate embedded
        "repart": signature.parse_sig_json(repart_sig).signature,
    }
    fs = _partition(img, "root")
    seeds["erofs"] = {"tiny": fs}
    seeds["release_fs"] = {"tiny": fs}
    seeds["release"] = {
        "any": b"ID=_any\nARCHITECTURE=x86-64\n",
        "level": b"ID=debian\nSYSEXT_LEVEL=1.0\nSYSEXT_SCOPE='system portable'\n\0ID=debian\nSYSEXT_LEVEL=1.0\n",
    }
    seeds["policy"] = {
        "default": b"root=signed+absent:usr=signed+absent",
        "seed": b"root=verity+signed+absent:usr=verity+signed+absent",
        "star": b"=unused+absent:root=signed+read-only-on+erofs:usr=*:home=-:srv=~",
    }
    der = rsa_cert.public_bytes(Encoding.DER)
    owner = uuid.UUID("11111111-2222-3333-4444-555555555555")
    db = build_esl([(trust.EFI_CERT_X509, owner, der)])
    dbx = build_esl([(trust.EFI_CERT_SHA256, owner, hashlib.sha256(b"revoked").digest())])
    seeds["esl"] = {"db": db, "dbx": dbx}
    seeds["trust_cert"] = {"pem": rsa_cert.public_bytes(Encoding.PEM), "der": ec_cert.public_bytes(Encoding.DER)}
    seeds["trust_cert"]["repart"] = (REPO / "tests/data/cert.pem").read_bytes()
    seeds["trust_load"] = {"db-dbx": struct.pack("<H", len(db)) + db + dbx}
    seeds["image_inspect"] = {"tiny": img}
    seeds["image_validate"] = {"tiny": img}
    seeds["config"] = {
        "full": b"boot_assessment:\n  tries: 3\n  services:\n    - name: k3s.service\n      reboot_on_failure: active\n"
        b"sysext:\n  mode: enforced\n  policy: root=signed+absent:usr=signed+absent\n  firmware: [db]\n",
    }
    yamls = {p.stem: p.read_bytes() for p in sorted(lint_dir.glob("*.yaml"))}
    units = {p.stem: p.read_bytes() for p in sorted(lint_dir.glob("*.conf"))}
    seeds["cloudconfig"] = dict(list(yamls.items())[:6])
    seeds["lint"] = dict(list(yamls.items())[:4]) | dict(list(units.items())[:3])
    boot = {"type": "boot", "boot_id": "b1", "time": 1764000000.5, "entry": "loader/entries/active+2-1.conf"}
    boot |= {"role": "active", "tries_left": 2, "tries_done": 1, "entries": []}
    verdict = {"type": "verdict", "boot_id": "b1", "time": 1764000060, "verdict": "good"}
    seeds["history"] = {"boots": (json.dumps(boot) + "\n" + json.dumps(verdict) + "\n").encode()}
    seeds["services"] = {"record": json.dumps({"version": 1, "services": {"k3s.service": "active"}}).encode()}
    seeds["generator_config"] = seeds["services"]
    stub = [(4, 4, bytes(4)), (11, 0xD, ".linux\0".encode("utf-16-le")), (12, 6, bytes(8) + "1\0".encode("utf-16-le"))]
    seeds["eventlog"] = {
        "sha256": _event_log({0xB: 32}, stub),
        "four-banks": _event_log({0x4: 20, 0xB: 32, 0xC: 48, 0xD: 64}, stub),
    }
    phase = {"pcr": 11, "digests": [{"hashAlg": "sha256", "digest": hashlib.sha256(b"sysinit").hexdigest()}]}
    phase["content"] = {"string": "sysinit", "eventType": "phase"}
    seeds["tpm_measure_log"] = {"phases": b"\x1e" + json.dumps(phase).encode() + b"\n" + b'\x1e{"pcr": 11'}
    seeds["generator_counter"] = {
        "last-try": b"\\loader\\entries\\active+0-3.conf\0active+1-2.conf",
        "counting": b"\\EFI\\Linux\\active+2-1.efi",
    }
    seeds |= measure_seeds()
    return seeds


def write(only: dict[str, dict[str, bytes]] | None = None) -> None:
    """Every target's seeds, or ``only`` those given (e.g. ``measure_seeds()``)."""
    for name, items in (make() if only is None else only).items():
        d = CORPUS / name
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("seed-*"):
            old.unlink()
        for label, data in items.items():
            (d / f"seed-{label}").write_bytes(data)
