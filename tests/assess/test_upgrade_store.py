"""``upgrade`` with ``sysext.store: persistent``: the role folders of links move with the roles (active/ ->
passive/, the new set's links -> active/), common/ stays and is gated against the new OS, the
``sysext.entries`` rules decide what is carried, and a crash at any step leaves the model booting the old
OS with its own links or the new OS with its own. Real signed images, real files, the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bootkeeper.assess import bootloader
from bootkeeper.assess import upgrade as up
from bootkeeper.config import BootAssessment
from bootkeeper.esp.linkstore import LinkStore
from bootkeeper.esp.store import EspStore
from bootkeeper.sysext import deploy, signature
from helpers import signed_extension, tree, type2_esp, uki

KEY, CERT = signature.self_signed("ec", "upgrade store test")
CFG = BootAssessment(tries=3, recovery_tries=3)
V1 = {"ID": "kairos", "VERSION_ID": "1"}
V2 = {"ID": "kairos", "VERSION_ID": "2"}


def osrel(role: str, version: str) -> str:
    image_id = "kairos" if role in ("active", "passive") else f"kairos-{role}"
    return f"ID=kairos\nIMAGE_ID={image_id}\nVERSION_ID={version}\nIMAGE_VERSION={version}\n"


OLD_ACTIVE = uki(osrel("active", "1"), tag="active v1")
OLD_PASSIVE = uki(osrel("passive", "0"), tag="passive v0")
RECOVERY = uki(osrel("recovery", "1"), tag="recovery")
NEW = uki(osrel("active", "2"), tag="active v2")


class Images:
    def __init__(self, d: Path) -> None:
        self.tools_v1 = signed_extension(d / "v1" / "tools.raw", KEY, CERT, V1)
        self.tools_v2 = signed_extension(d / "v2" / "tools.raw", KEY, CERT, V2)
        self.old = signed_extension(d / "v0" / "old.raw", KEY, CERT, {"ID": "kairos", "VERSION_ID": "0"})
        self.common = signed_extension(d / "any" / "common.raw", KEY, CERT)
        self.common_v1 = signed_extension(d / "c1" / "common.raw", KEY, CERT, V1)
        self.pinned = signed_extension(d / "pin" / "pinned.raw", KEY, CERT, V1)


@pytest.fixture(scope="module")
def imgs(tmp_path_factory: pytest.TempPathFactory) -> Images:
    return Images(tmp_path_factory.mktemp("imgs"))


def esp(root: Path, layout: str) -> Path:
    """No .extra.d at all: every extension is in the store."""
    from bootkeeper.esp import scratch

    if layout == "type2":
        return type2_esp(
            root,
            {f"{r}+3.efi": d for r, d in (("active", OLD_ACTIVE), ("passive", OLD_PASSIVE), ("recovery", RECOVERY))},
        )
    scratch.make(root, ukis=True)
    for role, data in (("active", OLD_ACTIVE), ("passive", OLD_PASSIVE), ("recovery", RECOVERY)):
        (root / "EFI" / "kairos" / f"{role}.efi").write_bytes(data)
    return root


def link(store: Path, folder: str, src: Path, name: str | None = None, image: str | None = None) -> None:
    name = name or src.name
    image = image or name
    if not (store / image).exists():
        store.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, store / image)
    (store / folder).mkdir(parents=True, exist_ok=True)
    os.symlink(f"../{image}", store / folder / name)


def node(tmp_path: Path, imgs: Images, layout: str = "type2", rules: str = "", common: Path | None = None) -> Path:
    """active/ links tools (v1), passive/ links old (v0), common/ links common (any OS)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    esp(tmp_path / "efi", layout)
    s = tmp_path / "store"
    link(s, "active", imgs.tools_v1)
    link(s, "passive", imgs.old)
    link(s, "common", common or imgs.common)
    (tmp_path / "c.pem").write_bytes(CERT.public_bytes(Encoding.PEM))
    (tmp_path / "c.yaml").write_text(
        "sysext:\n  store: persistent\n  store_dir: /store\n  certificates: [/c.pem]\n  firmware: []\n"
        f"  verity_dirs: []\n{rules}"
    )
    return tmp_path


def bk(root: Path, *args: str) -> int:
    from bootkeeper.cli.main import main

    argv = ["upgrade", *args, "--esp", str(root / "efi"), "--config", str(root / "c.yaml"), "--root", str(root)]
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def new_uki(tmp_path: Path) -> Path:
    p = tmp_path / "new.efi"
    p.write_bytes(NEW)
    return p


def folder(root: Path, name: str) -> dict[str, bytes]:
    """What the role folder ``name`` loads: link name -> the bytes of the image it names."""
    ls = LinkStore(root / "store")
    out = {}
    for lk in ls.links(name):
        assert lk.image is not None, lk.problem
        out[lk.name] = (ls.root / lk.image).read_bytes()
    return out


@pytest.mark.parametrize("layout", ["type2", "type1"])
def test_links_move_with_the_roles(
    tmp_path: Path, imgs: Images, layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = node(tmp_path, imgs, layout)
    esp_before = {k for k in tree(root / "efi") if ".extra.d" in k}
    rc = bk(root, str(new_uki(tmp_path)), "--extension", str(imgs.tools_v2), "--json")
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0, doc
    assert doc["store"] == str(root / "store") and doc["result"] == "upgraded"
    assert doc["history"] == {"file": str(root / "var/lib/bootkeeper/boots.jsonl"), "recorded": True, "error": None}
    origins = {(x["name"], x["origin"], x["verdict"]) for x in doc["gate"]["extensions"]}
    assert origins == {("tools.raw", "--extension", "ok"), ("common.raw", "common", "ok")}
    # the old OS is passive with its own links; the new active links the new build, under the same name
    assert folder(root, "passive") == {"tools.raw": imgs.tools_v1.read_bytes()}
    assert folder(root, "active") == {"tools.raw": imgs.tools_v2.read_bytes()}
    assert folder(root, "common") == {"common.raw": imgs.common.read_bytes()}
    images = sorted(p.name for p in (root / "store").glob("*.raw"))
    assert images[0] == "common.raw" and images[1] == "tools.raw" and images[2].startswith("tools~")
    assert len(images) == 3  # old.raw (the old passive's) is gone: no folder links to it
    assert not [p for p in (root / "store").rglob(".bootkeeper*")]
    assert {k for k in tree(root / "efi") if ".extra.d" in k} == esp_before == set()
    store = EspStore(root / "efi")
    c = bootloader.choose(store.snapshot(252))
    assert c is not None and (root / "efi" / (up.uki_of(store, c.entry) or "")).read_bytes() == NEW
    # status shows each role's set from the store (its folder and common/)
    from bootkeeper.cli.main import main
    from helpers import fake_efivars

    ev = fake_efivars(root / "efivars", LoaderEntrySelected="active+3.efi")
    argv = ["status", "--json", "--esp", str(root / "efi"), "--efivars", str(ev), "--root", str(root)]
    main([*argv, "--config", str(root / "c.yaml")])
    st = json.loads(capsys.readouterr().out)
    sets = {r["role"]: r["extensions"] for r in st["roles"]}
    assert sets["active"] == ["common.raw", "tools.raw"] and sets["passive"] == ["common.raw", "tools.raw"]
    assert sets["recovery"] == ["common.raw"]
    assert st["extensions"]["installed"][f"{root}/store/active"] == ["tools.raw"]
    # the history has both sets, from the store
    hist = [json.loads(line) for line in (root / "var/lib/bootkeeper/boots.jsonl").read_text().splitlines()]
    rec = hist[-1]
    assert [x["name"] for x in rec["from"]["extensions"]] == ["tools.raw"]
    assert [x["name"] for x in rec["to"]["extensions"]] == ["tools.raw"]
    assert rec["from"]["extensions"][0]["sha256"] != rec["to"]["extensions"][0]["sha256"]


def test_common_built_for_the_old_os_refuses_the_upgrade(
    tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]
) -> None:
    root = node(tmp_path, imgs, common=imgs.common_v1)
    new = new_uki(tmp_path)
    before = tree(root)
    assert bk(root, str(new), "--extension", str(imgs.tools_v2)) == 1
    err = capsys.readouterr().err
    assert "common.raw: extension-release: VERSION_ID=1, the host has 2" in err and "nothing was changed" in err
    assert tree(root) == before


def test_rules_decide_what_is_carried(tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]) -> None:
    root = node(tmp_path, imgs, rules='  entries:\n    passive: ["pinned"]\n')
    link(root / "store", "active", imgs.pinned)
    rc = bk(root, str(new_uki(tmp_path)), "--extension", str(imgs.tools_v2), "--json")
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert rc == 0 and doc["left_behind"] == ["pinned.raw"]
    assert "pinned.raw: not carried to the new active" in captured.err and "passive keeps it" in captured.err
    assert set(folder(root, "active")) == {"tools.raw"}
    assert set(folder(root, "passive")) == {"tools.raw", "pinned.raw"}


class Crash(OSError):
    pass


def _apply(root: Path, new: Path, added: list[tuple[str, Path]], fault: object = None) -> None:
    store = EspStore(root / "efi", fault=fault)  # type: ignore[arg-type]
    links = LinkStore(root / "store", fault=fault)  # type: ignore[arg-type]

    def make(s: object) -> up.UpgradePlan:
        return up.plan(store, s, CFG, new, added, deploy.image_stem, links=links)  # type: ignore[arg-type]

    up.apply(store, make, make(store.snapshot()), links=links)


def _booted(root: Path, version: int) -> tuple[bytes, dict[str, bytes]]:
    """The UKI the model boots next, and what activate then loads: its role's links and common/."""
    store = EspStore(root / "efi")
    c = bootloader.choose(store.snapshot(version))
    assert c is not None and c.entry.role is not None
    rel = up.uki_of(store, c.entry)
    assert rel is not None
    return (root / "efi" / rel).read_bytes(), {**folder(root, c.entry.role.value), **folder(root, "common")}


def _whole(root: Path) -> dict[str, object]:
    """ESP files and the store's links and images (the image names of new builds carry a digest)."""
    s = root / "store"
    return {
        "esp": tree(root / "efi"),
        "links": {p.relative_to(s).as_posix(): os.readlink(p) for p in s.rglob("*") if p.is_symlink()},
        "images": {p.name: p.read_bytes() for p in s.glob("*.raw") if not p.is_symlink()},
    }


@pytest.mark.parametrize("layout", ["type2", "type1"])
def test_crash_at_every_step_boots_old_or_new_with_own_links_and_a_rerun_completes(
    tmp_path: Path, imgs: Images, layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    new = tmp_path / "new.efi"
    new.write_bytes(NEW)
    added = [("tools.raw", imgs.tools_v2)]
    common = {"common.raw": imgs.common.read_bytes()}
    known = {
        OLD_ACTIVE: {"tools.raw": imgs.tools_v1.read_bytes(), **common},
        NEW: {"tools.raw": imgs.tools_v2.read_bytes(), **common},
    }
    steps: list[str] = []
    _apply(node(tmp_path / "count", imgs, layout), new, added, steps.append)
    assert sum(1 for s in steps if "symlink:" in s) >= 2, steps
    whole = node(tmp_path / "whole", imgs, layout)
    _apply(whole, new, added)
    expected = _whole(whole)
    for k in range(len(steps)):
        root = node(tmp_path / f"crash-{k}", imgs, layout)

        def fault(name: str, k: int = k, count: list[int] = [0]) -> None:  # noqa: B006
            count[0] += 1
            if count[0] - 1 == k:
                raise Crash(f"injected power loss at {name}")

        with pytest.raises(Crash):
            _apply(root, new, added, fault)
        for v in (252, 262):
            data, loads = _booted(root, v)
            assert data in known, (k, steps[k], v)
            assert loads == known[data], (k, steps[k], v, sorted(loads))
        assert bk(root, str(new), "--extension", str(imgs.tools_v2)) == 0, (k, steps[k], capsys.readouterr().err)
        capsys.readouterr()
        assert _whole(root) == expected, (k, steps[k])
        assert not [p for p in root.rglob(".bootkeeper*")], (k, steps[k])
        shutil.rmtree(root)


NEW_RECOVERY = uki(osrel("recovery", "2"), tag="recovery v2")


def _recovery_loads(root: Path) -> list[tuple[bytes, dict[str, bytes]]]:
    """Each listed recovery entry: its UKI and what it loads (ESP .extra.d, its links, common/)."""
    from bootkeeper.esp.entries import extra_dir
    from helpers import extra_sets

    store = EspStore(root / "efi")
    out = []
    for e in store.snapshot(252).entries:
        rel = up.uki_of(store, e)
        if e.role is None or e.role.value != "recovery" or not e.listed or rel is None:
            continue
        esp_exts = extra_sets(root / "efi", rel.rpartition("/")[0]).get(extra_dir(rel).rpartition("/")[2], {})
        out.append(
            ((root / "efi" / rel).read_bytes(), {**esp_exts, **folder(root, "recovery"), **folder(root, "common")})
        )
    return out


@pytest.mark.parametrize("layout", ["type2", "type1"])
def test_recovery_crashed_at_every_step_keeps_its_carried_extensions(
    tmp_path: Path, imgs: Images, layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The old recovery's extensions (on the ESP and in the store) are staged before it goes: a re-run
    after a cut that came between carries them on from the staging, never drops them."""

    def make(d: Path) -> Path:
        root = node(d, imgs, layout)
        link(root / "store", "recovery", imgs.common, name="rescue.raw", image="rescue.raw")
        vendor = "EFI/Linux" if layout == "type2" else "EFI/kairos"
        x = root / "efi" / vendor / "recovery.efi.extra.d"
        x.mkdir()
        shutil.copy(imgs.old, x / "esp-rescue.raw")
        return root

    # esp-rescue is built for v0, which a v2 recovery refuses: the re-run needs --force (what is carried
    # is the point here, not the gate)
    new = tmp_path / "rec.efi"
    new.write_bytes(NEW_RECOVERY)
    common = {"common.raw": imgs.common.read_bytes()}
    carried = {"rescue.raw": imgs.common.read_bytes(), "esp-rescue.raw": imgs.old.read_bytes()}
    known = {
        RECOVERY: {**carried, **common},
        NEW_RECOVERY: {**carried, "tools.raw": imgs.tools_v2.read_bytes(), **common},
    }
    added = [("tools.raw", imgs.tools_v2)]

    def apply(root: Path, fault: object = None) -> None:
        store = EspStore(root / "efi", fault=fault)  # type: ignore[arg-type]
        links = LinkStore(root / "store", fault=fault)  # type: ignore[arg-type]

        def plan(s: object) -> up.UpgradePlan:
            return up.plan(store, s, CFG, new, added, deploy.image_stem, recovery=True, links=links)  # type: ignore[arg-type]

        up.apply(store, plan, plan(store.snapshot()), links=links)

    steps: list[str] = []
    apply(make(tmp_path / "count"), steps.append)
    whole = make(tmp_path / "whole")
    apply(whole)
    assert _recovery_loads(whole) == [(NEW_RECOVERY, known[NEW_RECOVERY])]
    expected = _whole(whole)
    for k in range(len(steps)):
        root = make(tmp_path / f"crash-{k}")

        def fault(name: str, k: int = k, count: list[int] = [0]) -> None:  # noqa: B006
            count[0] += 1
            if count[0] - 1 == k:
                raise Crash(f"injected power loss at {name}")

        with pytest.raises(Crash):
            apply(root, fault)
        for data, loads in _recovery_loads(root):
            assert data in known and loads == known[data], (k, steps[k], sorted(loads))
        rc = bk(root, str(new), "--recovery", "--extension", str(imgs.tools_v2), "--force")
        assert rc == 0, (k, steps[k], capsys.readouterr().err)
        capsys.readouterr()
        assert _whole(root) == expected, (k, steps[k])
        assert not [p for p in root.rglob(".bootkeeper*")], (k, steps[k])
        shutil.rmtree(root)
