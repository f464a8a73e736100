"""``release push``: the files checked (one UKI with an ``.osrel``, extensions by name), the release's
OCI form built (update/release.py) and written to a registry (update/oci.py) or an OCI image layout
(update/layout.py). Nothing here signs: a release is trusted on the node by the UKI's own Secure Boot
signature and each extension's verity signature, never by where it was published."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bootkeeper.errors import UsageError


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
    """``--version``, else the UKI's ``.osrel`` ``IMAGE_VERSION`` or ``VERSION_ID``."""
    from bootkeeper.assess import upgrade as up
    from bootkeeper.node.update import VERSION_KEYS

    if given is not None:
        return given
    ukis = [f for f in files if f.name.endswith(".efi")]
    if len(ukis) != 1:
        raise UsageError(f"a release is one UKI (*.efi) and its extensions (*.raw): {len(ukis)} UKIs given")
    uki = up.check_uki(ukis[0])
    if not uki.ok:
        raise UsageError(f"{ukis[0]}: {uki.reason}")
    return next((uki.osrel[k] for k in VERSION_KEYS if uki.osrel.get(k)), None)


def push(
    files: list[Path], target: str, tags: tuple[str, ...], version: str | None, auth: Path | None, ca: Path | None
) -> Pushed:
    from bootkeeper.update import release, source
    from bootkeeper.update.origin import Net

    dest = source.parse(target, "--to")
    version = _version(files, version)
    built = release.build(files, version)
    names = dict(zip((str(d.digest) for d, _ in built.blobs), (p.name for _, p in built.blobs), strict=True))
    if dest.kind is source.Kind.OCIFILE:
        from bootkeeper.update import layout

        refs = [t for t in (*(_tag(dest, version),), *tags) if t]
        digest = ""
        for ref in refs:
            digest = layout.write(Path(dest.path), ref, built)
        return Pushed(version, digest, tuple(f"ocifile:{dest.path}:{r}" for r in refs), tuple(names.items())[::-1])
    if dest.kind is not source.Kind.OCI or dest.tag is None:
        raise UsageError(f"--to {target}: give oci:REGISTRY/REPO:TAG or ocifile:DIR")
    from bootkeeper.update import oci

    reg = oci.Registry(dest.registry, dest.repository, Net(auth_file=auth, ca_file=ca))
    for desc, path in built.blobs:
        reg.push_blob(path, desc.digest, desc.size)
    reg.push_config(built)
    digest = ""
    for ref in (dest.tag, *tags):
        digest = reg.push_manifest(ref, built.manifest, built.media_type)
    refs = tuple(f"oci:{dest.registry}/{dest.repository}:{r}" for r in (dest.tag, *tags))
    return Pushed(version, digest, refs, tuple((p.name, d.digest) for d, p in built.blobs))


def _tag(dest: object, version: str | None) -> str | None:
    return version
