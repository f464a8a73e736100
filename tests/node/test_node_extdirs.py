"""The other extension folders and permissive mode on the real node (issue 26 items 5 and 4): one
boot of the node of test_node.py (systemd 257, enforced mode, the four extensions of scenario 1 on
the ESP) with two more images on its root file system, written into the disk's ext4 with debugfs:

* ``/var/lib/extensions/intruder.raw``, signed by a key the node does not trust: activation moves it
  into ``/var/lib/bootkeeper/quarantine/var-lib-extensions/``, so systemd-sysext (under the strict
  policy, which would refuse the whole set for it) merges the rest and ``bk-hello-intruder`` is absent;
* ``/etc/extensions/resident.raw``, signed by the trusted key: judged in place, kept, merged.

The same boot then runs sysext-compare.sh: permissive mode places tools-a, tools-b and the unsigned
plain (which the node's systemd-sysext merges under its own policy) but not rogue (a signature it cannot
verify would make it merge none), and the real ``systemd-sysext refresh`` merges them all.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import nodevm
from test_node import GuestCrash, Node, _marks_json, _merged, _runs, _unit, node_factory, pieces

pytestmark = pytest.mark.node

__all__ = ["node_factory", "pieces"]  # fixtures, used by name

Q = "/var/lib/bootkeeper/quarantine"


def _extension(work: Path, name: str, key: Path, crt: Path) -> Path:
    """``NAME.raw`` shipping /usr/bin/bk-hello-NAME, built for the guest's OS by ``sysext build``."""
    tree = work / f"tree-{name}"
    (tree / "usr/bin").mkdir(parents=True)
    hello = tree / "usr/bin" / f"bk-hello-{name}"
    hello.write_text(f"#!/bin/sh\necho 'hello from {name}'\n")
    hello.chmod(0o755)
    out = work / f"{name}.raw"
    nodevm.bk("sysext", "build", str(tree), "-o", str(out), "--key", str(key), "--cert", str(crt),
              "--os-release", str(nodevm.GUEST / "usr/lib/os-release"))  # fmt: skip
    return out


def _merged_names(b: nodevm.Boot, phase: str) -> list[str]:
    got = _merged(b, phase)
    assert isinstance(got, list), got  # "none" when nothing merged
    return sorted(str(x) for x in got)


def _into_root(disk: Path, files: dict[str, Path]) -> None:
    """Write ``files`` (path in the guest -> host file) into the root file system of ``disk`` with
    debugfs (the ext4 at ROOT_START_MIB; no mounting), creating their folders."""
    fs = f"{disk}?offset={nodevm.ROOT_START_MIB * 1024 * 1024}"
    cmds = []
    for guest in sorted({str(Path(g).parent) for g in files}):
        parts = Path(guest).parts[1:]
        cmds += [f"mkdir /{'/'.join(parts[: i + 1])}" for i in range(len(parts))]
    for guest, host in files.items():
        cmds += [f"write {host} {guest}", f"sif {guest} mode 0100644", f"sif {guest} uid 0", f"sif {guest} gid 0"]
    subprocess.run(["debugfs", "-w", "-f", "-", fs], input="\n".join(cmds) + "\n", capture_output=True,
                   text=True, check=True)  # fmt: skip
    listing = subprocess.run(["debugfs", "-R", f"ls -p {Path(next(iter(files))).parent}", fs],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert Path(next(iter(files))).name in listing, listing


def test_untrusted_image_in_var_lib_extensions_is_quarantined_and_permissive_merges_the_rest(
    pieces: dict[str, Path], tmp_path: Path, node_factory: list[Node]
) -> None:
    try:
        _scenario(pieces, tmp_path / "try1", node_factory)
    except GuestCrash:  # a guest kernel that crashed by itself under TCG: once more from a fresh disk
        node_factory[-1].title += " (abandoned: the guest crashed by itself)"
        _scenario(pieces, tmp_path / "try2", node_factory)


def _scenario(pieces: dict[str, Path], tmp_path: Path, node_factory: list[Node]) -> None:
    k = nodevm.keys()
    work = tmp_path / "images"
    work.mkdir(parents=True)
    intruder = _extension(work, "intruder", k.other_key, k.other_crt)
    resident = _extension(work, "resident", k.good_key, k.good_crt)
    files: dict[str, Path | str] = {"bktest/extdirs": "1\n", "bktest/sysext-compare": "1\n"}
    node = Node(tmp_path / "node", "extension folders: an untrusted image in /var/lib/extensions", [],
                sysexts=pieces, files=files)  # fmt: skip
    node_factory.append(node)
    _into_root(node.disk, {"/var/lib/extensions/intruder.raw": intruder, "/etc/extensions/resident.raw": resident})
    b = node.boot()

    # activation judged both in place: the untrusted one moved aside, the trusted one kept
    residents = {r["name"]: r for r in json.loads(b.first("XD_RESIDENTS") or "[]")}
    assert {n: (r["verdict"], r["kept"]) for n, r in residents.items()} == {
        "intruder.raw": ("refused", False),
        "resident.raw": ("passed", True),
    }, residents
    assert residents["intruder.raw"]["quarantined"] == f"{Q}/var-lib-extensions/intruder.raw"
    assert any("no trusted certificate" in w for w in residents["intruder.raw"]["reasons"]), residents
    lists = {line.split(" ", 1)[0]: line.split()[1:] for line in b.mark("XD_LS")}
    assert lists == {"var": [], "etc": ["resident.raw"]}, lists
    assert (b.first("XD_QUARANTINE") or "").split() == ["./var-lib-extensions/intruder.raw"]

    # the real systemd-sysext (strict policy, enforced) merged the rest: nothing of the intruder
    usr = [h for h in json.loads(b.first("XD_STATUS") or "[]") if h["hierarchy"] == "/usr"]
    assert sorted(usr[0]["extensions"]) == ["resident", "tools-a", "tools-b"], b.mark("XD_SYSEXT_LOG")
    runs = {line.split()[0]: line.split()[1] for line in b.mark("XD_RUN")}
    assert runs == {"bk-hello-intruder": "missing", "bk-hello-resident": "ok"}
    assert _unit(b, "systemd-sysext.service")["Result"] == "success"
    assert _unit(b, "boot-complete.target")["ActiveState"] == "active"

    # item 4, the same boot: permissive places what systemd-sysext merges, and it merges them all
    perm = _marks_json(b, "SX_ACTIVATE", "permissive")
    got = {i["name"]: (i["verdict"], i["placed"]) for i in perm["images"]}
    assert got == {
        "tools-a.sysext.raw": ("passed", True),
        "tools-b.sysext.raw": ("passed", True),
        "rogue.sysext.raw": ("refused", False),
        "plain.sysext.raw": ("failed-but-placed", True),
    }, got
    (rogue,) = [i for i in perm["images"] if i["name"] == "rogue.sysext.raw"]
    assert any(w.startswith("permissive: not placed, systemd-sysext would not merge it") for w in rogue["reasons"])
    refresh = {line.split()[0]: line for line in b.mark("SX_REFRESH")}
    assert "rc=0" in refresh["permissive"], refresh
    assert _merged_names(b, "permissive") == ["plain", "resident", "tools-a", "tools-b"]
    assert _runs(b, "permissive") == {"tools-a": True, "tools-b": True, "rogue": False, "plain": True}
    assert _merged_names(b, "enforced-again") == ["resident", "tools-a", "tools-b"]
