"""update/layout.py: OCI image layouts, folder and tar, written by bootkeeper and by the real skopeo,
read back; the hostile ones (links in a tar, a 100 MB index.json, a blob that lies) refused in one line."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest

from bootkeeper.errors import MalformedError, UnreadableError
from bootkeeper.update import layout, release
from bootkeeper.update.origin import Descriptor, Origin
from release_kit import files, sha, skopeo, tar_bytes


def _pushed(tmp_path: Path) -> tuple[Path, list[Path], release.Built]:
    fs = files(tmp_path / "files")
    built = release.build(fs, "v2")
    layout.write(tmp_path / "A", "v2", built)
    return tmp_path / "A", fs, built


def test_write_then_read(tmp_path: Path) -> None:
    a, fs, built = _pushed(tmp_path)
    assert json.loads((a / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    with layout.Layout(a) as lay:
        origin: Origin = lay  # the protocol, checked by mypy
        got = origin.manifest("v2")
        assert got.digest == "sha256:" + hashlib.sha256(got.raw).hexdigest() == built.digest
        for p in fs:
            desc = Descriptor("x", sha(p.read_bytes()), p.stat().st_size)
            lay.blob(desc, tmp_path / p.name)
            assert (tmp_path / p.name).read_bytes() == p.read_bytes()
    # a second tag extends the layout; the same tag again replaces its entry
    built3 = release.build(files(tmp_path / "f3"), "v3")
    layout.write(a, "v3", built3)
    layout.write(a, "v3", built3)
    index = json.loads((a / "index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == ["v2", "v3"]
    with layout.Layout(a) as lay:
        assert lay.manifest("v3").digest == sha(built3.manifest)
        with pytest.raises(UnreadableError, match=r"ocifile:.*/A: 2 manifests \(v2, v3\); name a tag"):
            lay.manifest(None)
        with pytest.raises(UnreadableError, match="no manifest 'v9'"):
            lay.manifest("v9")
    assert not [n for n in os.listdir(a) if n.startswith(".bootkeeper-")]


def test_skopeo_copies_ours_and_we_read_its_copy(tmp_path: Path) -> None:
    a, fs, built = _pushed(tmp_path)
    skopeo("copy", "--quiet", f"oci:{a}:v2", f"oci:{tmp_path / 'B'}:v2")
    assert skopeo("inspect", "--raw", f"oci:{tmp_path / 'B'}:v2").encode() == built.manifest
    with layout.Layout(tmp_path / "B") as lay:
        assert lay.manifest("v2").raw == built.manifest
        d = Descriptor("x", sha(fs[1].read_bytes()), fs[1].stat().st_size)
        lay.blob(d, tmp_path / "ext")
    assert (tmp_path / "ext").read_bytes() == fs[1].read_bytes()


def test_skopeo_archive_is_read_as_a_tar(tmp_path: Path) -> None:
    a, fs, built = _pushed(tmp_path)
    skopeo("copy", "--quiet", f"oci:{a}:v2", f"oci-archive:{tmp_path / 'r.tar'}:v2")
    path, tag = layout.split(f"{tmp_path / 'r.tar'}:v2")
    assert (path, tag) == (tmp_path / "r.tar", "v2")
    with layout.Layout(path) as lay:
        assert lay.manifest(tag).raw == built.manifest
        d = Descriptor("x", sha(fs[0].read_bytes()), fs[0].stat().st_size)
        lay.blob(d, tmp_path / "uki")
    assert (tmp_path / "uki").read_bytes() == fs[0].read_bytes()


def _tar_of(folder: Path, out: Path, extra: list[tuple[str, bytes | None, str]]) -> Path:
    members: list[tuple[str, bytes | None, str]] = []
    for root, _, names in os.walk(folder):
        for n in names:
            p = Path(root) / n
            members.append((str(p.relative_to(folder)), p.read_bytes(), "file"))
    out.write_bytes(tar_bytes(members + extra))
    return out


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ([("blobs/sha256/" + "c" * 64, b"/etc/shadow", "symlink")], "is a link or a device; refused"),
        ([("../../x", b"x", "file")], "tar member '../../x' is not part of an OCI layout"),
        ([("/etc/passwd", b"x", "file")], "tar member '/etc/passwd' is not part of an OCI layout"),
    ],
)
def test_hostile_tar(tmp_path: Path, extra: list[tuple[str, bytes | None, str]], says: str) -> None:
    a, _, _ = _pushed(tmp_path)
    t = _tar_of(a, tmp_path / "evil.tar", extra)
    with pytest.raises(MalformedError) as err:
        layout.Layout(t)
    assert str(err.value).startswith(f"ocifile:{t}: ") and says in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["A", "evil.tar", "files"]  # nothing extracted


def test_huge_index_json_refused(tmp_path: Path) -> None:
    a, _, _ = _pushed(tmp_path)
    with open(a / "index.json", "r+b") as f:
        f.truncate(100 << 20)  # sparse: costs nothing to make, everything to read
    with layout.Layout(a) as lay, pytest.raises(MalformedError) as err:
        lay.manifest("v2")
    assert str(err.value) == f"ocifile:{a}: index.json: {100 << 20} bytes, more than the 4194304 it may have"


def test_not_a_layout(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(UnreadableError, match=r"ocifile:.*/d: no oci-layout"):
        layout.Layout(tmp_path / "d")
    (tmp_path / "f").write_bytes(b"hello")
    with pytest.raises(MalformedError, match="neither a folder nor a tar of an OCI layout"):
        layout.Layout(tmp_path / "f")
    with pytest.raises(UnreadableError, match="cannot read"):
        layout.Layout(tmp_path / "none")


def test_blob_lies_then_resume(tmp_path: Path) -> None:
    a, fs, _ = _pushed(tmp_path)
    data = fs[1].read_bytes()
    d = Descriptor("x", sha(data), len(data))
    blob = a / "blobs" / "sha256" / d.digest.removeprefix("sha256:")
    dest = tmp_path / "dest"
    with layout.Layout(a) as lay:
        # a truncated download: the first half is there; the rest is fetched from that offset
        dest.write_bytes(data[:2000])
        done: list[int] = []
        lay.blob(d, dest, lambda n, total: done.append(n))
        assert dest.read_bytes() == data and done[0] > 2000 and done[-1] == len(data)
        # a part whose bytes are not the blob's: the digest catches it, the part is removed
        dest.write_bytes(b"\0" * 2000)
        with pytest.raises(MalformedError, match=f"blob {d.digest}: the bytes are sha256:"):
            lay.blob(d, dest)
        assert not dest.exists()
        # the layout's blob itself altered
        blob.write_bytes(b"x" + data[1:])
        with pytest.raises(MalformedError) as err:
            lay.blob(d, dest)
        assert "not the manifest's digest" in str(err.value) and not dest.exists()
        blob.write_bytes(data[:100])
        with pytest.raises(MalformedError, match=f"100 bytes, the manifest says {len(data)}"):
            lay.blob(d, dest)
        assert not dest.exists()


def test_tar_blob_streams_by_member(tmp_path: Path) -> None:
    a, fs, built = _pushed(tmp_path)
    t = _tar_of(a, tmp_path / "r.tar", [])
    with tarfile.open(t) as tf:
        assert all(m.isreg() for m in tf)
    with layout.Layout(t) as lay:
        assert lay.manifest("v2").raw == built.manifest
        d = Descriptor("x", sha(fs[0].read_bytes()), fs[0].stat().st_size)
        (tmp_path / "u").write_bytes(fs[0].read_bytes()[:10])
        lay.blob(d, tmp_path / "u")
    assert (tmp_path / "u").read_bytes() == fs[0].read_bytes()


def test_huge_manifest_refused(tmp_path: Path) -> None:
    a, _, built = _pushed(tmp_path)
    index = json.loads((a / "index.json").read_text())
    index["manifests"][0]["size"] = 100 << 20
    (a / "index.json").write_text(json.dumps(index))
    blob = a / "blobs" / "sha256" / built.digest.removeprefix("sha256:")
    with open(blob, "r+b") as f:
        f.truncate(100 << 20)
    with layout.Layout(a) as lay, pytest.raises(MalformedError) as err:
        lay.manifest("v2")
    assert str(err.value) == f"ocifile:{a}: manifest {built.digest}: {100 << 20} bytes, more than 4194304"
