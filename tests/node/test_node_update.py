"""Updates that come to the node, and a recovery that repairs it (docs/updates.md), on the real node of
test_node.py: bootkeeper on a Debian 13 guest booted by systemd-boot 257 under QEMU.

The releases are the OS versions of nodevm (``os_ukis``: v1 to v4, each signed by ``sbsign`` with the
key the node trusts) with their versioned extension (``update_sysexts``: ``tools-vN.sysext.raw``,
``SYSEXT_ID=tools``), pushed by the host's ``bootkeeper release push`` to Debian's docker-registry on
127.0.0.1 with TLS from a test CA (noderegistry.py). The guest reaches that registry and nothing else:
QEMU's user network with ``restrict=on`` and one ``guestfwd`` (nodevm.NetSpec), at 10.0.2.100:5000; it
trusts the CA through ``update.ca_file``, a copy on its ESP. A scenario's own config is
``bktest/oem.yaml`` on the ESP (bktest-goodboot-oem.service puts it at /oem/95-bktest.yaml). The node
stays up after its report (``bktest/stay-up``: the seconds until the rig powers it off), so the update
timer or the repair can run and reboot it (QEMU's -no-reboot ends the machine there).

Scenarios (each boot's row in the run's summary, as the other node tests):

* rig: one boot with the NIC and the USB stick: the guest fetches the registry's ``/v2/`` over TLS
  with the CA, reaches no other address, and sees the stick as a removable disk;
* (a)+(b), one machine: a node on v1 updates itself from its timer to v2 (tools-v2 replaces tools-v1),
  v2 is blessed, v1 with tools-v1 is passive; v3 fails its health check, its tries run out, v2 (passive)
  runs; v4 pushed as stable replaces the bad v3 by the next scheduled update, with no hand step, and is
  blessed;
* (c) active and passive both out of tries: recovery boots and repairs from the registry, the node is
  back on a blessed active with recovery's counter re-armed;
* (d) the same with no NIC, the release on the USB stick (an OCI layout by ``release push --to
  ocifile:``);
* (e) no NIC, no stick: the repair cannot finish, recovery's tries run out, statereset boots, hands
  back to a re-armed active; the repair attempts are in the history.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import noderegistry
import nodevm
import test_node
from test_node import Node, retry_on_guest_crash

# the node suite's fixtures, found by pytest under these names in this module
pieces = test_node.pieces
node_factory = test_node.node_factory

pytestmark = pytest.mark.node

CA_ON_ESP = "bktest/ca.pem"
STAY_UP = 240  # seconds a node stays up for its timer or repair before the rig powers it off
STAY_UP_IDLE = 45  # where nothing is expected: enough for the timer (every 10 s) to check and find nothing


def oem(source: str | None, *, auto_apply: bool = True) -> str:
    """The scenario's /oem/95-bktest.yaml: the update section (docs/updates.md)."""
    lines = ["# tests/node/test_node_update.py", "update:"]
    if source is not None:
        lines.append(f'  source: "{source}"')
    lines += [
        "  channel: stable",
        '  schedule: "*:*:0/10"',
        "  randomized_delay: 0",
        f"  auto_apply: {'true' if auto_apply else 'false'}",
        f"  ca_file: /efi/{CA_ON_ESP}",
    ]
    return "\n".join(lines) + "\n"


def push(version: str, to: str, *, tag: str | None = "stable", ca: Path | None = None) -> str:
    """``bootkeeper release push`` (the host's) of OS ``version`` with its tools extension."""
    uki, ext = nodevm.os_ukis()[f"v{version}"], nodevm.update_sysexts()[f"v{version}"]
    args = ["release", "push", str(uki), str(ext), "--to", to]
    if tag is not None:
        args += ["--tag", tag]
    if ca is not None:
        args += ["--ca-file", str(ca)]
    return nodevm.bk(*args)


def _known() -> dict[bytes, str]:
    """What each file the scenarios put on an ESP is, by its bytes."""
    known = {hashlib.sha256(p.read_bytes()).digest(): r for r, p in nodevm.ukis().items()}
    known.update({hashlib.sha256(p.read_bytes()).digest(): v for v, p in nodevm.os_ukis().items()})
    known.update({hashlib.sha256(p.read_bytes()).digest(): f"tools {v}" for v, p in nodevm.update_sysexts().items()})
    return known


class UpdateNode(Node):
    """The node of test_node.py that stays up after its report for the update timer or the repair."""

    def esp_state(self) -> dict[str, str]:
        """Every file under EFI/Linux, named by what it is ("v2", "tools v2", "recovery"), else its size."""
        esp = nodevm.esp_extract(self.disk, self.work / "esp-now")
        known = _known()
        linux = esp / "EFI/Linux"
        return {
            p.relative_to(linux).as_posix(): known.get(
                hashlib.sha256(p.read_bytes()).digest(), f"? {p.stat().st_size} B"
            )
            for p in sorted(x for x in linux.rglob("*") if x.is_file())
        }

    def stay_up(self, seconds: int) -> None:
        nodevm.esp_write(self.disk, "bktest/stay-up", f"{seconds}\n")

    def boot(self, *, kill_on: str | None = None) -> nodevm.Boot:
        b = super().boot(kill_on=kill_on)
        row = self.rows[-1]
        if b.first("STAYING") is not None:
            row.then = {
                "reboot": "stayed up; rebooted by the update or the repair",
                "poweroff": "stayed up; nothing rebooted it: powered off by the rig",
            }.get(b.ending, row.then)
        return b


def _os(b: nodevm.Boot) -> tuple[str | None, str | None]:
    """(the OS the UKI runs, what its merged extension's bk-hello-tools printed)."""
    return b.first("OS"), b.first("TOOLS")


def _history(b: nodevm.Boot) -> Any:
    raw = b.first("HISTORY_JSON")
    assert raw, "no @@@ HISTORY_JSON line (bktest/history on the ESP)"
    return json.loads(raw)


def _repairs(history: Any) -> list[dict[str, Any]]:
    """Every record of a repair attempt in ``bootkeeper history show --json``: a list ``repairs``, or any
    record whose ``event``/``type``/``kind`` is ``repair``."""
    found: list[dict[str, Any]] = []

    def walk(x: Any, key: str = "") -> None:
        if isinstance(x, dict):
            if key == "repairs" or "repair" in (x.get("event"), x.get("type"), x.get("kind")):
                found.append(x)
                return
            for k, v in x.items():
                walk(v, k)
        elif isinstance(x, list):
            for v in x:
                walk(v, key)

    walk(history)
    return found


def _counters(disk: Path) -> dict[str, str]:
    """role -> its file name on the ESP."""
    return {test_node._role_of(n): n for n in nodevm.esp_names(disk) if n.endswith(".efi")}


def _out_of_tries(node: Node, *roles: str) -> None:
    """Rename each role's UKI to ``ROLE+0-2.efi`` (its tries used up), as two failed boots leave it."""
    for role in roles:
        name = _counters(node.disk)[role]
        subprocess.run(
            ["mren", "-i", f"{node.disk}@@1M", f"::/EFI/Linux/{name}", f"::/EFI/Linux/{role}+0-2.efi"],
            check=True,
            capture_output=True,
            env=nodevm.MT_ENV,
        )


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[noderegistry.Registry]:
    """One docker-registry for the module (TLS, the test CA); each scenario pushes to its own repository."""
    with noderegistry.registry(tmp_path_factory.mktemp("registry")) as r:
        yield r


@pytest.fixture(scope="module")
def releases() -> dict[str, Path]:
    """Every OS's signed UKI and versioned extension, built before the first boot."""
    osu, upd = nodevm.os_ukis(), nodevm.update_sysexts()
    return {**osu, **{f"tools-{v}": p for v, p in upd.items()}}


# -- the rig ---------------------------------------------------------------------------------------


@retry_on_guest_crash
def test_rig_the_guest_reaches_the_registry_alone_and_sees_the_stick(
    pieces: dict[str, Path], tmp_path: Path, node_factory: list[Node]
) -> None:
    ca = noderegistry.tls().ca
    node = UpdateNode(
        tmp_path, "update rig: NIC to the registry, USB stick", [], files={"bktest/rigcheck": "1\n", CA_ON_ESP: ca}
    )
    node_factory.append(node)
    stick_tree = tmp_path / "stick-tree"
    (stick_tree / "bootkeeper-release").mkdir(parents=True)
    (stick_tree / "bootkeeper-release" / "hello.txt").write_text("on the stick\n")
    node.stick = nodevm.make_stick(stick_tree, tmp_path / "stick.img")
    assert nodevm.stick_tree(node.stick) == ["bootkeeper-release", "bootkeeper-release/hello.txt"]
    with noderegistry.registry(tmp_path / "registry") as reg:
        node.net = reg.net
        b = node.boot()
        log = (reg.folder / "registry.log").read_text()
    assert b.first("HEALTH") == "ok" and b.ending == "poweroff"
    assert "eth0" in (b.first("NET_LINKS") or "").split() or any(
        x.startswith("en") for x in (b.first("NET_LINKS") or "").split()
    ), b.first("NET_LINKS")
    assert b.first("WAIT_ONLINE") == "rc=0", b.first("WAIT_ONLINE")
    assert b.first("REGISTRY") == "status=200 api=registry/2.0", b.first("REGISTRY")
    assert "GET /v2/" in log  # through the guestfwd, to this registry
    # restrict=on: the gateway (the host's loopback under slirp) is not reached
    assert (b.first("OUTSIDE") or "").startswith("refused="), b.first("OUTSIDE")
    blocks = {
        line.split()[0]: dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv) for line in b.mark("BLOCK")
    }
    assert blocks["vda"]["removable"] == "0"
    sticks = [n for n, props in blocks.items() if n.startswith("sd") and props["removable"] == "1"]
    assert sticks == ["sda"], blocks
    assert "./bootkeeper-release/hello.txt" in (b.first("STICK_FILES") or ""), b.first("STICK_FILES")
    assert (b.first("FAILED") or "").split() == []
