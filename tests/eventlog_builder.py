"""Test side: TCG2 crypto-agile event logs written from the TCG PC Client Platform Firmware Profile's
layout (10.2.1 TCG_PCR_EVENT, 10.2.2 TCG_PCR_EVENT2, 10.4.5.1 TCG_EfiSpecIdEvent), independently of
bootkeeper's parser, so that tpm2_eventlog can judge both."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

EV_NO_ACTION = 0x3
EV_SEPARATOR = 0x4
EV_POST_CODE = 0x1
EV_EVENT_TAG = 0x6
EV_IPL = 0xD
EV_S_CRTM_VERSION = 0x8
ALGS = {"sha1": (0x0004, 20), "sha256": (0x000B, 32), "sha384": (0x000C, 48), "sha512": (0x000D, 64)}


@dataclass
class Record:
    pcr: int
    event_type: int
    data: bytes
    digests: dict[str, bytes] = field(default_factory=dict)  # empty: the hash of data in each bank


def spec_id(banks: tuple[str, ...], sizes: dict[str, tuple[int, int]] | None = None) -> bytes:
    table = sizes or ALGS
    body = b"Spec ID Event03\0" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(banks))
    for b in banks:
        alg, size = table[b]
        body += struct.pack("<HH", alg, size)
    body += b"\0"  # vendorInfoSize
    return struct.pack("<II", 0, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(body)) + body


def record(r: Record, banks: tuple[str, ...]) -> bytes:
    out = struct.pack("<III", r.pcr, r.event_type, len(banks))
    for b in banks:
        alg, size = ALGS[b]
        d = r.digests.get(b)
        if d is None:
            d = bytes(size) if r.event_type == EV_NO_ACTION else hashlib.new(b, r.data).digest()
        out += struct.pack("<H", alg) + d
    return out + struct.pack("<I", len(r.data)) + r.data


def build(records: list[Record], banks: tuple[str, ...] = ("sha1", "sha256"), locality: int | None = None) -> bytes:
    out = spec_id(banks)
    if locality is not None:
        out += record(Record(0, EV_NO_ACTION, b"StartupLocality\0" + bytes([locality])), banks)
    for r in records:
        out += record(r, banks)
    return out


def firmware_records() -> list[Record]:
    """What a firmware logs before the boot loader: a CRTM version, some code, the separators."""
    out = [Record(0, EV_S_CRTM_VERSION, "1.0".encode("utf-16-le") + b"\0\0"), Record(0, EV_POST_CODE, b"POST CODE")]
    out += [Record(n, EV_SEPARATOR, b"\0\0\0\0") for n in range(8)]
    return out


def replay(records: list[Record], bank: str, pcr: int, start: bytes | None = None) -> bytes:
    """The test's own extend: H(old || digest), from zero."""
    size = ALGS[bank][1]
    v = start if start is not None else bytes(size)
    for r in records:
        if r.pcr == pcr and r.event_type != EV_NO_ACTION:
            d = r.digests.get(bank) or hashlib.new(bank, r.data).digest()
            v = hashlib.new(bank, v + d).digest()
    return v
