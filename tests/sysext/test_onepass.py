"""Activation in one pass (issue 18): each image is read once, written to its staged copy and its
data blocks hashed from the bytes written; the copy's hash levels are then checked against those
hashes and the signed root hash. Same verdicts as the two-pass check (copy, then read the copy
again), on every hostile image of test_hostile.py, in this process and in worker processes, with
images cut into many pieces; and the data is read once: the process's own read counter
(``rchar`` of /proc/self/io, which counts read, pread and copy_file_range bytes) says so."""

from __future__ import annotations

import os
import resource
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

import test_hostile
from bootkeeper.config import Certificate, Sysext, SysextMode
from bootkeeper.sysext import activate, image, policy, stage, verity

VENDOR = test_hostile.VENDOR
ENFORCED = policy.parse(policy.ENFORCED_DEFAULT)


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    work = tmp_path_factory.mktemp("hostile")
    good = image.assemble(test_hostile._fs(work / "a"), *VENDOR)
    other = image.assemble(test_hostile._fs(work / "b"), *VENDOR)
    out = {name: raw for name, (raw, _) in test_hostile._cases(good, other, work).items() if name != "_"}
    out["good"] = good
    out["good, 3 MB of data"] = image.assemble(test_hostile._fs(work / "c", blob=3_000_000), *VENDOR)
    return out


def _root(tmp: Path, images: dict[str, bytes]) -> tuple[Path, Sysext, dict[str, str]]:
    """A node root with each image as ``img-N.raw`` (the hostile images' extension-release is
    ``img``: each in a folder of its own, as img.raw); the config trusts the vendor."""
    root = tmp / "root"
    names: dict[str, str] = {}  # the source folder (on the node) -> the case
    for i, (case, raw) in enumerate(images.items()):
        src = root / "src" / f"{i:02d}"
        src.mkdir(parents=True)
        (src / "img.raw").write_bytes(raw)
        names[f"/src/{i:02d}"] = case
    cert = Certificate(VENDOR[1].public_bytes(Encoding.PEM).decode(), "vendor")
    cfg = Sysext(certificates=(cert,), firmware=(), verity_dirs=(), sources=tuple(sorted(names)))
    return root, cfg, names


def _two_pass(path: Path, full: bool = True) -> list[str]:
    """What the check that reads the data again says of the image itself."""
    return image.validate(path, ENFORCED, [VENDOR[1]], full=full, name="img.raw").reasons


def _reasons(root: Path, report: activate.Report, names: dict[str, str]) -> dict[str, list[str]]:
    return {names["/" + str(Path(o.source).parent.relative_to(root))]: o.reasons for o in report.images if o.source}


@pytest.mark.parametrize("workers", ["this process", "worker processes, small pieces"])
def test_one_pass_gives_the_verdicts_of_two(
    cases: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    """Each hostile image is refused for the very reason the two-pass check gives, the good ones
    pass, whether the copy is made here or spread over worker processes in pieces of 64 KiB (many
    per image, so piece edges fall inside the data area and next to it)."""
    if workers != "this process":
        monkeypatch.setattr(activate, "PARALLEL_FROM", 0)
        monkeypatch.setattr(stage, "PIECE", 64 << 10)
        monkeypatch.setattr(os, "cpu_count", lambda: 2)
    else:
        monkeypatch.setattr(os, "cpu_count", lambda: 1)
    # activate only sees images named img.raw (one per source folder): each is its own case
    root, cfg, names = _root(tmp_path, cases)
    # sources are judged in order and an image name only once: one run per case keeps it simple
    got: dict[str, list[str]] = {}
    for src, case in names.items():
        shutil.rmtree(root / "run", ignore_errors=True)
        one = Sysext(**{**cfg.__dict__, "sources": (src,)})
        report = activate.activate(root, one, SysextMode.ENFORCED)
        got.update(_reasons(root, report, names))
        want = _two_pass(root / src.lstrip("/") / "img.raw")
        # the copy's path differs from the source's in the GPT messages that name the file
        assert [_unpath(r) for r in got[case]] == [_unpath(r) for r in want], case
        placed = (root / "run/extensions/img.raw").is_file()
        assert placed == (not want), case
    assert got["good"] == [] and got["good, 3 MB of data"] == []
    assert any("data block 50" in r for r in got["flipped bit in a data block (--full)"])


def _unpath(reason: str) -> str:
    """A reason with the image's path left out (the copy is named after its temporary file)."""
    head, sep, rest = reason.partition(": ")
    return rest if sep and ("/" in head or head.startswith("img.raw")) else reason


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_the_data_is_read_once(cases: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full check of a 3 MB image reads about the image once (the copy's hash levels, GPT,
    signature and extension-release on top: a few KiB); the two-pass check read it twice (the copy,
    then every data block again), which is what the second measure shows for the same image."""
    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # this process: its counter sees every read
    raw = cases["good, 3 MB of data"]
    root, cfg, _ = _root(tmp_path, {"good, 3 MB of data": raw})
    before = _rchar()
    report = activate.activate(root, cfg, SysextMode.ENFORCED)
    one_pass = _rchar() - before
    assert [o.verdict for o in report.images] == ["passed"]
    copy = root / "run/extensions/img.raw"
    before = _rchar()
    assert _two_pass(copy) == []
    rereads = _rchar() - before
    size = len(raw)
    assert size <= one_pass < size * 1.1, (one_pass, size)
    assert rereads > size * 0.8  # the data, read again: what one pass saves


def test_hashes_for_another_superblock_are_not_used(cases: dict[str, bytes], tmp_path: Path) -> None:
    """Hashes taken for a superblock the copy does not have (the source changed between the read of
    its superblock and the copy) are ignored and the copy is read and hashed again: the verdict
    is the copy's own. Hashes of other bytes for the right superblock refuse the image."""
    path = tmp_path / "img.raw"
    path.write_bytes(cases["good"])
    fd = os.open(path, os.O_RDONLY)
    try:
        ((start, sb),) = image.data_areas(fd, path.stat().st_size)
    finally:
        os.close(fd)
    wrong = verity.Leaves(start, sb, bytes(32 * sb.data_blocks))
    other_salt = verity.Leaves(start, verity.Superblock(**{**sb.__dict__, "salt": bytes(32)}), wrong.digests)

    def check(leaves: verity.Leaves) -> list[str]:
        return image.validate(path, ENFORCED, [VENDOR[1]], full=True, name="img.raw", leaves={start: leaves}).reasons

    assert check(other_salt) == []
    assert check(verity.Leaves(start + 4096, sb, wrong.digests)) == []
    assert check(verity.Leaves(start, sb, wrong.digests[:-32])) == []  # not one per block: not used
    assert check(wrong) == ["root-verity: data block 0 (byte 0) does not match its hash"]


def test_a_source_that_ends_early_is_refused_by_name(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x" * 10_000)
    sb = verity.Superblock(1, 1, bytes(16), "sha256", 4096, 4096, 4, bytes(32))
    fd, out = os.open(src, os.O_RDONLY), os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    try:
        for piece in (stage.Piece(0, 16384, 0, sb), stage.Piece(0, 16384)):
            with pytest.raises(OSError, match="source ended after 10000 of 16384 bytes"):
                stage.copy_piece(fd, out, piece)
    finally:
        os.close(fd)
        os.close(out)


def test_pieces_cover_the_image_once_and_cut_on_block_edges() -> None:
    sb = verity.Superblock(1, 1, bytes(16), "sha256", 4096, 4096, 1000, bytes(32))
    ps = stage.pieces(10_000_000, [(20480, sb)], step=1 << 20)
    assert (ps[0].start, ps[0].length, ps[0].sb) == (0, 20480, None)
    ends = [p.start + p.length for p in ps]
    assert [p.start for p in ps[1:]] == ends[:-1] and ends[-1] == 10_000_000
    inside = [p for p in ps if p.sb is not None]
    assert sum(p.length for p in inside) == 1000 * 4096
    assert all(p.length % 4096 == 0 and p.area == 20480 for p in inside)


def test_many_images_stay_within_the_descriptor_limit(
    cases: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 images under a limit of 600 open files: a round stages at most MAX_BATCH images (two
    descriptors each), so every image is judged on its own merits, none refused for a lack of
    descriptors."""
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    root = tmp_path / "root"
    extra = root / activate.EXTRA_DIR
    extra.mkdir(parents=True)
    good = cases["good"]
    for i in range(300):  # their extension-release names "img": each refused for that, all read
        (extra / f"n{i:03d}.raw").write_bytes(good)
    (extra / "img.raw").write_bytes(good)
    cert = Certificate(VENDOR[1].public_bytes(Encoding.PEM).decode(), "vendor")
    cfg = Sysext(certificates=(cert,), firmware=(), verity_dirs=())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (600, hard))
    try:
        report = activate.activate(root, cfg, SysextMode.ENFORCED)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    by: dict[str, Any] = {o.name: o for o in report.images}
    assert by["img.raw"].verdict == "passed"
    others = [o for n, o in by.items() if n != "img.raw"]
    assert len(others) == 300
    assert all(o.verdict == "refused" and "extension-release" in " ".join(o.reasons) for o in others), [
        o.reasons for o in others if "extension-release" not in " ".join(o.reasons)
    ][:3]


def test_a_worker_that_dies_while_copying_refuses_only_its_image(
    cases: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection below the boundary: the copy of 'die.raw' kills its worker process (as the
    OOM killer would). The pool is lost for every piece in flight; each image is copied again
    alone, so only 'die.raw' is refused, by name, and the good one is placed."""
    real = stage.copy_piece

    def copy_piece(src: int, dst: int, piece: stage.Piece) -> bytes:
        if os.readlink(f"/proc/self/fd/{src}").endswith("/die.raw"):
            os._exit(9)
        return real(src, dst, piece)

    monkeypatch.setattr(stage, "copy_piece", copy_piece)
    monkeypatch.setattr(activate, "PARALLEL_FROM", 0)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    root = tmp_path / "root"
    extra = root / activate.EXTRA_DIR
    extra.mkdir(parents=True)
    (extra / "img.raw").write_bytes(cases["good"])
    (extra / "die.raw").write_bytes(cases["good"])
    cert = Certificate(VENDOR[1].public_bytes(Encoding.PEM).decode(), "vendor")
    report = activate.activate(root, Sysext(certificates=(cert,), firmware=(), verity_dirs=()), SysextMode.ENFORCED)
    got = {o.name: (o.verdict, o.reasons) for o in report.images}
    assert got["img.raw"] == ("passed", [])
    assert got["die.raw"] == ("refused", [f"{extra}/die.raw: copy stopped (its worker process died)"])
    assert sorted(p.name for p in (root / "run/extensions").iterdir()) == ["img.raw"]


def test_the_fallback_copy_is_positional(tmp_path: Path) -> None:
    """Across file systems (tmpfs to this disk) copy_file_range fails and the copy reads and writes
    by hand: still at explicit offsets, never moving the descriptors' shared offset, so worker
    processes that inherited the same descriptors can copy other pieces at the same time."""
    shm = Path("/dev/shm")
    assert os.stat(shm).st_dev != os.stat(tmp_path).st_dev, "the premise: two file systems"
    data = os.urandom(3 * 4096 + 100)
    src_path = shm / f"bootkeeper-test-{os.getpid()}"
    src_path.write_bytes(data)
    src, dst = os.open(src_path, os.O_RDONLY), os.open(tmp_path / "copy", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(OSError):  # the premise: the kernel refuses, the fallback runs
            os.copy_file_range(src, dst, 10, 0, 0)
        sb = verity.Superblock(1, 1, bytes(16), "sha256", 4096, 4096, 2, bytes(32))
        pieces = [stage.Piece(8192, 4196), stage.Piece(0, 8192, 0, sb)]  # the later piece first
        got = [stage.copy_piece(src, dst, p) for p in pieces]
        assert os.lseek(src, 0, os.SEEK_CUR) == 0 and os.lseek(dst, 0, os.SEEK_CUR) == 0
        assert (tmp_path / "copy").read_bytes() == data
        assert got[1] == verity.hash_blocks("sha256", bytes(32), data[:8192], 4096)
    finally:
        os.close(src)
        os.close(dst)
        src_path.unlink()
