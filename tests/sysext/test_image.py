"""inspect/validate on the reference image systemd-repart 257 made, and hostile variants of it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from bootkeeper.sysext import gpt, image, policy

REF = Path(__file__).resolve().parents[1] / "data"  # copied from shared/reference (see data/README.md)
IMG = REF / "kairos-test.sysext.raw"
ROOT_HASH = "d436759650939e5864323298c629d3c6b1cce030e2c72e49d6ec20fc225fff48"
ENFORCED = policy.parse(policy.ENFORCED_DEFAULT)
SEED = policy.parse(policy.SEED_POLICY)


def _cert() -> x509.Certificate:
    return x509.load_pem_x509_certificate((REF / "cert.pem").read_bytes())


def test_inspect_reference() -> None:
    info = image.inspect(IMG)
    assert info.found["root"].architecture == "x86-64"
    assert info.fstype["root"] == "erofs"
    rh = info.root_hash("root")
    assert rh is not None and rh.hex() == ROOT_HASH
    j = info.as_json()
    assert j["root"]["root_hash"] == ROOT_HASH and j["root"]["verity"]["data_blocks"] == 1
    assert j["root"]["extension_release"] == {"file": "extension-release.kairos-test", "fields": {"ID": "_any"}}
    assert j["root"]["signature"]["claimed_signer"] == ["Common Name: kairos-test-db"]


@pytest.mark.parametrize("full", [False, True])
def test_validate_reference(full: bool) -> None:
    v = image.validate(IMG, ENFORCED, [_cert()], full=full, architecture="x86-64")
    assert v.ok, v.reasons
    assert v.qualified_as == "signed" and v.root_hash == ROOT_HASH and v.signer


def test_untrusted_is_refused_enforced_but_passes_seed_policy_as_verity() -> None:
    v = image.validate(IMG, ENFORCED, [], architecture="x86-64")
    assert not v.ok and any("root is verity" in r for r in v.reasons)
    s = image.validate(IMG, SEED, [], architecture="x86-64")
    assert s.ok and s.qualified_as == "verity"


def test_wrong_architecture() -> None:
    v = image.validate(IMG, ENFORCED, [_cert()], architecture="arm64")
    assert not v.ok and any("x86-64" in r for r in v.reasons)


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, x509.Certificate]:
    """A 300-block image (three-level tree) signed with a fresh key, built by assemble()."""
    import os

    from bootkeeper.sysext import signature

    key, cert = signature.self_signed("ec", "vendor")
    d = tmp_path_factory.mktemp("img")
    tree = d / "tree"
    (tree / "usr/lib/extension-release.d").mkdir(parents=True)
    (tree / "usr/lib/extension-release.d/extension-release.big").write_text("ID=_any\n")
    (tree / "usr/bin").mkdir()
    (tree / "usr/bin/blob").write_bytes(os.urandom(300 * 4096))
    subprocess.run(["mkfs.erofs", "-T0", "--all-root", str(d / "fs"), str(tree)], check=True, capture_output=True)
    p = d / "big.raw"
    p.write_bytes(image.assemble((d / "fs").read_bytes(), key, cert))
    return p, cert


def _tampered(src: Path, tmp: Path, where: str) -> Path:
    (tmp / where).mkdir()
    out = tmp / where / src.name  # the extension-release is named after the image
    shutil.copy(src, out)
    des = image.inspect(src).found["root"]
    assert des.verity is not None and des.sig is not None
    offs = {
        "data": des.data.offset + 200 * 4096 + 100,
        "hash": des.verity.offset + 3 * 4096 + 5,
        "top": des.verity.offset + 4096 + 5,
        "superblock": des.verity.offset + 0x58,
        "sig": des.sig.offset + 20,
    }
    raw = bytearray(out.read_bytes())
    raw[offs[where]] ^= 0x01
    out.write_bytes(bytes(raw))
    return out


@pytest.mark.parametrize(
    ("where", "full", "words"),
    [
        ("data", True, "data block 200"),
        ("hash", False, "hash tree level"),
        ("top", False, "root hash does not match the top"),
        ("superblock", False, "root-verity"),
        ("sig", False, "root"),
    ],
)
def test_tampered(signed: tuple[Path, x509.Certificate], tmp_path: Path, where: str, full: bool, words: str) -> None:
    img, cert = signed
    assert image.validate(img, ENFORCED, [cert], full=True, architecture="x86-64").ok
    v = image.validate(_tampered(img, tmp_path, where), ENFORCED, [cert], full=full, architecture="x86-64")
    assert not v.ok
    assert any(words in r for r in v.reasons), v.reasons


def test_data_flip_needs_full(signed: tuple[Path, x509.Certificate], tmp_path: Path) -> None:
    # the cheap check reads only the tree: a flipped data block is what --full (or the kernel) finds
    img, cert = signed
    p = _tampered(img, tmp_path, "data")
    assert image.validate(p, ENFORCED, [cert], architecture="x86-64").ok
    assert not image.validate(p, ENFORCED, [cert], full=True, architecture="x86-64").ok


def test_reference_single_block_data_flip(tmp_path: Path) -> None:
    # one data block: no tree, the root hash covers the block itself, so even the cheap check sees it
    out = tmp_path / "r.raw"
    raw = bytearray(IMG.read_bytes())
    raw[image.inspect(IMG).found["root"].data.offset + 7] ^= 1
    out.write_bytes(bytes(raw))
    v = image.validate(out, ENFORCED, [_cert()], architecture="x86-64")
    assert not v.ok and any("root hash does not match the data" in r for r in v.reasons)


def test_truncated_and_garbage(tmp_path: Path) -> None:
    t = tmp_path / "t.raw"
    t.write_bytes(IMG.read_bytes()[: 600 * 1024])
    v = image.validate(t, ENFORCED, [_cert()], architecture="x86-64")
    assert not v.ok and "truncated" in v.reasons[0]
    g = tmp_path / "g.raw"
    g.write_bytes(b"\0" * 8192)
    assert not image.validate(g, ENFORCED, [], architecture="x86-64").ok
    assert gpt.TYPES["root"]["x86-64"] in {p.type_uuid for p in image.inspect(IMG).table.partitions}


def test_build_writes_its_image_crash_safe(tmp_path: Path) -> None:
    """build() writes through fsutil.write_atomic like every write of ours: the folder is fsynced
    after the rename (its own write had no directory fsync), and a crash at any step before the
    rename leaves the previous image as it was and no temporary behind."""
    from bootkeeper.sysext import image, signature

    key, cert = signature.self_signed("ec", "vendor")
    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/x").write_bytes(b"x" * 1000)
    out = tmp_path / "out" / "x.raw"
    out.parent.mkdir()
    steps: list[str] = []
    image.build(tree, out, key, cert, step=steps.append)
    assert [s.split(":")[0] for s in steps] == ["write", "fsync", "rename", "fsync-renamed", "fsync-dir"]
    assert steps[-1] == "fsync-dir:out"
    good = out.read_bytes()

    class Crash(Exception):
        pass

    for at in ("write", "fsync", "rename"):

        def crash(name: str, at: str = at) -> None:
            if name.startswith(f"{at}:"):
                raise Crash

        with pytest.raises(Crash):
            image.build(tree, out, key, cert, step=crash)
        assert sorted(p.name for p in out.parent.iterdir()) == ["x.raw"] and out.read_bytes() == good
