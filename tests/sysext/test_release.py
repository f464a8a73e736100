"""extension-release: read from erofs (own reader) and squashfs (unsquashfs), checked like
systemd-sysext's extension_release_validate()."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootkeeper.errors import MalformedError
from bootkeeper.sysext import release
from bootkeeper.sysext.erofs import Erofs
from bootkeeper.sysext.release import Release

HOST = {"ID": "debian", "ID_LIKE": "", "VERSION_ID": "12"}


def _rel(**kw: str) -> Release:
    return Release("extension-release.x", dict(kw), False)


@pytest.mark.parametrize(
    ("fields", "host", "ok"),
    [
        ({"ID": "_any"}, HOST, True),
        ({"ID": "debian", "VERSION_ID": "12"}, HOST, True),
        ({"ID": "debian", "VERSION_ID": "13"}, HOST, False),
        ({"ID": "debian"}, HOST, False),  # the host has VERSION_ID: the extension must name one
        ({"ID": "fedora", "VERSION_ID": "12"}, HOST, False),
        ({"ID": "debian", "VERSION_ID": "1"}, {"ID": "kairos", "ID_LIKE": "debian ubuntu", "VERSION_ID": "1"}, True),
        ({"ID": "debian", "SYSEXT_LEVEL": "2"}, {"ID": "debian", "VERSION_ID": "12", "SYSEXT_LEVEL": "2"}, True),
        ({"ID": "debian", "SYSEXT_LEVEL": "3"}, {"ID": "debian", "VERSION_ID": "12", "SYSEXT_LEVEL": "2"}, False),
        ({"ID": "arch"}, {"ID": "arch"}, True),  # rolling release: ID is enough
        ({"ID": "_any", "ARCHITECTURE": "arm64"}, HOST, False),
        ({"ID": "_any", "ARCHITECTURE": "x86-64"}, HOST, True),
        ({"ID": "_any", "SYSEXT_SCOPE": "initrd"}, HOST, False),
        ({"ID": "_any", "SYSEXT_SCOPE": "initrd system"}, HOST, True),
        ({}, HOST, False),
    ],
)
def test_check(fields: dict[str, str], host: dict[str, str], ok: bool) -> None:
    why = release.check(_rel(**fields), host, "x86-64")
    assert (why is None) == ok, why


def test_os_release_inside_is_refused() -> None:
    r = Release("extension-release.x", {"ID": "_any"}, True)
    assert "own os-release" in (release.check(r, HOST, "x86-64") or "")


def _tree(tmp: Path, files: dict[str, str]) -> Path:
    t = tmp / "tree"
    for rel, text in files.items():
        (t / rel).parent.mkdir(parents=True, exist_ok=True)
        (t / rel).write_text(text)
    return t


@pytest.mark.parametrize("fs", ["erofs", "squashfs"])
def test_read_from_real_file_systems(tmp_path: Path, fs: str) -> None:
    t = _tree(
        tmp_path,
        {
            "usr/lib/extension-release.d/extension-release.demo": "ID=debian\nVERSION_ID='12'\n",
            "usr/bin/tool": "#!/bin/sh\n",
        },
    )
    img = tmp_path / "fs.img"
    cmd = (
        ["mkfs.erofs", "-T0", str(img), str(t)]
        if fs == "erofs"
        else ["mksquashfs", str(t), str(img), "-quiet", "-noappend", "-all-root"]
    )
    subprocess.run(cmd, check=True, capture_output=True)
    r = release.read_from_fs(img.read_bytes(), fs, "demo", "test")
    assert r.fields == {"ID": "debian", "VERSION_ID": "12"} and not r.has_os_release
    assert r.file.endswith("extension-release.demo")
    with pytest.raises(MalformedError, match=r"found extension-release\.demo"):
        release.read_from_fs(img.read_bytes(), fs, "other-name", "test")  # a renamed image does not match


def test_missing_release_and_os_image(tmp_path: Path) -> None:
    t = _tree(
        tmp_path,
        {
            "usr/bin/tool": "x",
            "usr/lib/os-release": "ID=debian\n",
            "usr/lib/extension-release.d/extension-release.a": "ID=_any\n",
            "usr/lib/extension-release.d/extension-release.b": "ID=_any\n",
        },
    )
    img = tmp_path / "fs.img"
    subprocess.run(["mkfs.erofs", "-T0", str(img), str(t)], check=True, capture_output=True)
    with pytest.raises(MalformedError, match=r"no usr/lib/extension-release\.d/extension-release\.c"):
        release.read_from_fs(img.read_bytes(), "erofs", "c", "test")
    assert release.read_from_fs(img.read_bytes(), "erofs", "a", "test").has_os_release


@settings(max_examples=2000, deadline=None)
@given(st.binary(min_size=0, max_size=3000))
def test_erofs_reader_fuzz(raw: bytes) -> None:
    head = bytearray(2048)
    head[1024:1028] = (0xE0F5E1E2).to_bytes(4, "little")
    head[1036] = 12
    data = bytes(head) + raw
    try:
        e = Erofs(lambda off, n: data[off : off + n], len(data))
        e.lookup("usr/lib/extension-release.d/x")
    except MalformedError as exc:
        assert str(exc)


def test_broken_squashfs_is_a_parse_error_naming_the_image() -> None:
    """unsquashfs failing on a hostile squashfs is a fault of that image, not a CommandError that
    would end a whole activation (issue 12, item 1)."""
    junk = b"hsqs" + bytes(4092)
    with pytest.raises(
        MalformedError, match=r"^demo \(root file system\): squashfs: unsquashfs -lc .* failed with exit"
    ):
        release.read_from_fs(junk, "squashfs", "demo", "demo (root file system)")


@pytest.mark.root
@pytest.mark.integration
def test_missing_unsquashfs_is_a_parse_error(tmp_path: Path) -> None:
    """On a node without unsquashfs (hidden here by an empty bind mount over each place it could
    be), a squashfs image gets a reason, not an exception."""
    import shutil
    import sys

    found = [
        p for p in ("/usr/bin/unsquashfs", "/usr/sbin/unsquashfs", "/usr/local/bin/unsquashfs") if Path(p).exists()
    ]
    assert found, "unsquashfs (squashfs-tools) is missing; scripts/setup-test-deps.sh installs it"
    assert shutil.which("unshare"), "unshare (util-linux) is missing; scripts/setup-test-deps.sh installs it"
    empty = tmp_path / "empty"
    empty.write_bytes(b"")  # not executable: shutil.which skips it
    code = (
        "from bootkeeper.errors import MalformedError\n"
        "from bootkeeper.sysext import release\n"
        "try:\n"
        "    release.read_from_fs(b'hsqs' + bytes(4092), 'squashfs', 'demo', 'demo (root file system)')\n"
        "except MalformedError as exc:\n"
        "    print(exc)\n"
    )
    binds = "".join(f"mount --bind {empty} {p}\n" for p in found)
    script = f'{binds}{sys.executable} -c "$1"'
    p = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", code],
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == (
        "demo (root file system): squashfs: required tool 'unsquashfs' not found "
        "(to read the extension-release from a squashfs image)"
    ), p.stdout + p.stderr


def _squashfs_in_partition(tmp_path: Path, files: dict[str, bytes], before: int = 8192) -> tuple[Path, int, int]:
    """A real mksquashfs file system at byte ``before`` of a file, with bytes after it (the next
    partition); returns (path, offset, size of the partition)."""
    t = tmp_path / "sq-tree"
    for rel, data in files.items():
        (t / rel).parent.mkdir(parents=True, exist_ok=True)
        (t / rel).write_bytes(data)
    fs = tmp_path / "sq.fs"
    subprocess.run(["mksquashfs", str(t), str(fs), "-quiet", "-noappend", "-all-root"], check=True, capture_output=True)
    raw = fs.read_bytes()
    img = tmp_path / "sq.img"
    img.write_bytes(b"\0" * before + raw + b"\xaa" * 4096)
    return img, before, len(raw)


def test_squashfs_in_place_with_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    """unsquashfs reads the partition in place (-o OFFSET); bytes that are not UTF-8 in the
    extension-release or in a file name are data, never a UnicodeDecodeError."""
    rel = "usr/lib/extension-release.d/extension-release.demo"
    img, off, size = _squashfs_in_partition(
        tmp_path,
        {rel: b"ID=_any\nX=\xff\n", "usr/bin/t\udcffool": b"x"},  # the byte 0xff in a name
    )
    r = release.read_from_partition(img, off, size, "squashfs", "demo")
    assert r.fields["ID"] == "_any" and r.fields["X"] == "\ufffd"
    with pytest.raises(MalformedError, match=r"no usr/lib/extension-release\.d/extension-release\.other"):
        release.read_from_partition(img, off, size, "squashfs", "other")


def test_squashfs_that_points_past_its_partition_is_refused(tmp_path: Path) -> None:
    """bytes_used or a table start beyond the partition: unsquashfs would read bytes dm-verity never
    exposes (the next partition), so the image is refused before unsquashfs runs."""
    import struct

    rel = "usr/lib/extension-release.d/extension-release.demo"
    img, off, size = _squashfs_in_partition(tmp_path, {rel: b"ID=_any\n"})
    assert release.read_from_partition(img, off, size, "squashfs", "demo").fields == {"ID": "_any"}
    used = struct.unpack_from("<Q", img.read_bytes(), off + 40)[0]  # mksquashfs pads the file past it
    assert release.read_from_partition(img, off, used, "squashfs", "demo").fields == {"ID": "_any"}
    with pytest.raises(MalformedError, match=r"bytes_used \d+ is past the partition's"):
        release.read_from_partition(img, off, used - 1, "squashfs", "demo")
    raw = bytearray(img.read_bytes())
    struct.pack_into("<Q", raw, off + 64, size + 100)  # inode_table_start past bytes_used
    img.write_bytes(bytes(raw))
    with pytest.raises(MalformedError, match=r"a table at byte \d+ is past bytes_used"):
        release.read_from_partition(img, off, size, "squashfs", "demo")


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("k3s.raw", "k3s"),
        ("k3s.sysext.raw", "k3s"),
        ("k3s-v1.30.sysext.raw", "k3s-v1.30"),
        ("k3s.sysext", "k3s"),
        ("k3s", "k3s"),
        ("k3s.raw.sysext", "k3s.raw"),
        ("k3s.sysext.sysext.raw", "k3s.sysext"),
        ("k3s~0123456789ab.raw", "k3s~0123456789ab"),
    ],
)
def test_the_image_stem_has_one_home(name: str, stem: str) -> None:
    """The extension-release NAME, the name ``sysext.entries`` rules match and ``sysext remove``'s
    short name are one rule (release.image_stem), which deploy imports rather than restates."""
    from bootkeeper.sysext import deploy

    assert release.image_stem(name) == stem
    assert deploy.image_stem is release.image_stem
    assert not hasattr(release, "image_name")
