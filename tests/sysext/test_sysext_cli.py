"""bootkeeper sysext build/inspect/validate and keys generate, end to end through the CLI, with
openssl and veritysetup checking what was built."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from bootkeeper.sysext import image
from helpers import bk, openssl_cms_verify


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("build")
    assert bk("keys", "generate", "--key", str(d / "k.pem"), "--cert", str(d / "c.pem")).returncode == 0
    (d / "tree/usr/bin").mkdir(parents=True)
    (d / "tree/usr/bin/hello").write_bytes(os.urandom(200_000))
    p = bk(
        "sysext",
        "build",
        str(d / "tree"),
        "-o",
        str(d / "hello.sysext.raw"),
        "--key",
        str(d / "k.pem"),
        "--cert",
        str(d / "c.pem"),
    )
    assert p.returncode == 0, p.stderr
    return d


def test_key_mode(built: Path) -> None:
    assert stat.S_IMODE((built / "k.pem").stat().st_mode) == 0o600
    assert not (built / "tree/usr/lib").exists()  # the user's tree is left alone


def test_validate_and_json(built: Path) -> None:
    img = built / "hello.sysext.raw"
    p = bk("sysext", "validate", str(img), "--cert", str(built / "c.pem"), "--full", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout)["images"][0]
    assert out["ok"] and out["qualified_as"] == "signed"
    bad = bk("sysext", "validate", str(img), "--json")
    assert bad.returncode == 1 and not json.loads(bad.stdout)["images"][0]["ok"]
    seed = bk("sysext", "validate", str(img), "--policy", "root=verity+signed+absent:usr=verity+signed+absent")
    assert seed.returncode == 0 and "PASS (verity)" in seed.stdout and "admits unsigned" in seed.stderr


def test_real_tools_accept_what_we_built(built: Path, tmp_path: Path) -> None:
    img = built / "hello.sysext.raw"
    info = image.inspect(img)
    des = info.found["root"]
    assert des.verity is not None and des.sig is not None
    raw = img.read_bytes()
    (tmp_path / "data").write_bytes(raw[des.data.offset : des.data.offset + des.data.size])
    (tmp_path / "hash").write_bytes(raw[des.verity.offset : des.verity.offset + des.verity.size])
    rh = info.root_hash("root")
    assert rh is not None
    subprocess.run(
        ["veritysetup", "verify", str(tmp_path / "data"), str(tmp_path / "hash"), rh.hex()],
        check=True,
        capture_output=True,
    )
    sig = info.sig["root"]
    rc, err = openssl_cms_verify(tmp_path, sig.signature, rh.hex(), (built / "c.pem").read_bytes())
    assert rc == 0, err


def test_inspect_and_bad_input(built: Path, tmp_path: Path) -> None:
    j = json.loads(bk("sysext", "inspect", str(built / "hello.sysext.raw"), "--json").stdout)
    assert j["root"]["fstype"] == "erofs" and j["root"]["signature"]
    junk = tmp_path / "junk.raw"
    junk.write_bytes(b"\0" * 4096)
    p = bk("sysext", "inspect", str(junk))
    assert p.returncode == 4 and p.stderr.startswith("bootkeeper: error: ") and "Traceback" not in p.stderr
    p = bk("sysext", "validate", str(junk), "--policy", "root=bogus")
    assert p.returncode == 4 and "unknown policy flag 'bogus'" in p.stderr


def test_build_refuses_a_key_that_is_not_the_certificates_and_a_bad_arch(tmp_path: Path) -> None:
    """issue 15, item 4: a mismatched key built an image that validate refused later; --arch aarch64 was a
    traceback; an ARCHITECTURE in the tree's extension-release that --arch contradicts went through."""
    from helpers import one_line_error

    for n in ("a", "b"):
        assert (
            bk("keys", "generate", "--key", str(tmp_path / f"{n}.key"), "--cert", str(tmp_path / f"{n}.crt")).returncode
            == 0
        )
    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/x").write_text("x\n")

    def build(*extra: str, key: str = "a", out: str = "x.sysext.raw") -> subprocess.CompletedProcess[str]:
        return bk("sysext", "build", str(tree), "-o", str(tmp_path / out), "--key", str(tmp_path / f"{key}.key"),
                  "--cert", str(tmp_path / "a.crt"), *extra)  # fmt: skip

    one_line_error(build(key="b"), 1, "b.key: not the key of", "would not verify")
    assert not (tmp_path / "x.sysext.raw").exists()
    one_line_error(build("--arch", "sparc9"), 2, "--arch 'sparc9': not an architecture systemd knows")
    p = build("--arch", "aarch64")  # uname's name for arm64
    assert p.returncode == 0, p.stderr
    assert "no usr/lib/extension-release.d/extension-release.*: writing one with ID=_any" in p.stderr
    rel = image.inspect(tmp_path / "x.sysext.raw").release["root"]
    assert not isinstance(rel, str) and rel.fields["ARCHITECTURE"] == "arm64"
    (tree / "usr/lib/extension-release.d").mkdir(parents=True)
    (tree / "usr/lib/extension-release.d/extension-release.x").write_text("ID=_any\nARCHITECTURE=x86-64\n")
    one_line_error(build("--arch", "arm64"), 1, "ARCHITECTURE=x86-64, but the image is built for arm64")
    p = build("--arch", "x86_64", out="x")
    assert p.returncode == 0 and p.stderr.startswith("bootkeeper: warning: x does not end in .raw"), p.stderr
