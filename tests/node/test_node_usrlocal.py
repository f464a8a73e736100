"""A persistent /usr/local under merged extensions, on the node (issue 26, item 1; seed 003: "as soon as
sysext finds any extensions it creates an overlayfs on /usr ... our current /usr/local with all the state
and such gets lost").

One boot of the node of test_node.py (systemd 257) with a signed extension (tools-a, /usr/bin/bk-hello-
tools-a) installed for active and ``bktest/usrlocal`` on the ESP, which turns on the rig's
bktest-usrlocal.service: before any extension is merged, /var/lib/bktest/usrlocal (root file system,
seeded once from the image's /usr/local with a marker) is bind-mounted on /usr/local, as a Kairos node
mounts its persistent /usr/local, and a folder on /usr/share/pki/trust/anchors. Once the boot is up,
bktest-usrlocal-check.service (tests/node/guest/usrlocal.sh) reports what the node sees with the
extension merged by bootkeeper's units; then, in a private mount namespace inside the guest instead of
another boot, the control: README's old example, hierarchies [/usr, /opt, /usr/local], with an
extension that ships /usr/local content.

This machine's systemd-sysext 252, which hides /usr/local where 257 keeps it, is shown in
tests/sysext/test_submounts.py (the same checks in a private namespace on the host).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import nodevm
from test_node import Node, node_factory, pieces, retry_on_guest_crash

pytestmark = pytest.mark.node

__all__ = ["node_factory", "pieces"]  # fixtures, used by name


def _checks(b: nodevm.Boot) -> dict[str, dict[str, str]]:
    out = {}
    for line in b.mark("UL_CHECK"):
        phase, *kv = line.split()
        out[phase] = dict(x.split("=", 1) for x in kv)
    return out


def _by_phase(b: nodevm.Boot, key: str) -> dict[str, str]:
    return dict(line.partition(" ")[::2] for line in b.mark(key))


def _merged_into(sx: str, hierarchy: str) -> Any:
    return next(h["extensions"] for h in json.loads(sx) if h["hierarchy"] == hierarchy)


@retry_on_guest_crash
def test_persistent_usr_local_stays_visible_and_writable_with_extensions_merged(
    pieces: dict[str, Path], tmp_path: Path, node_factory: list[Node]
) -> None:
    node = Node(
        tmp_path,
        "usrlocal: a persistent /usr/local under merged extensions",
        [],
        sysexts={"tools-a": pieces["tools-a"]},
        files={"bktest/usrlocal": "1\n"},
    )
    node_factory.append(node)
    b = node.boot()
    checks = _checks(b)
    said = "\n".join(f"{k} {v}" for k in ("UL_CHECK", "UL_CTL", "UL_SX", "UL_STATUS", "UL_MOUNTS") for v in b.mark(k))
    print(said)  # in the test's output when an assertion below fails
    assert set(checks) == {"merged", "control", "after-control"}, f"{said}\nsee {node.work}/boot1.log"
    sx, status, mounts = _by_phase(b, "UL_SX"), _by_phase(b, "UL_STATUS"), _by_phase(b, "UL_MOUNTS")

    # bootkeeper's default on systemd 257: the extension merged into /usr, its tool runs, and the
    # persistent /usr/local and the anchors' bind mount are the node's own, readable and writable
    # (the write reached the persistent folder); status reports nothing shadowed
    assert _merged_into(sx["merged"], "/usr") == ["tools-a"], sx
    assert checks["merged"] == {
        "marker": "persistent_marker",
        "write": "ok",
        "persisted": "yes",
        "tool": "hello_from_tools-a",
        "anchor": "bktest_anchor",
    }, checks
    assert "/usr/local ext4 rw" in mounts["merged"] and "/usr overlay ro" in mounts["merged"], mounts
    merged = json.loads(status["merged"])
    assert merged["shadowed"] == [] and not any("shadowed" in w for w in merged["warnings"]), status

    # the control: hierarchies [/usr, /opt, /usr/local] and an extension with /usr/local content: a
    # read-only overlay of its own hides the persistent folder; status names it
    ctl = b.first("UL_CTL") or ""
    assert ctl.startswith("rc=0"), ctl
    assert "bktest-ctl" in _merged_into(sx["control"], "/usr/local"), sx
    assert checks["control"] == {
        "marker": "MISSING",
        "write": "fail",
        "persisted": "no",
        "tool": "hello_from_tools-a",
        "anchor": "bktest_anchor",
    }, checks
    shown = json.loads(status["control"])
    assert [(s["target"], s["by"]) for s in shown["shadowed"]] == [("/usr/local", "/usr/local")], shown
    assert any("/usr/local (ext4 " in w and "is shadowed by systemd-sysext's overlay" in w for w in shown["warnings"])

    # the control stayed in its namespace
    assert checks["after-control"] == checks["merged"] | {"persisted": "yes"}, checks
    assert node.rows[0].verdict == "good", node.table()
