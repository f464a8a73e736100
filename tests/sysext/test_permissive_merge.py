"""Permissive mode that does not lose everything (issue 26 item 4): ``sysext activate --mode
permissive`` places only what the node's systemd-sysext would merge, and the real systemd-sysext then
merges them, beside an image it would refuse.

What the real tools do with one bad image among good ones (``refresh --root``, unprotected GPT images,
which need no device mapper: this machine has none), measured here and asserted by the controls below:

* no extension-release of the image's own name, or a file that is no disk image: 252 and 257 merge
  none ("Failed to read metadata for image ...": systemd v257 src/sysext/sysext.c:
  image_discover_and_read_metadata() fails on the first image whose metadata cannot be read;
  systemd#32762, its fix #32967 not merged);
* a wrong ID (extension_release_validate(), src/shared/extension-util.c, returns 0): that image alone
  is skipped, the others merge, in 252 and 257 alike;
* a signature that does not verify (needs dm-verity: shown on the node, reference/vm/NOTES.md
  scenario 3, tests/node/test_node.py scenario 1): none.

systemd-sysext 252 runs from this machine, 257 from the trixie tree, each in a private mount namespace
whose mounts are shared within it, so the overlay its child process mounts is seen by ``ls``.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

import trixie
from bootkeeper.sysext import gpt

pytestmark = [pytest.mark.integration, pytest.mark.root]

GOOD = ["tools-a.raw", "tools-b.raw"]
HOST_OS = Path("/usr/lib/os-release")


def _image(work: Path, name: str, release: dict[str, str], out: Path) -> Path:
    """An unprotected sysext (GPT, one root-x86-64 squashfs partition) shipping /usr/bin/hello-STEM;
    ``release``: extension-release file name -> its text."""
    stem = name.removesuffix(".raw")
    tree = work / f"tree-{stem}"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin" / f"hello-{stem}").write_text(f"#!/bin/sh\necho {stem}\n")
    for fname, text in release.items():
        d = tree / "usr/lib/extension-release.d"
        d.mkdir(parents=True, exist_ok=True)
        (d / fname).write_text(text)
    fs = work / f"{stem}.squashfs"
    subprocess.run(["mksquashfs", str(tree), str(fs), "-quiet", "-noappend", "-all-root"], check=True)
    part = gpt.NewPartition(gpt.TYPES["root"]["x86-64"], str(uuid.uuid4()), "root-x86-64", fs.read_bytes())
    with (out / name).open("wb") as f:
        gpt.write(f, [part], str(uuid.uuid4()))
    return out / name


def _images(work: Path, os_release: Path) -> dict[str, Path]:
    osrel = dict(
        line.split("=", 1) for line in os_release.read_text().splitlines() if "=" in line and not line.startswith("#")
    )
    ver = osrel["VERSION_ID"].strip('"')
    out = work / "images"
    out.mkdir()
    return {
        "tools-a.raw": _image(
            work, "tools-a.raw", {"extension-release.tools-a": f"ID=debian\nVERSION_ID={ver}\n"}, out
        ),
        "tools-b.raw": _image(work, "tools-b.raw", {"extension-release.tools-b": "ID=_any\n"}, out),
        # its extension-release is named for another image: systemd cannot read its metadata
        "misnamed.raw": _image(work, "misnamed.raw", {"extension-release.other": "ID=_any\n"}, out),
        "fedora.raw": _image(work, "fedora.raw", {"extension-release.fedora": "ID=fedora\nVERSION_ID=40\n"}, out),
    }


def _root(work: Path, os_release: Path) -> Path:
    root = work / "r"
    for d in ("usr/lib", "opt", "etc", "oem", ".extra/sysext"):
        (root / d).mkdir(parents=True)
    shutil.copyfile(os_release, root / "usr/lib/os-release")
    (root / "oem/90_sysext.yaml").write_text(
        "sysext:\n  mode: permissive\n  verity_dirs: []\n  firmware: []\n  sources: []\n"
    )
    return root


def _activate(root: Path, images: dict[str, Path]) -> dict[str, Any]:
    for p in images.values():
        shutil.copyfile(p, root / ".extra/sysext" / p.name)
    r = subprocess.run(
        [sys.executable, "-m", "bootkeeper", "sysext", "activate", "--root", str(root), "--no-refresh", "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


# the mounts systemd-sysext's child makes must propagate back to the namespace that looks at them
SHARED = "mount --make-rshared / && mount -t tmpfs tmpfs /run && mount --make-rshared /run"


def _merge_252(root: Path) -> tuple[list[str], str]:
    script = f"{SHARED} && systemd-sysext refresh --root={shlex.quote(str(root))}; ls {shlex.quote(str(root))}/usr/bin"
    p = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True, text=True, check=False
    )
    return sorted(p.stdout.split()), p.stderr


def _merge_257(work: Path) -> tuple[list[str], str]:
    p = trixie.run("mount --make-rshared / && mount --make-rshared /run && systemd-sysext refresh --root=/work/r; "
                   "ls /work/r/usr/bin", work)  # fmt: skip
    return sorted(p.stdout.split()), p.stderr


def _control(root: Path, images: dict[str, Path]) -> None:
    """Every image in /run/extensions, as permissive placed them before: the real tool's verdict."""
    dest = root / "run/extensions"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for p in images.values():
        shutil.copyfile(p, dest / p.name)


def _check(report: dict[str, Any], root: Path) -> None:
    got = {i["name"]: i for i in report["images"]}
    assert {n: (i["verdict"], i["placed"]) for n, i in got.items()} == {
        "tools-a.raw": ("failed-but-placed", True),  # unprotected: bootkeeper's policy wants signed
        "tools-b.raw": ("failed-but-placed", True),
        "misnamed.raw": ("refused", False),
        "fedora.raw": ("refused", False),
    }
    assert sorted(p.name for p in (root / "run/extensions").iterdir()) == GOOD
    (why,) = [r for r in got["misnamed.raw"]["reasons"] if r.startswith("permissive: not placed")]
    assert "no usr/lib/extension-release.d/extension-release.misnamed" in why and "\n" not in why
    (why,) = [r for r in got["fedora.raw"]["reasons"] if r.startswith("permissive: not placed")]
    assert "ID=fedora, the host is debian" in why


def test_permissive_places_what_systemd_sysext_252_merges(tmp_path: Path) -> None:
    assert shutil.which("systemd-sysext") and shutil.which("mksquashfs"), "scripts/setup-test-deps.sh installs them"
    images = _images(tmp_path, HOST_OS)
    root = _root(tmp_path, HOST_OS)
    # control: all four in /run/extensions (what permissive placed before): 252 merges none
    _control(root, images)
    merged, err = _merge_252(root)
    assert merged == [] and "Failed to read metadata for image misnamed" in err, err
    # without the misnamed one, the wrong ID alone is skipped and the two good ones merge
    (root / "run/extensions/misnamed.raw").unlink()
    merged, err = _merge_252(root)
    assert merged == ["hello-tools-a", "hello-tools-b"], err
    shutil.rmtree(root / "run/extensions")

    report = _activate(root, images)
    _check(report, root)
    merged, err = _merge_252(root)
    assert merged == ["hello-tools-a", "hello-tools-b"], err


def test_permissive_places_what_systemd_sysext_257_merges(tmp_path: Path) -> None:
    if not trixie.available():
        pytest.fail(f"no systemd 257 tree at {trixie.ROOT}: scripts/setup-trixie.sh makes it (make test runs it)")
    osrel = trixie.ROOT / "usr/lib/os-release"
    images = _images(tmp_path, osrel)
    root = _root(tmp_path, osrel)
    _control(root, images)
    merged, err = _merge_257(tmp_path)
    assert merged == [] and "Failed to read metadata for image misnamed" in err, err
    shutil.rmtree(root / "run/extensions")

    report = _activate(root, images)
    _check(report, root)
    merged, err = _merge_257(tmp_path)
    assert merged == ["hello-tools-a", "hello-tools-b"], err
