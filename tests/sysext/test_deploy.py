"""sysext install on bad ground: no room, a read-only ESP, hostile names, symlinks, a crash at
every step of the copy; and which UKIs get which folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bootkeeper.errors import UsageError, WriteError
from bootkeeper.esp import extra, scratch
from bootkeeper.esp.entries import Role
from bootkeeper.esp.store import SPACE_MARGIN, EspStore
from bootkeeper.sysext import deploy, image, policy, signature
from helpers import bk, tree

KEY, CERT = signature.self_signed("ec", "deploy test")


@pytest.fixture(scope="module")
def img(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("img")
    (d / "t/usr/bin").mkdir(parents=True)
    (d / "t/usr/bin/x").write_bytes(os.urandom(600_000))
    return image.build(d / "t", d / "x.sysext.raw", KEY, CERT)


def _check(staged: Path) -> image.Validation:
    """The validation install runs on the staged copy (as the CLI does, without the full data pass)."""
    return image.validate(staged, policy.parse(policy.ENFORCED_DEFAULT), [CERT], name="x.sysext.raw")


def _esp(root: Path) -> Path:
    return scratch.make(root, roles=(Role.ACTIVE, Role.PASSIVE, Role.RECOVERY), ukis=True)


def test_targets_strip_the_counter_and_cover_both_entry_types(tmp_path: Path) -> None:
    esp = _esp(tmp_path / "esp")
    assert (esp / "loader/entries/active+3.conf").is_file()  # a counted Type #1 entry naming active.efi
    (esp / "EFI/Linux").mkdir(parents=True)
    (esp / "EFI/Linux/statereset+2-1.efi").write_bytes(scratch.stand_in_uki(((b".osrel", b"ID=kairos\n"),)))
    store = EspStore(esp)
    got = {(t.entry, t.extra_dir) for t in extra.targets(store.snapshot(), store)}
    assert got == {
        ("active", "EFI/kairos/active.efi.extra.d"),
        ("passive", "EFI/kairos/passive.efi.extra.d"),
        ("recovery", "EFI/kairos/recovery.efi.extra.d"),
        ("statereset", "EFI/Linux/statereset.efi.extra.d"),
    }


def test_rules_choose_entries_and_recovery_only_when_named(tmp_path: Path) -> None:
    esp = _esp(tmp_path / "esp")
    store = EspStore(esp)
    ts = extra.targets(store.snapshot(), store)
    rules = (("active", (r"k3s-v1\.30.*",)), ("recovery", ("debug",)))
    pick = {n: [t.entry for t in deploy.select(n, ts, rules, ())[0]] for n in ("k3s-v1.30.2.raw", "x.raw", "debug.raw")}
    assert pick == {"k3s-v1.30.2.raw": ["active"], "x.raw": ["active", "passive"], "debug.raw": ["recovery"]}
    # full match: a rule 'k3s' does not take 'k3s-extra'
    assert [t.entry for t in deploy.select("k3s-extra.raw", ts, (("recovery", ("k3s",)),), ())[0]] == [
        "active",
        "passive",
    ]
    with pytest.raises(UsageError, match="no UKI entry named nope"):
        deploy.select("x.raw", ts, (), ("nope",))


@pytest.mark.parametrize("name", ["../x.raw", "a/b.raw", "..raw", ".hidden.raw", "x.conf", "x.confext.raw", ""])
def test_hostile_names_refused_before_anything(tmp_path: Path, img: Path, name: str) -> None:
    esp = _esp(tmp_path / "esp")
    before = tree(esp)
    r = bk("sysext", "install", str(img), "--name", name, "--esp", str(esp), "--root", str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("bootkeeper: error: image name") and r.stderr.count("\n") == 1
    assert tree(esp) == before


def test_symlinked_extra_dir_is_refused(tmp_path: Path, img: Path) -> None:
    esp = _esp(tmp_path / "esp")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (esp / "EFI/kairos/active.efi.extra.d").symlink_to(elsewhere)
    cert = tmp_path / "c.pem"
    cert.write_bytes(signature_pem())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"sysext:\n  certificates: [{cert}]\n  firmware: []\n")
    r = bk("sysext", "install", str(img), "--esp", str(esp), "--config", str(cfg))
    assert r.returncode == 6, r.stderr
    assert "is a symbolic link; refusing to write through it" in r.stderr
    assert list(elsewhere.iterdir()) == []
    assert not (esp / "EFI/kairos/passive.efi.extra.d").exists()


def signature_pem() -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return bytes(CERT.public_bytes(Encoding.PEM))


def test_crash_at_every_step_leaves_old_or_new(tmp_path: Path, img: Path) -> None:
    """Fault injection at each mutating step: every .raw on the ESP is either absent or complete,
    and no temporary file is left that a loader would pick up."""
    steps: list[str] = []
    esp0 = _esp(tmp_path / "probe")
    s0 = EspStore(esp0, fault=steps.append)
    ts = extra.targets(s0.snapshot(), s0)
    chosen = [t for t in ts if t.entry in ("active", "passive")]
    assert deploy.install(s0, img, "x.sysext.raw", chosen, "test", _check)[1].ok
    assert any(s.startswith("rename:") for s in steps)
    want = img.read_bytes()
    first_rename = next(i for i, s in enumerate(steps) if s.startswith("rename:"))
    for i, step in enumerate(steps):
        esp = _esp(tmp_path / f"e{i}")

        calls: list[str] = []

        def fault(name: str, at: int = i, calls: list[str] = calls) -> None:  # by index: temp names vary
            calls.append(name)
            if len(calls) == at + 1:
                raise OSError(5, f"injected at {name}")

        store = EspStore(esp, fault=fault)
        ts = [t for t in extra.targets(store.snapshot(), store) if t.entry in ("active", "passive")]
        with pytest.raises(WriteError, match="injected"):
            deploy.install(store, img, "x.sysext.raw", ts, "test", _check)
        for p in esp.rglob("*"):
            assert not p.name.startswith(".bootkeeper-"), f"temporary left after a crash at {step}"
            if p.suffix == ".raw":
                assert p.read_bytes() == want, f"partial image after a crash at {step}"
        placed = list(esp.rglob("*.raw"))
        if i <= first_rename:  # nothing is renamed into place before every copy is complete
            assert placed == [], f"an image was placed before all copies were complete (crash at {step})"


@pytest.mark.root
@pytest.mark.integration
def test_full_and_read_only_esp(tmp_path: Path, img: Path) -> None:
    """Real small and read-only mounts (tmpfs in a private mount namespace)."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is missing; scripts/setup-test-deps.sh installs it")
    src = _esp(tmp_path / "src")
    cert = tmp_path / "c.pem"
    cert.write_bytes(signature_pem())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"sysext:\n  certificates: [{cert}]\n  firmware: []\n")
    small, ro = tmp_path / "small", tmp_path / "ro"
    small.mkdir()
    ro.mkdir()
    install = f"{sys.executable} -m bootkeeper sysext install {img} --config {cfg}"
    script = f"""
mount -t tmpfs -o size=1m tmpfs {small}
cp -a {src}/. {small}/
{install} --esp {small}; echo "rc=$?"
find {small} -name '*.raw' -o -name '.bootkeeper-*'
mount -t tmpfs -o size=8m tmpfs {ro}
cp -a {src}/. {ro}/
mount -o remount,ro {ro}
{install} --esp {ro}; echo "rc=$?"
find {ro} -name '*.raw' | sort
grep -w {ro} /proc/self/mounts
"""
    p = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True, text=True, check=False
    )
    out = p.stdout.splitlines()
    assert [x for x in out if x.startswith("rc=")] == ["rc=6", "rc=0"], p.stdout + p.stderr
    assert "not enough room for x.sysext.raw: 2 copies" in p.stderr and "nothing was changed" in p.stderr
    assert not [x for x in out if x.startswith(str(small))]  # nothing written on the full ESP
    raws = [x for x in out if x.startswith(str(ro)) and x.endswith(".raw")]
    assert raws == [f"{ro}/EFI/kairos/{e}.efi.extra.d/x.sysext.raw" for e in ("active", "passive")]
    mount = [x for x in out if x.startswith("tmpfs ")][-1]
    assert mount.split()[3].startswith("ro")  # remounted read-only again


@pytest.fixture(scope="module")
def unsigned(img: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file system of the signed image, re-assembled without verity and signature."""
    data = image.inspect(img).found["root"].data
    out = tmp_path_factory.mktemp("unsigned") / "x.sysext.raw"
    out.write_bytes(image.assemble(img.read_bytes()[data.offset : data.offset + data.size], None, None))
    return out


def _config(tmp_path: Path) -> Path:
    cert = tmp_path / "c.pem"
    cert.write_bytes(signature_pem())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"sysext:\n  certificates: [{cert}]\n  firmware: []\n")
    return cfg


def _main(argv: list[str]) -> int:
    from bootkeeper.cli.main import main

    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.parametrize("how", ["rename", "rewrite"])
def test_source_swapped_after_validation_never_lands(
    tmp_path: Path, img: Path, unsigned: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real race, made deterministic: the moment validation returns, an unsigned image is renamed
    over the source path (or written into the source file itself). Before, install validated the
    source and then opened it again: the unsigned image was installed with exit 0."""
    esp = _esp(tmp_path / "esp")
    src = tmp_path / "x.sysext.raw"
    shutil.copy(img, src)
    real_validate = image.validate
    judged: list[Path] = []

    def validate_then_swap(path: Path, *args: object, **kwargs: object) -> image.Validation:
        v = real_validate(path, *args, **kwargs)  # type: ignore[arg-type]
        if not judged:
            if how == "rename":
                shutil.copy(unsigned, tmp_path / "evil")
                os.rename(tmp_path / "evil", src)
            else:
                src.write_bytes(unsigned.read_bytes())  # same inode
        judged.append(path)
        return v

    monkeypatch.setattr(image, "validate", validate_then_swap)
    rc = _main(["sysext", "install", str(src), "--esp", str(esp), "--config", str(_config(tmp_path))])
    assert rc == 0
    assert src.read_bytes() == unsigned.read_bytes()  # the swap happened
    for e in ("active", "passive"):
        landed = (esp / f"EFI/kairos/{e}.efi.extra.d/x.sysext.raw").read_bytes()
        evil = landed == unsigned.read_bytes()
        assert not evil, f"the unsigned image was installed for {e}"
        assert landed == img.read_bytes()
    assert len(judged) == 1 and judged[0] != src  # the staged copy was judged, once
    assert not [p for p in esp.rglob(".bootkeeper-*")]


def test_unsigned_image_is_refused_after_staging_and_nothing_is_left(
    tmp_path: Path, unsigned: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    esp = _esp(tmp_path / "esp")
    before, dirs = tree(esp), _dirs(esp)
    rc = _main(["sysext", "install", str(unsigned), "--esp", str(esp), "--config", str(_config(tmp_path))])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.startswith(f"bootkeeper: error: {unsigned}: refused under policy root=signed+absent:usr=signed+absent")
    assert "nothing was installed" in err
    # the hint says where trust comes from, not only --force (issue 15, item 8)
    hint = next(ln for ln in err.splitlines() if ln.startswith("hint: "))
    assert "sysext.certificates" in hint and "verity.d folders" in hint and "--force" in hint, hint
    assert tree(esp) == before and _dirs(esp) == dirs  # not even the empty .extra.d folders stay
    assert not list(esp.rglob("*.raw")) and not list(esp.rglob(".bootkeeper-*"))


def _kill_mid_install(esp: Path, src: Path, cfg: Path) -> None:
    """A real ``bootkeeper sysext install`` stopped (step-pause hook) after its first full copy to a
    temporary and before the fsync, then killed with SIGKILL."""
    env = {**os.environ, "BOOTKEEPER_TEST_STEP_PAUSE": "5"}  # a pause at each step; killed in the second
    cmd = [sys.executable, "-m", "bootkeeper", "sysext", "install", str(src), "--esp", str(esp), "--config", str(cfg)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("bootkeeper: test pause before fsync:x.sysext.raw"):
                break
            if line.startswith("bootkeeper: test pause before "):  # mkdir, write: skip ahead
                continue
            pytest.fail(f"unexpected output before the copy: {line}")
        else:
            pytest.fail(f"install ended before the fsync pause (rc {proc.wait()})")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.root
@pytest.mark.integration
def test_kill_9_mid_install_leaves_a_temporary_the_next_install_removes(tmp_path: Path) -> None:
    """20 kills left 1.3 GB of temporaries on the ESP and later installs were refused for space.
    Now the next write verb removes them under the ESP lock, and install's space check counts the
    space they free: on a tmpfs that holds two copies plus the margin but not a third, the install
    after the kill succeeds (before: exit 6, 'not enough room')."""
    d = tmp_path / "big"
    (d / "t/usr/bin").mkdir(parents=True)
    (d / "t/usr/bin/x").write_bytes(os.urandom(3 << 20))
    big = image.build(d / "t", d / "x.sysext.raw", KEY, CERT)
    size = big.stat().st_size
    esp = _esp(tmp_path / "esp")
    for e in ("active", "passive"):  # as after an earlier install: the kill comes at the first copy
        (esp / f"EFI/kairos/{e}.efi.extra.d").mkdir()
    cfg = _config(tmp_path)
    _kill_mid_install(esp, big, cfg)
    left = [p for p in esp.rglob("*") if p.name.startswith(".bootkeeper-")]
    assert [p.parent.name for p in left] == ["active.efi.extra.d"] and left[0].stat().st_size == size
    assert not list(esp.rglob("*.raw"))

    mnt = tmp_path / "small"
    mnt.mkdir()
    room_kib = (2 * size + SPACE_MARGIN + (1 << 20)) // 1024  # two copies and the margin, not three
    script = f"""
mount -t tmpfs -o size={room_kib}k tmpfs {mnt}
cp -a {esp}/. {mnt}/
{sys.executable} -m bootkeeper sysext install {big} --esp {mnt} --config {cfg}; echo "rc=$?"
find {mnt} -name '.bootkeeper-*'
cmp {big} {mnt}/EFI/kairos/active.efi.extra.d/x.sysext.raw && echo "active same"
cmp {big} {mnt}/EFI/kairos/passive.efi.extra.d/x.sysext.raw && echo "passive same"
"""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is missing; scripts/setup-test-deps.sh installs it")
    p = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True, text=True, check=False
    )
    out = p.stdout.splitlines()
    assert out[-3:] == ["rc=0", "active same", "passive same"], p.stdout + p.stderr
    rel = left[0].relative_to(esp).as_posix()
    assert f"bootkeeper: removed {rel}, a temporary left by an interrupted bootkeeper run" in p.stderr


# --- each image against the OS of each target entry ---------------------------------------------------

ARCH = image.host_architecture()


class _Images(dict[str, Path]):
    """Signed images named k3s.raw, one per extension-release text, built on first use."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        super().__init__()
        self.factory = factory

    def __missing__(self, text: str) -> Path:
        d = self.factory.mktemp("k3s")
        rel = d / "t/usr/lib/extension-release.d"
        rel.mkdir(parents=True)
        (rel / "extension-release.k3s").write_text(text)
        (d / "t/usr/bin").mkdir(parents=True)
        (d / "t/usr/bin/k3s").write_bytes(os.urandom(20_000))
        self[text] = image.build(d / "t", d / "k3s.raw", KEY, CERT)
        return self[text]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> _Images:
    return _Images(tmp_path_factory)


def _osrel(esp: Path, uki: str, text: str) -> None:
    (esp / uki).write_bytes(scratch.stand_in_uki(((b".osrel", text.encode()),)))


def _node(tmp_path: Path, os_release: str | None = None) -> list[str]:
    """--config and --root for a node tree at tmp_path/root: the trusted certificate inside it
    (sysext.certificates are paths under ROOT), and its os-release when given."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "c.pem").write_bytes(signature_pem())
    if os_release is not None:
        (root / "etc/os-release").write_text(os_release)
    cfg = tmp_path / "node.yaml"
    cfg.write_text("sysext:\n  certificates: [/c.pem]\n  firmware: []\n")
    return ["--config", str(cfg), "--root", str(root)]


def _dirs(esp: Path) -> set[str]:
    return {str(p.relative_to(esp)) for p in esp.rglob("*") if p.is_dir()}


def _ab_esp(root: Path, active: str, passive: str) -> Path:
    esp = _esp(root)
    _osrel(esp, "EFI/kairos/active.efi", active)
    _osrel(esp, "EFI/kairos/passive.efi", passive)
    return esp


V2 = "ID=kairos\nVERSION_ID=2\n"


@pytest.mark.parametrize(
    ("ext", "osrel", "built_for"),
    [
        ("ID=kairos\nVERSION_ID=2\n", V2, None),
        ("ID=kairos\nVERSION_ID=1\n", V2, "VERSION_ID=1"),
        (f"ID=kairos\nVERSION_ID=1\nARCHITECTURE={ARCH}\n", V2, "VERSION_ID=1"),
        ("ID=kairos\nVERSION_ID=1\nARCHITECTURE=_any\n", V2, "VERSION_ID=1"),
        ("ID=debian\nVERSION_ID=12\n", "ID=kairos\nID_LIKE=debian ubuntu\nVERSION_ID=12\n", None),
        ("ID=fedora\nVERSION_ID=12\n", "ID=kairos\nID_LIKE=debian ubuntu\nVERSION_ID=12\n", "ID=fedora"),
        ("ID=kairos\nVERSION_ID=1\nSYSEXT_LEVEL=1.0\n", "ID=kairos\nVERSION_ID=2\nSYSEXT_LEVEL=1.0\n", None),
        ("ID=kairos\nSYSEXT_LEVEL=1.0\n", "ID=kairos\nVERSION_ID=2\nSYSEXT_LEVEL=2.0\n", "SYSEXT_LEVEL=1.0"),
        ("ID=kairos\n", V2, ""),  # no VERSION_ID, no SYSEXT_LEVEL: systemd-sysext refuses it on a versioned OS
        ("ID=_any\n", V2, None),
        ("ID=kairos\n", "ID=kairos\n", None),  # a rolling OS (no VERSION_ID): ID alone decides
    ],
)
def test_install_judges_the_image_against_the_os_each_entry_boots(
    tmp_path: Path, built: _Images, capsys: pytest.CaptureFixture[str], ext: str, osrel: str, built_for: str
) -> None:
    """The staged copy's extension-release against the .osrel of the UKI each target entry runs,
    as systemd-sysext judges it at boot. Before: no OS was consulted and every case installed."""
    esp = _ab_esp(tmp_path / "esp", osrel, osrel)
    before, dirs = tree(esp), _dirs(esp)
    rc = _main(["sysext", "install", str(built[ext]), "--esp", str(esp), *_node(tmp_path)])
    err = capsys.readouterr().err
    if built_for is None:
        assert rc == 0, err
        assert sorted(p.relative_to(esp).as_posix() for p in esp.rglob("*.raw")) == [
            "EFI/kairos/active.efi.extra.d/k3s.raw",
            "EFI/kairos/passive.efi.extra.d/k3s.raw",
        ]
        return
    assert rc == 1, err
    os_ = (
        osrel.replace("\n", " ")
        .replace("ID=kairos ", "kairos ")
        .replace("ID_LIKE=debian ubuntu", "(like debian ubuntu)")
    )
    boots = [f"loader/entries/{e}+3.conf boots {os_.strip()}" for e in ("active", "passive")]
    if built_for:
        want = "; ".join(f"k3s.raw: built for {built_for}, {b}" for b in boots)
    else:
        why = "extension-release.k3s has no VERSION_ID (the host has 2) and no matching SYSEXT_LEVEL"
        want = "; ".join(f"k3s.raw: {why}; {b}" for b in boots)
    assert err.splitlines()[0] == f"bootkeeper: error: {want}; nothing was installed"
    assert tree(esp) == before and _dirs(esp) == dirs  # nothing written, no folder left either


def test_an_image_that_fits_one_entry_is_refused_for_all_and_the_hint_names_where_it_fits(
    tmp_path: Path, built: _Images, capsys: pytest.CaptureFixture[str]
) -> None:
    """After an upgrade active boots v2 and passive v1: an extension built for v2 is refused (for
    passive, by name), nothing is written, and the hint names --entry active, which then installs
    it there alone. Before: it went to both, and passive refused it at every boot."""
    esp = _ab_esp(tmp_path / "esp", V2, "ID=kairos\nVERSION_ID=1\n")
    before, dirs = tree(esp), _dirs(esp)
    src = built["ID=kairos\nVERSION_ID=2\n"]
    rc = _main(["sysext", "install", str(src), "--esp", str(esp), *_node(tmp_path)])
    err = capsys.readouterr().err.splitlines()
    assert rc == 1
    assert err[0] == (
        "bootkeeper: error: k3s.raw: built for VERSION_ID=2, loader/entries/passive+3.conf boots kairos "
        "VERSION_ID=1; nothing was installed"
    )
    assert err[1] == (
        "hint: build k3s.raw for the OS of that entry, install it only where it fits (--entry active), "
        "or pass --force to install it anyway"
    )
    assert tree(esp) == before and _dirs(esp) == dirs
    rc = _main(["sysext", "install", str(src), "--entry", "active", "--esp", str(esp), *_node(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    assert [p.relative_to(esp).as_posix() for p in esp.rglob("*.raw")] == ["EFI/kairos/active.efi.extra.d/k3s.raw"]


def test_force_installs_a_misfit_and_says_so(
    tmp_path: Path, built: _Images, capsys: pytest.CaptureFixture[str]
) -> None:
    esp = _ab_esp(tmp_path / "esp", V2, V2)
    src = built["ID=kairos\nVERSION_ID=1\n"]
    rc = _main(["sysext", "install", str(src), "--force", "--json", "--esp", str(esp), *_node(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert (
        "bootkeeper: warning: installing k3s.raw with --force although k3s.raw: built for VERSION_ID=1, "
        "loader/entries/active+3.conf boots kairos VERSION_ID=2"
    ) in err.splitlines()
    doc = json.loads(out)
    assert doc["forced"] is True and doc["validation"]["ok"] is True
    assert [(m["entry"], m["reason"]) for m in doc["misfits"]] == [
        ("active", "VERSION_ID=1, the host has 2"),
        ("passive", "VERSION_ID=1, the host has 2"),
    ]
    assert [o["source"] for o in doc["os"]] == ["EFI/kairos/active.efi .osrel", "EFI/kairos/passive.efi .osrel"]
    for e in ("active", "passive"):
        assert (esp / f"EFI/kairos/{e}.efi.extra.d/k3s.raw").read_bytes() == src.read_bytes()


def test_type2_ukis_are_judged_by_their_own_osrel(
    tmp_path: Path, built: _Images, capsys: pytest.CaptureFixture[str]
) -> None:
    """EFI/Linux/<role>+N.efi: the file is the entry and its .osrel the OS."""
    esp = tmp_path / "esp"
    (esp / "EFI/Linux").mkdir(parents=True)
    (esp / "loader").mkdir()
    (esp / "loader/loader.conf").write_text("timeout 0\n")
    _osrel(esp, "EFI/Linux/active+3.efi", "ID=kairos\nVERSION_ID=2\nIMAGE_ID=kairos-1-active\n")
    _osrel(esp, "EFI/Linux/passive+3.efi", "ID=kairos\nVERSION_ID=1\nIMAGE_ID=kairos-2-passive\n")
    before, dirs = tree(esp), _dirs(esp)
    rc = _main(["sysext", "install", str(built["ID=kairos\nVERSION_ID=1\n"]), "--esp", str(esp), *_node(tmp_path)])
    err = capsys.readouterr().err.splitlines()
    assert rc == 1
    assert err[0] == (
        "bootkeeper: error: k3s.raw: built for VERSION_ID=1, EFI/Linux/active+3.efi boots kairos VERSION_ID=2; "
        "nothing was installed"
    )
    assert "(--entry passive)" in err[1]
    assert tree(esp) == before and _dirs(esp) == dirs


def test_an_entry_without_osrel_is_judged_against_the_nodes_os_release(
    tmp_path: Path, built: _Images, capsys: pytest.CaptureFixture[str]
) -> None:
    """'efi /EFI/kairos/vmlinuz' (a plain EFI-stub kernel, no .osrel): the node's os-release under
    ROOT stands in, as activate uses at boot; without one, a warning says nothing was checked."""
    esp = scratch.make(tmp_path / "esp", roles=(Role.ACTIVE, Role.PASSIVE), efi_key_roles=(Role.ACTIVE, Role.PASSIVE))
    before, dirs = tree(esp), _dirs(esp)
    src = built["ID=kairos\nVERSION_ID=1\n"]
    node = _node(tmp_path, "ID=kairos\nVERSION_ID=2\n")
    root = node[-1]
    rc = _main(["sysext", "install", str(src), "--esp", str(esp), *node])
    err = capsys.readouterr().err.splitlines()
    assert rc == 1
    assert (
        f"bootkeeper: warning: active: EFI/kairos/vmlinuz has no .osrel; k3s.raw is checked against the "
        f"os-release under {root}" in err
    )
    assert (
        "bootkeeper: error: k3s.raw: built for VERSION_ID=1, loader/entries/active+3.conf boots EFI/kairos/vmlinuz, "
        f"which has no .osrel; the os-release under {root} is kairos VERSION_ID=2; "
    ) in err[-2]
    assert tree(esp) == before and _dirs(esp) == dirs
    (Path(root) / "etc/os-release").unlink()
    rc = _main(["sysext", "install", str(src), "--esp", str(esp), *node])
    err = capsys.readouterr().err.splitlines()
    assert rc == 0
    assert (
        "bootkeeper: warning: passive: EFI/kairos/vmlinuz has no .osrel; k3s.raw is not checked against any OS" in err
    )


def test_name_is_the_name_validated(tmp_path: Path, img: Path) -> None:
    """--name renames the image: its extension-release must match the new name, as systemd-sysext
    will check it at boot (issue 15, item 5)."""
    esp = _esp(tmp_path / "esp")
    cert = tmp_path / "c.pem"
    cert.write_bytes(signature_pem())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"sysext:\n  certificates: [{cert}]\n  firmware: []\n")
    before = tree(esp)
    r = bk("sysext", "install", str(img), "--name", "other.raw", "--esp", str(esp), "--config", str(cfg))
    assert r.returncode == 1, r.stderr
    assert "no usr/lib/extension-release.d/extension-release.other (found extension-release.x)" in r.stderr
    assert tree(esp) == before
    r = bk("sysext", "install", str(img), "--name", "x.raw", "--esp", str(esp), "--config", str(cfg))
    assert r.returncode == 0, r.stderr
