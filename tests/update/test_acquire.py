"""update/acquire.py: check and acquire from ocifile:, dir: and file: sources into a staging folder;
bootkeeper's form and Kairos's, through layouts the real skopeo wrote; a lying blob, a kill -9 in the
middle of a download, hostile Kairos layers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bootkeeper.errors import MalformedError, UsageError
from bootkeeper.update import acquire, layout, release, source
from bootkeeper.update.origin import Net
from release_kit import files, kairos_image, sha, skopeo, skopeo_dir

NET = Net()


def _same(staged: acquire.Staged, fs: list[Path]) -> None:
    assert staged.uki.read_bytes() == fs[0].read_bytes()
    assert [p.read_bytes() for p in staged.extensions] == [p.read_bytes() for p in fs[1:]]
    assert sorted(os.listdir(staged.folder)) == sorted(["release.json", *(p.name for p in fs)])


def test_round_trip_every_local_source(tmp_path: Path) -> None:
    fs = files(tmp_path / "files")
    built = release.build(fs, "v2")
    layout.write(tmp_path / "L", "v2", built)
    staging = tmp_path / "staging"
    got = acquire.acquire(source.parse(f"ocifile:{tmp_path / 'L'}:v2"), NET, staging)
    _same(got, fs)
    assert (got.version, got.manifest_digest) == ("v2", sha(built.manifest))
    assert got.folder == staging / sha(built.manifest).removeprefix("sha256:")
    assert got.source == f"ocifile:{tmp_path / 'L'}:v2"
    assert acquire.downloaded(staging) == got
    checked = acquire.resolve(source.parse(f"ocifile:{tmp_path / 'L'}"), NET)  # the only manifest
    assert (checked.version, checked.size, checked.uki.name) == ("v2", 8000, "uki.efi")
    # dir: the folder's one UKI and its extensions; the other release is cleaned away
    d = acquire.acquire(source.parse(f"dir:{tmp_path / 'files'}"), NET, staging)
    _same(d, fs)
    assert d.version is None and sorted(os.listdir(staging)) == [".lock", d.folder.name]
    f = acquire.acquire(source.parse(f"file:{fs[0]}"), NET, staging)
    assert f.uki.read_bytes() == fs[0].read_bytes() and f.extensions == ()
    (tmp_path / "files" / "other.efi").write_bytes(b"x")
    with pytest.raises(MalformedError, match=r"dir:.*: 2 UKIs \(other.efi, uki.efi\); a release holds one"):
        acquire.resolve(source.parse(f"dir:{tmp_path / 'files'}"), NET)
    with pytest.raises(UsageError, match="names no tag or digest"):
        acquire.resolve(source.parse("oci:127.0.0.1:5000/os/node"), NET)


def test_skopeo_both_ways(tmp_path: Path) -> None:
    """bootkeeper's layout copied by skopeo is acquired from the copy; and a release skopeo wrote
    into a layout from its dir: transport (our files, its layout) is acquired too."""
    fs = files(tmp_path / "files")
    built = release.build(fs, "v2")
    layout.write(tmp_path / "A", "v2", built)
    skopeo("copy", "--quiet", f"oci:{tmp_path / 'A'}:v2", f"oci:{tmp_path / 'B'}:v2")
    _same(acquire.acquire(source.parse(f"ocifile:{tmp_path / 'B'}:v2"), NET, tmp_path / "s1"), fs)
    manifest = json.loads(built.manifest)
    blobs = [built.config, *(p.read_bytes() for p in fs)]
    skopeo_dir(tmp_path / "sd", manifest, blobs)
    skopeo("copy", "--quiet", f"dir:{tmp_path / 'sd'}", f"oci:{tmp_path / 'C'}:v2")
    got = acquire.acquire(source.parse(f"ocifile:{tmp_path / 'C'}:v2"), NET, tmp_path / "s2")
    _same(got, fs)
    assert got.version == "v2"


def test_kairos_form(tmp_path: Path) -> None:
    uki, other, loader, ext = (os.urandom(n) for n in (4000, 3000, 2000, 1500))
    kairos_image(
        tmp_path / "k",
        [
            ("EFI", None, "dir"),
            ("EFI/BOOT/BOOTX64.EFI", loader, "file"),
            ("EFI/kairos/norole.efi", uki, "file"),
            ("EFI/kairos/norole_debug.efi", other, "file"),
            ("loader/loader.conf", b"default norole.conf\n", "file"),
            ("loader/entries/norole.conf", b"title Kairos\nefi /EFI/kairos/norole.efi\n", "file"),
            ("extensions/k3s-v1.30.sysext.raw", ext, "file"),
        ],
    )
    skopeo("copy", "--quiet", f"dir:{tmp_path / 'k'}", f"oci:{tmp_path / 'L'}:v3")
    src = source.parse(f"ocifile:{tmp_path / 'L'}:v3")
    assert acquire.resolve(src, NET).form == "kairos"
    got = acquire.acquire(src, NET, tmp_path / "s")
    assert got.uki.name == "norole.efi" and got.uki.read_bytes() == uki
    assert [(p.name, p.read_bytes()) for p in got.extensions] == [("k3s-v1.30.sysext.raw", ext)]
    assert sorted(os.listdir(got.folder)) == ["k3s-v1.30.sysext.raw", "norole.efi", "release.json"]


@pytest.mark.parametrize(
    ("members", "says"),
    [
        ([("EFI/kairos/a.efi", b"/etc/shadow", "symlink")], "layer member 'EFI/kairos/a.efi' is not a regular file"),
        ([("../../x.efi", b"x", "file")], "layer member '../../x.efi' leaves the layer; refused"),
        ([("/abs/x.efi", b"x", "file")], "layer member '/abs/x.efi' leaves the layer; refused"),
        ([("a/one.efi", b"1", "file"), ("b/two.efi", b"2", "file")], "2 UKIs in the layers (one.efi, two.efi)"),
        ([("EFI/BOOT/BOOTX64.efi", b"1", "file")], "0 UKIs in the layers (no *.efi)"),
        ([("a/x.efi", b"1", "file"), ("b/x.efi", b"2", "file")], "a/x.efi and b/x.efi: two files named x.efi"),
    ],
)
def test_kairos_hostile(tmp_path: Path, members: list[tuple[str, bytes | None, str]], says: str) -> None:
    kairos_image(tmp_path / "k", members)
    skopeo("copy", "--quiet", f"dir:{tmp_path / 'k'}", f"oci:{tmp_path / 'L'}:v3")
    with pytest.raises(MalformedError) as err:
        acquire.acquire(source.parse(f"ocifile:{tmp_path / 'L'}:v3"), NET, tmp_path / "s")
    assert says in str(err.value) and "\n" not in str(err.value)
    assert acquire.downloaded(tmp_path / "s") is None
    assert not (tmp_path / "abs").exists() and not (tmp_path.parent / "x.efi").exists()


def test_digest_mismatch_stages_nothing(tmp_path: Path) -> None:
    fs = files(tmp_path / "files")
    built = release.build(fs, "v2")
    layout.write(tmp_path / "L", "v2", built)
    blob = tmp_path / "L" / "blobs" / "sha256" / sha(fs[1].read_bytes()).removeprefix("sha256:")
    blob.write_bytes(b"\0" + fs[1].read_bytes()[1:])
    with pytest.raises(MalformedError) as err:
        acquire.acquire(source.parse(f"ocifile:{tmp_path / 'L'}:v2"), NET, tmp_path / "s")
    assert str(err.value).startswith(f"ocifile:{tmp_path / 'L'}: blob {sha(fs[1].read_bytes())}: the bytes are ")
    folder = tmp_path / "s" / sha(built.manifest).removeprefix("sha256:")
    assert sorted(os.listdir(folder)) == ["uki.efi"]  # the UKI checked; the lying blob's part removed
    assert acquire.downloaded(tmp_path / "s") is None


def test_ten_thousand_layers_via_a_layout(tmp_path: Path) -> None:
    fs = files(tmp_path / "files")
    built = release.build(fs, "v2")
    doc = json.loads(built.manifest)
    doc["layers"] = [dict(doc["layers"][1], annotations={release.TITLE: f"e{i}.raw"}) for i in range(10_000)]
    raw = json.dumps(doc).encode()
    layout.write(tmp_path / "L", "v2", release.Built(built.config, raw, built.blobs))
    with pytest.raises(MalformedError) as err:
        acquire.acquire(source.parse(f"ocifile:{tmp_path / 'L'}:v2"), NET, tmp_path / "s")
    assert str(err.value) == f"ocifile:{tmp_path / 'L'}: 10000 layers, more than the 256 a release may have"
    assert not (tmp_path / "s").exists() or acquire.downloaded(tmp_path / "s") is None


CHILD = """
import sys, time
from pathlib import Path
from bootkeeper.update import acquire, source
from bootkeeper.update.origin import Net
marker = Path(sys.argv[3])
def progress(done, total):
    if not marker.exists():
        marker.write_text(str(done))
        time.sleep(60)
acquire.acquire(source.parse(sys.argv[1]), Net(), Path(sys.argv[2]), progress)
"""


def test_kill_9_mid_download_then_resume(tmp_path: Path) -> None:
    fs = files(tmp_path / "files", uki_size=3 << 20)
    built = release.build(fs, "v2")
    layout.write(tmp_path / "L", "v2", built)
    src = f"ocifile:{tmp_path / 'L'}:v2"
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", CHILD, src, str(tmp_path / "s"), str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the child never started downloading"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    folder = tmp_path / "s" / sha(built.manifest).removeprefix("sha256:")
    part = folder / "uki.efi.part"
    assert part.stat().st_size == 1 << 20 and acquire.downloaded(tmp_path / "s") is None
    seen: list[int] = []
    got = acquire.acquire(source.parse(src), NET, tmp_path / "s", lambda d, t: seen.append(d))
    _same(got, fs)
    assert seen[0] == 2 << 20  # resumed after the megabyte the killed run left, not from 0
    assert seen[-1] == (3 << 20) + 5000  # the whole release's bytes, both files


def test_kairos_docker_archive_through_skopeo(tmp_path: Path) -> None:
    """AuroraBoot writes its container as a docker save tar, not a layout; skopeo turns one into an
    oci-archive (its layer now an uncompressed tar), which is an ocifile: source."""
    uki, ext = os.urandom(5000), os.urandom(700)
    members: list[tuple[str, bytes | None, str]] = [
        ("EFI/kairos/norole.efi", uki, "file"),
        ("k3s.sysext.raw", ext, "file"),
    ]
    kairos_image(tmp_path / "k", members)
    skopeo("copy", "--quiet", f"dir:{tmp_path / 'k'}", f"docker-archive:{tmp_path / 'd.tar'}:kairos/uki:v3")
    with pytest.raises(MalformedError, match="is not part of an OCI layout"):  # a docker save tar
        acquire.resolve(source.parse(f"ocifile:{tmp_path / 'd.tar'}"), NET)
    skopeo("copy", "--quiet", f"docker-archive:{tmp_path / 'd.tar'}", f"oci-archive:{tmp_path / 'o.tar'}:v3")
    got = acquire.acquire(source.parse(f"ocifile:{tmp_path / 'o.tar'}:v3"), NET, tmp_path / "s")
    assert (got.uki.name, got.uki.read_bytes()) == ("norole.efi", uki)
    assert [(p.name, p.read_bytes()) for p in got.extensions] == [("k3s.sysext.raw", ext)]


def test_hostile_title_through_a_layout(tmp_path: Path) -> None:
    fs = files(tmp_path / "files")
    built = release.build(fs, "v2")
    doc = json.loads(built.manifest)
    doc["layers"][1]["annotations"][release.TITLE] = "../../x.raw"
    layout.write(tmp_path / "L", "v2", release.Built(built.config, json.dumps(doc).encode(), built.blobs))
    with pytest.raises(MalformedError) as err:
        acquire.acquire(source.parse(f"ocifile:{tmp_path / 'L'}:v2"), NET, tmp_path / "s" / "staging")
    assert str(err.value) == f"ocifile:{tmp_path / 'L'}: layers[1]: file name '../../x.raw' is not a plain file name"
    assert not (tmp_path / "x.raw").exists() and not (tmp_path / "s" / "x.raw").exists()
    assert acquire.downloaded(tmp_path / "s" / "staging") is None


def test_crash_after_a_rename_before_the_record(tmp_path: Path) -> None:
    """A kill between a checked file's rename and release.json: the next run hashes what is there
    again, fetches what is wrong or missing, and only then writes the record."""
    fs = files(tmp_path / "files")
    built = release.build(fs, "v2")
    layout.write(tmp_path / "L", "v2", built)
    src = source.parse(f"ocifile:{tmp_path / 'L'}:v2")
    got = acquire.acquire(src, NET, tmp_path / "s")
    (got.folder / "release.json").unlink()
    got.uki.write_bytes(b"not the UKI")
    (got.folder / "k3s-v1.30.sysext.raw").unlink()
    (tmp_path / "s" / ("f" * 64)).mkdir()  # another release's leftovers
    assert acquire.downloaded(tmp_path / "s") is None
    again = acquire.acquire(src, NET, tmp_path / "s")
    assert again == got
    _same(again, fs)
    assert sorted(os.listdir(tmp_path / "s")) == [".lock", got.folder.name]
