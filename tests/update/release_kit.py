"""What the update tests share: release files of random bytes, the real skopeo, and images in skopeo's
``dir:`` transport form (a folder of ``manifest.json``, ``version`` and blobs named by hex) that skopeo
itself turns into OCI layouts, so the layouts these tests read are skopeo's, not bootkeeper's."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any


def files(folder: Path, uki_size: int = 3000, ext_size: int = 5000) -> list[Path]:
    """A UKI and one versioned extension of random bytes in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    uki = folder / "uki.efi"
    ext = folder / "k3s-v1.30.sysext.raw"
    uki.write_bytes(os.urandom(uki_size))
    ext.write_bytes(os.urandom(ext_size))
    return [uki, ext]


def skopeo(*args: str) -> str:
    out = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, f"skopeo {' '.join(args)}: {out.stderr.strip()}"
    return out.stdout


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def skopeo_dir(folder: Path, manifest: dict[str, Any], blobs: list[bytes]) -> Path:
    """An image in skopeo's ``dir:`` transport (containers/image ``directory/directory_dest.go``)."""
    folder.mkdir(parents=True)
    (folder / "version").write_text("Directory Transport Version: 1.1\n")
    for b in blobs:
        (folder / sha(b).removeprefix("sha256:")).write_bytes(b)
    (folder / "manifest.json").write_bytes(json.dumps(manifest).encode())
    return folder


def tar_bytes(members: list[tuple[str, bytes | None, str]]) -> bytes:
    """A tar of (name, data, kind) with kind "file", "dir" or "symlink" (data: the link's target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = (data or b"").decode()
                tar.addfile(info)
            else:
                assert data is not None
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def kairos_image(folder: Path, members: list[tuple[str, bytes | None, str]]) -> Path:
    """An image the way AuroraBoot's ``build-uki --output-type container`` makes one
    (kairos-io/AuroraBoot internal/cmd/build-uki.go createContainer): a Docker schema 2 manifest,
    an image config, one gzip layer holding the ESP tree; in skopeo's dir: form."""
    layer_tar = tar_bytes(members)
    layer = gzip.compress(layer_tar, mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha(layer_tar)]},
        }
    ).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": len(config),
            "digest": sha(config),
        },
        "layers": [
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(layer), "digest": sha(layer)}
        ],
    }
    return skopeo_dir(folder, manifest, [config, layer])
