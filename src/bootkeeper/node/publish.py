"""``release push``: the files checked (one UKI with an ``.osrel``, extensions by name), the release's
OCI form built (update/release.py) and written to a registry (update/oci.py) or an OCI image layout
(update/layout.py). Nothing here signs: a release is trusted on the node by the UKI's own Secure Boot
signature and each extension's verity signature, never by where it was published."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bootkeeper.errors import MalformedError, UnreadableError, UsageError

if TYPE_CHECKING:
    from bootkeeper.update.release import Built
    from bootkeeper.update.source import Source


@dataclass(frozen=True)
class Pushed:
    version: str | None
    digest: str  # the manifest's
    references: tuple[str, ...]  # where it can be pulled from, as sources
    blobs: tuple[tuple[str, str], ...]  # file name, digest

    def as_json(self) -> dict[str, object]:
        return {
            "version": self.version,
            "digest": self.digest,
            "references": list(self.references),
            "files": [{"name": n, "digest": d} for n, d in self.blobs],
        }


def _version(files: list[Path], given: str | None) -> str | None:
    """The files checked (each readable, one UKI that is one), and the version: ``--version``, else the
    UKI's ``.osrel`` ``IMAGE_VERSION`` or ``VERSION_ID``."""
    from bootkeeper.assess import upgrade as up
    from bootkeeper.node.update import VERSION_KEYS

    ukis = [f for f in files if f.name.endswith(".efi")]
    if len(ukis) != 1:
        raise UsageError(f"a release is one UKI (*.efi) and its extensions (*.raw): {len(ukis)} UKIs given")
    for f in files:
        try:
            f.stat()
        except OSError as exc:
            raise UnreadableError(f"{f}: cannot read ({exc.strerror})") from exc
    uki = up.check_uki(ukis[0])
    if not uki.ok:
        raise MalformedError(uki.reason or f"{ukis[0]}: not a UKI")
    if given is not None:
        return given
    return next((uki.osrel[k] for k in VERSION_KEYS if uki.osrel.get(k)), None)


def push(
    files: list[Path], target: str, tags: tuple[str, ...], version: str | None, auth: Path | None, ca: Path | None
) -> Pushed:
    """``files`` as one release at ``target`` (``oci:REGISTRY/REPO:TAG`` or ``ocifile:DIR``), also
    tagged ``tags``; an ``ocifile:`` layout is tagged with the version when no tag is given."""
    from bootkeeper.update import release, source

    dest = source.parse(target, "--to")
    version = _version(files, version)
    built = release.build(files, version)
    blobs = tuple((p.name, d.digest) for d, p in built.blobs)
    if dest.kind is source.Kind.OCIFILE:
        from bootkeeper.update import layout

        folder, tag = layout.split(dest.path)
        refs = list(dict.fromkeys(t for t in (tag or version, *tags) if t))
        if not refs:
            raise UsageError(f"--to {target}: name a tag (ocifile:DIR:TAG, --tag or --version)")
        for ref in refs:
            layout.write(folder, ref, built)
        return Pushed(version, built.digest, tuple(f"ocifile:{folder}:{r}" for r in refs), blobs)
    if dest.kind is not source.Kind.OCI or dest.tag is None:
        raise UsageError(f"--to {target}: give oci:REGISTRY/REPO:TAG or ocifile:DIR")
    _to_registry(dest, built, (dest.tag, *tags), auth, ca)
    return Pushed(
        version, built.digest, tuple(f"oci:{dest.registry}/{dest.repository}:{r}" for r in (dest.tag, *tags)), blobs
    )


def _to_registry(dest: Source, built: Built, refs: tuple[str, ...], auth: Path | None, ca: Path | None) -> None:
    """Every blob (the config too), then the manifest under each reference: a registry accepts a
    manifest only once the blobs it names are there (OCI distribution spec, pushing manifests)."""
    import hashlib
    import tempfile

    from bootkeeper.update import oci, release
    from bootkeeper.update.origin import Net

    reg = oci.Registry(dest.registry, dest.repository, Net(auth_file=auth, ca_file=ca))
    for desc, path in built.blobs:
        reg.push_blob(path, desc.digest, desc.size)
    with tempfile.NamedTemporaryFile(prefix="bootkeeper-config-") as f:
        f.write(built.config)
        f.flush()
        reg.push_blob(Path(f.name), "sha256:" + hashlib.sha256(built.config).hexdigest(), len(built.config))
    for ref in refs:
        reg.push_manifest(ref, built.manifest, release.MANIFEST_TYPE)
