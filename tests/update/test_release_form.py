"""update/release.py: the release's OCI form built and parsed, and the names and bounds it refuses."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bootkeeper.errors import MalformedError
from bootkeeper.update import release
from bootkeeper.update.origin import Fetched
from release_kit import files, sha


def fetched(doc: object, media: str = "application/vnd.oci.image.manifest.v1+json") -> Fetched:
    raw = json.dumps(doc).encode()
    return Fetched(raw, media, sha(raw))


def test_build_is_the_documented_form(tmp_path: Path) -> None:
    uki, ext = files(tmp_path)
    built = release.build([ext, uki], "v2.1")
    doc = json.loads(built.manifest)
    assert doc["schemaVersion"] == 2
    assert doc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert doc["artifactType"] == "application/vnd.bootkeeper.release.v1"
    assert doc["annotations"] == {"org.opencontainers.image.version": "v2.1"}
    assert doc["config"]["mediaType"] == "application/vnd.bootkeeper.release.config.v1+json"
    assert doc["config"]["digest"] == "sha256:" + hashlib.sha256(built.config).hexdigest()
    assert json.loads(built.config) == {
        "version": "v2.1",
        "files": [{"name": "uki.efi", "kind": "uki"}, {"name": "k3s-v1.30.sysext.raw", "kind": "sysext"}],
    }
    layers = doc["layers"]
    assert [(d["mediaType"], d["annotations"]["org.opencontainers.image.title"], d["size"]) for d in layers] == [
        ("application/vnd.bootkeeper.uki.v1", "uki.efi", 3000),
        ("application/vnd.bootkeeper.sysext.v1", "k3s-v1.30.sysext.raw", 5000),
    ]
    assert layers[0]["digest"] == "sha256:" + hashlib.sha256(uki.read_bytes()).hexdigest()
    assert built.digest == "sha256:" + hashlib.sha256(built.manifest).hexdigest()
    # deterministic: the same files and version give the same bytes
    assert release.build([uki, ext], "v2.1").manifest == built.manifest
    parsed = release.parse_manifest(Fetched(built.manifest, "", built.digest), "here")
    assert (parsed.form, parsed.version, parsed.uki.name) == ("bootkeeper", "v2.1", "uki.efi")
    assert [f.name for f in parsed.extensions] == ["k3s-v1.30.sysext.raw"]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../../x", "is not a plain file name"),
        ("../../x.efi", "is not a plain file name"),
        ("a/b.efi", "is not a plain file name"),
        ("..", "is not a plain file name"),
        ("a\0.efi", "holds a control character"),
        ("a\n.raw", "holds a control character"),
        ("x" * 252 + ".efi", "is longer than 255 bytes"),
        ("vmlinuz", "must end .efi"),
        ("", "is empty"),
    ],
)
def test_check_name_refuses(name: str, why: str) -> None:
    with pytest.raises(MalformedError) as err:
        release.check_name(name, "layers[0]")
    assert str(err.value).startswith("layers[0]: file name ") and why in str(err.value)
    assert "\n" not in str(err.value)


def test_check_name_accepts() -> None:
    assert release.check_name("x" * 251 + ".efi", "w") == "x" * 251 + ".efi"
    assert release.check_name("k3s-v1.30.sysext.raw", "w") == "k3s-v1.30.sysext.raw"


def _manifest(layers: list[dict[str, object]]) -> dict[str, object]:
    return {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.bootkeeper.release.v1",
        "config": {
            "mediaType": "application/vnd.bootkeeper.release.config.v1+json",
            "digest": "sha256:" + "a" * 64,
            "size": 2,
        },
        "layers": layers,
    }


def _layer(title: str, media: str = "application/vnd.bootkeeper.uki.v1", **kw: object) -> dict[str, object]:
    d: dict[str, object] = {"mediaType": media, "digest": "sha256:" + "b" * 64, "size": 10}
    d["annotations"] = {"org.opencontainers.image.title": title}
    d.update(kw)
    return d


@pytest.mark.parametrize(
    ("layers", "says"),
    [
        ([_layer("../../x")], "layers[0]: file name '../../x' is not a plain file name"),
        ([_layer("a.efi", digest="sha256:" + "B" * 64)], "layers[0]: digest 'sha256:BBB"),
        ([_layer("a.efi", size=0)], "layers[0]: size 0 is not 1..1099511627776"),
        ([_layer("a.efi", size=2**40 + 1)], "layers[0]: size 1099511627777 is not"),
        ([_layer("a.efi", size="10")], "layers[0]: size '10' is not"),
        ([_layer("a.efi"), _layer("b.efi")], "2 UKIs (a.efi, b.efi); a release holds exactly one"),
        ([_layer("a.raw", "application/vnd.bootkeeper.sysext.v1")], "0 UKIs (none)"),
        ([_layer("a.raw")], "'a.raw' does not end as a application/vnd.bootkeeper.uki.v1 must"),
        ([_layer("a.efi", "text/plain")], "mediaType 'text/plain' is neither"),
        ([_layer("a.efi", annotations={"org.opencontainers.image.title": "a.efi", "x": "y" * 5000})], "annotation 'x'"),
    ],
)
def test_hostile_manifests(layers: list[dict[str, object]], says: str) -> None:
    with pytest.raises(MalformedError) as err:
        release.parse_manifest(fetched(_manifest(layers)), "oci:r/x:v1")
    assert says in str(err.value) and str(err.value).startswith("oci:r/x:v1: ")
    assert "\n" not in str(err.value)


def test_ten_thousand_layers_refused() -> None:
    layers = [_layer(f"e{i}.raw", "application/vnd.bootkeeper.sysext.v1") for i in range(10_000)]
    with pytest.raises(MalformedError) as err:
        release.parse_manifest(fetched(_manifest(layers)), "w")
    assert str(err.value) == "w: 10000 layers, more than the 256 a release may have"


def test_not_json_and_not_a_manifest() -> None:
    for raw, says in [
        (b"\xff{", "w: not JSON"),
        (b"[1]", "w: not a JSON object"),
        (b'{"schemaVersion": 1}', "w: schemaVersion must be 2"),
    ]:
        with pytest.raises(MalformedError) as err:
            release.parse_manifest(Fetched(raw, "", sha(raw)), "w")
        assert str(err.value).startswith(says), str(err.value)


def test_index_picks_linux_amd64() -> None:
    amd, arm = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": arm,
                "size": 9,
                "platform": {"os": "linux", "architecture": "arm64"},
            },
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": amd,
                "size": 9,
                "platform": {"os": "linux", "architecture": "amd64"},
            },
        ],
    }
    got = release.parse_manifest(fetched(doc, "application/vnd.oci.image.index.v1+json"), "w")
    assert got.index and got.manifest_digest == amd
    doc["manifests"] = doc["manifests"][:1]  # type: ignore[index]
    assert release.parse_manifest(fetched(doc), "w").manifest_digest == arm
    doc["manifests"] = [dict(doc["manifests"][0]), dict(doc["manifests"][0], digest=amd)]  # type: ignore[index]
    with pytest.raises(MalformedError, match="w: an index of 2 manifests and none for linux/amd64"):
        release.parse_manifest(fetched(doc), "w")
