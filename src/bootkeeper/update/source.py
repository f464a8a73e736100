"""Where a release comes from, named as kairos-agent names an upgrade source (``kairos-agent upgrade
--source``, kairos-io/kairos-agent ``pkg/utils/image.go``): ``oci:REGISTRY/REPO[:TAG|@sha256:HEX]``,
``ocifile:PATH`` (an OCI image layout, a folder or a tar), ``dir:PATH`` (a folder holding the files),
``file:PATH`` (one UKI). A source names a place; nothing it names is trusted (docs/updates.md, Trust)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from bootkeeper.errors import UsageError


class Kind(StrEnum):
    OCI = "oci"
    OCIFILE = "ocifile"
    DIR = "dir"
    FILE = "file"


# the OCI distribution spec's grammar: a repository's path components, a tag, a digest
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
# a registry host: a DNS name or an IPv4 address, an optional port; IPv6 in brackets
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")
MAX_SOURCE = 4096


@dataclass(frozen=True)
class Source:
    """A parsed source. ``oci``: ``registry`` (host[:port]), ``repository``, and a ``tag`` or a
    ``digest`` (neither: the channel's tag decides, :meth:`with_channel`). The others: ``path``."""

    kind: Kind
    registry: str = ""
    repository: str = ""
    tag: str | None = None
    digest: str | None = None
    path: str = ""

    @property
    def reference(self) -> str | None:
        """What a registry is asked for: the digest when pinned, else the tag."""
        return self.digest or self.tag

    def with_channel(self, channel: str) -> Source:
        """An ``oci:`` source without a tag or digest takes the channel as its tag (``update.channel``)."""
        if self.kind is not Kind.OCI or self.reference is not None:
            return self
        if not _TAG.fullmatch(channel):
            raise UsageError(f"update.channel: {channel!r} is not an OCI tag")
        return Source(self.kind, self.registry, self.repository, tag=channel)

    def __str__(self) -> str:
        if self.kind is Kind.OCI:
            ref = f"@{self.digest}" if self.digest else f":{self.tag}" if self.tag else ""
            return f"oci:{self.registry}/{self.repository}{ref}"
        return f"{self.kind.value}:{self.path}"


def parse(text: str, where: str = "--source") -> Source:
    """``text`` as a source, or a :class:`UsageError` naming ``where`` and what is wrong, on one line."""
    if not isinstance(text, str) or not text or len(text) > MAX_SOURCE or not text.isprintable():
        raise UsageError(
            f"{where}: {text!r:.80}: not a source (oci:, ocifile:, dir: or file:, printable, at most {MAX_SOURCE})"
        )
    scheme, sep, rest = text.partition(":")
    kinds = ", ".join(f"{k.value}:" for k in Kind)
    if not sep or scheme not in {k.value for k in Kind}:
        raise UsageError(f"{where}: {text!r}: the source must start with one of {kinds}")
    kind = Kind(scheme)
    if kind is not Kind.OCI:
        if not rest:
            raise UsageError(f"{where}: {text!r}: {scheme}: names no path")
        return Source(kind, path=rest)
    return _oci(rest, text, where)


def _oci(rest: str, text: str, where: str) -> Source:
    rest = rest.removeprefix("//")
    host, slash, name = rest.partition("/")
    if not slash or not _HOST.fullmatch(host) or not name:
        raise UsageError(f"{where}: {text!r}: oci: needs REGISTRY/REPOSITORY, e.g. oci:127.0.0.1:5000/os/node:v2")
    digest = tag = None
    if "@" in name:
        name, _, digest = name.partition("@")
        if not _DIGEST.fullmatch(digest):
            raise UsageError(f"{where}: {text!r}: {digest!r} is not a sha256: digest (64 lower-case hex digits)")
    elif ":" in name.rpartition("/")[2]:
        name, _, tag = name.rpartition(":")
        if not _TAG.fullmatch(tag):
            raise UsageError(f"{where}: {text!r}: {tag!r} is not an OCI tag")
    if len(name) > 255 or not _REPO.fullmatch(name):
        raise UsageError(f"{where}: {text!r}: {name!r} is not an OCI repository name (lower case, a-z 0-9 . _ - /)")
    return Source(Kind.OCI, host, name, tag=tag, digest=digest)
