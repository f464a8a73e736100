"""One measurement: which PCR, the event log record systemd-boot or systemd-stub writes for it, and
its digest in each bank; and replaying a list of them into PCR values."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from bootkeeper.measure.banks import Bank, extend, zero

__all__ = ["EV_EVENT_TAG", "EV_IPL", "Event", "FileRef", "Hasher", "replay"]

# TCG PC Client Platform Firmware Profile, 10.4.1 "Event Types"
EV_IPL = 0x0000000D
EV_EVENT_TAG = 0x00000006
EVENT_TYPE_NAMES = {EV_IPL: "EV_IPL", EV_EVENT_TAG: "EV_EVENT_TAG"}
CHUNK = 1 << 20


class Hasher:
    """One pass over the data, one digest per bank."""

    def __init__(self, banks: Iterable[Bank]) -> None:
        self.banks = tuple(banks)
        self._h = [b.hash() for b in self.banks]

    def update(self, data: bytes) -> None:
        for h in self._h:
            h.update(data)

    def digests(self) -> dict[str, bytes]:
        return {b.name: h.digest() for b, h in zip(self.banks, self._h, strict=True)}


def digests_of(banks: Iterable[Bank], data: bytes) -> dict[str, bytes]:
    h = Hasher(banks)
    h.update(data)
    return h.digests()


@dataclass(frozen=True)
class FileRef:
    """A file whose bytes went into an event (an extension in PCR 13's cpio, a credential)."""

    name: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Event:
    """What one TCG2 HashLogExtendEvent call records.

    ``description`` is the UTF-16 string systemd puts in the log record (src/boot/measure.c, v257.9:
    ``tpm2_measure_to_pcr_and_ipl_event_log`` for EV_IPL, ``..._tagged_event_log`` for EV_EVENT_TAG
    with ``tag``); ``what`` says in words what was hashed."""

    pcr: int
    event_type: int
    description: str
    what: str
    digests: dict[str, bytes]
    source: str = "systemd-stub"  # or "systemd-boot", "systemd-pcrphase"
    tag: int | None = None
    files: tuple[FileRef, ...] = field(default=())

    @property
    def type_name(self) -> str:
        return EVENT_TYPE_NAMES.get(self.event_type, f"0x{self.event_type:08x}")

    def event_data(self) -> bytes:
        """The record's event data as the firmware logs it."""
        text = (self.description + "\0").encode("utf-16-le")
        if self.tag is None:
            return text
        return struct.pack("<II", self.tag, len(text)) + text

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "pcr": self.pcr,
            "type": self.type_name,
            "source": self.source,
            "description": self.description,
            "what": self.what,
            "digests": {k: v.hex() for k, v in self.digests.items()},
        }
        if self.tag is not None:
            out["tag"] = f"0x{self.tag:08x}"
        if self.files:
            out["files"] = [f.to_json() for f in self.files]
        return out


def replay(events: Iterable[Event], bank: Bank, pcr: int, start: bytes | None = None) -> bytes:
    value = zero(bank) if start is None else start
    for e in events:
        if e.pcr == pcr:
            value = extend(bank, value, e.digests[bank.name])
    return value
