"""EspStore on real mounts and real faults: a read-only bind mount stays a read-only bind (the file
system under it stays writable), stale temporaries are cleared under the lock only, and every write
error names the file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bootkeeper.errors import BusyError
from bootkeeper.esp.store import EspStore
from helpers import entry_body, esp_with

BLESS = "bless good --entry loader/entries/active+2-1.conf --esp"


@pytest.fixture
def esp(tmp_path: Path) -> Path:
    return esp_with(
        tmp_path / "esp",
        {"active+2-1.conf": entry_body("active"), "passive+3.conf": entry_body("passive")},
    )


def _in_namespace(script: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is missing; scripts/setup-test-deps.sh installs it")
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True, text=True, check=False
    )


def _flags(out: str, mnt: Path) -> tuple[bool, bool]:
    """(per-mount read-only, file-system read-only) of the top mount at ``mnt`` in the mountinfo
    lines the script printed."""
    found = None
    for line in out.splitlines():
        f = line.split(" ")
        if len(f) > 6 and f[4] == str(mnt) and "-" in f[6:]:
            sep = f.index("-", 6)
            found = ("ro" in f[5].split(","), "ro" in f[sep + 3].split(","))
    assert found is not None, f"no mountinfo line for {mnt}:\n{out}"
    return found


@pytest.mark.root
@pytest.mark.integration
def test_read_only_bind_mount_is_remounted_as_a_bind(esp: Path, tmp_path: Path) -> None:
    """/efi bound read-only from a writable file system: bless makes only the bind writable and back;
    the file system (every other mount of it) stays writable. Before the fix the plain
    ``remount,ro`` made A read-only too."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    script = f"""
mount -t tmpfs -o size=4m tmpfs {a}
cp -a {esp}/. {a}/
mount --bind {a} {b}
mount -o remount,bind,ro {b}
touch {b}/probe 2>/dev/null && echo "b not read-only"
{sys.executable} -m bootkeeper {BLESS} {b}; echo "rc=$?"
echo "entries: $(ls {a}/loader/entries | tr '\\n' ' ')"
touch {a}/still-writable && echo "a writable"
touch {b}/probe 2>/dev/null && echo "b writable"
cat /proc/self/mountinfo
"""
    p = _in_namespace(script)
    out = p.stdout
    assert "rc=0" in out.splitlines(), out + p.stderr
    assert "entries: active.conf passive+3.conf " in out.splitlines()
    assert _flags(out, a) == (False, False), "the file system under the bind was made read-only"
    assert _flags(out, b) == (True, False)
    assert "a writable" in out and "b writable" not in out and "b not read-only" not in out


@pytest.mark.root
@pytest.mark.integration
def test_read_only_file_system_and_a_writable_mount_of_it(esp: Path, tmp_path: Path) -> None:
    """The plain case (the file system read-only) still remounts rw and back ro; and when the file
    system is read-only but this mount's own flag was rw (another mount made it read-only), both are
    restored as they were."""
    c, d, e = tmp_path / "c", tmp_path / "d", tmp_path / "e"
    for x in (c, d, e):
        x.mkdir()
    esp2 = esp_with(tmp_path / "esp2", {"active+2-1.conf": entry_body("active")})
    script = f"""
mount -t tmpfs -o size=4m tmpfs {c}
cp -a {esp}/. {c}/
mount -o remount,ro {c}
{sys.executable} -m bootkeeper {BLESS} {c}; echo "rc-c=$?"
mount -t tmpfs -o size=4m tmpfs {d}
cp -a {esp2}/. {d}/
mount --bind {d} {e}
mount -o remount,ro {e}
{sys.executable} -m bootkeeper {BLESS} {d}; echo "rc-d=$?"
echo "entries-c: $(ls {c}/loader/entries)"
echo "entries-d: $(ls {d}/loader/entries)"
cat /proc/self/mountinfo
"""
    p = _in_namespace(script)
    out = p.stdout
    assert [x for x in out.splitlines() if x.startswith("rc-")] == ["rc-c=0", "rc-d=0"], out + p.stderr
    assert "entries-c: active.conf" in out and "entries-d: active.conf" in out
    assert _flags(out, c) == (True, True)
    assert _flags(out, d) == (False, True), "the mount's own rw flag was not restored"
    assert _flags(out, e) == (True, True)


def _plant(esp: Path) -> dict[str, bytes]:
    """Stale temporaries in every folder bootkeeper writes, and look-alikes that are not ours."""
    (esp / "EFI/kairos/active.efi.extra.d").mkdir(parents=True)
    (esp / "EFI/Linux").mkdir(parents=True)
    stale = {
        "loader/.bootkeeper-0a.tmp": b"x" * 10,
        "loader/entries/.bootkeeper-0b.tmp": b"y",
        "EFI/kairos/.bootkeeper-0c.tmp": b"",
        "EFI/kairos/active.efi.extra.d/.bootkeeper-0d.tmp": b"z" * 5000,
        "EFI/Linux/.bootkeeper-0e.tmp": b"u",
    }
    kept = {
        "loader/entries/.bootkeeper-0f.conf": b"not a temporary name",
        "EFI/kairos/bootkeeper-10.tmp": b"no dot",
        "EFI/kairos/active.efi.extra.d/x.raw": b"an image",
        ".bootkeeper-11.tmp": b"the ESP root is not a folder bootkeeper writes",
    }
    for rel, data in {**stale, **kept}.items():
        (esp / rel).write_bytes(data)
    (esp / "EFI/kairos/.bootkeeper-12.tmp").mkdir()  # a directory is never removed
    return kept


def test_transaction_clears_stale_temporaries_and_nothing_else(esp: Path) -> None:
    kept = _plant(esp)
    logged: list[str] = []
    store = EspStore(esp, log=logged.append)
    with store.transaction():
        pass
    left = sorted(p.relative_to(esp).as_posix() for p in esp.rglob("*") if p.name.startswith((".bootkeeper", "bootk")))
    assert left == sorted(
        [
            ".bootkeeper-11.tmp",
            "EFI/kairos/.bootkeeper-12.tmp",
            "EFI/kairos/bootkeeper-10.tmp",
            "loader/entries/.bootkeeper-0f.conf",
        ]
    )
    assert all((esp / k).read_bytes() == v for k, v in kept.items())
    assert sorted(store.cleared) == sorted(
        [
            "loader/.bootkeeper-0a.tmp",
            "loader/entries/.bootkeeper-0b.tmp",
            "EFI/kairos/.bootkeeper-0c.tmp",
            "EFI/kairos/active.efi.extra.d/.bootkeeper-0d.tmp",
            "EFI/Linux/.bootkeeper-0e.tmp",
        ]
    )
    assert logged[0] == "removed loader/.bootkeeper-0a.tmp, a temporary left by an interrupted bootkeeper run"


def test_temporaries_in_deeper_uki_folders_are_cleared(esp: Path) -> None:
    """An ``efi /EFI/v/sub/x.efi`` entry puts its extensions in EFI/v/sub/x.efi.extra.d/: an
    interrupted install there leaves its temporary there, and the next write verb removes it."""
    deep = esp / "EFI/v/sub/x.efi.extra.d"
    deep.mkdir(parents=True)
    (deep / ".bootkeeper-dead.tmp").write_bytes(b"half an image")
    (deep / "k3s.raw").write_bytes(b"an image")
    store = EspStore(esp, log=lambda _: None)
    with store.transaction():
        pass
    assert store.cleared == ["EFI/v/sub/x.efi.extra.d/.bootkeeper-dead.tmp"]
    assert sorted(os.listdir(deep)) == ["k3s.raw"]


def test_bless_clears_them_and_says_so(esp: Path) -> None:
    (esp / "loader/entries/.bootkeeper-dead.tmp").write_bytes(b"half an entry")
    p = subprocess.run(
        [sys.executable, "-m", "bootkeeper", *BLESS.split(), str(esp)], capture_output=True, text=True, check=False
    )
    assert p.returncode == 0, p.stderr
    assert "bootkeeper: removed loader/entries/.bootkeeper-dead.tmp, a temporary left by" in p.stderr
    assert sorted(os.listdir(esp / "loader/entries")) == ["active.conf", "passive+3.conf"]


def test_a_live_run_keeps_its_temporaries(esp: Path) -> None:
    """Only the lock tells a live temporary from a stale one: while one run holds it, another run's
    transaction waits (and gives up) without touching the first run's temporary."""
    live = esp / "loader/entries/.bootkeeper-live.tmp"
    holding, release = threading.Event(), threading.Event()

    def first() -> None:
        with EspStore(esp).transaction():
            live.write_bytes(b"being written")
            holding.set()
            release.wait(10)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert holding.wait(10)
        with pytest.raises(BusyError), EspStore(esp, lock_timeout=0.3).transaction():
            pass
        assert live.read_bytes() == b"being written"
    finally:
        release.set()
        t.join()


@pytest.mark.root
@pytest.mark.integration
def test_write_errors_name_the_file(esp: Path, tmp_path: Path) -> None:
    """A full ESP (a real full tmpfs): the error names the file being written. Before, the bare
    ``OSError`` of the write escaped and the CLI printed only "No space left on device"."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    code = (
        "from pathlib import Path; from bootkeeper.esp.store import EspStore; "
        f"s = EspStore(Path('{mnt}'))\n"
        "try:\n    s.write_atomic('loader/entries/active+1-1.conf', b'title x\\n' * 4096)\n"
        "except Exception as e:\n    print(type(e).__name__, e)"
    )
    script = f"""
mount -t tmpfs -o size=1m tmpfs {mnt}
cp -a {esp}/. {mnt}/
dd if=/dev/zero of={mnt}/filler bs=4k 2>/dev/null
{sys.executable} -c "{code}"
"""
    p = _in_namespace(script)
    assert p.stdout.strip().splitlines()[-1] == (
        f"WriteError {mnt}/loader/entries/active+1-1.conf: cannot write (No space left on device)"
    ), p.stdout + p.stderr
