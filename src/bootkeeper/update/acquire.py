"""Check and acquire (docs/updates.md, Staging): what a source offers (:func:`resolve`), and the release
downloaded into the staging folder, every byte checked against its manifest digest as it streams
(:func:`acquire`); :func:`downloaded` finds the staged release ``update --apply-downloaded`` applies.
An ``oci:`` source without a tag or digest takes the channel: callers pass
``src.with_channel(cfg.update.channel)``. Nothing here verifies signatures or versions: the node
layer does, before the upgrade transaction (docs/updates.md, Trust)."""

from __future__ import annotations

import contextlib
import importlib
import os
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bootkeeper import fsutil
from bootkeeper.errors import MalformedError, UnreadableError, UsageError, WriteError
from bootkeeper.esp import stephook
from bootkeeper.update import release
from bootkeeper.update.layout import CHUNK, Layout, copy_checked, split
from bootkeeper.update.origin import Descriptor, Net, Progress
from bootkeeper.update.release import Release
from bootkeeper.update.source import Kind, Source
from bootkeeper.update.stage import PART, Record, Staging

# Kairos's form: the ESP tree AuroraBoot's build-uki writes into its container image
# (kairos-io/AuroraBoot internal/cmd/build-uki.go, imageFiles): the boot loader under EFI/BOOT/ is not
# a UKI; of several UKIs under EFI/kairos/ the default entry is norole.efi (pkg/constants ArtifactBaseName)
KAIROS_LOADERS = ("EFI/BOOT/", "EFI/systemd/")
KAIROS_DEFAULT = "norole.efi"
MAX_MEMBERS = 100_000  # entries of one Kairos layer
MAX_EXTRACT = 16 << 30  # bytes extracted from one Kairos release


@dataclass(frozen=True)
class Staged:
    """A release downloaded, checked and complete in ``folder``: its UKI and extensions (paths inside
    ``folder``), its version when the manifest said one, its manifest digest and the source it came from."""

    folder: Path
    uki: Path
    extensions: tuple[Path, ...]
    version: str | None
    manifest_digest: str
    source: str


class _Local:
    """``dir:``/``file:``: the files as they are, read through the same checked copy."""

    def __init__(self, where: str, paths: dict[str, Path]) -> None:
        self.where = where
        self.paths = paths

    def blob(self, desc: Descriptor, dest: Path, progress: Progress | None = None) -> None:
        path = self.paths[desc.digest]
        with fsutil.open_regular(path) as f:
            copy_checked(f, os.fstat(f.fileno()).st_size, desc, dest, f"{path}", progress)


def _local(src: Source) -> tuple[Release, _Local]:
    path = Path(src.path)
    where = str(src)
    if src.kind is Kind.FILE:
        files = [path]
    else:
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            raise UnreadableError(f"{where}: cannot read the folder ({exc.strerror})") from exc
        files = [path / n for n in names if n.endswith((".efi", ".raw")) and (path / n).is_file()]
        ukis = [p.name for p in files if p.name.endswith(".efi")]
        if len(ukis) != 1:
            raise MalformedError(f"{where}: {len(ukis)} UKIs ({', '.join(ukis) or 'no *.efi'}); a release holds one")
    located = release.local_files(files, where)
    built = release.build([p for _, p in located], None)
    found = Release(where, built.digest, None, "dir" if src.kind is Kind.DIR else "file", tuple(f for f, _ in located))
    return found, _Local(where, {f.desc.digest: p for f, p in located})


def _registry(src: Source, net: Net) -> Any:
    if src.reference is None:
        raise UsageError(f"{src}: names no tag or digest (the caller passes src.with_channel(update.channel))")
    oci = importlib.import_module("bootkeeper.update.oci")  # only an oci: source pays for the HTTP client
    return oci.open_registry(src, net)


def _resolve(src: Source, net: Net) -> tuple[Release, Any]:
    """The release and the origin its blobs come from."""
    if src.kind in (Kind.DIR, Kind.FILE):
        return _local(src)
    if src.kind is Kind.OCIFILE:
        path, tag = split(src.path)
        origin: Any = Layout(path)
        ref: str | None = tag
    else:
        origin = _registry(src, net)
        ref = src.reference
    try:
        found = release.parse_manifest(origin.manifest(ref), origin.where)
        if found.index:
            found = release.parse_manifest(origin.manifest(found.manifest_digest), origin.where)
            if found.index:
                raise MalformedError(f"{origin.where}: an index inside an index")
    except BaseException:
        if isinstance(origin, Layout):
            origin.close()
        raise
    return found, origin


def resolve(src: Source, net: Net) -> Release:
    """What ``src`` offers now (``update --check``): its manifest fetched and parsed, no blob fetched;
    for ``dir:``/``file:`` the files hashed here."""
    found, origin = _resolve(src, net)
    if isinstance(origin, Layout):
        origin.close()
    return found


def acquire(src: Source, net: Net, staging: Path, progress: Progress | None = None) -> Staged:
    """``src``'s release downloaded into ``staging`` (under its lock), each blob checked as it streams,
    resumed after an interrupted run; other releases and stale parts removed first. Kairos's form: the
    layers fetched, then their ``*.efi``/``*.raw`` regular files extracted (:func:`_extract`).
    ``progress`` hears the bytes of the whole release: done (those a resumed run already had count
    once the blob continues), of all."""
    st = Staging(staging, stephook.pause_from_env())
    with st.locked():
        found, origin = _resolve(src, net)
        try:
            st.step(f"staging-manifest:{found.manifest_digest}")
            return _acquire(st, src, found, origin, progress)
        finally:
            if isinstance(origin, Layout):
                origin.close()


def _acquire(st: Staging, src: Source, found: Release, origin: Any, progress: Progress | None) -> Staged:
    folder = st.folder(found.manifest_digest)
    st.clean(keep=found.manifest_digest)
    done = _staged(st, folder)
    if done is not None:
        return done
    folder = st.make(found.manifest_digest)
    if found.form == "kairos":
        blobs = [(d, folder / f"layer-{d.digest.removeprefix('sha256:')}.tar") for d in found.layers]
    else:
        blobs = [(f.desc, folder / f.name) for f in found.files]
    st.check_space(folder, sum(_missing(d, p) for d, p in blobs))
    total = sum(d.size for d, _ in blobs)
    before = 0
    for desc, path in blobs:
        _fetch(st, origin, desc, path, _offset(progress, before, total))
        before += desc.size
    if found.form == "kairos":
        uki, exts = _extract(st, folder, [p for _, p in blobs], origin.where)
        for _, p in blobs:
            p.unlink()
    else:
        uki, exts = found.uki.name, tuple(f.name for f in found.extensions)
    st.step(f"staging-record:{folder.name[:12]}/release.json")
    st.write_record(folder, Record(str(src), found.manifest_digest, found.version, uki, exts, True))
    st.step(f"staging-complete:{folder.name[:12]}")
    staged = _staged(st, folder)
    assert staged is not None
    return staged


def _offset(progress: Progress | None, before: int, total: int) -> Progress | None:
    """One blob's progress as the whole release's: bytes done of all its blobs."""
    if progress is None:
        return None
    report = progress
    return lambda done, _size: report(before + done, total)


def _stepped(st: Staging, name: str, progress: Progress | None) -> Progress | None:
    """``progress`` that also announces each written chunk to the test hook, when one is set."""
    if st.hook is None:
        return progress

    def report(done: int, size: int | None) -> None:
        st.step(f"staging-part:{name}:{done}/{size}")
        if progress is not None:
            progress(done, size)

    return report


def _missing(desc: Descriptor, path: Path) -> int:
    if path.exists():
        return 0
    part = path.with_name(path.name + PART)
    with contextlib.suppress(FileNotFoundError):
        return max(0, desc.size - part.stat().st_size)
    return desc.size


def _fetch(st: Staging, origin: Any, desc: Descriptor, path: Path, progress: Progress | None) -> None:
    """One blob into ``path``: a file already there is hashed again (a kill may have come after the
    rename), else it streams into ``path.part`` (resumed) and is renamed once checked. Each step is
    announced to the staging folder's test hook (:meth:`Staging.step`)."""
    if path.exists():
        if path.stat().st_size == desc.size and "sha256:" + fsutil.sha256_file(path) == desc.digest:
            return
        path.unlink()
    part = path.with_name(path.name + PART)
    st.step(f"staging-blob:{path.name}")
    origin.blob(desc, part, _stepped(st, path.name, progress))
    st.step(f"staging-rename:{part.name}->{path.name}")
    try:
        os.rename(part, path)
        fsutil.fsync_dir(path.parent)
    except OSError as exc:
        raise WriteError(f"{path}: cannot rename the checked download ({exc.strerror or exc})") from exc


def _staged(st: Staging, folder: Path) -> Staged | None:
    rec = st.record(folder) if folder.is_dir() else None
    if rec is None or not rec.complete:
        return None
    names = [rec.uki, *rec.extensions]
    for n in names:
        release.check_name(n, str(folder / "release.json"))
    if not all((folder / n).is_file() for n in names):
        return None
    exts = tuple(folder / n for n in rec.extensions)
    return Staged(folder, folder / rec.uki, exts, rec.version, rec.manifest_digest, rec.source)


def downloaded(staging: Path) -> Staged | None:
    """The complete release in ``staging`` (the newest record when, unexpectedly, there are several),
    or None: nothing downloaded."""
    if not staging.is_dir():
        return None
    st = Staging(staging)
    with st.locked():
        found = [s for p, _ in st.complete() if (s := _staged(st, p)) is not None]
    if not found:
        return None
    return max(found, key=lambda s: (s.folder / "release.json").stat().st_mtime_ns)


def _member_name(m: tarfile.TarInfo, where: str) -> str:
    name = m.name
    norm = posixpath.normpath(name.removeprefix("./"))
    if name.startswith("/") or norm == ".." or norm.startswith("../") or "\0" in name:
        raise MalformedError(f"{where}: layer member {name!r:.80} leaves the layer; refused")
    return norm


def _extract(st: Staging, folder: Path, layers: list[Path], where: str) -> tuple[str, tuple[str, ...]]:
    """The ``*.efi`` and ``*.raw`` regular files of Kairos's layers into ``folder``, by their plain
    names: a link or device of such a name, a name leaving the layer, too many members or bytes are
    refused; a later layer's file replaces an earlier one's (as layers stack). Returns the UKI's name
    (the one ``*.efi`` outside the boot loader's folders, or ``norole.efi`` of several) and the
    extensions' names."""
    found: dict[str, str] = {}  # plain name -> path in the layer
    total = count = 0
    for layer in layers:
        with fsutil.open_regular(layer) as raw, _tar(raw, where) as tar:
            for m in _members(tar, where):
                count += 1
                if count > MAX_MEMBERS:
                    raise MalformedError(f"{where}: more than {MAX_MEMBERS} files in the layers")
                name = _member_name(m, where)
                base = posixpath.basename(name)
                if not base.endswith((".efi", ".raw")) or name.startswith(KAIROS_LOADERS):
                    continue
                if not m.isreg():
                    raise MalformedError(f"{where}: layer member {m.name!r:.80} is not a regular file; refused")
                release.check_name(base, f"{where}: layer member {m.name!r:.80}")
                if base in found and found[base] != name:
                    raise MalformedError(f"{where}: {found[base]} and {name}: two files named {base}")
                total += m.size
                if m.size > release.MAX_SIZE or total > MAX_EXTRACT:
                    raise MalformedError(f"{where}: the layers' files exceed {MAX_EXTRACT} bytes")
                st.check_space(folder, m.size)
                _write_member(tar, m, folder / base)
                found[base] = name
    ukis = sorted(n for n in found if n.endswith(".efi"))
    if len(ukis) > 1 and KAIROS_DEFAULT in ukis:
        ukis = [KAIROS_DEFAULT]
    if len(ukis) != 1:
        raise MalformedError(
            f"{where}: {len(ukis)} UKIs in the layers ({', '.join(ukis) or 'no *.efi'}); one, or {KAIROS_DEFAULT}"
        )
    for n in [n for n in found if n.endswith(".efi") and n != ukis[0]]:
        (folder / n).unlink()
    return ukis[0], tuple(sorted(n for n in found if n.endswith(".raw")))


@contextlib.contextmanager
def _tar(raw: IO[bytes], where: str) -> Any:
    try:
        magic = raw.read(2)
        raw.seek(0)
        tar = tarfile.open(fileobj=raw, mode="r:gz" if magic == b"\x1f\x8b" else "r:")  # noqa: SIM115 (closed below)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise MalformedError(f"{where}: a layer is not a tar ({exc})") from exc
    with tar:
        yield tar


def _members(tar: tarfile.TarFile, where: str) -> Any:
    try:
        yield from tar
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise MalformedError(f"{where}: a broken layer ({exc})") from exc


def _write_member(tar: tarfile.TarFile, m: tarfile.TarInfo, dest: Path) -> None:
    src = tar.extractfile(m)
    if src is None:
        raise MalformedError(f"{dest.name}: not a regular file in the layer")
    part = dest.with_name(dest.name + PART)
    try:
        with src, open(part, "wb") as out:
            left = m.size
            while left:
                chunk = src.read(min(CHUNK, left))
                if not chunk:
                    raise MalformedError(f"{dest.name}: the layer ends inside it")
                out.write(chunk)
                left -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.rename(part, dest)
    except OSError as exc:
        raise WriteError(f"{dest}: cannot write ({exc.strerror or exc})") from exc
    except (tarfile.TarError, EOFError) as exc:
        raise MalformedError(f"{dest.name}: a broken layer ({exc})") from exc
