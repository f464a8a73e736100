"""update/stage.py: the staging folder's lock, record, cleaning and free-space check (a real tmpfs)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootkeeper.errors import BusyError, MalformedError, RefusedError
from bootkeeper.update import acquire, layout, release, source, stage
from bootkeeper.update.origin import Net
from release_kit import files

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def test_lock_keeps_two_runs_apart(tmp_path: Path) -> None:
    st = stage.Staging(tmp_path / "s")
    busy = f"{tmp_path}/s: another bootkeeper run is downloading into it"
    with st.locked(), pytest.raises(BusyError, match=busy), stage.Staging(tmp_path / "s").locked():
        pass
    with st.locked():  # released at the end of the block
        pass


def test_record_round_trip_and_clean(tmp_path: Path) -> None:
    st = stage.Staging(tmp_path)
    with st.locked():
        a, b = st.make(A), st.make(B)
        assert a == tmp_path / ("a" * 64)
        rec = stage.Record("dir:/x", A, "v2", "uki.efi", ("k.raw",), True)
        st.write_record(a, rec)
        assert json.loads((a / "release.json").read_text())["complete"] is True
        assert st.record(a) == rec and st.record(b) is None
        (a / "uki.efi.part").write_bytes(b"stale")
        (b / "uki.efi.part").write_bytes(b"half")
        (tmp_path / "stray").write_bytes(b"")
        (tmp_path / "notes").mkdir()
        assert [p for p, _ in st.complete()] == [a]
        removed = st.clean(keep=A)
        assert sorted(removed) == sorted(["b" * 64, "uki.efi.part", "stray"])
        assert sorted(os.listdir(tmp_path)) == sorted([".lock", "a" * 64, "notes"])
        assert os.listdir(a) == ["release.json"]
        (a / "release.json").write_text("{")
        with pytest.raises(MalformedError, match=r"release\.json: not a staged release's record"):
            st.record(a)
        st.clean(keep=None)
        assert sorted(os.listdir(tmp_path)) == [".lock", "notes"]
    with pytest.raises(MalformedError, match="is not a sha256: digest"):
        st.folder("sha256:../../x")


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[Path]:
    """A real 24 MiB tmpfs, unmounted however the test ends."""
    if os.geteuid() != 0:
        pytest.fail("needs root to mount a tmpfs (the root marker)")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "none", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.root
def test_full_staging_refused_before_a_byte(tmp_path: Path, tiny: Path) -> None:
    # 4 MiB and the 16 MiB margin fit in 24 MiB; 12 MiB does not
    small = files(tmp_path / "small", uki_size=4 << 20)
    layout.write(tmp_path / "L", "small", release.build(small, "v1"))
    fits = acquire.acquire(source.parse(f"ocifile:{tmp_path / 'L'}:small"), Net(), tiny / "staging")
    assert fits.uki.read_bytes() == small[0].read_bytes()
    fs = files(tmp_path / "files", uki_size=12 << 20)
    built = release.build(fs, "v2")
    layout.write(tmp_path / "L", "v2", built)
    src = source.parse(f"ocifile:{tmp_path / 'L'}:v2")
    with pytest.raises(RefusedError) as err:
        acquire.acquire(src, Net(), tiny / "staging")
    st = os.statvfs(tiny)
    folder = tiny / "staging" / built.digest.removeprefix("sha256:")
    assert str(err.value) == (
        f"{folder}: {st.f_bavail * st.f_frsize} bytes free, the release needs {(12 << 20) + 5000} more "
        f"(and {16 << 20} to spare); nothing downloaded"
    )
    assert os.listdir(folder) == [] and acquire.downloaded(tiny / "staging") is None
