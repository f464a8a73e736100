"""Versioned extensions (docs/upgrades.md, "Versioned extensions"): an image whose file name carries its
version (``k3s-v1.31.sysext.raw``) replaces the older build of the same extension in the new set — the
``SYSEXT_ID`` of its extension-release, else its name without the version — while the old OS, now
passive, keeps its own build. Real signed images (erofs, verity, PKCS#7), both layouts, both stores,
a cut at every step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bootkeeper.sysext import deploy, image
from helpers import signed_extension
from test_upgrade_replace import (
    BAD_V2,
    CERT,
    GOOD_V1,
    KEY,
    LAYOUTS,
    NEW_V3,
    RECOVERY,
    STATERESET,
    STORES,
    V2,
    V3,
    Crash,
    Images,
    bk,
    crash_at,
    invariant,
    loads,
    make_node,
    new_uki,
    replace,
    whole,
)

FOLDER = {"type1": "EFI/kairos", "type2": "EFI/Linux"}


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("k3s-v1.30.sysext.raw", "k3s"),
        ("k3s_1.30.raw", "k3s"),
        ("k3s-1.30.2+k3s1.raw", "k3s"),
        ("k3s-V2.raw", "k3s"),
        ("k3s.sysext.raw", "k3s"),
        ("k3s.raw", "k3s"),
        ("linux-firmware-20240101.raw", "linux-firmware"),
        ("nvidia-driver_535.raw", "nvidia-driver"),
        ("foo-bar.raw", "foo-bar"),
        ("1password-8.raw", "1password"),
        ("_1.raw", "_1"),
        ("k3s-vx.raw", "k3s-vx"),
    ],
)
def test_the_name_without_its_version(name: str, key: str) -> None:
    assert deploy.unversioned(name) == key


def with_sysext_id(out: Path, sysext_id: str, version: dict[str, str]) -> Path:
    """A real signed image whose own extension-release carries ``SYSEXT_ID``."""
    t = out.parent / f"{out.name}.tree"
    stem = deploy.image_stem(out.name)
    rel = t / "usr/lib/extension-release.d"
    rel.mkdir(parents=True)
    (rel / f"extension-release.{stem}").write_text(
        f"ID={version['ID']}\nVERSION_ID={version['VERSION_ID']}\nSYSEXT_ID={sysext_id}\n"
    )
    (t / "usr/bin").mkdir(parents=True)
    (t / "usr/bin" / stem).write_bytes(out.name.encode() * 50)
    return image.build(t, out, KEY, CERT)


class Builds:
    def __init__(self, d: Path) -> None:
        self.base = Images(d / "base")
        self.k3s_130 = signed_extension(d / "a" / "k3s-v1.30.sysext.raw", KEY, CERT, V2)
        self.k3s_131 = signed_extension(d / "b" / "k3s-v1.31.sysext.raw", KEY, CERT, V3)
        self.k3s_131_underscore = signed_extension(d / "c" / "k3s_1.31.raw", KEY, CERT, V3)
        self.k3s_tools = signed_extension(d / "a" / "k3s-tools-v1.raw", KEY, CERT)
        self.kube_is_k3s = with_sysext_id(d / "d" / "kube.raw", "k3s", V2)
        self.other_131 = with_sysext_id(d / "e" / "k3s-v1.31.sysext.raw", "rancher-k3s", V3)


@pytest.fixture(scope="module")
def b(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    return Builds(tmp_path_factory.mktemp("builds"))


def blessed_node(root: Path, b: Builds, layout: str, store: str, active: list[Path]) -> Path:
    """active v2 blessed, loading ``active``; passive v1 loading tools v1."""
    return make_node(
        root, b.base, layout, store, active="", passive="+3", sets={"active": active, "passive": [b.base.tools_v1]}
    )


def act_pas(layout: str) -> tuple[str, str]:
    f = FOLDER[layout]
    if layout == "type2":
        return f"{f}/active+3.efi", f"{f}/passive+3.efi"
    return f"{f}/active.efi", f"{f}/passive.efi"


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_new_build_replaces_the_old_build_and_passive_keeps_its_own(
    tmp_path: Path, b: Builds, layout: str, store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = blessed_node(tmp_path, b, layout, store, [b.k3s_130, b.k3s_tools])
    rc = bk(root, str(new_uki(root)), "--extension", str(b.k3s_131))
    assert rc == 0, capsys.readouterr().err
    act, pas = act_pas(layout)
    assert (root / "efi" / act).read_bytes() == NEW_V3 and (root / "efi" / pas).read_bytes() == BAD_V2
    # never two builds of k3s; k3s-tools is another extension (its name without the version differs)
    assert loads(root, act, store) == {
        "k3s-v1.31.sysext.raw": b.k3s_131.read_bytes(),
        "k3s-tools-v1.raw": b.k3s_tools.read_bytes(),
    }
    assert loads(root, pas, store) == {
        "k3s-v1.30.sysext.raw": b.k3s_130.read_bytes(),
        "k3s-tools-v1.raw": b.k3s_tools.read_bytes(),
    }


@pytest.mark.parametrize("layout", LAYOUTS)
def test_underscore_versions_replace_too(tmp_path: Path, b: Builds, layout: str) -> None:
    root = blessed_node(tmp_path, b, layout, "esp", [b.k3s_130])
    assert bk(root, str(new_uki(root)), "--extension", str(b.k3s_131_underscore)) == 0
    act, pas = act_pas(layout)
    assert loads(root, act, "esp") == {"k3s_1.31.raw": b.k3s_131_underscore.read_bytes()}
    assert loads(root, pas, "esp") == {"k3s-v1.30.sysext.raw": b.k3s_130.read_bytes()}


def test_sysext_id_names_the_extension_whatever_the_file_is_called(
    tmp_path: Path, b: Builds, capsys: pytest.CaptureFixture[str]
) -> None:
    """kube.raw says SYSEXT_ID=k3s: k3s-v1.31 replaces it. A k3s-v1.31 whose SYSEXT_ID is another
    extension's does not replace k3s-v1.30: the image's own word wins over its file name."""
    root = blessed_node(tmp_path / "a", b, "type2", "esp", [b.kube_is_k3s])
    assert bk(root, str(new_uki(root)), "--extension", str(b.k3s_131)) == 0
    act, pas = act_pas("type2")
    assert set(loads(root, act, "esp")) == {"k3s-v1.31.sysext.raw"}
    assert set(loads(root, pas, "esp")) == {"kube.raw"}
    other = blessed_node(tmp_path / "b", b, "type2", "esp", [b.k3s_130])
    capsys.readouterr()
    assert bk(other, str(new_uki(other)), "--extension", str(b.other_131), "--dry-run", "--json") == 1
    gate = json.loads(capsys.readouterr().out)["gate"]["extensions"]
    # k3s-v1.30 is carried (and, built for v2, refused for v3): not the same extension as rancher-k3s
    assert {(x["name"], x["origin"]) for x in gate} == {
        ("k3s-v1.30.sysext.raw", "carried"),
        ("k3s-v1.31.sysext.raw", "--extension"),
    }


def test_two_builds_of_one_extension_are_refused(tmp_path: Path, b: Builds, capsys: pytest.CaptureFixture[str]) -> None:
    root = blessed_node(tmp_path, b, "type2", "esp", [b.k3s_130])
    before = whole(root)
    rc = bk(root, str(new_uki(root)), "--extension", str(b.k3s_131), "--extension", str(b.k3s_131_underscore))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "bootkeeper: error: --extension: more than one image named k3s (a build of one extension each)" in err
    assert whole(root) == before
    rc = bk(root, str(new_uki(root)), "--extension", str(b.k3s_131), "--extension", str(b.kube_is_k3s))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"--extension: more than one build of the extension k3s ({b.k3s_131}, {b.kube_is_k3s})" in err
    assert whole(root) == before


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_crash_at_every_step_keeps_one_build_per_set(tmp_path: Path, b: Builds, layout: str, store: str) -> None:
    added = [("k3s-v1.31.sysext.raw", b.k3s_131)]
    tools = {"k3s-tools-v1.raw": b.k3s_tools.read_bytes()}
    known = {
        BAD_V2: {"k3s-v1.30.sysext.raw": b.k3s_130.read_bytes(), **tools},
        NEW_V3: {"k3s-v1.31.sysext.raw": b.k3s_131.read_bytes(), **tools},
        GOOD_V1: {"tools.raw": b.base.tools_v1.read_bytes()},
        RECOVERY: {},
        STATERESET: {},
    }
    sets = [b.k3s_130, b.k3s_tools]
    steps: list[str] = []
    replace(blessed_node(tmp_path / "count", b, layout, store, sets), store, added, steps.append)
    ref = blessed_node(tmp_path / "whole", b, layout, store, sets)
    replace(ref, store, added)
    expected = whole(ref)
    assert len(steps) > 10, steps
    for k in range(len(steps)):
        root = blessed_node(tmp_path / f"crash-{k}", b, layout, store, sets)
        with pytest.raises(Crash):
            replace(root, store, added, crash_at(k))
        invariant(root, store, known, {BAD_V2, NEW_V3})  # the old OS (blessed) or the new one
        assert bk(root, str(new_uki(root)), "--extension", str(b.k3s_131)) == 0, (k, steps[k])
        assert whole(root) == expected, (k, steps[k])
        shutil.rmtree(root)
