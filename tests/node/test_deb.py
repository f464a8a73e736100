"""bootkeeper's Debian package (``make deb``: ``scripts/build-deb.sh``, ``debian/``), as image builders
install it: what it ships, what it depends on, ``dpkg -i`` into the node's Debian 13 tree, and what
``install-units`` still writes on a node that has it (issue 15, item 12)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import nodevm
from helpers import bk
from trixie import ROOT as TRIXIE

# the node's cache (its package, its guest tree): run with the node tests (scripts/test.sh)
pytestmark = pytest.mark.guest

ROOT = Path(__file__).resolve().parents[2]
UNIT_DIR = "etc/systemd/system"
SHIPPED = (
    "usr/lib/systemd/system/bootkeeper-sysext.service",
    "usr/lib/systemd/system/bootkeeper-bless.service",
    "usr/lib/systemd/system/bootkeeper-boot.service",
    "usr/lib/systemd/system/bootkeeper-random-seed.service",
    "usr/lib/systemd/system/bootkeeper-metrics.service",
    "usr/lib/systemd/system/bootkeeper-metrics.path",
    "usr/lib/systemd/system/bootkeeper-metrics.timer",
    # boot_assessment.good_when's default and sysext.required's check (issue 26)
    "usr/lib/systemd/system/bootkeeper-boot-check.service",
    "usr/lib/systemd/system/bootkeeper-sysext-required.service",
    # updates and repair (docs/updates.md): rendered with the config's defaults, shadowed in /etc when it differs
    "usr/lib/systemd/system/bootkeeper-update.service",
    "usr/lib/systemd/system/bootkeeper-update.timer",
    "usr/lib/systemd/system/bootkeeper-repair.service",
    "usr/lib/systemd/system-generators/bootkeeper-generator",
)


def _deb_field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True).stdout.strip()


def test_the_package_version_is_the_projects() -> None:
    """debian/changelog names the version pyproject.toml declares (and ``--version`` prints)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    head = (ROOT / "debian/changelog").read_text().splitlines()[0]
    m = re.match(r"bootkeeper \(([^)]+)\) ", head)
    assert m is not None, head
    assert m.group(1) == project["version"]
    assert project["license"] == "Apache-2.0"
    assert (ROOT / "LICENSE").read_text().split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    assert "\nLicense: Apache-2.0\n" in (ROOT / "debian/copyright").read_text()


def _packaged_root(tmp_path: Path) -> Path:
    """A node root holding what the package ships in /usr/lib/systemd, made the way debian/rules makes
    it: install-units under a scratch root with the node's paths, its services and generator moved."""
    scratch, node = tmp_path / "scratch", tmp_path / "node"
    r = bk("install-units", "--root", str(scratch), "--exe", "/usr/bin/bootkeeper", "--python", "/usr/bin/python3",
           "--no-enable")  # fmt: skip
    assert r.returncode == 0, r.stderr
    for rel in SHIPPED:
        name = rel.rsplit("/", 1)[1]
        src = scratch / ("etc/systemd/system-generators" if "generators" in rel else UNIT_DIR) / name
        (node / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, node / rel)
    (node / "usr/bin").mkdir(parents=True)
    for prog in ("usr/bin/bootkeeper", "usr/bin/python3"):
        (node / prog).write_text("#!/bin/sh\n")
    return node


def _check_install_units_on_a_packaged_node(node: Path) -> None:
    units = node / UNIT_DIR
    # an earlier install-units (before the package) left its own copy: it would shadow the package's
    stale = units / "bootkeeper-boot.service"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text((node / "usr/lib/systemd/system/bootkeeper-boot.service").read_text())
    (node / "oem").mkdir(exist_ok=True)
    (node / "oem/90.yaml").write_text(
        "sysext:\n  mode: enforced\n  systemd_version: 257\n"
        "boot_assessment:\n  services:\n    - name: bk-health.service\n"
    )
    r = bk("install-units", "--root", str(node))
    assert r.returncode == 0, r.stderr
    # no copy of a shipped file in /etc; the config's parts are still written there
    assert not [p for p in (node / "etc/systemd").rglob("bootkeeper-*") if p.is_file() and not p.is_symlink()]
    assert "--image-policy=" in (units / "systemd-sysext.service.d/10-bootkeeper.conf").read_text()
    assert os.readlink(units / "systemd-bless-boot.service") == "/dev/null"
    assert (units / "bk-health.service.d").is_dir()
    for link, target in (
        ("sysinit.target.wants/bootkeeper-sysext.service", "/usr/lib/systemd/system/bootkeeper-sysext.service"),
        ("basic.target.wants/bootkeeper-bless.service", "/usr/lib/systemd/system/bootkeeper-bless.service"),
        ("basic.target.wants/bootkeeper-boot.service", "/usr/lib/systemd/system/bootkeeper-boot.service"),
        (
            "boot-complete.target.requires/bootkeeper-boot-check.service",
            "/usr/lib/systemd/system/bootkeeper-boot-check.service",
        ),
        (
            "boot-complete.target.requires/bootkeeper-sysext-required.service",
            "/usr/lib/systemd/system/bootkeeper-sysext-required.service",
        ),
    ):
        assert os.readlink(units / link) == target


def test_install_units_writes_no_copy_of_what_the_package_ships(tmp_path: Path) -> None:
    _check_install_units_on_a_packaged_node(_packaged_root(tmp_path))


def test_a_changed_packaged_unit_is_not_trusted(tmp_path: Path) -> None:
    """A file in /usr/lib that is not what this bootkeeper writes (another version's) is left alone and
    install-units writes its own in /etc, which systemd prefers."""
    node = _packaged_root(tmp_path)
    shipped = node / "usr/lib/systemd/system/bootkeeper-boot.service"
    shipped.write_text(shipped.read_text().replace("history record", "history  record"))
    r = bk("install-units", "--root", str(node), "--systemd-version", "257")
    assert r.returncode == 0, r.stderr
    assert "history record" in (node / UNIT_DIR / "bootkeeper-boot.service").read_text()
    assert not (node / UNIT_DIR / "bootkeeper-bless.service").exists()


# --- the real package, built with Debian's tools in the trixie tree --------------------------------


@pytest.fixture(scope="module")
def deb() -> Path:
    if not (TRIXIE / "usr/bin/dh_python3").exists():
        pytest.fail(f"{TRIXIE} has no dh_python3: scripts/setup-trixie.sh installs Debian's packaging tools")
    return nodevm.deb()


MAN_PAGES = {
    "usr/share/man/man8/bootkeeper.8.gz": "man/bootkeeper.8",
    "usr/share/man/man5/bootkeeper.yaml.5.gz": "man/bootkeeper.yaml.5",
}


@pytest.mark.integration
def test_the_package_ships_the_man_pages_compressed_as_policy_says(deb: Path, tmp_path: Path) -> None:
    """bootkeeper(8) and bootkeeper.yaml(5), as ``dpkg -c`` lists them, gzip -9n (no name, no time
    stamp: Debian policy 12.3) of the pages in man/."""
    import gzip

    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    paths = {line.split()[5].removeprefix("./").rstrip("/") for line in listing.splitlines()}
    assert set(MAN_PAGES) <= paths
    x = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(x)], check=True)
    for shipped, source in MAN_PAGES.items():
        data = (x / shipped).read_bytes()
        assert data[3] & 0x08 == 0 and data[4:8] == b"\0\0\0\0", shipped  # no FNAME, MTIME 0
        assert data[8] == 2, shipped  # XFL 2: maximum compression (-9)
        assert gzip.decompress(data) == (ROOT / source).read_bytes(), shipped


@pytest.mark.integration
def test_the_package_ships_the_cli_units_and_generator(deb: Path, tmp_path: Path) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    paths = {line.split()[5].removeprefix("./").rstrip("/") for line in listing.splitlines()}
    for rel in ("usr/bin/bootkeeper", *SHIPPED, "usr/share/doc/bootkeeper/copyright"):
        assert rel in paths, rel
    assert "usr/lib/python3/dist-packages/bootkeeper/cli/main.py" in paths
    assert not [p for p in paths if p.startswith(("usr/local", "etc"))]
    # not one file names the machine it was built on: this checkout, its virtualenv, the trixie tree,
    # the folder scripts/build-deb.sh builds in (/build/bootkeeper in the tree), the pybuild build folder
    x = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(x)], check=True)
    build_paths = {str(ROOT), sys.prefix, str(TRIXIE), "/work/", "/build/", ".pybuild", "/.venv/"}
    for f in (p for p in x.rglob("*") if p.is_file()):
        data = f.read_bytes()
        assert not [b for b in build_paths if b.encode() in data], f
    assert (x / "usr/bin/bootkeeper").read_text().startswith("#! /usr/bin/python3\n")
    assert (x / SHIPPED[-1]).read_text().startswith("#!/usr/bin/python3 -IS\n")
    assert "ExecStart=/usr/bin/bootkeeper sysext activate" in (x / SHIPPED[0]).read_text()
    assert os.stat(x / SHIPPED[-1]).st_mode & 0o777 == 0o755
    depends = [d.strip().split()[0] for d in _deb_field(deb, "Depends").split(",")]
    want = {"python3-click", "python3-yaml", "python3-rich", "python3-cryptography", "python3-asn1crypto"}
    want.add("python3-prometheus-client")  # bootkeeper metrics
    assert want <= set(depends) and "systemd" in depends, depends
    assert _deb_field(deb, "Architecture") == "all"


@pytest.mark.integration
def test_dpkg_installs_it_into_the_node_tree_and_it_runs(deb: Path, tmp_path: Path) -> None:
    """``dpkg -i`` (Debian's dependency check) into a copy of the node's Debian 13 tree, which has only
    Debian packages; then bootkeeper runs there, and install-units writes only the config's parts."""
    if not (nodevm.GUEST / "usr/lib/systemd/systemd").exists():
        pytest.fail(f"{nodevm.GUEST}: no guest tree; scripts/setup-node-guest.sh makes it")
    tree = tmp_path / "tree"
    subprocess.run(["cp", "-a", str(nodevm.GUEST), str(tree)], check=True)
    shutil.copy(deb, tree / "tmp" / deb.name)
    out = nodevm.chroot(
        tree,
        f"dpkg -i /tmp/{deb.name} >/dev/null; dpkg-query -W -f='${{Status}}\\n' bootkeeper; bootkeeper --version; "
        "command -v bootkeeper; systemctl is-enabled bootkeeper-bless.service bootkeeper-boot.service "
        "bootkeeper-sysext.service || true",
    )
    # installed, runs, and nothing enabled by the package itself
    assert out.splitlines() == ["install ok installed", "bootkeeper 0.1.0", "/usr/bin/bootkeeper", *["disabled"] * 3]
    assert list((tree / "usr/lib/python3/dist-packages/bootkeeper/__pycache__").glob("*.pyc"))  # py3compile ran
    _check_install_units_on_a_packaged_node(tree)
    # and inside the node itself, with its own Python and the package's paths
    out = nodevm.chroot(tree, "bootkeeper install-units --json >/dev/null && systemctl list-unit-files 'bootkeeper-*'")
    assert re.search(r"^bootkeeper-bless\.service\s+enabled", out, re.M), out


@pytest.mark.integration
def test_two_builds_give_the_same_bytes(deb: Path, tmp_path: Path) -> None:
    """scripts/build-deb.sh is reproducible: SOURCE_DATE_EPOCH from debian/changelog."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/build-deb.sh"), str(tmp_path)],
        capture_output=True, text=True, check=False, env={**os.environ, "TRIXIE_ROOT": str(TRIXIE)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).read_bytes() == deb.read_bytes()
