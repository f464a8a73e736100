"""What a release is, in its OCI form (docs/updates.md, A release): an OCI image manifest (image-spec
v1.1 ``manifest.md``) whose ``artifactType`` is :data:`ARTIFACT_TYPE`, a small JSON config blob, and
one layer per file: the UKI (:data:`UKI_TYPE`, exactly one) and the extensions built for it
(:data:`SYSEXT_TYPE`), each titled by ``org.opencontainers.image.title``. Kairos's form is read too:
an image whose filesystem layers (tar, gzip or not) hold the ESP tree AuroraBoot's ``build-uki
--output-type container`` makes (kairos-io/AuroraBoot ``internal/cmd/build-uki.go``, ``imageFiles``).

Everything here parses bytes an origin handed over and trusts none of them beyond the bounds checked."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bootkeeper.errors import MalformedError
from bootkeeper.update.origin import MAX_ANNOTATION, MAX_LAYERS, Descriptor, Fetched

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ARTIFACT_TYPE = "application/vnd.bootkeeper.release.v1"
# a config media type of our own, not the image-spec's empty one: skopeo 1.9 (containers/image 5.23)
# copies any config blob it does not have to convert, and ours says what the release holds
CONFIG_TYPE = "application/vnd.bootkeeper.release.config.v1+json"
UKI_TYPE = "application/vnd.bootkeeper.uki.v1"
SYSEXT_TYPE = "application/vnd.bootkeeper.sysext.v1"
TITLE = "org.opencontainers.image.title"
VERSION = "org.opencontainers.image.version"
REF_NAME = "org.opencontainers.image.ref.name"
# the filesystem layers an image (Kairos's form) may have: OCI's and Docker's, tar or gzip
TAR_LAYERS = {
    "application/vnd.oci.image.layer.v1.tar": "tar",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
}
IMAGE_CONFIGS = {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
MAX_SIZE = 1 << 40  # bytes one blob may claim
MAX_NAME = 255  # bytes of a file name (NAME_MAX)
MAX_ANNOTATIONS = 64  # annotations on one descriptor or manifest
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_MEDIA = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")

Form = Literal["bootkeeper", "kairos", "dir", "file"]
Kind = Literal["uki", "sysext"]


@dataclass(frozen=True)
class ReleaseFile:
    """One file of a release: its plain ``name``, what it is, and the blob that holds it (bootkeeper's
    form, ``dir:``, ``file:``); in Kairos's form the files are inside ``Release.layers`` and ``desc``
    is the layer that held it."""

    name: str
    kind: Kind
    desc: Descriptor


@dataclass(frozen=True)
class Release:
    """A release as its origin describes it. ``index``: the manifest digest was an image index's, and
    ``manifest_digest`` is the entry to fetch next (:func:`parse_manifest` picked it)."""

    where: str
    manifest_digest: str
    version: str | None
    form: Form
    files: tuple[ReleaseFile, ...] = ()
    layers: tuple[Descriptor, ...] = ()
    index: bool = False

    @property
    def uki(self) -> ReleaseFile:
        return next(f for f in self.files if f.kind == "uki")

    @property
    def extensions(self) -> tuple[ReleaseFile, ...]:
        return tuple(f for f in self.files if f.kind == "sysext")

    @property
    def size(self) -> int:
        """The bytes a download of it takes: its files, or its layers (Kairos's form)."""
        return sum(d.size for d in self.layers) if self.form == "kairos" else sum(f.desc.size for f in self.files)


@dataclass(frozen=True)
class Built:
    """A release ready to publish: the config and manifest bytes and every blob with where it is."""

    config: bytes
    manifest: bytes
    blobs: tuple[tuple[Descriptor, Path], ...] = field(default_factory=tuple)

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()


def check_name(name: str, where: str) -> str:
    """``name`` if it is a plain file name a release may carry (no ``/``, not ``.``/``..``, no NUL or
    control character, at most 255 bytes, ending ``.efi`` or ``.raw``), else a one-line MalformedError."""
    why = None
    if not isinstance(name, str) or not name:
        why = "is empty"
    elif "/" in name or name in {".", ".."} or name.startswith(".."):
        why = "is not a plain file name"
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in name) or not name.isprintable():
        why = "holds a control character"
    elif len(name.encode("utf-8", "surrogateescape")) > MAX_NAME:
        why = f"is longer than {MAX_NAME} bytes"
    elif not (name.endswith(".efi") or name.endswith(".raw")) or name in {".efi", ".raw"}:
        why = "must end .efi (the UKI) or .raw (an extension)"
    if why:
        raise MalformedError(f"{where}: file name {name!r:.80} {why}")
    return name


def kind_of(name: str) -> Kind:
    return "uki" if name.endswith(".efi") else "sysext"


def _str(obj: dict[str, Any], key: str, where: str, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise MalformedError(f"{where}: {key} must be a string")
    return value


def _annotations(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_ANNOTATIONS:
        raise MalformedError(f"{where}: annotations must be an object of at most {MAX_ANNOTATIONS} strings")
    for k, v in value.items():
        if not isinstance(v, str) or len(k) > 256 or len(v.encode()) > MAX_ANNOTATION:
            raise MalformedError(f"{where}: annotation {k!r:.60} must be a string of at most {MAX_ANNOTATION} bytes")
    return dict(value)


def descriptor(obj: Any, where: str) -> Descriptor:
    """One descriptor of a manifest or index, checked: media type grammar, digest ``sha256:<64 hex>``,
    size 1..2**40 (0 for an index entry is refused too), bounded annotations."""
    if not isinstance(obj, dict):
        raise MalformedError(f"{where}: a descriptor must be an object")
    media = _str(obj, "mediaType", where)
    digest = _str(obj, "digest", where)
    size = obj.get("size")
    assert media is not None and digest is not None
    if not _MEDIA.fullmatch(media):
        raise MalformedError(f"{where}: mediaType {media!r:.80} is not a media type")
    if not DIGEST.fullmatch(digest):
        raise MalformedError(f"{where}: digest {digest!r:.80} is not sha256:<64 lower-case hex>")
    if type(size) is not int or not 0 < size <= MAX_SIZE:
        raise MalformedError(f"{where}: size {size!r:.40} is not 1..{MAX_SIZE}")
    artifact = _str(obj, "artifactType", where, required=False)
    return Descriptor(media, digest, size, _annotations(obj.get("annotations"), where), artifact)


def load_json(raw: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise MalformedError(f"{where}: not JSON ({exc})".splitlines()[0]) from exc
    if not isinstance(doc, dict):
        raise MalformedError(f"{where}: not a JSON object")
    return doc


def _layers(doc: dict[str, Any], key: str, where: str) -> list[Any]:
    items = doc.get(key)
    if not isinstance(items, list):
        raise MalformedError(f"{where}: {key} must be a list")
    if len(items) > MAX_LAYERS:
        raise MalformedError(f"{where}: {len(items)} {key}, more than the {MAX_LAYERS} a release may have")
    return items


def parse_manifest(fetched: Fetched, where: str) -> Release:
    """A fetched manifest as a :class:`Release`: bootkeeper's form (by its ``artifactType`` or its
    layers' media types), or Kairos's (filesystem layers), or an image index, whose linux/amd64 entry
    (or only entry) comes back with ``index=True``: fetch that digest and parse again."""
    doc = load_json(fetched.raw, where)
    media = doc.get("mediaType", fetched.media_type)
    if doc.get("schemaVersion") != 2:
        raise MalformedError(f"{where}: schemaVersion must be 2")
    if media in {INDEX_TYPE, DOCKER_LIST} or ("manifests" in doc and "layers" not in doc):
        return _index(doc, fetched, where)
    if media not in {MANIFEST_TYPE, DOCKER_MANIFEST}:
        raise MalformedError(f"{where}: mediaType {media!r:.80} is not an image manifest or index")
    config = descriptor(doc.get("config"), f"{where}: config")
    layers = [descriptor(d, f"{where}: layers[{i}]") for i, d in enumerate(_layers(doc, "layers", where))]
    annotations = _annotations(doc.get("annotations"), where)
    version = annotations.get(VERSION)
    ours = doc.get("artifactType") == ARTIFACT_TYPE or config.media_type == CONFIG_TYPE
    if ours or (layers and all(d.media_type in {UKI_TYPE, SYSEXT_TYPE} for d in layers)):
        return _ours(layers, fetched.digest, version, where)
    if (
        layers
        and all(d.media_type in TAR_LAYERS for d in layers)
        and config.media_type in IMAGE_CONFIGS | {CONFIG_TYPE}
    ):
        return Release(where, fetched.digest, version, "kairos", layers=tuple(layers))
    types = sorted({d.media_type for d in layers})
    raise MalformedError(f"{where}: not a release: layers of {', '.join(types) or 'nothing'}")


def _ours(layers: list[Descriptor], digest: str, version: str | None, where: str) -> Release:
    files = []
    seen: set[str] = set()
    for i, d in enumerate(layers):
        at = f"{where}: layers[{i}]"
        if d.media_type not in {UKI_TYPE, SYSEXT_TYPE}:
            raise MalformedError(f"{at}: mediaType {d.media_type!r:.80} is neither {UKI_TYPE} nor {SYSEXT_TYPE}")
        name = check_name(d.annotations.get(TITLE, ""), at)
        kind: Kind = "uki" if d.media_type == UKI_TYPE else "sysext"
        if kind != kind_of(name):
            raise MalformedError(f"{at}: {name!r} does not end as a {d.media_type} must")
        if name in seen:
            raise MalformedError(f"{at}: {name!r} twice")
        seen.add(name)
        files.append(ReleaseFile(name, kind, d))
    check_files(files, where)
    return Release(where, digest, version, "bootkeeper", tuple(files))


def check_files(files: list[ReleaseFile], where: str) -> None:
    """A release holds exactly one UKI."""
    ukis = [f.name for f in files if f.kind == "uki"]
    if len(ukis) != 1:
        raise MalformedError(f"{where}: {len(ukis)} UKIs ({', '.join(ukis) or 'none'}); a release holds exactly one")


def _index(doc: dict[str, Any], fetched: Fetched, where: str) -> Release:
    entries = [descriptor(d, f"{where}: manifests[{i}]") for i, d in enumerate(_layers(doc, "manifests", where))]
    raw = doc["manifests"]
    picked = None
    if len(entries) == 1:
        picked = entries[0]
    else:
        for d, obj in zip(entries, raw, strict=True):
            plat = obj.get("platform")
            if isinstance(plat, dict) and plat.get("os") == "linux" and plat.get("architecture") == "amd64":
                picked = d
                break
    if picked is None:
        raise MalformedError(f"{where}: an index of {len(entries)} manifests and none for linux/amd64")
    if picked.media_type not in {MANIFEST_TYPE, DOCKER_MANIFEST}:
        raise MalformedError(f"{where}: the index's entry is {picked.media_type!r:.80}, not an image manifest")
    return Release(where, picked.digest, None, "bootkeeper", index=True)


def _file_desc(path: Path, media: str, name: str) -> Descriptor:
    from bootkeeper import fsutil

    fd = fsutil.open_input(path)
    try:
        size = os.fstat(fd).st_size
        digest = "sha256:" + fsutil.sha256_fd(fd)
    finally:
        os.close(fd)
    if not 0 < size <= MAX_SIZE:
        raise MalformedError(f"{path}: {size} bytes; a release file has 1..{MAX_SIZE}")
    return Descriptor(media, digest, size, {TITLE: name})


def local_files(files: list[Path], where: str) -> list[tuple[ReleaseFile, Path]]:
    """Files named on a command line or found in a folder, digests computed here: exactly one UKI."""
    out = []
    for p in files:
        name = check_name(p.name, where)
        kind = kind_of(name)
        out.append((ReleaseFile(name, kind, _file_desc(p, UKI_TYPE if kind == "uki" else SYSEXT_TYPE, name)), p))
    if len({f.name for f, _ in out}) != len(out):
        raise MalformedError(f"{where}: two files of the same name")
    check_files([f for f, _ in out], where)
    return out


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"


def build(files: list[Path], version: str | None) -> Built:
    """The OCI form of a release of ``files`` (one ``*.efi``, any ``*.raw``): the UKI's layer first,
    then the extensions in name order; the same files and version give the same manifest bytes."""
    located = local_files(files, "release")
    located.sort(key=lambda fp: (fp[0].kind != "uki", fp[0].name))
    if version is not None and (len(version.encode()) > MAX_ANNOTATION or not version.isprintable()):
        raise MalformedError(f"release: version {version!r:.80} is not printable text of at most {MAX_ANNOTATION}")
    config = _canonical({"version": version, "files": [{"name": f.name, "kind": f.kind} for f, _ in located]})
    config_desc = Descriptor(CONFIG_TYPE, "sha256:" + hashlib.sha256(config).hexdigest(), len(config))
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": as_json(config_desc),
        "layers": [as_json(f.desc) for f, _ in located],
    }
    if version is not None:
        manifest["annotations"] = {VERSION: version}
    return Built(config, _canonical(manifest), tuple((f.desc, p) for f, p in located))


def as_json(d: Descriptor) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": d.media_type, "digest": d.digest, "size": d.size}
    if d.annotations:
        out["annotations"] = dict(d.annotations)
    if d.artifact_type:
        out["artifactType"] = d.artifact_type
    return out
