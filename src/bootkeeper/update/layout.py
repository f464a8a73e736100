"""An OCI image layout (image-spec v1.1 ``image-layout.md``) as an :class:`~bootkeeper.update.origin.Origin`:
a folder or a tar of one (``ocifile:PATH``, e.g. on a USB stick, as ``skopeo copy ... oci:DIR:TAG`` or
``oci-archive:`` writes it). ``oci-layout`` is checked, ``index.json`` read bounded, a tag matched
against ``org.opencontainers.image.ref.name``, blobs read from ``blobs/sha256/<hex>``: from a tar by
member, streamed, nothing ever extracted, and a tar holding a link or a device is refused whole.
:func:`write` makes or extends a layout folder (``release push --to ocifile:DIR``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from bootkeeper import fsutil
from bootkeeper.errors import MalformedError, UnreadableError, WriteError
from bootkeeper.update import release
from bootkeeper.update.origin import MAX_LAYERS, MAX_MANIFEST, Descriptor, Fetched, Progress

LAYOUT_VERSION = "1.0.0"
MAX_MEMBERS = 4 * MAX_LAYERS + 16  # entries of an ocifile tar: oci-layout, index.json, folders, blobs
CHUNK = 1 << 20
_MEMBER = re.compile(r"(?:oci-layout|index\.json|blobs|blobs/sha256|blobs/sha256/[0-9a-f]{64})")


def split(text: str) -> tuple[Path, str | None]:
    """``PATH`` or ``PATH:TAG`` (skopeo's ``oci:DIR:TAG``): the path as given when it exists, else
    what precedes the last ``:``, the rest being the tag."""
    path = Path(text)
    if os.path.lexists(path) or ":" not in text:
        return path, None
    head, _, tag = text.rpartition(":")
    return Path(head), tag or None


class Layout:
    """A layout at ``path`` (a folder or a tar file), named ``ocifile:PATH`` in messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = f"ocifile:{path}"
        self._tar: tarfile.TarFile | None = None
        self._file: IO[bytes] | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        try:
            os.stat(path)
        except OSError as exc:
            raise UnreadableError(f"{self.where}: cannot read ({exc.strerror})") from exc
        try:
            if not os.path.isdir(path):
                self._open_tar()
            self._check_layout()
        except BaseException:
            self.close()
            raise

    # -- the two places a layout can be ------------------------------------------------------------
    def _open_tar(self) -> None:
        self._file = fsutil.open_regular(self.path, self.where, follow=True)
        try:
            tar = tarfile.open(fileobj=self._file, mode="r:")  # noqa: SIM115 (closed by close())
        except (tarfile.TarError, OSError) as exc:
            self._file.close()
            raise MalformedError(f"{self.where}: neither a folder nor a tar of an OCI layout ({exc})") from exc
        self._tar = tar
        try:
            for count, m in enumerate(tar):
                name = m.name.removeprefix("./").rstrip("/")
                if count >= MAX_MEMBERS:
                    raise MalformedError(f"{self.where}: more than {MAX_MEMBERS} tar members")
                if not (m.isreg() or m.isdir()):
                    raise MalformedError(f"{self.where}: tar member {m.name!r:.80} is a link or a device; refused")
                if name in {"", "."}:
                    continue
                if not _MEMBER.fullmatch(name):
                    raise MalformedError(f"{self.where}: tar member {m.name!r:.80} is not part of an OCI layout")
                if m.isreg():
                    self._members[name] = m
        except tarfile.TarError as exc:
            raise MalformedError(f"{self.where}: a broken tar ({exc})") from exc

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Layout:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _open(self, name: str) -> Iterator[tuple[IO[bytes], int]]:
        """A member's bytes and size; a missing one is an UnreadableError naming it."""
        if self._tar is not None:
            m = self._members.get(name)
            f = self._tar.extractfile(m) if m is not None else None
            if m is None or f is None:
                raise UnreadableError(f"{self.where}: no {name}")
            with f:
                yield f, m.size
            return
        p = self.path / name
        if not os.path.lexists(p):
            raise UnreadableError(f"{self.where}: no {name}")
        with fsutil.open_regular(p, f"{self.where}: {name}") as g:
            yield g, os.fstat(g.fileno()).st_size

    def _read(self, name: str, limit: int) -> bytes:
        with self._open(name) as (f, size):
            if size > limit:
                raise MalformedError(f"{self.where}: {name}: {size} bytes, more than the {limit} it may have")
            data = f.read(limit + 1)
        if len(data) > limit:
            raise MalformedError(f"{self.where}: {name}: more than the {limit} bytes it may have")
        return data

    def _check_layout(self) -> None:
        doc = release.load_json(self._read("oci-layout", 4096), f"{self.where}: oci-layout")
        if doc.get("imageLayoutVersion") != LAYOUT_VERSION:
            raise MalformedError(f"{self.where}: oci-layout: imageLayoutVersion must be {LAYOUT_VERSION}")

    # -- Origin ------------------------------------------------------------------------------------
    def entries(self) -> list[Descriptor]:
        where = f"{self.where}: index.json"
        doc = release.load_json(self._read("index.json", MAX_MANIFEST), where)
        items = doc.get("manifests")
        if doc.get("schemaVersion") != 2 or not isinstance(items, list):
            raise MalformedError(f"{where}: not an image index (schemaVersion 2, manifests)")
        if len(items) > MAX_LAYERS:
            raise MalformedError(f"{where}: {len(items)} manifests, more than {MAX_LAYERS}")
        return [release.descriptor(d, f"{where}: manifests[{i}]") for i, d in enumerate(items)]

    def manifest(self, reference: str | None) -> Fetched:
        """The manifest ``reference`` names: a tag (``org.opencontainers.image.ref.name``), a digest,
        or None: the layout's only manifest."""
        entries = self.entries()
        if reference is not None and release.DIGEST.fullmatch(reference):
            found = [d for d in entries if d.digest == reference]
            desc = found[0] if found else None
        elif reference is not None:
            found = [d for d in entries if d.annotations.get(release.REF_NAME) == reference]
            desc = found[-1] if found else None
        else:
            desc = entries[0] if len(entries) == 1 else None
            if desc is None:
                tags = sorted({d.annotations.get(release.REF_NAME, d.digest) for d in entries})
                raise UnreadableError(f"{self.where}: {len(entries)} manifests ({', '.join(tags)[:200]}); name a tag")
        if desc is None:
            raise UnreadableError(f"{self.where}: no manifest {reference!r}")
        if desc.size > MAX_MANIFEST:
            raise MalformedError(f"{self.where}: manifest {desc.digest}: {desc.size} bytes, more than {MAX_MANIFEST}")
        raw = self._read(_blob_name(desc.digest), MAX_MANIFEST)
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if digest != desc.digest or len(raw) != desc.size:
            raise MalformedError(f"{self.where}: manifest {desc.digest}: its bytes are {digest}, {len(raw)} bytes")
        return Fetched(raw, desc.media_type, digest)

    def blob(self, desc: Descriptor, dest: Path, progress: Progress | None = None) -> None:
        with self._open(_blob_name(desc.digest)) as (f, size):
            copy_checked(f, size, desc, dest, f"{self.where}: blob {desc.digest}", progress)


def _blob_name(digest: str) -> str:
    if not release.DIGEST.fullmatch(digest):
        raise MalformedError(f"{digest!r:.80} is not a sha256: digest")
    return f"blobs/sha256/{digest.removeprefix('sha256:')}"


def copy_checked(
    src: IO[bytes], src_size: int | None, desc: Descriptor, dest: Path, where: str, progress: Progress | None = None
) -> None:
    """``desc``'s bytes from a seekable ``src`` into ``dest`` (the Origin.blob contract): what ``dest``
    holds is kept and hashed, the rest read from that offset; never more than ``desc.size`` bytes."""
    h = hashlib.sha256()
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        have = os.fstat(fd).st_size
        if have > desc.size:
            os.ftruncate(fd, 0)
            have = 0
        done = 0
        while done < have:
            chunk = os.pread(fd, min(CHUNK, have - done), done)
            if not chunk:
                break
            h.update(chunk)
            done += len(chunk)
        if src_size is not None and src_size != desc.size:
            raise _bad(dest, f"{where}: {src_size} bytes, the manifest says {desc.size}")
        src.seek(done)
        os.lseek(fd, done, os.SEEK_SET)
        while done < desc.size:
            chunk = src.read(min(CHUNK, desc.size - done))
            if not chunk:
                break
            h.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            done += len(chunk)
            if progress is not None:
                progress(done, desc.size)
        os.fsync(fd)
    except OSError as exc:
        raise WriteError(f"{dest}: cannot write ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
    if done != desc.size:
        raise _bad(dest, f"{where}: ended after {done} of {desc.size} bytes")
    if "sha256:" + h.hexdigest() != desc.digest:
        raise _bad(dest, f"{where}: the bytes are sha256:{h.hexdigest()}, not the manifest's digest")


def _bad(dest: Path, message: str) -> MalformedError:
    with contextlib.suppress(FileNotFoundError):
        dest.unlink()
    return MalformedError(message)


def _put(dest: Path, data: bytes | None = None, src: Path | None = None) -> None:
    """A file in a layout, crash-safe: a temporary beside it, fsync, rename, fsync the folder."""
    with fsutil.temp_file(dest) as (fd, tmp):
        if data is not None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        elif src is not None:
            sfd = fsutil.open_input(src)
            try:
                fsutil.copy_into(sfd, fd, os.fstat(sfd).st_size)
            finally:
                os.close(sfd)
        fsutil.commit(fd, tmp, dest)


def write(dest: Path, ref: str, built: release.Built) -> str:
    """Make or extend the layout folder ``dest`` with ``built`` tagged ``ref`` (an entry of the same
    tag is replaced); blobs already there are kept. Returns the manifest digest."""
    blobs = dest / "blobs" / "sha256"
    try:
        blobs.mkdir(parents=True, exist_ok=True)
        if not (dest / "oci-layout").exists():
            _put(dest / "oci-layout", json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
        config_digest = "sha256:" + hashlib.sha256(built.config).hexdigest()
        for digest, data, src in [
            *((d.digest, None, p) for d, p in built.blobs),
            (config_digest, built.config, None),
            (built.digest, built.manifest, None),
        ]:
            target = blobs / digest.removeprefix("sha256:")
            if not target.exists():
                _put(target, data, src)
        index: dict[str, Any] = {"schemaVersion": 2, "mediaType": release.INDEX_TYPE, "manifests": []}
        if (dest / "index.json").exists():
            index = release.load_json(fsutil.read_bounded(dest / "index.json", MAX_MANIFEST), f"{dest}/index.json")
        kept = [m for m in index.get("manifests", []) if m.get("annotations", {}).get(release.REF_NAME) != ref]
        entry = {
            "mediaType": release.MANIFEST_TYPE,
            "digest": built.digest,
            "size": len(built.manifest),
            "artifactType": release.ARTIFACT_TYPE,
            "annotations": {release.REF_NAME: ref},
        }
        index["manifests"] = [*kept, entry]
        _put(dest / "index.json", json.dumps(index, indent=2).encode() + b"\n")
    except OSError as exc:
        raise WriteError(f"{dest}: cannot write the OCI layout ({exc.strerror or exc})") from exc
    return built.digest
