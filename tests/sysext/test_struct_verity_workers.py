"""Streaming verification and hashing workers, on a real run of ``sysext validate --full`` in a
child process over a large sparse image (3 GiB of data, a 1 GiB verity partition of which the tree
fills 24 MiB): the hash area is read as needed, never whole (issue 12, item 7), and the forked
hashing workers die with their parent (item 4). Memory, not time, is asserted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from bootkeeper.sysext import gpt, signature, verity

DATA = 3 << 30
VERITY_PART = 1 << 30
RSS_BOUND_KIB = 300 * 1024  # the old code read the whole verity partition: over 1 GiB


def _signed_image(d: Path, fs: bytes, data_size: int, verity_size: int, name: str) -> tuple[Path, Path]:
    """``fs`` at the start of a sparse root partition of ``data_size`` bytes, its verity tree (in a
    partition of at least ``verity_size`` bytes, sparse past the tree; 0: just the tree) and its signature;
    returns the image and the signing certificate (PEM)."""
    with (d / "data").open("w+b") as f:  # the file system, then a hole up to data_size
        f.write(fs)
        f.truncate(data_size)
        t = verity.build(f)
    (d / "data").unlink()
    key, cert = signature.self_signed("ec", name)
    data_uuid, hash_uuid = gpt.split_root_hash(t.root_hash)
    parts = [
        gpt.NewPartition(gpt.TYPES["root"]["x86-64"], data_uuid, "root-x86-64", fs, size=data_size),
        gpt.NewPartition(
            gpt.TYPES["root-verity"]["x86-64"], hash_uuid, "root-x86-64-verity", t.hash_area(), size=verity_size
        ),
        gpt.NewPartition(
            gpt.TYPES["root-verity-sig"]["x86-64"],
            str(uuid.uuid4()),
            "root-x86-64-verity-sig",
            signature.sign(t.root_hash, key, cert).dump(),
        ),
    ]
    img = d / f"{name}.raw"
    with img.open("wb") as f:
        gpt.write(f, parts, str(uuid.uuid4()))
    pem = d / f"{name}.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return img, pem


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("big")
    tree = d / "tree"
    (tree / "usr/lib/extension-release.d").mkdir(parents=True)
    (tree / "usr/lib/extension-release.d/extension-release.big").write_text("ID=_any\n")
    subprocess.run(["mkfs.erofs", "-T0", "--all-root", str(d / "fs"), str(tree)], check=True, capture_output=True)
    return _signed_image(d, (d / "fs").read_bytes(), DATA, VERITY_PART, "big")


def _validate(img: Path, pem: Path) -> list[str]:
    return [sys.executable, "-m", "bootkeeper", "sysext", "validate", str(img), "--cert", str(pem), "--full"]


# a small process that runs the command and reports the peak RSS of it and its workers (KiB): the
# pytest process itself is large, and a child's peak may include what it was forked from
MEASURE = (
    "import resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, repr(p.stdout + p.stderr))\n"
)


def test_validate_memory_is_bounded(big: tuple[Path, Path]) -> None:
    img, pem = big
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *_validate(img, pem)], capture_output=True, text=True, check=True
    )
    rc, rss, text = out.stdout.split(" ", 2)
    print(f"validate --full, {DATA >> 20} MiB data, {VERITY_PART >> 20} MiB verity: peak RSS {int(rss) >> 10} MiB")
    assert rc == "0", text
    assert int(rss) < RSS_BOUND_KIB, f"peak RSS {int(rss) >> 10} MiB"


def _children(pid: int) -> set[int]:
    out = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(p.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_die_with_their_parent(big: tuple[Path, Path]) -> None:
    img, pem = big
    child = subprocess.Popen(_validate(img, pem), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120  # a timeout for the wait, not an assertion about speed
        workers: set[int] = set()
        while not workers and child.poll() is None and time.monotonic() < deadline:
            workers = _children(child.pid)
            time.sleep(0.01)
        assert workers, "validate --full started no hashing workers"
        os.kill(child.pid, signal.SIGKILL)  # mid-hash: 3 GiB take seconds
        child.wait()
        deadline = time.monotonic() + 20
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = [w for w in workers if _alive(w)]
        for w in survivors:
            os.kill(w, signal.SIGKILL)
        assert not survivors, f"hashing workers {survivors} outlived their parent"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_worker_init_sets_parent_death_signal() -> None:
    """In a fork of this process: after worker_init(), the parent-death signal is SIGKILL."""
    import ctypes

    pid = os.fork()
    if pid == 0:
        verity.worker_init()
        sig = ctypes.c_int(0)
        ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG
        os._exit(0 if sig.value == signal.SIGKILL else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_worker_whose_parent_died_before_its_initializer_exits() -> None:
    """The parent was killed between the fork and worker_init (under load: seen as a flaky survivor in
    test_workers_die_with_their_parent): the death signal is never sent then, so the worker compares its
    parent with the pid the pool's owner had before the fork, and leaves."""
    for parent, code in ((None, 0), ("ours", 0), ("gone", 1)):
        mine = os.getpid()
        pid = os.fork()
        if pid == 0:
            want = {None: None, "ours": mine, "gone": mine + 1 if mine + 1 != os.getppid() else mine + 2}[parent]
            verity.worker_init(want)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == code, parent


SQUASH_PART = 768 << 20


def test_squashfs_release_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """A squashfs root partition is read by unsquashfs in place (-o OFFSET, after its super block
    is checked against the partition): never the whole partition in memory (the old code read
    768 MiB here into one bytes object)."""
    tree = tmp_path / "tree"
    (tree / "usr/lib/extension-release.d").mkdir(parents=True)
    (tree / "usr/lib/extension-release.d/extension-release.sq").write_text("ID=_any\n")
    subprocess.run(["mksquashfs", str(tree), str(tmp_path / "fs"), "-quiet", "-noappend"], check=True)
    img, pem = _signed_image(tmp_path, (tmp_path / "fs").read_bytes(), SQUASH_PART, 0, "sq")
    argv = [sys.executable, "-m", "bootkeeper", "sysext", "validate", str(img), "--cert", str(pem)]
    out = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True, check=True)
    rc, rss, text = out.stdout.split(" ", 2)
    print(f"validate, squashfs in a {SQUASH_PART >> 20} MiB partition: peak RSS {int(rss) >> 10} MiB")
    assert rc == "0", text
    assert int(rss) < RSS_BOUND_KIB, f"peak RSS {int(rss) >> 10} MiB"
