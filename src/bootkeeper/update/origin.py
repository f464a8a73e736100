"""What every place a release is fetched from offers (a registry, ``oci.py``; an OCI layout,
``layout.py``): its manifest, bounded, and its blobs, streamed into a file whose digest and size are
checked as the bytes arrive. Nothing an origin returns is trusted beyond those two checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

# bounds on what an origin may hand over, whatever it claims (a hostile registry or medium)
MAX_MANIFEST = 4 * 1024 * 1024  # bytes of a manifest or index (containerd's own cap)
MAX_LAYERS = 256  # descriptors in one manifest
MAX_ANNOTATION = 4096  # bytes of one annotation's value

# bytes done, bytes in all (None: unknown); called as a blob streams
Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Net:
    """How the network is used (``update.*`` in the config): credentials, the CA bundle a registry's
    HTTPS must chain to, mirrors tried before the source's own registry, the seconds without a byte
    after which a transfer is abandoned, the seconds one whole check or download may take, and a rate
    limit in bytes a second (0: none)."""

    auth_file: Path | None = None
    ca_file: Path | None = None
    mirrors: tuple[str, ...] = ()
    timeout: float = 30.0
    deadline: float = 7200.0
    limit_rate: int = 0


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest says a blob is. ``digest`` is ``sha256:<64 hex>``."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    artifact_type: str | None = None


@dataclass(frozen=True)
class Fetched:
    """A manifest as an origin gave it: the bytes (at most :data:`MAX_MANIFEST`), the media type it was
    served as, and the digest of those bytes (computed here, never taken from the origin)."""

    raw: bytes
    media_type: str
    digest: str


class Origin(Protocol):
    """A place holding releases. ``where`` names it in messages (e.g. ``oci:127.0.0.1:5000/os/node``)."""

    where: str

    def manifest(self, reference: str) -> Fetched:
        """The manifest (or index) a tag or ``sha256:`` digest names; a digest reference is checked
        against the bytes. Raises ``UnreadableError`` (absent, unreachable) or ``MalformedError``."""
        ...

    def blob(self, desc: Descriptor, dest: Path, progress: Progress | None = None) -> None:
        """``desc``'s bytes into ``dest``, resuming after what ``dest`` already holds, hashing as they
        are written; at the end the size and digest must be ``desc``'s, else ``dest`` is removed and a
        ``MalformedError`` names the blob. Never more than ``desc.size`` bytes are written."""
        ...
