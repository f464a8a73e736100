"""A crash at every step of ``bootkeeper update`` (docs/updates.md, Staging): the real CLI, held at each
announced step by ``BOOTKEEPER_TEST_STEP_PAUSE`` (src/bootkeeper/esp/stephook.py), killed there with
SIGKILL. Applying: the model of systemd-boot 252 and 262 boots the old or the new OS with its own
extensions after every kill, and a re-run ends in the ESP an uninterrupted run makes. Downloading: the
ESP is never touched, no ``release.json`` says complete before every file is checked, and the next run
resumes a ``.part`` (the same file, completed) or cleans what it finds, ending in the same bytes.

The steps are those a first run with a pause of 0 announces; a release of a UKI of about 100 KB (trixie's
systemd-stub, signed by the real ``sbsign``) and one extension built by ``sysext build`` larger than one
copy chunk, so its download is announced half written."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import ukikit
from bootkeeper.update.layout import CHUNK
from helpers import bk, tree
from test_update import OS, ROLES, Node, _stand_in
from test_upgrade import boots_a_whole_set

pytestmark = [pytest.mark.integration]
ANNOUNCE = "bootkeeper: test pause before "
PAUSES = (0.05, 0.5, 3.0)  # seconds each step waits; a kill that came late is tried again with a longer one
EXT = "tools-v2.sysext.raw"
TEMP = re.compile(r"\.bootkeeper-[0-9a-f]+\.tmp")  # a temporary's random name (src/bootkeeper/fsutil.py)


def step_of(line: str) -> str:
    """An announcement's step, its temporaries' random names made alike."""
    return TEMP.sub(".bootkeeper-X.tmp", line.removeprefix(ANNOUNCE).rsplit(" (", 1)[0])


@dataclass(frozen=True)
class Kit:
    crt: Path
    uki: Path  # node-2.efi, signed
    ext: Path  # tools-v2.sysext.raw, signed, larger than one copy chunk
    layout: Path  # tags "2" (the UKI and the extension) and "lean" (the UKI alone)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    ukikit.need_tools()
    w = tmp_path_factory.mktemp("kit")
    key, crt = ukikit.key_pair(w, "good", "release good")
    d = w / "v2"
    plain = ukikit.make_uki(d, d / "plain.efi", f"{OS}IMAGE_ID=active\nIMAGE_VERSION=2\n", b"2" * 16384)
    uki = ukikit.sign(plain, d / "node-2.efi", key, crt)
    t = w / "tools-tree"
    (t / "usr/share/bk").mkdir(parents=True)
    (t / "usr/share/bk/noise").write_bytes(os.urandom(CHUNK + CHUNK // 4))  # incompressible: two chunks
    (w / "os-release").write_text(OS)
    ext = w / EXT
    r = bk("sysext", "build", t, "-o", ext, "--key", key, "--cert", crt, "--os-release", w / "os-release")
    assert r.returncode == 0, r.stderr
    assert ext.stat().st_size > CHUNK
    layout = w / "layout"
    for tag, more in (("2", [ext]), ("lean", [])):
        r = bk("release", "push", uki, *more, "--to", f"ocifile:{layout}:{tag}")
        assert r.returncode == 0, r.stderr
    return Kit(crt, uki, ext, layout)


def make_node(at: Path, kit: Kit) -> Node:
    root = at / "root"
    (root / "etc/bootkeeper").mkdir(parents=True)
    (root / "etc/os-release").write_text(f"{OS}IMAGE_ID=kairos\nIMAGE_VERSION=1\n")
    esp = at / "efi"
    (esp / "EFI/Linux").mkdir(parents=True)
    (esp / "loader").mkdir()
    (esp / "loader/loader.conf").write_text("timeout 0\n")
    for r in ROLES:
        (esp / "EFI/Linux" / f"{r}+3.efi").write_bytes(_stand_in(r))
    shutil.copy(kit.crt, root / "etc/bootkeeper/release.crt")
    cfg = at / "bootkeeper.yaml"
    cfg.write_text("sysext:\n  certificates: [/etc/bootkeeper/release.crt]\n")
    return Node(root, esp, cfg)


def copy_node(src: Node, at: Path) -> Node:
    shutil.copytree(src.root.parent, at, symlinks=True)
    return Node(at / "root", at / "efi", at / "bootkeeper.yaml")


def copies(template: Node, where: Path, k: int) -> Callable[[int], Node]:
    """Fresh copies of ``template`` for the kills before step ``k``, one per attempt."""
    return lambda attempt: copy_node(template, where / f"{k}-{attempt}")


def command(node: Node, *args: str) -> list[str]:
    return [sys.executable, "-m", "bootkeeper", "update", "--root", str(node.root), "--esp", str(node.esp),
            "--config", str(node.config), *args]  # fmt: skip


def announced(node: Node, *args: str) -> list[str]:
    """The steps an uninterrupted run announces (a pause of 0), in order."""
    env = {**os.environ, "BOOTKEEPER_TEST_STEP_PAUSE": "0"}
    p = subprocess.run(command(node, *args), capture_output=True, text=True, env=env, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    return [step_of(line) for line in p.stderr.splitlines() if line.startswith(ANNOUNCE)]


def kill_at(node: Node, k: int, step: str, pause: float, *args: str) -> bool:
    """The run killed with SIGKILL while it waits before its ``k``-th announced step (0-based), which
    must be ``step``; False when the kill came late (the run announced a later step first)."""
    env = {**os.environ, "BOOTKEEPER_TEST_STEP_PAUSE": f"{pause:g}"}
    proc = subprocess.Popen(command(node, *args), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        assert proc.stderr is not None
        seen = 0
        for line in proc.stderr:
            if not line.startswith(ANNOUNCE):
                continue
            if seen == k:
                proc.send_signal(signal.SIGKILL)
                assert step_of(line) == step, (k, line)
                break
            seen += 1
        else:
            pytest.fail(f"the run ended (rc {proc.wait()}) before step {k} ({step})")
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
    return ANNOUNCE not in rest


def crash(k: int, step: str, *args: str, fresh: Callable[[int], Node]) -> Node:
    """A fresh node (``fresh(attempt)``) whose run was killed before step ``k``."""
    for attempt, pause in enumerate(PAUSES):
        n = fresh(attempt)
        if kill_at(n, k, step, pause, *args):
            return n
    pytest.fail(f"step {k} ({step}): every kill came after the next step, even with a pause of {PAUSES[-1]} s")


def test_a_kill_at_every_step_of_apply_boots_a_whole_set_and_a_rerun_completes(tmp_path: Path, kit: Kit) -> None:
    src = f"ocifile:{kit.layout}:2"
    template = make_node(tmp_path / "template", kit)
    r = template.bk("--download-only", "--source", src)
    assert r.returncode == 0, r.stderr
    whole = copy_node(template, tmp_path / "whole")
    steps = announced(whole, "--apply-downloaded")
    expected = tree(whole.esp)
    assert len(steps) > 10, steps
    assert (whole.esp / "EFI/Linux/active.efi.extra.d" / EXT).read_bytes() == kit.ext.read_bytes()
    r = whole.bk("--apply-downloaded")  # after completion: nothing changes
    assert r.returncode == 0, r.stderr
    assert tree(whole.esp) == expected
    old = (template.esp / "EFI/Linux/active+3.efi").read_bytes()
    new = kit.uki.read_bytes()
    known = {old: {}, new: {EXT: kit.ext.read_bytes()}}
    known |= {_stand_in(r): {} for r in ROLES}
    for k, step in enumerate(steps):
        node = crash(k, step, "--apply-downloaded", fresh=copies(template, tmp_path, k))
        boots_a_whole_set(node.esp, known, old, new)
        r = node.bk("--apply-downloaded")
        assert r.returncode == 0, (k, step, r.stderr)
        assert tree(node.esp) == expected, (k, step)
        assert not list(node.esp.rglob(".bootkeeper*")), (k, step)
        r = node.bk("--apply-downloaded")
        assert r.returncode == 0, (k, step, r.stderr)
        assert tree(node.esp) == expected, (k, step)
        shutil.rmtree(node.root.parent)


def _staged_truth(staging: Path, truth: dict[str, bytes]) -> None:
    """Every ``release.json`` that says complete lists files there, each the release's own bytes."""
    for rec in staging.glob("*/release.json"):
        doc = json.loads(rec.read_text())
        if doc["complete"] is not True:
            continue
        for name in [doc["uki"], *doc["extensions"]]:
            path = rec.parent / name
            assert path.is_file() and path.read_bytes() == truth[name], f"{rec}: complete, but {name} is not"


def test_a_kill_at_every_step_of_a_download_is_resumed_or_cleaned(tmp_path: Path, kit: Kit) -> None:
    """The node has an older release downloaded (the UKI alone): the new download removes it, fetches
    two files (the extension in two chunks) and writes its record; killed at each step."""
    src = f"ocifile:{kit.layout}:2"
    template = make_node(tmp_path / "template", kit)
    r = template.bk("--download-only", "--source", f"ocifile:{kit.layout}:lean")
    assert r.returncode == 0, r.stderr
    esp_before = tree(template.esp)
    whole = copy_node(template, tmp_path / "whole")
    steps = announced(whole, "--download-only", "--source", src)
    expected = tree(whole.staging)
    kinds = {s.split(":", 1)[0] for s in steps}
    assert {"staging-remove", "staging-blob", "staging-part", "staging-rename", "staging-record"} <= kinds, steps
    assert sum(s.startswith(f"staging-part:{EXT}:") for s in steps) == 2, steps
    assert not [n for n in expected if n.endswith(".part")] and len(expected) == 4, sorted(expected)
    truth = {"node-2.efi": kit.uki.read_bytes(), EXT: kit.ext.read_bytes()}
    for k, step in enumerate(steps):
        node = crash(k, step, "--download-only", "--source", src, fresh=copies(template, tmp_path, k))
        assert tree(node.esp) == esp_before, (k, step)
        _staged_truth(node.staging, truth)
        parts = {p.name.removesuffix(".part"): p.stat().st_ino for p in node.staging.glob("*/*.part")}
        if step.startswith(f"staging-part:{EXT}:{CHUNK}/"):  # killed half way through the extension
            assert 0 < next(node.staging.glob(f"*/{EXT}.part")).stat().st_size < kit.ext.stat().st_size
        r = node.bk("--download-only", "--source", src)
        assert r.returncode == 0, (k, step, r.stderr)
        assert tree(node.staging) == expected, (k, step)
        for name, ino in parts.items():  # a .part is resumed: the same file, completed and renamed
            assert next(node.staging.glob(f"*/{name}")).stat().st_ino == ino, (k, step, name)
        assert tree(node.esp) == esp_before, (k, step)
        r = node.bk("--download-only", "--source", src)  # after completion: nothing changes
        assert r.returncode == 0 and tree(node.staging) == expected, (k, step, r.stderr)
        shutil.rmtree(node.root.parent)
