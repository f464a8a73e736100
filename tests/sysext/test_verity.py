"""dm-verity against the real veritysetup (cryptsetup-bin): byte-for-byte hash areas and root
hashes given the same salt and UUID, both directions of verification, and corruption found."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootkeeper.errors import MalformedError
from bootkeeper.sysext import verity

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def _veritysetup() -> None:
    if shutil.which("veritysetup") is None:
        pytest.fail("veritysetup is missing: scripts/setup-test-deps.sh installs cryptsetup-bin")


def _format(data: Path, hashf: Path, salt: bytes, uid: uuid.UUID) -> str:
    p = subprocess.run(
        ["veritysetup", "format", str(data), str(hashf), f"--salt={salt.hex()}", f"--uuid={uid}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return next(x.split(":", 1)[1].strip() for x in p.stdout.splitlines() if x.startswith("Root hash"))


@pytest.mark.parametrize("blocks", [1, 2, 127, 128, 129, 16384, 16385])
def test_byte_for_byte_with_veritysetup(tmp_path: Path, blocks: int) -> None:
    data = tmp_path / "data"
    data.write_bytes(os.urandom(blocks * 4096))
    salt, uid = os.urandom(32), uuid.uuid4()
    ref_root = _format(data, tmp_path / "ref.hash", salt, uid)
    with data.open("rb") as f:
        tree = verity.build(f, salt=salt, uuid=uid.bytes, threads=2)
    assert tree.root_hash.hex() == ref_root
    ours = tree.hash_area()
    ref = (tmp_path / "ref.hash").read_bytes()
    assert ours == ref[: len(ours)] and not ref[len(ours) :].strip(b"\0")
    (tmp_path / "ours.hash").write_bytes(ours)
    subprocess.run(
        ["veritysetup", "verify", str(data), str(tmp_path / "ours.hash"), tree.root_hash.hex()],
        check=True,
        capture_output=True,
    )
    with data.open("rb") as f:
        assert verity.verify(f, ref, bytes.fromhex(ref_root)).ok


def test_corruption_is_found_like_veritysetup(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_bytes(os.urandom(300 * 4096))
    with data.open("rb") as f:
        tree = verity.build(f)
    area = bytearray(tree.hash_area())
    raw = bytearray(data.read_bytes())
    raw[200 * 4096 + 7] ^= 1
    data.write_bytes(bytes(raw))
    (tmp_path / "h").write_bytes(area)
    real = subprocess.run(
        ["veritysetup", "verify", str(data), str(tmp_path / "h"), tree.root_hash.hex()],
        capture_output=True,
        text=True,
        check=False,
    )
    assert real.returncode != 0
    with data.open("rb") as f:
        r = verity.verify(f, bytes(area), tree.root_hash)
        assert not r.ok and r.reason and "data block 200" in r.reason
        assert verity.verify(f, bytes(area), tree.root_hash, full=False).ok  # the tree itself is intact
    area[4096 + 100] ^= 1  # a hash block
    with data.open("rb") as f:
        assert not verity.verify(f, bytes(area), tree.root_hash, full=False).ok


@settings(max_examples=3000, deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_superblock_parser_fuzz(raw: bytes) -> None:
    try:
        verity.Superblock.unpack(raw)
    except MalformedError as exc:
        assert str(exc)


@given(st.binary(min_size=0, max_size=256), st.integers(1, 1 << 40))
def test_superblock_round_trip(salt: bytes, blocks: int) -> None:
    sb = verity.Superblock(1, 1, uuid.uuid4().bytes, "sha256", 4096, 4096, blocks, salt)
    assert verity.Superblock.unpack(sb.pack()) == sb


def test_superblock_salt_over_256_refused() -> None:
    sb = verity.Superblock(1, 1, b"\0" * 16, "sha256", 4096, 4096, 1, b"").pack()
    bad = bytearray(sb)
    # salt_size follows signature, version, type, uuid, algorithm, block sizes and block count
    bad[0x50:0x52] = (300).to_bytes(2, "little")
    with pytest.raises(MalformedError, match="salt size 300"):
        verity.Superblock.unpack(bytes(bad))


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
def test_corrupt_data_block_is_named_for_every_digest_size(tmp_path: Path, algorithm: str) -> None:
    """sha1's 20-byte digests sit in 32-byte slots (zero padded): the streamed comparison of a whole
    read must still find and name the one bad block, and veritysetup agrees the data is bad."""
    data = tmp_path / "data"
    data.write_bytes(os.urandom(2000 * 4096))  # more than one 256-block read of the leaf level
    with data.open("rb") as f:
        tree = verity.build(f, algorithm=algorithm)
        assert verity.verify(f, tree.hash_area(), tree.root_hash).ok
    raw = bytearray(data.read_bytes())
    raw[1777 * 4096 + 5] ^= 0x80
    data.write_bytes(bytes(raw))
    (tmp_path / "h").write_bytes(tree.hash_area())
    real = subprocess.run(
        ["veritysetup", "verify", str(data), str(tmp_path / "h"), tree.root_hash.hex()],
        capture_output=True,
        check=False,
    )
    assert real.returncode != 0
    with data.open("rb") as f:
        r = verity.verify(f, tree.hash_area(), tree.root_hash)
    assert not r.ok and r.reason and "data block 1777 " in r.reason
