"""measure/eventlog.py: the TCG2 crypto-agile firmware log and systemd-pcrextend's JSON-SEQ log.

Logs are written by tests/eventlog_builder.py from the spec's layout; tpm2-tools' tpm2_eventlog (5.7, in
the trixie tree) replays the same bytes, and its PCR values are the expected ones."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from pathlib import Path

import pytest

import eventlog_builder as B
import trixie
from bootkeeper.errors import MalformedError
from bootkeeper.measure import eventlog
from bootkeeper.measure.banks import BANKS


def _stub_records() -> list[B.Record]:
    """Records as systemd-stub writes them: UTF-16 descriptions, digests of other bytes."""
    out = B.firmware_records()
    for name in (".linux", ".osrel", ".cmdline"):
        text = (name + "\0").encode("utf-16-le")
        out.append(B.Record(11, B.EV_IPL, text, {b: hashlib.new(b, name.encode() + b"\0").digest() for b in B.ALGS}))
        out.append(B.Record(11, B.EV_IPL, text, {b: hashlib.new(b, name.encode() * 7).digest() for b in B.ALGS}))
    tag = struct.pack("<II", 0x13AED6DB, 4) + "1\0".encode("utf-16-le")
    out.append(B.Record(12, B.EV_EVENT_TAG, tag))
    out.append(
        B.Record(
            13,
            B.EV_IPL,
            "System extension initrd\0".encode("utf-16-le"),
            {b: hashlib.new(b, b"cpio").digest() for b in B.ALGS},
        )
    )
    return out


def _tpm2_eventlog_pcrs(log: bytes, tmp: Path) -> dict[str, dict[int, bytes]]:
    if not trixie.available() or not (trixie.ROOT / "usr/bin/tpm2_eventlog").exists():
        pytest.fail(f"no tpm2_eventlog in {trixie.ROOT}: scripts/setup-trixie.sh installs tpm2-tools")
    (tmp / "log.bin").write_bytes(log)
    p = trixie.run("tpm2_eventlog /work/log.bin", tmp)
    assert p.returncode == 0, p.stderr
    out: dict[str, dict[int, bytes]] = {}
    section = p.stdout[p.stdout.index("\npcrs:\n") :]
    bank = ""
    for line in section.splitlines()[2:]:
        m = re.match(r"^  (\w+):$", line)
        if m:
            bank = m.group(1)
            out[bank] = {}
            continue
        m = re.match(r"^    (\d+)\s*: 0x([0-9a-fA-F]+)$", line)
        if m:
            out[bank][int(m.group(1))] = bytes.fromhex(m.group(2))
    return out


@pytest.mark.root
@pytest.mark.integration
@pytest.mark.parametrize(
    ("banks", "locality"),
    [(("sha1", "sha256"), None), (("sha256",), 3), (("sha1", "sha256", "sha384", "sha512"), 0)],
)
def test_replay_agrees_with_tpm2_eventlog(tmp_path: Path, banks: tuple[str, ...], locality: int | None) -> None:
    log = B.build(_stub_records(), banks, locality)
    theirs = _tpm2_eventlog_pcrs(log, tmp_path)
    parsed = eventlog.parse(log, "log.bin")
    assert [b.name for b in parsed.banks] == list(banks)
    assert set(theirs) == set(banks)
    for b in parsed.banks:
        ours = parsed.replay(b)
        assert theirs[b.name], b.name
        for n, v in theirs[b.name].items():
            assert ours[n] == v, (b.name, n)
        # and the test's own arithmetic, for the PCRs tpm2_eventlog leaves out
        start = bytes(b.size - 1) + bytes([locality or 0])
        assert ours[0] == B.replay(_stub_records(), b.name, 0, start)
        assert ours[13] == B.replay(_stub_records(), b.name, 13)
        assert ours[14] == bytes(b.size)


def test_parse_keeps_each_record() -> None:
    recs = _stub_records()
    parsed = eventlog.parse(B.build(recs, locality=3), "log.bin")
    assert parsed.locality == 3
    real = [e for e in parsed.events if e.event_type != eventlog.EV_NO_ACTION]
    assert [(e.pcr, e.event_type, e.data) for e in real] == [(r.pcr, r.event_type, r.data) for r in recs]
    assert real[-1].digests["sha256"] == hashlib.sha256(b"cpio").digest()
    assert [e.data for e in parsed.of_pcr(12)] == [recs[-2].data]


def test_zero_padding_is_not_a_record() -> None:
    """securityfs shows the records the kernel walked, never the firmware area's padding: zeros where
    a record should be are a record with no digests (a cut that leaves zeros is not a shorter log)."""
    with pytest.raises(MalformedError) as exc:
        eventlog.parse(B.build(_stub_records()) + bytes(64), "x")
    _one_line(exc, "digests.count", "zero digests")


def _one_line(exc: pytest.ExceptionInfo[MalformedError], *words: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


def test_truncated_at_every_offset_is_one_error_or_a_shorter_log() -> None:
    recs = B.firmware_records()[:3]
    log = B.build(recs, ("sha1", "sha256"), locality=0)
    # record boundaries: where a cut leaves a whole, shorter log
    bounds = {len(B.build(recs[:k], ("sha1", "sha256"), locality=0)) for k in range(len(recs) + 1)}
    bounds.add(len(B.spec_id(("sha1", "sha256"))))  # the header alone: a log of no records
    ok = 0
    for cut in range(len(log)):
        data = log[:cut]
        if cut in bounds:
            eventlog.parse(data, "log.bin")
            ok += 1
            continue
        with pytest.raises(MalformedError) as exc:
            eventlog.parse(data, "log.bin")
        _one_line(exc, "log.bin: offset ")
    assert ok == len(bounds) - 1  # every boundary but the full length, which range() stops before
    assert eventlog.parse(log, "log.bin").events


def _header_and(record: bytes, banks: tuple[str, ...] = ("sha1", "sha256")) -> bytes:
    return B.spec_id(banks) + record


def test_giant_event_size_is_refused_before_any_allocation() -> None:
    rec = struct.pack("<III", 4, B.EV_IPL, 1) + struct.pack("<H", 0x000B) + bytes(32) + struct.pack("<I", 0xFFFFFFF0)
    with pytest.raises(MalformedError) as exc:
        eventlog.parse(_header_and(rec, ("sha256",)) + b"xx", "log.bin")
    _one_line(exc, "record 1: eventSize", "4294967280", "more than the 2 bytes left")


def test_unknown_alg_id_in_a_record() -> None:
    rec = struct.pack("<III", 4, B.EV_IPL, 1) + struct.pack("<H", 0x0012) + bytes(32) + struct.pack("<I", 0)
    with pytest.raises(MalformedError) as exc:
        eventlog.parse(_header_and(rec, ("sha256",)), "log.bin")
    _one_line(exc, "record 1: digests[0].hashAlg", "0x0012 is not among the header's algorithms")


def test_zero_digests() -> None:
    rec = struct.pack("<III", 4, B.EV_IPL, 0) + struct.pack("<I", 0)
    with pytest.raises(MalformedError) as exc:
        eventlog.parse(_header_and(rec), "log.bin")
    _one_line(exc, "record 1: digests.count", "zero digests")


@pytest.mark.parametrize("count", [3, 0xFFFFFFFF])
def test_digest_count_overflow(count: int) -> None:
    rec = struct.pack("<III", 4, B.EV_IPL, count) + bytes(100)
    with pytest.raises(MalformedError) as exc:
        eventlog.parse(_header_and(rec), "log.bin")
    at = len(B.spec_id(("sha1", "sha256"))) + 8
    _one_line(exc, f"offset {at}: record 1: digests.count", f"{count}, more than the 2 algorithms")


def test_a_missing_bank_digest_is_refused() -> None:
    r = B.Record(4, B.EV_IPL, b"x")
    one = B.record(r, ("sha256",))
    with pytest.raises(MalformedError) as exc:
        eventlog.parse(B.spec_id(("sha1", "sha256")) + one, "log.bin")
    _one_line(exc, "record 1: digests", "no sha1 digest")


def test_pcr_index_out_of_range() -> None:
    rec = B.record(B.Record(24, B.EV_IPL, b"x"), ("sha1", "sha256"))
    with pytest.raises(MalformedError) as exc:
        eventlog.parse(_header_and(rec), "log.bin")
    _one_line(exc, "record 1: pcrIndex", "24")


def test_header_digest_size_must_be_the_algorithm_s() -> None:
    sizes = dict(B.ALGS)
    sizes["sha256"] = (0x000B, 20)
    with pytest.raises(MalformedError) as exc:
        eventlog.parse(B.spec_id(("sha256",), sizes), "log.bin")
    _one_line(exc, "digestSizes[0]", "sha256 with digest size 20, expected 32")


def test_the_sha1_only_format_is_a_clear_error() -> None:
    # TPM 1.2 / SHA-1 log: TCG_PCR_EVENT records only, first one a real measurement
    old = struct.pack("<II", 0, B.EV_S_CRTM_VERSION) + hashlib.sha1(b"v").digest() + struct.pack("<I", 1) + b"v"
    with pytest.raises(MalformedError) as exc:
        eventlog.parse(old, "log.bin")
    _one_line(exc, "log.bin: offset 0: first record", "SHA-1-only log of the old format")
    spec00 = b"Spec ID Event00\0" + bytes(8)
    with pytest.raises(MalformedError) as exc:
        eventlog.parse(struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", len(spec00)) + spec00, "log.bin")
    _one_line(exc, "TPM 1.2 log", "SHA-1 only")


def test_empty_and_oversized_logs(tmp_path: Path) -> None:
    with pytest.raises(MalformedError) as exc:
        eventlog.parse(b"", "log.bin")
    _one_line(exc, "log.bin: offset 0", "empty")
    p = tmp_path / "big.bin"
    p.write_bytes(B.build(B.firmware_records()) + os.urandom(2048))
    with pytest.raises(MalformedError) as exc:
        eventlog.read_log(p, limit=1024)
    _one_line(exc, "offset 1024", "larger than 1024 bytes")


def test_random_garbage_never_escapes_as_another_exception() -> None:
    import random

    rng = random.Random(16)
    base = bytearray(B.build(_stub_records()))
    for _ in range(3000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            eventlog.parse(bytes(data), "log.bin")
        except MalformedError as exc:
            assert "\n" not in str(exc)


# -- the userspace log --------------------------------------------------------------------------


def _user_record(pcr: int, word: str, etype: str | None = "phase") -> bytes:
    """As tpm2_userspace_log() (src/shared/tpm2-util.c, v257.9) writes one: RS, JSON, LF."""
    content: dict[str, object] = {"string": word, "bootId": "0" * 32, "timestamp": 123}
    if etype is not None:
        content["eventType"] = etype
    rec = {
        "pcr": pcr,
        "digests": [{"hashAlg": b, "digest": hashlib.new(b, word.encode()).hexdigest()} for b in ("sha1", "sha256")],
        "content_type": "systemd",
        "content": content,
    }
    return b"\x1e" + json.dumps(rec, separators=(",", ":")).encode() + b"\n"


def test_user_log_phases() -> None:
    data = (
        _user_record(11, "enter-initrd")
        + _user_record(15, "machine-id:x", "machine-id")
        + _user_record(11, "leave-initrd")
    )
    log = eventlog.parse_user_log(data, "tpm2-measure.log")
    assert log.phases() == ("enter-initrd", "leave-initrd")
    assert log.of_pcr(15)[0].digests["sha256"] == hashlib.sha256(b"machine-id:x").digest()
    assert log.of_pcr(11)[1].index == 3


def test_user_log_read_from_a_file_that_is_absent_or_aborted(tmp_path: Path) -> None:
    assert eventlog.read_user_log(tmp_path / "none.log") is None
    p = tmp_path / "tpm2-measure.log"
    p.write_bytes(_user_record(11, "enter-initrd") + b'\x1e{"pcr":11,"dig')
    with pytest.raises(MalformedError) as exc:
        eventlog.read_user_log(p)
    _one_line(exc, "record 2: not JSON")
    os.chmod(p, 0o1600)  # the writer's sticky bit: it died mid-record
    log = eventlog.read_user_log(p)
    assert log is not None and log.aborted and log.phases() == ("enter-initrd",)
    assert "cut off" in log.notes[0]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"{}", ("offset 0", "record separator")),
        (b"\x1e[1]\n", ("record 1", "not a JSON object")),
        (b'\x1e{"pcr": 99, "digests": []}\n', ("record 1: pcr: 99",)),
        (b'\x1e{"pcr": 11, "digests": []}\n', ("record 1: digests",)),
        (b'\x1e{"pcr": 11, "digests": [{"hashAlg": "sha256", "digest": "zz"}]}\n', ("digests[0].digest: not hex",)),
        (b'\x1e{"pcr": 11, "digests": [{"hashAlg": "sha256", "digest": "00"}]}\n', ("1 bytes, sha256 has 32",)),
        (b"\x1e" + b"[" * 100000 + b"\n", ("record 1: not JSON",)),
    ],
)
def test_user_log_hostile(data: bytes, words: tuple[str, ...]) -> None:
    with pytest.raises(MalformedError) as exc:
        eventlog.parse_user_log(data, "tpm2-measure.log")
    _one_line(exc, "tpm2-measure.log: ", *words)


def test_banks_table_is_the_header_s() -> None:
    assert {b.alg_id for b in BANKS.values()} == {a for a, _ in B.ALGS.values()}
