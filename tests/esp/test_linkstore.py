"""``sysext.store: persistent``: images in /var/lib/bootkeeper/extensions, per-role folders of links (as
Kairos 3.4 keeps them), installed, listed and removed by ``sysext install|list|remove``, read by ``activate``
for the booted role and ``common/``. Real signed images, real files, the CLI as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bootkeeper.esp.entries import Role
from bootkeeper.esp.linkstore import LinkStore, booted_role
from bootkeeper.sysext import signature
from helpers import fake_efivars, signed_extension, tree, uki

KEY, CERT = signature.self_signed("ec", "linkstore test")
OTHER_KEY, OTHER_CERT = signature.self_signed("ec", "someone else")
V1 = {"ID": "kairos", "VERSION_ID": "1"}
V2 = {"ID": "kairos", "VERSION_ID": "2"}


def osrel(image_id: str, version: str) -> str:
    return f"ID=kairos\nIMAGE_ID={image_id}\nVERSION_ID={version}\nIMAGE_VERSION={version}\n"


class Images:
    def __init__(self, d: Path) -> None:
        self.tools_v1 = signed_extension(d / "v1" / "tools-v1.raw", KEY, CERT, V1)
        self.tools_v2 = signed_extension(d / "v2" / "tools-v2.raw", KEY, CERT, V2)
        self.any_os = signed_extension(d / "any" / "common.raw", KEY, CERT)
        self.rogue = signed_extension(d / "rogue" / "rogue.raw", OTHER_KEY, OTHER_CERT)
        self.tools_a = signed_extension(d / "a" / "tools.raw", KEY, CERT, V1)
        self.tools_b = signed_extension(d / "b" / "tools.raw", KEY, CERT)


@pytest.fixture(scope="module")
def imgs(tmp_path_factory: pytest.TempPathFactory) -> Images:
    return Images(tmp_path_factory.mktemp("imgs"))


def node(tmp_path: Path, active: str = "1", passive: str = "1") -> Path:
    """A root with an ESP at /efi (Type #2 UKIs: active and passive run v1, recovery v1) and a config."""
    from cryptography.hazmat.primitives.serialization import Encoding

    esp = tmp_path / "efi"
    lx = esp / "EFI" / "Linux"
    lx.mkdir(parents=True)
    (esp / "loader").mkdir()
    (esp / "loader" / "loader.conf").write_text("timeout 0\n")
    for role, v in (("active", active), ("passive", passive), ("recovery", "1")):
        (lx / f"{role}+3.efi").write_bytes(uki(osrel("kairos" if role != "recovery" else "kairos-r", v), tag=role))
    (tmp_path / "c.pem").write_bytes(CERT.public_bytes(Encoding.PEM))
    (tmp_path / "c.yaml").write_text(
        "sysext:\n  store: persistent\n  store_dir: /store\n  certificates: [/c.pem]\n  firmware: []\n"
        "  verity_dirs: []\n  full_check: false\n"
    )
    return tmp_path


def bk(root: Path, *args: str) -> int:
    from bootkeeper.cli.main import main

    argv = [*args, "--config", str(root / "c.yaml"), "--root", str(root)]
    if args[:2] != ("sysext", "activate"):
        argv += ["--esp", str(root / "efi")]
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def links(root: Path) -> dict[str, str]:
    """folder/name -> link target, for every link of the store."""
    s = root / "store"
    return {p.relative_to(s).as_posix(): os.readlink(p) for p in sorted(s.rglob("*")) if p.is_symlink()}


def test_install_puts_one_image_in_the_store_and_links_it_per_role(
    tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]
) -> None:
    root = node(tmp_path)
    esp_before = tree(root / "efi")
    assert bk(root, "sysext", "install", str(imgs.tools_v1), "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["written"] == ["active/tools-v1.raw", "passive/tools-v1.raw"] and out["image_written"] is True
    assert links(root) == {"active/tools-v1.raw": "../tools-v1.raw", "passive/tools-v1.raw": "../tools-v1.raw"}
    assert (root / "store/tools-v1.raw").read_bytes() == imgs.tools_v1.read_bytes()
    assert tree(root / "efi") == esp_before  # nothing on the ESP
    # --entry common: one more link, the same image, not copied again
    assert bk(root, "sysext", "install", str(imgs.tools_v1), "--entry", "common", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["written"] == ["common/tools-v1.raw"] and out["image_written"] is False
    assert bk(root, "sysext", "install", str(imgs.tools_v1), "--json") == 0
    assert json.loads(capsys.readouterr().out)["written"] == []
    assert not [p for p in (root / "store").rglob(".bootkeeper-*")]


def test_install_checks_each_role_os_and_refuses_a_misfit_writing_nothing(
    tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]
) -> None:
    root = node(tmp_path, active="2", passive="1")
    assert bk(root, "sysext", "install", str(imgs.tools_v1)) == 1
    err = capsys.readouterr().err
    assert "tools-v1.raw: built for VERSION_ID=1, EFI/Linux/active+3.efi boots kairos VERSION_ID=2" in err
    assert "--entry passive" in err
    assert not (root / "store").exists() or (links(root) == {} and not list((root / "store").glob("*.raw")))
    # common/ is loaded by every role: the v2 active refuses it there too
    assert bk(root, "sysext", "install", str(imgs.tools_v1), "--entry", "common") == 1
    assert "EFI/Linux/active+3.efi boots kairos VERSION_ID=2" in capsys.readouterr().err
    assert bk(root, "sysext", "install", str(imgs.tools_v1), "--entry", "passive") == 0
    assert links(root) == {"passive/tools-v1.raw": "../tools-v1.raw"}
    # an unsigned or foreign-signed image never enters the store
    assert bk(root, "sysext", "install", str(imgs.rogue), "--entry", "passive") == 1
    assert "refused under policy" in capsys.readouterr().err
    assert sorted(p.name for p in (root / "store").glob("*.raw")) == ["tools-v1.raw"]
    assert bk(root, "sysext", "install", str(imgs.tools_v1), "--entry", "nowhere") == 2
    assert "folders active, passive, recovery, statereset, common only" in capsys.readouterr().err


def test_another_build_of_the_same_name_never_overwrites_what_a_role_loads(
    tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]
) -> None:
    root = node(tmp_path, active="1", passive="1")
    assert bk(root, "sysext", "install", str(imgs.tools_a), "--entry", "passive") == 0
    capsys.readouterr()
    assert bk(root, "sysext", "install", str(imgs.tools_b), "--entry", "active", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    image = out["image"]
    assert image.startswith("tools~") and image.endswith(".raw") and out["written"] == ["active/tools.raw"]
    assert links(root) == {"active/tools.raw": f"../{image}", "passive/tools.raw": "../tools.raw"}
    assert (root / "store/tools.raw").read_bytes() == imgs.tools_a.read_bytes()
    assert (root / "store" / image).read_bytes() == imgs.tools_b.read_bytes()
    # the same build again for passive: its link moves to the new image, the old one goes
    assert bk(root, "sysext", "install", str(imgs.tools_b), "--entry", "passive", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["image"] == image and out["images_removed"] == ["tools.raw"]
    assert sorted(p.name for p in (root / "store").glob("*.raw")) == [image]


def test_activate_places_the_booted_roles_links_and_common_only(
    tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]
) -> None:
    root = node(tmp_path)
    assert bk(root, "sysext", "install", str(imgs.tools_v1), "--entry", "active") == 0
    assert bk(root, "sysext", "install", str(imgs.any_os), "--entry", "common") == 0
    shutil.copy(imgs.tools_a, root / "store" / "old.raw")  # a link's name is what is placed
    (root / "store" / "passive").mkdir()
    os.symlink("../old.raw", root / "store" / "passive" / "tools.raw")
    # hostile entries in active/: each is skipped with its reason, the good ones still placed
    (root / "outside.raw").write_bytes(imgs.tools_v1.read_bytes())
    os.symlink("../../outside.raw", root / "store" / "active" / "escape.raw")
    os.symlink("/outside.raw", root / "store" / "active" / "absolute.raw")
    os.symlink("../missing.raw", root / "store" / "active" / "missing.raw")
    shutil.copy(imgs.tools_v1, root / "store" / "active" / "plain.raw")
    os.symlink("active", root / "store" / "loop.raw")
    os.symlink("../loop.raw", root / "store" / "active" / "via-link.raw")
    capsys.readouterr()
    fake_efivars(root / "sys/firmware/efi/efivars", LoaderEntrySelected="active+2.efi")
    assert bk(root, "sysext", "activate", "--json", "--no-refresh") == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["store"]["role"] == "active" and rep["store"]["folders"] == ["active", "common"]
    placed = sorted(p.name for p in (root / "run/extensions").iterdir())
    assert placed == ["common.raw", "tools-v1.raw"]
    why = {i["name"]: " ".join(i["reasons"]) for i in rep["images"] if not i["placed"]}
    assert "not to an image of" in why["escape.raw"] and "not to an image of" in why["absolute.raw"]
    assert "which is not in" in why["missing.raw"]
    assert "not a link into" in why["plain.raw"]
    assert "is not a regular file" in why["via-link.raw"]
    assert "tools.raw" not in why  # passive's: not read at all
    # passive boots: its own link and common/, nothing of active's (placed copies of active's go)
    fake_efivars(root / "sys/firmware/efi/efivars", LoaderEntrySelected="passive.efi")
    assert bk(root, "sysext", "activate", "--json", "--no-refresh") == 0
    capsys.readouterr()
    assert sorted(p.name for p in (root / "run/extensions").iterdir()) == ["common.raw", "tools.raw"]
    assert (root / "run/extensions/tools.raw").read_bytes() == imgs.tools_a.read_bytes()


def test_a_role_that_cannot_be_told_loads_common_only(
    tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]
) -> None:
    root = node(tmp_path)
    assert bk(root, "sysext", "install", str(imgs.tools_v1), "--entry", "active") == 0
    assert bk(root, "sysext", "install", str(imgs.any_os), "--entry", "common") == 0
    capsys.readouterr()
    assert bk(root, "sysext", "activate", "--json", "--no-refresh") == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["store"]["role"] is None and "only common/ is loaded" in rep["store"]["problem"]
    assert sorted(p.name for p in (root / "run/extensions").iterdir()) == ["common.raw"]
    # Kairos's immucore says which role booted: that wins over the EFI variable
    (root / "run/cos").mkdir(parents=True)
    (root / "run/cos/active_mode").touch()
    assert booted_role(root, root / "sys/firmware/efi/efivars") == (Role.ACTIVE, f"{root}/run/cos/active_mode")


def test_remove_unlinks_and_drops_the_image_only_when_nothing_links_it(
    tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]
) -> None:
    root = node(tmp_path)
    assert bk(root, "sysext", "install", str(imgs.tools_v1)) == 0
    capsys.readouterr()
    assert bk(root, "sysext", "remove", "tools-v1.raw", "--entry", "active", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["removed"] == ["active/tools-v1.raw"] and out["images_removed"] == []
    assert (root / "store/tools-v1.raw").is_file()
    assert bk(root, "sysext", "remove", "tools-v1.raw", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["removed"] == ["passive/tools-v1.raw"] and out["images_removed"] == ["tools-v1.raw"]
    assert not (root / "store/tools-v1.raw").exists()


def test_list_shows_each_folder_and_a_broken_link(
    tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]
) -> None:
    root = node(tmp_path)
    assert bk(root, "sysext", "install", str(imgs.tools_v1), "--entry", "active") == 0
    os.symlink("../gone.raw", root / "store" / "active" / "gone.raw")
    capsys.readouterr()
    assert bk(root, "sysext", "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)["extensions"]
    got = {(r["path"], r["ok"]) for r in rows}
    assert got == {("active/tools-v1.raw", True), ("active/gone.raw", False)}
    assert bk(root, "sysext", "list") == 0
    assert "which is not in" in capsys.readouterr().out


class Crash(OSError):
    pass


def test_install_crashed_at_every_step_leaves_no_half_link_and_a_rerun_completes(tmp_path: Path, imgs: Images) -> None:
    from bootkeeper.sysext import deploy

    def run(store: Path, fault: object = None) -> None:
        ls = LinkStore(store, fault=fault)  # type: ignore[arg-type]
        deploy.install_persistent(ls, imgs.tools_v1, "t.raw", ["active", "passive"], "test", lambda p: None)

    steps: list[str] = []
    run(tmp_path / "count", steps.append)
    assert len(steps) >= 8, steps
    for k in range(len(steps)):
        store = tmp_path / f"crash-{k}"

        def fault(name: str, k: int = k, n: list[int] = [0]) -> None:  # noqa: B006
            n[0] += 1
            if n[0] - 1 == k:
                raise Crash(name)

        with pytest.raises(Crash):
            run(store, fault)
        ls = LinkStore(store)
        for f in ("active", "passive"):
            for lk in ls.links(f):  # a link that is there names the whole image
                assert lk.image is not None, (k, steps[k], lk.problem)
                assert (store / lk.image).read_bytes() == imgs.tools_v1.read_bytes(), (k, steps[k])
        run(store)
        assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*")) == [
            "active",
            "active/t.raw",
            "passive",
            "passive/t.raw",
            "t.raw",
        ], (k, steps[k])


@pytest.mark.parametrize(
    ("block", "words"),
    [
        ("  store: nfs\n", ("sysext.store", "'nfs' is not one of esp, persistent")),
        ("  store_dir: var/lib/x\n", ("sysext.store_dir", "is not an absolute path")),
        ("  store_dir: [1]\n", ("sysext.store_dir", "is not an absolute path")),
    ],
)
def test_a_bad_store_setting_is_one_line_naming_file_and_key(
    tmp_path: Path, block: str, words: tuple[str, ...]
) -> None:
    import subprocess
    import sys

    from helpers import one_line_error

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("sysext:\n" + block)
    p = subprocess.run(
        [sys.executable, "-m", "bootkeeper", "sysext", "list", "--config", str(cfg), "--root", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    one_line_error(p, 4, str(cfg), *words)


def test_a_store_behind_a_symbolic_link_is_never_written_through(
    tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]
) -> None:
    root = node(tmp_path)
    (root / "elsewhere").mkdir()
    os.symlink("elsewhere", root / "store")
    assert bk(root, "sysext", "install", str(imgs.tools_v1)) == 6
    assert "is a symbolic link; refusing to write through it" in capsys.readouterr().err
    assert list((root / "elsewhere").iterdir()) == []


def test_remove_takes_the_short_name_and_says_when_nothing_matched(
    tmp_path: Path, imgs: Images, capsys: pytest.CaptureFixture[str]
) -> None:
    """issue 15, item 9: `sysext remove tools-v1` (no .raw) was a usage error; a name nothing matches
    says so."""
    root = node(tmp_path)
    assert bk(root, "sysext", "install", str(imgs.tools_v1)) == 0
    capsys.readouterr()
    assert bk(root, "sysext", "remove", "nothing-here") == 0
    assert "nothing-here: nothing matched in active/, passive/" in capsys.readouterr().out
    assert bk(root, "sysext", "remove", "tools-v1", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["removed"] == ["active/tools-v1.raw", "passive/tools-v1.raw"] and out["images_removed"] == [
        "tools-v1.raw"
    ]


def test_list_shows_the_extensions_own_version_and_sizes_for_people(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """issue 15, item 9: the version column showed the host's VERSION_ID the image is built for."""
    root = node(tmp_path)
    from bootkeeper.sysext import image

    t = tmp_path / "tree"
    (t / "usr/lib/extension-release.d").mkdir(parents=True)
    (t / "usr/lib/extension-release.d/extension-release.k3s").write_text(
        "ID=kairos\nVERSION_ID=1\nSYSEXT_VERSION_ID=1.30.2\nARCHITECTURE=x86-64\n"
    )
    (t / "usr/bin").mkdir()
    (t / "usr/bin/k3s").write_bytes(os.urandom(300_000))
    img = image.build(t, tmp_path / "k3s.raw", KEY, CERT)
    assert bk(root, "sysext", "install", str(img), "--entry", "active") == 0
    capsys.readouterr()
    assert bk(root, "sysext", "list", "--json") == 0
    [row] = json.loads(capsys.readouterr().out)["extensions"]
    assert (row["version"], row["built_for"], row["size"]) == ("1.30.2", "ID=kairos VERSION_ID=1", img.stat().st_size)
    assert bk(root, "sysext", "list") == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "k3s.raw" in ln)
    assert "1.30.2" in line and "ID=kairos VERSION_ID=1" in line and " KiB" in line, line


def test_a_source_that_is_a_link_or_no_file_is_unreadable_input_not_a_failed_write(tmp_path: Path) -> None:
    """issue 27 (Also), as a class: every input bootkeeper opens never through a link (fsutil.open_input:
    upgrade's copies and digests, LinkStore.put) says "a symbolic link" with exit 7, where the bare ELOOP
    was reported as a failed write (exit 6); the image sysext install opened turning out not to be a
    regular file is the input's fault too."""
    from bootkeeper.errors import ExitCode, UnreadableError
    from bootkeeper.sysext import deploy

    real = tmp_path / "real.raw"
    real.write_bytes(b"x" * 100)
    link = tmp_path / "link.raw"
    link.symlink_to(real)
    ls = LinkStore(tmp_path / "store")
    with ls.transaction(), pytest.raises(UnreadableError) as e:
        ls.put(link, "link.raw")
    assert str(e.value) == f"{link}: a symbolic link; not followed" and e.value.exit_code == ExitCode.UNREADABLE
    assert not (tmp_path / "store" / "link.raw").exists()
    os.mkfifo(tmp_path / "fifo.raw")
    with pytest.raises(UnreadableError, match=r"fifo\.raw: not a regular file"):
        deploy.open_source(tmp_path / "fifo.raw")
