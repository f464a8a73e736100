"""Removable media for ``bootkeeper repair`` (node/media.py) with real devices: a loop device holding a real
ext4 filesystem (mkfs.ext4), found by its label or by a removable disk's attribute, mounted read-only by the
real ``mount`` under the mount base the test gives, searched and unmounted again."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootkeeper.node import media

pytestmark = pytest.mark.root


@contextlib.contextmanager
def _loop(tmp: Path, label: str, files: dict[str, bytes]) -> Iterator[str]:
    """A loop device over a 16 MiB ext4 image labelled ``label`` holding ``files``; detached afterwards."""
    if os.geteuid() != 0:
        pytest.fail("needs root (losetup, mount): run as root, as make test does")
    src = tmp / "content"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    src.mkdir(exist_ok=True)
    img = tmp / "stick.img"
    with img.open("wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-L", label, "-d", str(src), str(img)], check=True)
    dev = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True, check=True).stdout
    name = Path(dev.strip()).name
    try:
        yield name
    finally:
        subprocess.run(["losetup", "-d", dev.strip()], check=False)


def _mounted_at(base: Path) -> list[str]:
    return [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if str(base) in ln]


def _find(host: media.Host, base: Path) -> tuple[str | None, list[str], dict[str, bytes]]:
    said: list[str] = []
    seen: dict[str, bytes] = {}
    with media.find_release(host, base, said.append) as found:
        if found is not None:
            top = Path(found.source.partition(":")[2])
            files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
            seen = {str(p): p.read_bytes() for p in files}
            assert _mounted_at(base), "the medium is mounted while the release is read"
            with pytest.raises(OSError):
                (top / "written").write_bytes(b"x")  # read-only
    return (found.source if found else None), said, seen


@pytest.mark.parametrize(
    ("files", "kind", "where"),
    [
        ({"bootkeeper-release/node.efi": b"MZ uki", "bootkeeper-release/a.raw": b"ext"}, "dir", "bootkeeper-release"),
        ({"node-2.0.oci.tar": b"tar"}, "ocifile", "node-2.0.oci.tar"),
        ({"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": b"{}"}, "ocifile", ""),
        ({"rel/oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "rel/index.json": b"{}"}, "ocifile", "rel"),
    ],
)
def test_a_labelled_disk_holding_a_release_is_found_mounted_and_unmounted(
    tmp_path: Path, files: dict[str, bytes], kind: str, where: str
) -> None:
    base = tmp_path / "media"
    with _loop(tmp_path, "BKRELEASE", files) as name:
        source, said, seen = _find(media.Host(only=(name,)), base)
        top = base / name
        assert source == (f"{kind}:{top}/{where}" if where else f"{kind}:{top}")
        assert said == [f"bootkeeper: /dev/{name} (ext4 LABEL=BKRELEASE): holds {source}"]
        assert sorted(seen.values()) == sorted(d for rel, d in files.items() if rel.startswith(where))
        assert not _mounted_at(base) and not top.exists()


def test_an_unlabelled_disk_that_is_not_removable_is_not_mounted(tmp_path: Path) -> None:
    base = tmp_path / "media"
    with _loop(tmp_path, "DATA", {"bootkeeper-release/node.efi": b"MZ"}) as name:
        source, said, _ = _find(media.Host(only=(name,)), base)
    assert (source, said) == (None, [])
    assert not base.exists() or not any(base.iterdir())


def test_a_removable_disk_needs_no_label(tmp_path: Path) -> None:
    """The rule's other half: ``removable`` 1 in the disk's sysfs folder (a copy of the loop device's, with
    that attribute set, as a USB stick's reads), the real device node and mount."""
    base = tmp_path / "media"
    with _loop(tmp_path, "STICK", {"bootkeeper-release/node.efi": b"MZ"}) as name:
        sysfs = tmp_path / "sys/block" / name
        sysfs.mkdir(parents=True)
        for attr in ("dev", "size"):
            shutil.copyfile(Path("/sys/block") / name / attr, sysfs / attr)
        (sysfs / "holders").mkdir()
        (sysfs / "removable").write_text("1\n")
        source, said, _ = _find(media.Host(sys_block=tmp_path / "sys/block", only=(name,)), base)
        assert source == f"dir:{base / name}/bootkeeper-release"
        assert said[0].startswith(f"bootkeeper: /dev/{name} (ext4 LABEL=STICK, removable): holds ")
        assert not _mounted_at(base)


def test_a_medium_without_a_release_is_said_and_unmounted(tmp_path: Path) -> None:
    base = tmp_path / "media"
    with _loop(tmp_path, "BKRELEASE", {"notes.txt": b"hello", "link": b""}) as name:
        source, said, _ = _find(media.Host(only=(name,)), base)
    assert source is None
    assert said == [f"bootkeeper: /dev/{name} (ext4 LABEL=BKRELEASE): no release on it (oci-layout, *.oci.tar or "
                    "bootkeeper-release/)"]  # fmt: skip
    assert not _mounted_at(base)


def test_a_mounted_device_is_never_a_candidate(tmp_path: Path) -> None:
    with _loop(tmp_path, "BKRELEASE", {"bootkeeper-release/node.efi": b"MZ"}) as name:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        subprocess.run(["mount", "-o", "ro", f"/dev/{name}", str(elsewhere)], check=True)
        try:
            assert media.candidates(media.Host(only=(name,))) == []
        finally:
            subprocess.run(["umount", str(elsewhere)], check=True)
        assert [c.name for c in media.candidates(media.Host(only=(name,)))] == [name]


def test_a_link_on_the_medium_is_not_followed(tmp_path: Path) -> None:
    top = tmp_path / "top"
    top.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/oci-layout").write_text("{}")
    (top / "bootkeeper-release").symlink_to(tmp_path / "outside")
    (top / "x.oci.tar").symlink_to(tmp_path / "outside/oci-layout")
    (top / "rel").symlink_to(tmp_path / "outside")
    assert media.release_in(top) is None
