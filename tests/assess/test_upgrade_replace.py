"""``upgrade`` after a fallback, and ``upgrade --rebuild`` (repair): a bad active is replaced and the
running passive stays; a rebuild gives active (and, unless it is fit to stay, passive) the new set and
every role fresh tries. A crash at any step leaves an ESP the model boots into a whole set, for
systemd-boot 252 and 262, both layouts, extensions on the ESP or in the persistent store; a re-run
finishes, and a re-run after completion changes nothing. Real signed images, real files, the CLI."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bootkeeper.assess import bootloader
from bootkeeper.assess import upgrade as up
from bootkeeper.config import BootAssessment
from bootkeeper.esp import scratch
from bootkeeper.esp.entries import extra_dir
from bootkeeper.esp.linkstore import LinkStore
from bootkeeper.esp.store import EspStore
from bootkeeper.node import upgrade as node_up
from bootkeeper.sysext import deploy, signature
from helpers import extra_sets, signed_extension, tree, uki

KEY, CERT = signature.self_signed("ec", "upgrade replace test")
CFG = BootAssessment(tries=3, recovery_tries=2)
V1, V2, V3 = ({"ID": "kairos", "VERSION_ID": v} for v in ("1", "2", "3"))


def osrel(role: str, version: str) -> str:
    image_id = "kairos" if role in ("active", "passive") else f"kairos-{role}"
    return f"ID=kairos\nIMAGE_ID={image_id}\nVERSION_ID={version}\nIMAGE_VERSION={version}\n"


GOOD_V1 = uki(osrel("passive", "1"), tag="v1, the running fallback")
BAD_V2 = uki(osrel("active", "2"), tag="v2, failed its tries")
NEW_V3 = uki(osrel("active", "3"), tag="v3")
RECOVERY = uki(osrel("recovery", "1"), tag="recovery")
STATERESET = uki(osrel("statereset", "1"), tag="statereset")


class Images:
    def __init__(self, d: Path) -> None:
        self.tools_v1 = signed_extension(d / "v1" / "tools.raw", KEY, CERT, V1)
        self.tools_v2 = signed_extension(d / "v2" / "tools.raw", KEY, CERT, V2)
        self.tools_v3 = signed_extension(d / "v3" / "tools.raw", KEY, CERT, V3)
        self.common = signed_extension(d / "any" / "common.raw", KEY, CERT)
        self.bad_only = signed_extension(d / "v2" / "badonly.raw", KEY, CERT, V2)


@pytest.fixture(scope="module")
def imgs(tmp_path_factory: pytest.TempPathFactory) -> Images:
    return Images(tmp_path_factory.mktemp("imgs"))


LAYOUTS = ("type1", "type2")
STORES = ("esp", "persistent")
FOLDER = {"type1": "EFI/kairos", "type2": "EFI/Linux"}


def entry_names(layout: str, active: str | None, passive: str | None) -> dict[str, str | None]:
    """The entry file of each role (None: none), from its counter text (``+0-3``, ``""``: blessed)."""
    suffix = ".conf" if layout == "type1" else ".efi"
    roles = {"active": active, "passive": passive, "recovery": "+3", "statereset": "+3"}
    return {r: (f"{r}{c}{suffix}" if c is not None else None) for r, c in roles.items()}


def make_node(
    root: Path,
    imgs: Images,
    layout: str,
    store: str,
    *,
    active: str | None = "+0-3",
    passive: str | None = "",
    sets: dict[str, list[Path]] | None = None,
) -> Path:
    """A node after a fallback: active v2 (``active``: its counter; bad by default) loads tools v2 and
    badonly; passive v1 (blessed by default) loads tools v1 and common (``sets``: other images, each
    under its file name); recovery and statereset."""
    from cryptography.hazmat.primitives.serialization import Encoding

    esp = root / "efi"
    names = entry_names(layout, active, passive)
    data = {"active": BAD_V2, "passive": GOOD_V1, "recovery": RECOVERY, "statereset": STATERESET}
    folder = esp / FOLDER[layout]
    if layout == "type1":
        scratch.make(esp, ukis=True)
        for role, d in data.items():
            (folder / f"{role}.efi").write_bytes(d)
            conf = esp / "loader/entries" / f"{role}+3.conf"
            name = names[role]
            if name is None:
                conf.unlink()
                (folder / f"{role}.efi").unlink()
            elif name != conf.name:
                conf.rename(conf.with_name(name))
    else:
        folder.mkdir(parents=True)
        (esp / "loader").mkdir()
        (esp / "loader/loader.conf").write_text("timeout 0\n")
        for role, d in data.items():
            name = names[role]
            if name is not None:
                (folder / name).write_bytes(d)
    if sets is None:
        sets = {"active": [imgs.tools_v2, imgs.bad_only], "passive": [imgs.tools_v1, imgs.common]}
    for role, images in sets.items():
        if names[role] is None:
            continue
        for img in images:
            if store == "esp":
                (folder / f"{role}.efi.extra.d").mkdir(exist_ok=True)
                shutil.copy(img, folder / f"{role}.efi.extra.d" / img.name)
            else:
                link(root / "store", role, img)
    (root / "c.pem").write_bytes(CERT.public_bytes(Encoding.PEM))
    text = "sysext:\n  certificates: [/c.pem]\n  firmware: []\n  verity_dirs: []\n"
    if store == "persistent":
        text += "  store: persistent\n  store_dir: /store\n"
        (root / "store").mkdir(exist_ok=True)
    text += f"boot_assessment:\n  tries: {CFG.tries}\n  recovery_tries: {CFG.recovery_tries}\n"
    (root / "c.yaml").write_text(text)
    return root


def link(store: Path, folder: str, src: Path) -> None:
    """``folder/<name>`` -> ``../<image>``; an image of that name with other bytes gets another name."""
    image = src.name
    if (store / image).exists() and (store / image).read_bytes() != src.read_bytes():
        image = f"{folder}-{src.name}"
    if not (store / image).exists():
        store.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, store / image)
    (store / folder).mkdir(parents=True, exist_ok=True)
    os.symlink(f"../{image}", store / folder / src.name)


def bk(root: Path, *args: str) -> int:
    from bootkeeper.cli.main import main

    argv = ["upgrade", *args, "--esp", str(root / "efi"), "--config", str(root / "c.yaml"), "--root", str(root)]
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def new_uki(root: Path) -> Path:
    p = root / "new.efi"
    p.write_bytes(NEW_V3)
    return p


def loads(root: Path, rel: str, store: str) -> dict[str, bytes]:
    """What the UKI at ``rel`` loads: its ``.extra.d`` (ESP), or its role's folder of links (store)."""
    if store == "esp":
        sets: dict[str, dict[str, bytes]] = extra_sets(root / "efi", rel.rpartition("/")[0])
        return sets.get(extra_dir(rel).rpartition("/")[2], {})
    role = rel.rpartition("/")[2].split("+")[0].split(".")[0]
    ls = LinkStore(root / "store")
    out = {}
    for lk in ls.links(role):
        assert lk.image is not None, lk.problem
        out[lk.name] = (ls.root / lk.image).read_bytes()
    return out


def booted(root: Path, store: str, version: int) -> tuple[bytes, dict[str, bytes]]:
    es = EspStore(root / "efi")
    c = bootloader.choose(es.snapshot(version))
    assert c is not None
    rel = up.uki_of(es, c.entry)
    assert rel is not None
    return (root / "efi" / rel).read_bytes(), loads(root, rel, store)


def whole(root: Path) -> dict[str, Any]:
    """ESP files, and the store's links (each with the bytes of the image it names) and images. Not the
    image names: a new build gets a name with a digest when another image of its name is linked at plan
    time, and a re-run after the bad active's links went finds that name free (LinkStore.image_for)."""
    s = root / "store"
    return {
        "esp": tree(root / "efi"),
        "links": {p.relative_to(s).as_posix(): p.read_bytes() for p in s.rglob("*") if p.is_symlink()},
        "images": sorted(p.read_bytes() for p in s.glob("*.raw") if not p.is_symlink()),
    }


def invariant(root: Path, store: str, known: dict[bytes, dict[str, bytes]], boots: set[bytes]) -> None:
    """For 252 and 262: the model boots one of ``boots`` with its own set, and every listed role entry's
    UKI loads its own set, never one half there or another's."""
    es = EspStore(root / "efi")
    for v in (252, 262):
        data, got = booted(root, store, v)
        assert data in boots, f"{v} boots another OS"
        assert got == known[data], f"{v}: the OS boots with another extension set: {sorted(got)}"
        for e in es.snapshot(v).entries:
            rel = up.uki_of(es, e)
            if not e.listed or e.role is None or rel is None:
                continue
            b = (root / "efi" / rel).read_bytes()
            assert b in known, f"{e.path}: an unknown UKI"
            assert loads(root, rel, store) == known[b], f"{e.path}: its set is half there"


class Crash(OSError):
    pass


def crash_at(k: int) -> Callable[[str], None]:
    count = [0]

    def fault(name: str) -> None:
        count[0] += 1
        if count[0] - 1 == k:
            raise Crash(f"injected power loss at {name}")

    return fault


def stores(root: Path, store: str, fault: object) -> tuple[EspStore, LinkStore | None]:
    es = EspStore(root / "efi", fault=fault)  # type: ignore[arg-type]
    links = LinkStore(root / "store", fault=fault) if store == "persistent" else None  # type: ignore[arg-type]
    return es, links


def replace(root: Path, store: str, added: list[tuple[str, Path]], fault: object = None) -> None:
    """The transaction ``upgrade`` runs, on stores that can be cut at any step."""
    es, links = stores(root, store, fault)

    def make(s: object) -> up.UpgradePlan:
        return up.plan(
            es, s, CFG, new_uki(root), added, deploy.image_stem, links=links,  # type: ignore[arg-type]
            key=node_up.extension_key,
        )  # fmt: skip

    up.apply(es, make, make(es.snapshot()), links=links)


def rebuild(root: Path, store: str, added: list[tuple[str, Path]], fault: object = None) -> None:
    """What ``upgrade --rebuild`` runs: the active, then passive and the counters."""
    es, links = stores(root, store, fault)

    def make(s: object) -> up.UpgradePlan:
        return up.plan(
            es, s, CFG, new_uki(root), added, deploy.image_stem, links=links,  # type: ignore[arg-type]
            key=node_up.extension_key, carry=lambda _: False, rebuild=True,
        )  # fmt: skip

    p = make(es.snapshot())
    if not p.done or p.ops:
        up.apply(es, make, p, links=links)
    up.finish_rebuild(es, CFG, links=links)


# --- a bad active is replaced, the running passive stays -------------------------------------------


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_upgrade_after_a_fallback_replaces_the_bad_active_and_keeps_passive(
    tmp_path: Path, imgs: Images, layout: str, store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The defect: on main, ``upgrade`` refused here with exit 3 ("the active entry is bad ... upgrading
    would make an OS that never booted well the fallback") and the operator had to delete entries by hand
    on a read-only /efi. Now the new OS replaces the bad active, the running passive stays byte for byte,
    and the history says what was replaced."""
    root = make_node(tmp_path, imgs, layout, store)
    names = entry_names(layout, "+0-3", "")
    pas_entry = f"{'loader/entries' if layout == 'type1' else 'EFI/Linux'}/{names['passive']}"
    pas_uki = f"{FOLDER[layout]}/passive.efi"
    before = whole(root)
    rc = bk(root, str(new_uki(root)), "--extension", str(imgs.tools_v3))
    out = capsys.readouterr()
    assert rc == 0, out.err
    bad = f"{'loader/entries' if layout == 'type1' else 'EFI/Linux'}/{names['active']}"
    assert f"bootkeeper: {bad}: the active entry is bad (no tries left); the new OS replaces it and " in out.err
    after = whole(root)
    esp_after = after["esp"]
    assert isinstance(esp_after, dict)
    # passive: the same entry file, UKI and extensions
    assert esp_after[pas_entry] == before["esp"][pas_entry]
    assert esp_after[pas_uki] == GOOD_V1
    assert loads(root, pas_uki, store) == {
        "tools.raw": imgs.tools_v1.read_bytes(),
        "common.raw": imgs.common.read_bytes(),
    }
    # the bad set is gone, with its extensions (badonly.raw is in no set any more)
    values = list(esp_after.values()) + list(after["images"])
    assert BAD_V2 not in values and imgs.bad_only.read_bytes() not in values
    assert imgs.tools_v2.read_bytes() not in values
    # the new active: its extension, plus what the running passive carries
    act = "EFI/Linux/active+3.efi" if layout == "type2" else "EFI/kairos/active.efi"
    assert esp_after[act] == NEW_V3
    assert loads(root, act, store) == {"tools.raw": imgs.tools_v3.read_bytes(), "common.raw": imgs.common.read_bytes()}
    for v in (252, 262):
        assert booted(root, store, v)[0] == NEW_V3
    assert not [p for p in (root / "efi").rglob(".bootkeeper*")]
    rec = [json.loads(x) for x in (root / "var/lib/bootkeeper/boots.jsonl").read_text().splitlines()]
    last = rec[-1]
    assert last["type"] == "upgrade"
    assert last["result"] == "replaced-bad", last
    assert last["from"]["os"]["VERSION_ID"] == "2" and last["to"]["os"]["VERSION_ID"] == "3"
    # a re-run after completion changes nothing
    assert bk(root, str(new_uki(root)), "--extension", str(imgs.tools_v3)) == 0
    assert whole(root) == after


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dry_run_says_the_bad_active_is_replaced(
    tmp_path: Path, imgs: Images, layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_node(tmp_path, imgs, layout, "esp")
    before = whole(root)
    assert bk(root, str(new_uki(root)), "--extension", str(imgs.tools_v3), "--dry-run") == 0
    out = capsys.readouterr()
    assert whole(root) == before
    assert "the active entry is bad (no tries left); the new OS replaces it and" in out.err
    assert "(the bad active goes (no tries left: it never booted well))" in out.out
    assert "passive" not in " ".join(x for x in out.out.splitlines() if x.startswith("would remove"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_both_bad_the_new_active_replaces_active_and_passive_stays(
    tmp_path: Path, imgs: Images, layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Passive bad too (the node runs recovery): a plain upgrade still replaces the bad active and leaves
    passive as it is; re-arming passive is the rebuild's (``--rebuild``)."""
    root = make_node(tmp_path, imgs, layout, "esp", passive="+0-3")
    pas = entry_names(layout, None, "+0-3")["passive"]
    assert bk(root, str(new_uki(root)), "--extension", str(imgs.tools_v3)) == 0, capsys.readouterr().err
    entries = root / "efi" / ("loader/entries" if layout == "type1" else "EFI/Linux")
    assert pas is not None and (entries / pas).is_file()
    assert booted(root, "esp", 262)[0] == NEW_V3


@pytest.mark.parametrize("passive", ["", None])
@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_replace_crash_at_every_step_boots_a_whole_set_and_a_rerun_completes(
    tmp_path: Path, imgs: Images, layout: str, store: str, passive: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the running passive (the model boots it or the new OS), and with none (recovery or the new
    OS: the new set is then staged before the bad one goes, so a re-run still knows the transaction)."""
    added = [("tools.raw", imgs.tools_v3)]
    common = {"common.raw": imgs.common.read_bytes()}
    known = {
        GOOD_V1: {"tools.raw": imgs.tools_v1.read_bytes(), **common},
        # what the running passive carries (with none, nothing: the bad set's extensions go)
        NEW_V3: {"tools.raw": imgs.tools_v3.read_bytes(), **(common if passive is not None else {})},
        BAD_V2: {"tools.raw": imgs.tools_v2.read_bytes(), "badonly.raw": imgs.bad_only.read_bytes()},
        RECOVERY: {},
        STATERESET: {},
    }
    steps: list[str] = []
    replace(make_node(tmp_path / "count", imgs, layout, store, passive=passive), store, added, steps.append)
    assert len(steps) > 8, steps
    ref = make_node(tmp_path / "whole", imgs, layout, store, passive=passive)
    replace(ref, store, added)
    expected = whole(ref)
    for k in range(len(steps)):
        root = make_node(tmp_path / f"crash-{k}", imgs, layout, store, passive=passive)
        with pytest.raises(Crash):
            replace(root, store, added, crash_at(k))
        invariant(root, store, known, {GOOD_V1 if passive is not None else RECOVERY, NEW_V3})
        rc = bk(root, str(new_uki(root)), "--extension", str(imgs.tools_v3))
        assert rc == 0, (k, steps[k], capsys.readouterr().err)
        assert whole(root) == expected, (k, steps[k])
        assert not [p for p in root.rglob(".bootkeeper*")], (k, steps[k])
        shutil.rmtree(root)


# --- rebuild ---------------------------------------------------------------------------------


def counters(root: Path, layout: str) -> list[str]:
    d = root / "efi" / ("loader/entries" if layout == "type1" else "EFI/Linux")
    return sorted(p.name for p in d.iterdir() if p.is_file() and p.name.endswith((".conf", ".efi")))


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    ("active", "passive", "passive_is"),
    [
        ("+0-3", "+0-3", "new"),  # both broken (the node runs recovery): passive from the new set
        ("+0-3", "", "kept"),  # passive blessed: it stays, re-armed
        ("+1-2", "+3", "kept"),  # active failing, passive never tried since it moved: it stays
        (None, "+0-3", "new"),  # active missing
        (None, None, "new"),  # neither
        ("", "+0-3", "old-active"),  # active blessed: an upgrade, the old active is the fallback
    ],
)
def test_rebuild_gives_active_the_new_set_and_rearms_active_and_passive_only(
    tmp_path: Path,
    imgs: Images,
    layout: str,
    store: str,
    active: str | None,
    passive: str | None,
    passive_is: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = make_node(tmp_path, imgs, layout, store, active=active, passive=passive)
    rc = bk(root, str(new_uki(root)), "--extension", str(imgs.tools_v3), "--rebuild")
    assert rc == 0, capsys.readouterr().err
    sfx = ".conf" if layout == "type1" else ".efi"
    # Type #2: a copy of the new UKI as passive would boot first (one .osrel; ids compared descending),
    # so a passive not fit to stay goes and recovery is the fallback
    dropped = layout == "type2" and passive_is == "new"
    # recovery and statereset keep their counters: each repair attempt costs one of recovery's tries
    # (never a loop of repairs); the new active's good boot re-arms recovery, as every good boot does
    want_names = [f"active+3{sfx}", *([] if dropped else [f"passive+3{sfx}"]), f"recovery+3{sfx}", f"statereset+3{sfx}"]
    assert counters(root, layout) == want_names
    f = FOLDER[layout]
    act = f"{f}/active+3.efi" if layout == "type2" else f"{f}/active.efi"
    pas = f"{f}/passive+3.efi" if layout == "type2" else f"{f}/passive.efi"
    v3 = {"tools.raw": imgs.tools_v3.read_bytes()}  # a rebuild carries nothing of the old sets
    assert (root / "efi" / act).read_bytes() == NEW_V3 and loads(root, act, store) == v3
    want = {
        "new": (NEW_V3, v3),
        "kept": (GOOD_V1, {"tools.raw": imgs.tools_v1.read_bytes(), "common.raw": imgs.common.read_bytes()}),
        "old-active": (BAD_V2, {"tools.raw": imgs.tools_v2.read_bytes(), "badonly.raw": imgs.bad_only.read_bytes()}),
    }[passive_is]
    if dropped:
        assert not (root / "efi" / pas).exists() and loads(root, pas, store) == {}
        assert not (root / "efi" / f / "passive.efi.extra.d").exists()
    else:
        assert ((root / "efi" / pas).read_bytes(), loads(root, pas, store)) == want
    for v in (252, 262):
        assert booted(root, store, v) == (NEW_V3, v3), v
    done = whole(root)
    capsys.readouterr()
    assert bk(root, str(new_uki(root)), "--extension", str(imgs.tools_v3), "--rebuild") == 0
    assert whole(root) == done
    assert "result: unchanged" in capsys.readouterr().out


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_rebuild_crash_at_every_step_boots_a_whole_set_and_a_rerun_completes(
    tmp_path: Path, imgs: Images, layout: str, store: str
) -> None:
    """Both broken (the node runs recovery): a cut at any step of the rebuild leaves every listed entry
    with its own whole set; the node API re-run (what ``bootkeeper repair`` calls) finishes the tree."""
    added = [("tools.raw", imgs.tools_v3)]
    v3 = {"tools.raw": imgs.tools_v3.read_bytes()}
    known = {
        GOOD_V1: {"tools.raw": imgs.tools_v1.read_bytes(), "common.raw": imgs.common.read_bytes()},
        NEW_V3: v3,
        BAD_V2: {"tools.raw": imgs.tools_v2.read_bytes(), "badonly.raw": imgs.bad_only.read_bytes()},
        RECOVERY: {},
        STATERESET: {},
    }
    steps: list[str] = []
    rebuild(make_node(tmp_path / "count", imgs, layout, store, passive="+0-3"), store, added, steps.append)
    ref = make_node(tmp_path / "whole", imgs, layout, store, passive="+0-3")
    rebuild(ref, store, added)
    expected = whole(ref)
    assert len(steps) > 10, steps
    from bootkeeper.config import load

    for k in range(len(steps)):
        root = make_node(tmp_path / f"crash-{k}", imgs, layout, store, passive="+0-3")
        with pytest.raises(Crash):
            rebuild(root, store, added, crash_at(k))
        invariant(root, store, known, {RECOVERY, NEW_V3})  # never a bad set, re-armed or not
        cfg = load([root / "c.yaml"])
        opts = node_up.UpgradeOptions(rebuild=True)
        out = node_up.upgrade(
            cfg, root, root / "efi", new_uki(root), (imgs.tools_v3,), opts, lambda _: None, lambda: "boot"
        )
        assert out.result in ("rebuilt", "unchanged"), (k, steps[k])
        assert whole(root) == expected, (k, steps[k])
        shutil.rmtree(root)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rebuild_through_the_node_api_says_rebuilt_and_records_it(tmp_path: Path, imgs: Images, layout: str) -> None:
    """What ``bootkeeper repair`` calls: ``upgrade(..., UpgradeOptions(rebuild=True), ...)``."""
    from bootkeeper.config import load

    root = make_node(tmp_path, imgs, layout, "esp", passive="+0-3")
    said: list[str] = []
    out = node_up.upgrade(
        load([root / "c.yaml"]), root, root / "efi", new_uki(root), (imgs.tools_v3,),
        node_up.UpgradeOptions(rebuild=True), said.append, lambda: "repair-boot",
    )  # fmt: skip
    assert out.result == "rebuilt" and out.refusal is None
    assert out.plan.replaced is not None and out.plan.replaced.entry.name.tries_left == 0
    fresh = [a for a in out.actions if a.endswith("(fresh tries)")]
    assert not any("recovery" in a or "statereset" in a for a in fresh), out.actions
    last = json.loads((root / "var/lib/bootkeeper/boots.jsonl").read_text().splitlines()[-1])
    assert (last["type"], last["result"], last["boot_id"]) == ("upgrade", "rebuilt", "repair-boot")
    assert last["from"]["os"]["VERSION_ID"] == "2" and last["to"]["os"]["VERSION_ID"] == "3"


def test_rebuild_dry_run_writes_nothing_and_says_what_follows(
    tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_node(tmp_path, imgs, "type1", "esp", passive="+0-3")
    before = whole(root)
    assert bk(root, str(new_uki(root)), "--extension", str(imgs.tools_v3), "--rebuild", "--dry-run") == 0
    out = capsys.readouterr().out
    assert whole(root) == before
    assert "would then: active, passive, recovery and statereset get fresh counters" in out
    assert out.rstrip().endswith("result: dry-run")


def test_rebuild_does_not_go_with_recovery(tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_node(tmp_path, imgs, "type2", "esp")
    before = whole(root)
    assert bk(root, str(new_uki(root)), "--rebuild", "--recovery") == 2
    err = capsys.readouterr().err
    assert "bootkeeper: error: --rebuild rebuilds active and passive; it does not go with --recovery" in err
    assert whole(root) == before


def test_rotate_refuses_a_uki_on_a_type1_esp_instead_of_a_wrong_path(
    tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, ``rotate new.efi`` on a Kairos (Type #1) ESP after a fallback wrote to EFI/Linux/active+3.efi,
    a folder that ESP does not have, and failed (exit 6, "cannot write ... (No such file or directory)")
    after it had remounted the ESP; now it refuses before any write and names the verb for it."""
    from bootkeeper.cli.main import main

    root = make_node(tmp_path, imgs, "type1", "esp")
    before = whole(root)
    with pytest.raises(SystemExit) as exc:
        main(["rotate", str(new_uki(root)), "--esp", str(root / "efi"), "--root", str(root)])
    err = capsys.readouterr().err
    assert exc.value.code == 3, err
    assert err.splitlines()[0] == (
        f"bootkeeper: error: {root}/new.efi: the active and passive entries are Type #1 (loader/entries/); "
        "rotate installs a UKI only as a Type #2 entry in EFI/Linux/; nothing was changed"
    )
    assert whole(root) == before
