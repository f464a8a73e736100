"""Hostile images, generated from a good one: each is refused under the enforced policy with a
reason that names it, never a traceback; the seed's looser policy shows which still "pass" as
plain verity. The table is printed (pytest -s, and in the terminal summary)."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from bootkeeper.sysext import gpt, image, policy, signature

HOSTILE_ROWS: list[str] = []
ENFORCED = policy.parse(policy.ENFORCED_DEFAULT)
SEED = policy.parse(policy.SEED_POLICY)


VENDOR = signature.self_signed("ec", "vendor")
ATTACKER = signature.self_signed("ec", "attacker")


def _fs(tmp: Path, release_name: str = "img", blob: int = 700_000, extra: dict[str, str] | None = None) -> bytes:
    t = tmp / f"tree-{os.urandom(4).hex()}"
    (t / "usr/lib/extension-release.d").mkdir(parents=True)
    (t / f"usr/lib/extension-release.d/extension-release.{release_name}").write_text("ID=_any\n")
    (t / "usr/bin").mkdir()
    (t / "usr/bin/blob").write_bytes(os.urandom(blob))
    for rel, text in (extra or {}).items():
        (t / rel).parent.mkdir(parents=True, exist_ok=True)
        (t / rel).write_text(text)
    out = tmp / f"fs-{os.urandom(4).hex()}"
    subprocess.run(["mkfs.erofs", "-T0", "--all-root", str(out), str(t)], check=True, capture_output=True)
    return out.read_bytes()


def _flip(raw: bytes, off: int) -> bytes:
    b = bytearray(raw)
    b[off] ^= 1
    return bytes(b)


def _parts(raw: bytes) -> dict[str, gpt.Partition]:
    t = gpt.read(io.BytesIO(raw), len(raw))
    return {p.designator or "?": p for p in t.partitions}


def _rewrite(raw: bytes, change: Callable[[list[gpt.NewPartition]], list[gpt.NewPartition]]) -> bytes:
    t = gpt.read(io.BytesIO(raw), len(raw))
    parts = [
        gpt.NewPartition(p.type_uuid, p.part_uuid, p.name, raw[p.offset : p.offset + p.size], p.attributes)
        for p in t.partitions
    ]
    out = io.BytesIO()
    gpt.write(out, change(parts), t.disk_uuid)
    return out.getvalue()


def _patch_sb(raw: bytes, field_off: int, value: bytes) -> bytes:
    p = _parts(raw)["root-verity"]
    b = bytearray(raw)
    b[p.offset + field_off : p.offset + field_off + len(value)] = value
    return bytes(b)


def _swap_sig(raw: bytes, other: bytes) -> bytes:
    mine, theirs = _parts(raw)["root-verity-sig"], _parts(other)["root-verity-sig"]
    b = bytearray(raw)
    b[mine.offset : mine.offset + 4096] = other[theirs.offset : theirs.offset + 4096]
    return bytes(b)


def _resign(raw: bytes, key: object, cert: x509.Certificate, fp_cert: x509.Certificate | None = None) -> bytes:
    p = _parts(raw)["root-verity-sig"]
    old = signature.parse_sig_json(raw[p.offset : p.offset + 4096])
    new = signature.sign(old.root_hash, key, cert)  # type: ignore[arg-type]
    if fp_cert is not None:
        new = signature.SigJson(new.root_hash, signature.fingerprint(fp_cert), new.signature)
    b = bytearray(raw)
    b[p.offset : p.offset + 4096] = new.dump()
    return bytes(b)


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return image.assemble(_fs(tmp_path_factory.mktemp("fs")), VENDOR[0], VENDOR[1])


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return image.assemble(_fs(tmp_path_factory.mktemp("fs2")), VENDOR[0], VENDOR[1])


def _cases(good: bytes, other: bytes, tmp: Path) -> dict[str, tuple[bytes, str]]:
    p = _parts(good)
    data, ver = p["root"], p["root-verity"]
    sig = p["root-verity-sig"]
    rh = signature.parse_sig_json(good[sig.offset : sig.offset + 4096]).root_hash
    wrong_json = signature.SigJson(
        bytes(32),
        signature.parse_sig_json(good[sig.offset : sig.offset + 4096]).fingerprint,
        signature.parse_sig_json(good[sig.offset : sig.offset + 4096]).signature,
    ).dump()
    b = bytearray(good)
    b[sig.offset : sig.offset + 4096] = wrong_json
    gpt_bad = bytearray(good)
    gpt_bad[512 + 40] ^= 1
    return {
        "flipped bit in a data block (--full)": (_flip(good, data.offset + 50 * 4096 + 3), "data block 50"),
        "flipped bit in a hash block": (_flip(good, ver.offset + 2 * 4096 + 64), "hash tree level"),
        "flipped bit in the superblock (salt)": (_flip(good, ver.offset + 0x58), "root hash does not match"),
        "root hash in the JSON differs from the tree": (bytes(b), "root hash does not match"),
        "untrusted key, embeds its own certificate": (_resign(good, *ATTACKER), "no trusted certificate"),
        "fingerprint names another certificate": (
            _resign(good, ATTACKER[0], ATTACKER[1], VENDOR[1]),
            "signer is not the trusted certificate",
        ),
        "valid signature copied from another image": (_swap_sig(good, other), "root hash does not match"),
        "truncated image": (good[: len(good) // 2], "truncated"),
        "bad GPT header CRC": (bytes(gpt_bad), "CRC32"),
        "two root partitions": (_rewrite(good, lambda ps: [*ps, ps[0]]), "two root partitions"),
        "wrong architecture (arm64 types)": (
            _rewrite(
                good,
                lambda ps: [
                    gpt.NewPartition(gpt.TYPES[d]["arm64"], x.part_uuid, x.name, x.data)
                    for d, x in zip(("root", "root-verity", "root-verity-sig"), ps, strict=True)
                ],
            ),
            "arm64",
        ),
        "missing extension-release": (
            image.assemble(_fs(tmp, release_name="other"), *VENDOR),
            "no usr/lib/extension-release.d/extension-release.img",
        ),
        "image carries its own os-release": (
            image.assemble(_fs(tmp, extra={"usr/lib/os-release": "ID=debian\n"}), *VENDOR),
            "own os-release",
        ),
        "salt size over 256": (_patch_sb(good, 0x50, struct.pack("<H", 300)), "salt size 300"),
        "data_blocks larger than the partition": (_patch_sb(good, 0x48, struct.pack("<Q", 10**6)), "data blocks"),
        "unsigned verity image": (image.assemble(_fs(tmp), None, None), "no signature partition"),
        "unprotected image (no verity)": (
            _rewrite(image.assemble(_fs(tmp), None, None), lambda ps: ps[:1]),
            "root is unprotected",
        ),
        "_": (rh, ""),
    }


def test_hostile_images(good: bytes, other: bytes, tmp_path: Path) -> None:
    cases = _cases(good, other, tmp_path)
    cases.pop("_")
    ok_img = tmp_path / "ok" / "img.raw"
    ok_img.parent.mkdir()
    ok_img.write_bytes(good)
    assert image.validate(ok_img, ENFORCED, [VENDOR[1]], full=True, architecture="x86-64").ok
    HOSTILE_ROWS.append("| image | enforced policy: reason | seed policy root=verity+signed+absent |")
    HOSTILE_ROWS.append("|---|---|---|")
    for name, (raw, words) in cases.items():
        d = tmp_path / uuid.uuid4().hex
        d.mkdir()
        path = d / "img.raw"
        path.write_bytes(raw)
        full = "--full" in name
        v = image.validate(path, ENFORCED, [VENDOR[1]], full=full, architecture="x86-64")
        assert not v.ok, name
        assert any(words in r for r in v.reasons), (name, v.reasons)
        s = image.validate(path, SEED, [VENDOR[1]], full=full, architecture="x86-64")
        seed = f"PASS as {s.qualified_as}" if s.ok else "refused"
        HOSTILE_ROWS.append(f"| {name} | {v.reasons[0]} | {seed} |")
    print("\n".join(HOSTILE_ROWS))
