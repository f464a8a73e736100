"""GPT against a real systemd-repart 257 image (shared/reference) and its own round trip."""

from __future__ import annotations

import io
import json
import os
import struct
import uuid
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootkeeper.errors import MalformedError
from bootkeeper.sysext import gpt

REF = Path(__file__).resolve().parents[1] / "data"  # copied from shared/reference (see data/README.md)


def test_reads_systemd_repart_image() -> None:
    img = REF / "kairos-test.sysext.raw"
    layout = json.loads((REF / "layout.json").read_text())
    with img.open("rb") as f:
        t = gpt.read(f, img.stat().st_size, str(img))
    assert t.disk_uuid == layout["gpt"]["disk_guid"]
    assert t.last_usable == layout["gpt"]["last_usable_lba"] and t.backup_lba == layout["gpt"]["backup_lba"]
    got = [(p.number, p.type_uuid, p.part_uuid, p.first_lba, p.last_lba, p.name) for p in t.partitions]
    want = [
        (p["partno"], p["type_uuid"], p["part_uuid"], p["first_lba"], p["last_lba"], p["name"])
        for p in layout["partitions"]
    ]
    assert got == want
    assert [p.designator for p in t.partitions] == ["root", "root-verity", "root-verity-sig"]
    assert {p.architecture for p in t.partitions} == {"x86-64"}
    assert t.warnings == ()
    # repart names the data and verity partitions after the root hash halves
    root_hash = bytes.fromhex("d436759650939e5864323298c629d3c6b1cce030e2c72e49d6ec20fc225fff48")
    assert gpt.split_root_hash(root_hash) == (t.partitions[0].part_uuid, t.partitions[1].part_uuid)


def _image(parts: int = 3) -> bytes:
    f = io.BytesIO()
    new = [
        gpt.NewPartition(gpt.TYPES["root"]["x86-64"], str(uuid.uuid4()), f"p{i}", os.urandom(5000 + i))
        for i in range(parts)
    ]
    gpt.write(f, new, str(uuid.uuid4()))
    return f.getvalue()


def test_round_trip() -> None:
    raw = _image()
    t = gpt.read(io.BytesIO(raw), len(raw))
    assert [p.name for p in t.partitions] == ["p0", "p1", "p2"]
    assert all(p.offset % 4096 == 0 for p in t.partitions)
    assert t.warnings == ()


def _set_entry(raw: bytearray, idx: int, first: int, last: int) -> None:
    struct.pack_into("<QQ", raw, 2 * 512 + idx * 128 + 32, first, last)
    arr = raw[1024 : 1024 + 128 * 128]
    struct.pack_into("<I", raw, 512 + 88, zlib.crc32(arr))
    hdr = bytearray(raw[512 : 512 + 92])
    hdr[16:20] = b"\0\0\0\0"
    struct.pack_into("<I", raw, 512 + 16, zlib.crc32(hdr))


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda r: r.__setitem__(512 + 40, r[512 + 40] ^ 1), "header CRC32"),
        (lambda r: r.__setitem__(1024 + 3, r[1024 + 3] ^ 1), "entry array CRC32"),
        (lambda r: _set_entry(r, 1, 40, 60), "overlap"),
        (lambda r: _set_entry(r, 0, 40, 10**6), "outside the usable"),
        (lambda r: r.__setitem__(slice(512, 520), b"NOT PART"), "no GPT header"),
    ],
)
def test_hostile_tables(mutate: object, words: str) -> None:
    raw = bytearray(_image())
    mutate(raw)  # type: ignore[operator]
    with pytest.raises(MalformedError, match=words):
        gpt.read(io.BytesIO(bytes(raw)), len(raw))


def test_truncated() -> None:
    raw = _image()
    with pytest.raises(MalformedError, match=r"beyond the disk|truncated"):
        gpt.read(io.BytesIO(raw[: len(raw) // 2]), len(raw) // 2)


@settings(max_examples=3000, deadline=None)
@given(st.binary(min_size=0, max_size=4096), st.integers(0, 2000))
def test_fuzz_never_crashes(noise: bytes, at: int) -> None:
    raw = bytearray(_image(1)) if at % 2 else bytearray(1536)
    raw[at : at + len(noise)] = noise
    try:
        gpt.read(io.BytesIO(bytes(raw)), len(raw))
    except MalformedError as exc:
        assert str(exc)
