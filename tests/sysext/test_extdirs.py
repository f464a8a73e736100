"""The other extension folders (issue 26 item 5): ``/etc/extensions`` and ``/var/lib/extensions``,
which systemd-sysext merges beside ``/run/extensions``, judged by ``sysext activate`` as it judges
the images it places; what the mode refuses is moved into ``/var/lib/bootkeeper/quarantine``,
never deleted. Through the real CLI; the node VM shows the same with the real systemd-sysext
(tests/node/test_node_extdirs.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from bootkeeper.sysext import image, signature
from test_attack_activate import TRUSTED, _build

OTHER = signature.self_signed("rsa", "not-trusted")
Q = "var/lib/bootkeeper/quarantine"


@pytest.fixture(scope="module")
def imgs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("extdirs")
    out = {n: _build(work, n) for n in ("good.raw", "etcgood.raw")}
    tree = work / "tree-rogue"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/rogue").write_bytes(os.urandom(1000))
    out["rogue.raw"] = image.build(tree, work / "rogue.raw", *OTHER, os_release={"ID": "kairos", "VERSION_ID": "1"})
    src = _build(work, "unsigned.raw")  # verity without a signature: systemd-sysext's own policy merges it
    data = image.inspect(src).found["root"].data
    src.write_bytes(image.assemble(src.read_bytes()[data.offset : data.offset + data.size], None, None))
    out["unsigned.raw"] = src
    return out


def _root(tmp: Path, mode: str) -> Path:
    root = tmp / "root"
    (root / "etc/bootkeeper").mkdir(parents=True)
    (root / "etc/bootkeeper/db.pem").write_bytes(TRUSTED[1].public_bytes(Encoding.PEM))
    (root / "etc/os-release").write_text("ID=kairos\nVERSION_ID=1\n")
    (root / "oem").mkdir()
    (root / "oem/90_sysext.yaml").write_text(
        f"sysext:\n  mode: {mode}\n  policy: root=signed+absent:usr=signed+absent\n"
        "  certificates: [/etc/bootkeeper/db.pem]\n  firmware: []\n  verity_dirs: []\n"
    )
    for d in ("etc/extensions", "var/lib/extensions"):
        (root / d).mkdir(parents=True)
    return root


def _put(root: Path, folder: str, src: Path, name: str | None = None) -> Path:
    p = root / folder / (name or src.name)
    shutil.copyfile(src, p)
    return p


def _bk(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bootkeeper", *args], capture_output=True, text=True, check=False)


def _activate(root: Path, *more: str) -> tuple[dict[str, dict[str, Any]], str]:
    r = _bk(root, "sysext", "activate", "--root", str(root), "--no-refresh", *more)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    report = json.loads((root / "run/bootkeeper/sysext.json").read_text())
    return {x["path"]: x for x in report["residents"]}, r.stdout


def _tree(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*")) if d.exists() else []


def test_enforced_moves_what_it_refuses_into_the_quarantine(tmp_path: Path, imgs: dict[str, Path]) -> None:
    root = _root(tmp_path, "enforced")
    var, etc = root / "var/lib/extensions", root / "etc/extensions"
    good = _put(root, "var/lib/extensions", imgs["good.raw"])
    rogue = _put(root, "var/lib/extensions", imgs["rogue.raw"])
    _put(root, "var/lib/extensions", imgs["unsigned.raw"])
    (var / "tree").mkdir()
    (var / "tree/usr").mkdir()
    (var / "link.raw").symlink_to(good)
    (var / "notes.txt").write_text("not an extension")  # systemd-sysext takes *.raw files only
    (var / ".hidden.raw").write_text("x")
    _put(root, "etc/extensions", imgs["etcgood.raw"])
    _put(root, "etc/extensions", imgs["rogue.raw"], "etcrogue.raw")
    # an earlier quarantined rogue.raw of another day: the new one does not replace it
    (root / Q / "var-lib-extensions").mkdir(parents=True)
    (root / Q / "var-lib-extensions/rogue.raw").write_text("yesterday's")
    rogue_bytes = rogue.read_bytes()

    got, out = _activate(root)
    assert sorted(os.listdir(var)) == [".hidden.raw", "good.raw", "notes.txt"]
    assert sorted(os.listdir(etc)) == ["etcgood.raw"]
    assert _tree(root / Q) == [
        "etc-extensions",
        "etc-extensions/etcrogue.raw",
        "var-lib-extensions",
        "var-lib-extensions/link.raw",
        "var-lib-extensions/rogue.raw",
        "var-lib-extensions/rogue.raw.1",
        "var-lib-extensions/tree",
        "var-lib-extensions/tree/usr",
        "var-lib-extensions/unsigned.raw",
    ]
    assert (root / Q / "var-lib-extensions/rogue.raw").read_text() == "yesterday's"
    assert (root / Q / "var-lib-extensions/rogue.raw.1").read_bytes() == rogue_bytes  # moved, not rewritten
    assert os.readlink(root / Q / "var-lib-extensions/link.raw") == str(good)  # the link itself, not followed
    assert {Path(p).name: (r["verdict"], r["kept"]) for p, r in got.items()} == {
        "good.raw": ("passed", True),
        "rogue.raw": ("refused", False),
        "unsigned.raw": ("refused", False),
        "tree": ("refused", False),
        "link.raw": ("refused", False),
        "etcgood.raw": ("passed", True),
        "etcrogue.raw": ("refused", False),
    }
    r = got[str(rogue)]
    assert r["quarantined"] == str(root / Q / "var-lib-extensions/rogue.raw.1")
    assert any("no trusted certificate" in why for why in r["reasons"]), r
    assert got[str(var / "good.raw")]["signer"] == "CN=kairos-test-db"
    assert "a directory extension" in got[str(var / "tree")]["reasons"][0]
    # one journal line each, saying where it went
    assert f"bootkeeper-sysext: {rogue}: refused, moved to {root / Q}/var-lib-extensions/rogue.raw.1" in out
    # a second run finds nothing more to move
    again, _ = _activate(root)
    assert {Path(p).name for p in again} == {"good.raw", "etcgood.raw"}


def test_permissive_moves_only_what_systemd_sysext_cannot_open(tmp_path: Path, imgs: dict[str, Path]) -> None:
    root = _root(tmp_path, "permissive")
    var = root / "var/lib/extensions"
    for n in ("good.raw", "rogue.raw", "unsigned.raw"):
        _put(root, "var/lib/extensions", imgs[n])
    (var / "tree").mkdir()
    got, _ = _activate(root)
    assert {Path(p).name: (r["verdict"], r["kept"]) for p, r in got.items()} == {
        "good.raw": ("passed", True),
        "rogue.raw": ("refused", False),  # a signature that does not verify: systemd-sysext merges none
        "unsigned.raw": ("failed-but-kept", True),  # its own policy takes plain verity
        "tree": ("unchecked", True),
    }
    assert sorted(os.listdir(var)) == ["good.raw", "tree", "unsigned.raw"]
    assert _tree(root / Q) == ["var-lib-extensions", "var-lib-extensions/rogue.raw"]
    assert any(w.startswith("permissive: not placed") for w in got[str(var / "rogue.raw")]["reasons"])


def test_disabled_reads_and_moves_nothing(tmp_path: Path, imgs: dict[str, Path]) -> None:
    root = _root(tmp_path, "disabled")
    _put(root, "var/lib/extensions", imgs["rogue.raw"])
    got, _ = _activate(root)
    assert [(r["verdict"], r["kept"]) for r in got.values()] == [("unchecked", True)]
    assert not (root / Q).exists()


def test_a_move_that_fails_leaves_the_image_and_says_why(tmp_path: Path, imgs: dict[str, Path]) -> None:
    root = _root(tmp_path, "enforced")
    rogue = _put(root, "var/lib/extensions", imgs["rogue.raw"])
    (root / "var/lib/bootkeeper").mkdir(parents=True)
    (root / Q).write_text("a file where the quarantine folder goes")
    got, _ = _activate(root)
    r = got[str(rogue)]
    assert (r["verdict"], r["kept"], r["quarantined"]) == ("refused", True, None)
    assert "cannot move it to" in r["reasons"][-1] and "left in place" in r["reasons"][-1]
    assert rogue.read_bytes() == imgs["rogue.raw"].read_bytes()


@pytest.mark.root
@pytest.mark.integration
def test_across_file_systems_the_image_is_copied_then_unlinked(tmp_path: Path, imgs: dict[str, Path]) -> None:
    """/var/lib/extensions on a tmpfs of its own (a private mount namespace): rename gives EXDEV, so
    the image is copied crash-safe into the quarantine, then unlinked."""
    assert shutil.which("unshare"), "unshare (util-linux) is missing; scripts/setup-test-deps.sh installs it"
    root = _root(tmp_path, "enforced")
    var = root / "var/lib/extensions"
    script = f'mount -t tmpfs tmpfs {var} && cp {imgs["rogue.raw"]} {var}/rogue.raw && "$@" && ls -a {var}'
    cmd = [sys.executable, "-m", "bootkeeper", "sysext", "activate", "--root", str(root), "--no-refresh"]
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *cmd],
                       capture_output=True, text=True, check=False)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split()[-2:] == [".", ".."]  # the tmpfs is empty afterwards
    assert (root / Q / "var-lib-extensions/rogue.raw").read_bytes() == imgs["rogue.raw"].read_bytes()
    assert not [n for n in os.listdir(root / Q / "var-lib-extensions") if n.startswith(".")]


def test_list_and_lint_show_the_folders_and_the_quarantine(tmp_path: Path, imgs: dict[str, Path]) -> None:
    root = _root(tmp_path, "enforced")
    _put(root, "var/lib/extensions", imgs["good.raw"])
    rogue = _put(root, "var/lib/extensions", imgs["rogue.raw"])
    esp = root / "efi"
    (esp / "loader").mkdir(parents=True)
    (esp / "EFI/Linux").mkdir(parents=True)

    r = _bk(root, "lint", "--root", str(root), "--json")
    found = [(f["code"], f["severity"], f["file"]) for f in json.loads(r.stdout)["findings"] if f["code"] == "BK304"]
    assert found == [("BK304", "error", str(rogue))], r.stdout + r.stderr
    assert r.returncode == 1

    _activate(root)
    r = _bk(root, "sysext", "list", "--root", str(root), "--esp", str(esp), "--json")
    assert r.returncode == 0, r.stderr
    rows = {(x["entry"], x["name"]): (x["ok"], x["signer"]) for x in json.loads(r.stdout)["extensions"]}
    assert rows == {
        ("/var/lib/extensions", "good.raw"): (True, "CN=kairos-test-db"),
        ("quarantine", "rogue.raw"): (False, None),
    }
    r = _bk(root, "lint", "--root", str(root), "--json")
    found = [(f["code"], f["severity"], f["file"]) for f in json.loads(r.stdout)["findings"] if f["code"] == "BK304"]
    assert found == [("BK304", "warning", str(root / Q / "var-lib-extensions/rogue.raw"))]
