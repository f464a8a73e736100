"""``bootkeeper upgrade``: the A/B set (UKI, .extra.d, entry) moves whole, the gate refuses before the first
write, and a crash at any step leaves the old OS with its extensions or the new OS with its own.

Real files on scratch ESPs in both layouts, real signed extension images (erofs, verity, PKCS#7)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bootkeeper.assess import bootloader
from bootkeeper.assess import upgrade as up
from bootkeeper.config import BootAssessment
from bootkeeper.esp import entries as entries_mod
from bootkeeper.esp import scratch
from bootkeeper.esp.entries import Role, extra_dir
from bootkeeper.esp.store import EspStore
from bootkeeper.sysext import deploy, signature
from helpers import extra_sets, renamed, signed_extension, tree, uki

KEY, CERT = signature.self_signed("ec", "upgrade test")
CFG = BootAssessment(tries=3, recovery_tries=3)
V1 = {"ID": "kairos", "VERSION_ID": "1"}
V2 = {"ID": "kairos", "VERSION_ID": "2"}


def osrel(role: str, version: str, image_version: str | None = None) -> str:
    """Type #2 order: A/B share IMAGE_ID (the version decides), recovery and statereset sort after."""
    image_id = "kairos" if role in ("active", "passive") else f"kairos-{role}"
    return f"ID=kairos\nIMAGE_ID={image_id}\nVERSION_ID={version}\nIMAGE_VERSION={image_version or version}\n"


class Images:
    def __init__(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        self.tools_v1 = signed_extension(d / "v1" / "tools.raw", KEY, CERT, V1)
        self.tools_v2 = signed_extension(d / "v2" / "tools.raw", KEY, CERT, V2)
        self.common = signed_extension(d / "common.raw", KEY, CERT)
        self.old = signed_extension(d / "old.raw", KEY, CERT, {"ID": "kairos", "VERSION_ID": "0"})
        self.tools_v1_for_v2 = signed_extension(d / "bad" / "extra.raw", KEY, CERT, V1)
        unsigned = d / "unsigned" / "tools.raw"
        unsigned.parent.mkdir()
        from bootkeeper.sysext import image

        data = image.inspect(self.tools_v2).found["root"].data
        raw = self.tools_v2.read_bytes()[data.offset : data.offset + data.size]
        unsigned.write_bytes(image.assemble(raw, None, None))
        self.unsigned = unsigned


@pytest.fixture(scope="module")
def imgs(tmp_path_factory: pytest.TempPathFactory) -> Images:
    return Images(tmp_path_factory.mktemp("imgs"))


OLD_ACTIVE = uki(osrel("active", "1"), tag="active v1")
OLD_PASSIVE = uki(osrel("passive", "0"), tag="passive v0")
RECOVERY = uki(osrel("recovery", "1"), tag="recovery")
STATERESET = uki(osrel("statereset", "1"), tag="statereset")
NEW = uki(osrel("active", "2"), tag="active v2")


def esp_type2(root: Path, imgs: Images) -> Path:
    """EFI/Linux/<role>+3.efi; active loads tools (v1) and common, passive loads old."""
    lx = root / "EFI" / "Linux"
    lx.mkdir(parents=True)
    (root / "loader").mkdir()
    (root / "loader" / "loader.conf").write_text("timeout 0\n")
    for role, data in (
        ("active", OLD_ACTIVE),
        ("passive", OLD_PASSIVE),
        ("recovery", RECOVERY),
        ("statereset", STATERESET),
    ):
        (lx / f"{role}+3.efi").write_bytes(data)
    _exts(lx, imgs)
    return root


def _exts(folder: Path, imgs: Images) -> None:
    (folder / "active.efi.extra.d").mkdir()
    shutil.copy(imgs.tools_v1, folder / "active.efi.extra.d" / "tools.raw")
    shutil.copy(imgs.common, folder / "active.efi.extra.d" / "common.raw")
    (folder / "passive.efi.extra.d").mkdir()
    shutil.copy(imgs.old, folder / "passive.efi.extra.d" / "old.raw")


def esp_type1(root: Path, imgs: Images) -> Path:
    """Kairos: loader/entries/<role>+3.conf with ``efi /EFI/kairos/<role>.efi``."""
    scratch.make(root, ukis=True)
    k = root / "EFI" / "kairos"
    for role, data in (
        ("active", OLD_ACTIVE),
        ("passive", OLD_PASSIVE),
        ("recovery", RECOVERY),
        ("statereset", STATERESET),
    ):
        (k / f"{role}.efi").write_bytes(data)
    _exts(k, imgs)
    return root


LAYOUTS = {"type1": (esp_type1, "EFI/kairos"), "type2": (esp_type2, "EFI/Linux")}


def config(tmp_path: Path) -> Path:
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = tmp_path / "c.pem"
    cert.write_bytes(CERT.public_bytes(Encoding.PEM))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sysext:\n  certificates: [/c.pem]\n  firmware: []\n  verity_dirs: []\n")  # under --root
    return cfg


def run(tmp_path: Path, esp: Path, *args: str) -> int:
    from bootkeeper.cli.main import main

    argv = ["upgrade", *args, "--esp", str(esp), "--config", str(config(tmp_path)), "--root", str(tmp_path)]
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def new_uki(tmp_path: Path, data: bytes = NEW) -> Path:
    p = tmp_path / "new.efi"
    p.write_bytes(data)
    return p


def booted(esp: Path, version: int = 252) -> tuple[bytes, dict[str, bytes]]:
    """The UKI the model boots next, and the extensions systemd-stub hands it."""
    store = EspStore(esp)
    c = bootloader.choose(store.snapshot(version))
    assert c is not None
    rel = up.uki_of(store, c.entry)
    assert rel is not None
    return (esp / rel).read_bytes(), extra_sets(esp, rel.rpartition("/")[0]).get(extra_dir(rel).rpartition("/")[2], {})


# --- the transaction ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_old_active_set_becomes_passive_and_new_set_is_active(tmp_path: Path, imgs: Images, layout: str) -> None:
    make, folder = LAYOUTS[layout]
    esp = make(tmp_path / "esp", imgs)
    rc = run(tmp_path, esp, str(new_uki(tmp_path)), "--extension", str(imgs.tools_v2))
    assert rc == 0
    sets = extra_sets(esp, folder)
    # the new active: common carried over, tools replaced by the --extension of the same name
    assert sets["active.efi.extra.d"] == {
        "common.raw": imgs.common.read_bytes(),
        "tools.raw": imgs.tools_v2.read_bytes(),
    }
    # the old OS as passive, with its own extensions; the old passive's are gone
    assert sets["passive.efi.extra.d"] == {
        "common.raw": imgs.common.read_bytes(),
        "tools.raw": imgs.tools_v1.read_bytes(),
    }
    files = tree(esp)
    assert OLD_PASSIVE not in files.values() and imgs.old.read_bytes() not in files.values()
    assert list(files.values()).count(RECOVERY) == 1
    if layout == "type2":
        assert files["EFI/Linux/active+3.efi"] == NEW and files["EFI/Linux/passive+3.efi"] == OLD_ACTIVE
    else:
        assert files["EFI/kairos/active.efi"] == NEW and files["EFI/kairos/passive.efi"] == OLD_ACTIVE
        a = files["loader/entries/active+3.conf"].decode()
        p = files["loader/entries/passive+3.conf"].decode()
        assert "efi /EFI/kairos/active.efi" in a and "sort-key 1-active" in a
        assert "efi /EFI/kairos/passive.efi" in p and "sort-key 2-passive" in p
        # the menu says what it is: the old active's title, with its role word changed
        assert "title Kairos active\n" in a and "title Kairos passive\n" in p
        assert sorted(n for n in files if n.startswith("loader/entries/")) == [
            f"loader/entries/{r}+3.conf" for r in ("active", "passive", "recovery", "statereset")
        ]
    assert not [n for n in files if ".bootkeeper" in n]
    assert booted(esp) == (NEW, sets["active.efi.extra.d"])
    # the fallback, once the new active is bad: the old OS with its own extensions
    store = EspStore(esp)
    snap = store.snapshot(252)
    bad = [renamed(e, e.name.bad_name() or e.file_name) if e.role is Role.ACTIVE else e for e in snap.entries]
    order = [e for e in entries_mod.menu_order(bad, 252) if e.state is not entries_mod.EntryState.BAD]
    assert order[0].role is Role.PASSIVE and (esp / (up.uki_of(store, order[0]) or "")).read_bytes() == OLD_ACTIVE


def test_type1_key_follows_the_systemd_boot_it_is_written_for(tmp_path: Path, imgs: Images) -> None:
    esp = esp_type1(tmp_path / "esp", imgs)
    rc = run(tmp_path, esp, str(new_uki(tmp_path)), "--extension", str(imgs.tools_v2), "--systemd-boot-version", "262")
    assert rc == 0
    for role in ("active", "passive"):
        text = (esp / f"loader/entries/{role}+3.conf").read_text()
        assert f"uki /EFI/kairos/{role}.efi" in text and "\nefi " not in text


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_recovery_replaces_the_recovery_set_only(tmp_path: Path, imgs: Images, layout: str) -> None:
    make, folder = LAYOUTS[layout]
    esp = make(tmp_path / "esp", imgs)
    new = uki(osrel("recovery", "2"), tag="recovery v2")
    before = tree(esp)
    rc = run(tmp_path, esp, str(new_uki(tmp_path, new)), "--recovery", "--extension", str(imgs.common))
    assert rc == 0
    after = tree(esp)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    rec = "EFI/Linux/recovery+3.efi" if layout == "type2" else "EFI/kairos/recovery.efi"
    assert after[rec] == new
    expect = {rec, f"{folder}/recovery.efi.extra.d/common.raw"}
    if layout == "type1":
        text = after["loader/entries/recovery+3.conf"].decode()  # rewritten, the same text: fresh counter
        assert "sort-key 3-recovery" in text and "efi /EFI/kairos/recovery.efi" in text
    assert changed == expect
    assert booted(esp)[0] == OLD_ACTIVE


# --- the gate --------------------------------------------------------------------------------


def _refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], esp: Path, *args: str) -> str:
    before = tree(esp)
    rc = run(tmp_path, esp, *args)
    err = capsys.readouterr().err
    assert rc == 1, err
    assert tree(esp) == before  # byte-identical, no folder or temporary left
    assert sorted(p.relative_to(esp) for p in esp.rglob("*")) == sorted(Path(k) for k in _all(esp))
    line = [x for x in err.splitlines() if x.startswith("bootkeeper: error: ")]
    assert len(line) == 1 and "nothing was changed" in line[0], err
    return line[0]


def _all(esp: Path) -> list[str]:
    return [str(p.relative_to(esp)) for p in esp.rglob("*")]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_extension_built_for_the_old_os_is_refused(
    tmp_path: Path, imgs: Images, layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    esp = LAYOUTS[layout][0](tmp_path / "esp", imgs)
    # the carried tools.raw was built for VERSION_ID=1; the new UKI's .osrel says 2
    line = _refused(tmp_path, capsys, esp, str(new_uki(tmp_path)))
    assert "tools.raw: extension-release: VERSION_ID=1, the host has 2" in line
    assert "common.raw" not in line  # ID=_any fits: one reason per extension at fault


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_symlinked_image_in_extra_d_is_unreadable_input(
    tmp_path: Path, imgs: Images, layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """issue 27 (Also): an image that is a symbolic link inside the old active's .extra.d is never followed;
    before, the bare ELOOP reached the CLI as a failed write (exit 6, "Too many levels of symbolic links"),
    now it is unreadable input (exit 7) naming the file, and the ESP is as it was."""
    esp, folder = LAYOUTS[layout][0](tmp_path / "esp", imgs), LAYOUTS[layout][1]
    link = esp / folder / "active.efi.extra.d" / "common.raw"
    link.unlink()
    link.symlink_to(imgs.common)
    before = tree(esp)
    rc = run(tmp_path, esp, str(new_uki(tmp_path)))
    err = capsys.readouterr().err
    assert rc == 7, err
    assert err.splitlines() == [f"bootkeeper: error: {link}: a symbolic link; not followed"]
    assert tree(esp) == before


def test_each_failing_extension_is_named_once(tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]) -> None:
    esp = esp_type2(tmp_path / "esp", imgs)
    args = [str(new_uki(tmp_path)), "--extension", str(imgs.unsigned), "--extension", str(imgs.tools_v1_for_v2)]
    line = _refused(tmp_path, capsys, esp, *args)
    assert line.count("tools.raw: ") == 1 and "tools.raw: root" in line  # the unsigned one replaced the carried
    assert "signed" in line.split("tools.raw: ", 1)[1].split(";")[0]
    assert "extra.raw: extension-release: VERSION_ID=1, the host has 2" in line


@pytest.mark.parametrize("force", [False, True])
def test_a_new_uki_that_is_no_pe_is_refused_even_with_force(
    tmp_path: Path, imgs: Images, force: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    esp = esp_type2(tmp_path / "esp", imgs)
    bad = new_uki(tmp_path, b"#!/bin/sh\necho not a UKI\n")
    line = _refused(tmp_path, capsys, esp, str(bad), "--extension", str(imgs.tools_v2), *(["--force"] if force else []))
    assert f"{bad}: is not a UKI" in line
    no_linux = new_uki(tmp_path, uki(osrel("active", "2"), linux=False))
    line = _refused(tmp_path, capsys, esp, str(no_linux), "--extension", str(imgs.tools_v2))
    assert "no .linux section" in line


def test_type2_osrel_that_sorts_the_new_active_after_passive_is_refused(
    tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]
) -> None:
    esp = esp_type2(tmp_path / "esp", imgs)
    older = uki(osrel("active", "2", image_version="0.9"), tag="v2 with an older IMAGE_VERSION")
    line = _refused(tmp_path, capsys, esp, str(new_uki(tmp_path, older)), "--extension", str(imgs.tools_v2))
    assert "EFI/Linux/passive+3.efi (passive: IMAGE_ID=kairos, ID=kairos, IMAGE_VERSION=1" in line
    assert "VERSION_ID=1) would boot before EFI/Linux/active+3.efi (active:" in line
    assert "IMAGE_VERSION=0.9" in line and "cannot rewrite them" in line


def test_force_overrides_the_extension_gate_and_says_so(
    tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]
) -> None:
    esp = esp_type2(tmp_path / "esp", imgs)
    rc = run(tmp_path, esp, str(new_uki(tmp_path)), "--force", "--json")
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "bootkeeper: warning: upgrading with --force although: tools.raw: extension-release: VERSION_ID=1" in out.err
    doc = json.loads(out.out)
    assert doc["gate"]["verdict"] == "forced" and doc["gate"]["forced"] is True
    assert doc["result"] == "upgraded"
    assert (esp / "EFI/Linux/active.efi.extra.d/tools.raw").read_bytes() == imgs.tools_v1.read_bytes()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_dry_run_prints_plan_and_gate_and_writes_nothing(
    tmp_path: Path, imgs: Images, layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    esp = LAYOUTS[layout][0](tmp_path / "esp", imgs)
    before, names = tree(esp), _all(esp)
    rc = run(tmp_path, esp, str(new_uki(tmp_path)), "--extension", str(imgs.tools_v2), "--dry-run")
    out = capsys.readouterr().out
    assert rc == 0
    assert tree(esp) == before and _all(esp) == names
    assert "gate: tools.raw (--extension): ok, signed by" in out
    assert "gate: common.raw (carried): ok" in out
    assert "would rename" in out and out.rstrip().endswith("result: dry-run")


def test_json_shape(tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]) -> None:
    esp = esp_type2(tmp_path / "esp", imgs)
    before = tree(esp)
    rc = run(tmp_path, esp, str(new_uki(tmp_path)), "--json", "--dry-run")
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1 and tree(esp) == before
    assert set(doc) == {"layout", "role", "actions", "gate", "warnings", "left_behind", "store", "history", "result"}
    assert doc["store"] is None and doc["left_behind"] == [] and doc["history"] is None
    assert doc["result"] == "refused" and doc["layout"] == "type2" and doc["role"] == "active"
    gate = doc["gate"]
    assert gate["verdict"] == "refused" and gate["forced"] is False
    assert gate["uki"]["ok"] is True and gate["uki"]["osrel"]["VERSION_ID"] == "2"
    by_name = {x["name"]: x for x in gate["extensions"]}
    assert by_name["tools.raw"]["verdict"] == "refused" and by_name["tools.raw"]["carried"] is True
    assert by_name["tools.raw"]["reasons"] == ["extension-release: VERSION_ID=1, the host has 2"]
    assert by_name["common.raw"] == {**by_name["common.raw"], "verdict": "ok", "reasons": []}
    assert gate["order"] == {"ok": True, "order": ["active", "passive", "recovery", "statereset"], "reasons": []}
    assert all(isinstance(a, str) for a in doc["actions"]) and doc["actions"]


def test_rerun_after_completion_changes_nothing(
    tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]
) -> None:
    esp = esp_type2(tmp_path / "esp", imgs)
    assert run(tmp_path, esp, str(new_uki(tmp_path)), "--extension", str(imgs.tools_v2)) == 0
    done = tree(esp)
    capsys.readouterr()
    assert run(tmp_path, esp, str(new_uki(tmp_path)), "--extension", str(imgs.tools_v2)) == 0
    assert "new.efi is the active UKI already: nothing to do" in capsys.readouterr().out
    assert tree(esp) == done  # the old OS is still the fallback


# --- crash at every step ----------------------------------------------------------------------


class Crash(OSError):
    pass


def _apply(esp: Path, new: Path, added: list[tuple[str, Path]], fault: object = None) -> None:
    store = EspStore(esp, fault=fault)  # type: ignore[arg-type]

    def make(s: object) -> up.UpgradePlan:
        return up.plan(store, s, CFG, new, added, deploy.image_stem)  # type: ignore[arg-type]

    up.apply(store, make, make(store.snapshot()))


def _invariant(esp: Path, known: dict[bytes, dict[str, bytes]]) -> None:
    boots_a_whole_set(esp, known, OLD_ACTIVE, NEW)


def boots_a_whole_set(esp: Path, known: dict[bytes, dict[str, bytes]], old: bytes, new: bytes) -> None:
    """The model (systemd-boot 252 and 262) boots the ``old`` or the ``new`` OS with its own extensions,
    and no listed entry runs a UKI whose extension set is another's or half there."""
    store = EspStore(esp)
    for v in (252, 262):
        data, exts = booted(esp, v)
        assert data in (old, new), f"{v} boots neither the old nor the new OS"
        assert exts == known[data], f"{v}: the OS boots with another extension set: {sorted(exts)}"
        for e in store.snapshot(v).entries:
            rel = up.uki_of(store, e)
            if not e.listed or e.role is None or rel is None:
                continue
            b = (esp / rel).read_bytes()
            assert b in known, f"{e.path}: an unknown UKI"
            got = extra_sets(esp, rel.rpartition("/")[0]).get(extra_dir(rel).rpartition("/")[2], {})
            assert got == known[b], f"{e.path}: its extension set is half there: {sorted(got)}"


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_crash_at_every_step_boots_old_or_new_and_a_rerun_completes(
    tmp_path: Path, imgs: Images, layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make = LAYOUTS[layout][0]
    new = new_uki(tmp_path)
    added = [("tools.raw", imgs.tools_v2)]
    xa = {"common.raw": imgs.common.read_bytes(), "tools.raw": imgs.tools_v1.read_bytes()}
    xn = {"common.raw": imgs.common.read_bytes(), "tools.raw": imgs.tools_v2.read_bytes()}
    known = {OLD_ACTIVE: xa, NEW: xn, OLD_PASSIVE: {"old.raw": imgs.old.read_bytes()}, RECOVERY: {}, STATERESET: {}}
    steps: list[str] = []
    _apply(make(tmp_path / "count", imgs), new, added, steps.append)
    whole = make(tmp_path / "whole", imgs)
    _apply(whole, new, added)
    expected = tree(whole)
    assert len(steps) > 20, steps
    for k in range(len(steps)):
        esp = make(tmp_path / f"crash-{k}", imgs)

        def fault(name: str, k: int = k, count: list[int] = [0]) -> None:  # noqa: B006
            count[0] += 1
            if count[0] - 1 == k:
                raise Crash(f"injected power loss at {name}")

        with pytest.raises(Crash):
            _apply(esp, new, added, fault)
        _invariant(esp, known)
        rc = run(tmp_path, esp, str(new), "--extension", str(imgs.tools_v2))
        err = capsys.readouterr().err
        assert rc == 0, (k, steps[k], err)
        assert tree(esp) == expected, (k, steps[k])
        assert not [p for p in esp.rglob(".bootkeeper*")], (k, steps[k])
        shutil.rmtree(esp)


@pytest.mark.root
@pytest.mark.integration
def test_one_space_check_before_the_first_write(tmp_path: Path, imgs: Images) -> None:
    """A real small ESP (tmpfs of 2 MiB in a private mount namespace): a new UKI that does not fit with the
    staged copies and the 1 MiB margin is refused with every file as it was; a small one goes in."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is missing; scripts/setup-test-deps.sh installs it")
    src = esp_type2(tmp_path / "src", imgs)
    big = tmp_path / "big.efi"
    big.write_bytes(uki(osrel("active", "2"), tag="x" * (1 << 20)))
    small = new_uki(tmp_path)
    cfg = config(tmp_path)
    esp = tmp_path / "esp"
    esp.mkdir()
    bk = f"{sys.executable} -m bootkeeper upgrade --esp {esp} --config {cfg} --root {tmp_path}"
    bk += f" --extension {imgs.tools_v2}"
    listing = f"(cd {esp} && find . -type f | sort | xargs sha256sum)"
    script = f"""
mount -t tmpfs -o size=2m tmpfs {esp}
cp -a {src}/. {esp}/
{listing} > {tmp_path}/before
{bk} {big}; echo "rc=$?"
{listing} > {tmp_path}/after
{bk} {small}; echo "rc=$?"
"""
    p = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True, text=True, check=False
    )
    assert [x for x in p.stdout.splitlines() if x.startswith("rc=")] == ["rc=6", "rc=0"], p.stdout + p.stderr
    assert "not enough room for the upgrade: it needs" in p.stderr and "nothing was changed" in p.stderr
    assert (tmp_path / "before").read_text() == (tmp_path / "after").read_text()
    assert (tmp_path / "before").read_text().count("\n") == 8


def test_an_extension_rewritten_after_the_gate_never_lands(
    tmp_path: Path, imgs: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The moment validation returns, the --extension file is rewritten with the unsigned image: the ESP
    gets the bytes the gate judged (a private copy), never the rewritten ones."""
    from bootkeeper.sysext import image

    esp = esp_type2(tmp_path / "esp", imgs)
    src = tmp_path / "given" / "tools.raw"
    src.parent.mkdir()
    shutil.copy(imgs.tools_v2, src)
    real = image.validate

    def validate_then_rewrite(path: Path, *args: object, **kwargs: object) -> image.Validation:
        v = real(path, *args, **kwargs)  # type: ignore[arg-type]
        src.write_bytes(imgs.unsigned.read_bytes())
        return v

    monkeypatch.setattr(image, "validate", validate_then_rewrite)
    assert run(tmp_path, esp, str(new_uki(tmp_path)), "--extension", str(src)) == 0
    assert src.read_bytes() == imgs.unsigned.read_bytes()  # the rewrite happened
    assert (esp / "EFI/Linux/active.efi.extra.d/tools.raw").read_bytes() == imgs.tools_v2.read_bytes()


def test_a_read_only_old_active_is_passive_with_its_counter_free(tmp_path: Path, imgs: Images) -> None:
    """No systemd-boot renames a file with the FAT read-only attribute: moved to passive as it was, its
    tries would never run down."""
    esp = esp_type2(tmp_path / "esp", imgs)
    (esp / "EFI/Linux/active+3.efi").chmod(0o444)
    assert run(tmp_path, esp, str(new_uki(tmp_path)), "--extension", str(imgs.tools_v2)) == 0
    assert (esp / "EFI/Linux/passive+3.efi").stat().st_mode & 0o200
    assert not EspStore(esp).snapshot(252).entries[0].read_only


def test_sysext_entries_rules_decide_what_the_new_active_carries(
    tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]
) -> None:
    """common.raw is given to passive by a rule: it stays with the old OS (now passive) only."""
    esp = esp_type2(tmp_path / "esp", imgs)
    cfg = config(tmp_path)
    cfg.write_text(cfg.read_text() + '  entries:\n    passive: ["common"]\n')
    from bootkeeper.cli.main import main

    argv = ["upgrade", str(new_uki(tmp_path)), "--extension", str(imgs.tools_v2), "--json"]
    main([*argv, "--esp", str(esp), "--config", str(cfg), "--root", str(tmp_path)])
    captured = capsys.readouterr()
    assert json.loads(captured.out)["left_behind"] == ["common.raw"]
    assert "common.raw: not carried to the new active" in captured.err
    sets = extra_sets(esp, "EFI/Linux")
    assert set(sets["active.efi.extra.d"]) == {"tools.raw"}
    assert set(sets["passive.efi.extra.d"]) == {"tools.raw", "common.raw"}


def test_the_gate_names_the_files_given_never_its_private_copies(
    tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gate judges private copies of the new UKI and of each --extension; what it says names the
    files the operator gave. Before the messages were built from the names to show (issue 28 item 2),
    each reason still carried the copy's temporary path ("(at /tmp/bootkeeper-upgrade-.../0/bad.raw)"),
    a folder gone by the time anyone reads it."""
    esp = esp_type2(tmp_path / "esp", imgs)
    bad = tmp_path / "bad.raw"
    bad.write_bytes(b"not a gpt" * 100)
    rc = run(tmp_path, esp, str(new_uki(tmp_path)), "--extension", str(bad), "--dry-run")
    out = capsys.readouterr()
    said = out.out + out.err
    assert rc == 1, said
    assert not re.findall(r"bootkeeper-upgrade-\w+/\d+/", said)  # the private copies' folder
    assert f"bad.raw (at {bad}): 900 bytes, too small for a GPT" in said
