"""Both directions against systemd 257 (in a trixie tree, scripts/setup-trixie.sh):
images made by the real systemd-repart -S validate with bootkeeper; images made by bootkeeper
pass the real systemd-dissect --validate and are reported by systemd-dissect --json=short with
the same root hash (its partition UUIDs) and architecture."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

import trixie
from bootkeeper.sysext import image, policy

pytestmark = pytest.mark.integration
ENFORCED = policy.ENFORCED_DEFAULT


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not trixie.available():
        pytest.fail(f"no systemd 257 tree at {trixie.ROOT}: scripts/setup-trixie.sh makes it (make test runs it)")
    w = tmp_path_factory.mktemp("interop")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bootkeeper",
            "keys",
            "generate",
            "--key",
            str(w / "key.pem"),
            "--cert",
            str(w / "cert.pem"),
            "--cn",
            "interop",
        ],
        check=True,
        capture_output=True,
    )
    t = w / "tree"
    (t / "usr/lib/extension-release.d").mkdir(parents=True)
    (t / "usr/lib/extension-release.d/extension-release.repart").write_text("ID=_any\n")
    (t / "usr/bin").mkdir()
    (t / "usr/bin/payload").write_bytes(os.urandom(1_500_000))
    return w


def _cert(w: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((w / "cert.pem").read_bytes())


def test_repart_image_validates_with_bootkeeper(work: Path) -> None:
    p = trixie.run(
        "SOURCE_DATE_EPOCH=0 systemd-repart --offline=yes -S -s tree --seed=7c7f1bfa-5b2f-4a5e-9c57-5b3d0bd3a7a1 "
        "--private-key=key.pem --certificate=cert.pem repart.sysext.raw",
        work,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    img = work / "repart.sysext.raw"
    v = image.validate(img, policy.parse(ENFORCED), [_cert(work)], full=True, architecture="x86-64")
    assert v.ok and v.qualified_as == "signed", v.reasons
    info = image.inspect(img)
    j = json.loads(trixie.run("systemd-dissect --json=short repart.sysext.raw", work).stdout)
    uuids = {m["designator"]: m["partition_uuid"] for m in j["mounts"]}
    assert uuids["root"].replace("-", "") + uuids["root-verity"].replace("-", "") == v.root_hash
    assert info.found["root"].architecture == j["architecture"]
    untrusted = image.validate(img, policy.parse(ENFORCED), [], architecture="x86-64")
    assert not untrusted.ok


def test_bootkeeper_image_accepted_by_systemd_dissect(work: Path) -> None:
    shutil.copytree(work / "tree", work / "ourtree")
    rel = work / "ourtree/usr/lib/extension-release.d"
    (rel / "extension-release.repart").rename(rel / "extension-release.ours")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "bootkeeper",
            "sysext",
            "build",
            str(work / "ourtree"),
            "-o",
            str(work / "ours.sysext.raw"),
            "--key",
            str(work / "key.pem"),
            "--cert",
            str(work / "cert.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    val = trixie.run(f"systemd-dissect --validate --image-policy={ENFORCED} ours.sysext.raw", work)
    assert val.returncode == 0, val.stdout + val.stderr
    j = json.loads(trixie.run("systemd-dissect --json=short ours.sysext.raw", work).stdout)
    info = image.inspect(work / "ours.sysext.raw")
    rh = info.root_hash("root")
    assert rh is not None
    mounts = {m["designator"]: m for m in j["mounts"]}
    assert (
        mounts["root"]["partition_uuid"].replace("-", "") + mounts["root-verity"]["partition_uuid"].replace("-", "")
        == rh.hex()
    )
    assert j["architecture"] == "x86-64" and mounts["root"]["verity"] == "signed"
    assert mounts["root"]["fstype"] == "erofs"
    assert "ID=_any" in j["sysextRelease"]


def test_what_dissect_validate_does_not_check(work: Path) -> None:
    """systemd-dissect --validate checks structure and policy only; bootkeeper also checks the tree,
    the root hash and the signature. Same tampered bytes, both tools."""
    src = work / "ours.sysext.raw"
    if not src.exists():
        pytest.fail("depends on test_bootkeeper_image_accepted_by_systemd_dissect")
    des = image.inspect(src).found["root"]
    assert des.verity is not None and des.sig is not None
    cases = {"hash-block": des.verity.offset + 4096 + 9, "sig-json": des.sig.offset + 15}
    for name, off in cases.items():
        t = work / f"t-{name}.raw"
        shutil.copy(src, t)
        raw = bytearray(t.read_bytes())
        raw[off] ^= 0x01
        t.write_bytes(bytes(raw))
        real = trixie.run(f"systemd-dissect --validate --image-policy={ENFORCED} {t.name}", work)
        ours = image.validate(t, policy.parse(ENFORCED), [_cert(work)], architecture="x86-64")
        assert not ours.ok, name
        print(f"{name}: systemd-dissect --validate rc={real.returncode}; bootkeeper: {ours.reasons[0]}")
