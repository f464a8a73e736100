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
    ]
    if source is not None:
        lines.append(f"  ca_file: /efi/{CA_ON_ESP}")
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

    def stay_up(self, seconds: int | None) -> None:
        """The next boots stay up ``seconds`` after their report; None: report and power off at once."""
        nodevm.esp_write(self.disk, "bktest/stay-up", "" if seconds is None else f"{seconds}\n")

    def boot(self, *, kill_on: str | None = None) -> nodevm.Boot:
        b = super().boot(kill_on=kill_on)
        # bootkeeper's units say errors in one line: a traceback on the console is a defect (Debian 13's
        # click 8.1.8 turned every exit of a verb into one: cli/main.py, _NO_ARGS_IS_HELP)
        assert "Traceback (most recent call last)" not in b.text(), f"a traceback: {self.work}/boot{len(self.rows)}.log"
        row = self.rows[-1]
        if b.first("STAYING") is not None and "fail" not in b.mark("HEALTH"):
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
    # network-online.target (what the repair's unit waits for) was reached after wait-online ran
    assert (b.first("ONLINE_TARGET") or "").startswith("rc=0 "), b.first("ONLINE_TARGET")
    assert "ActiveState=active" in (b.first("NET_ONLINE") or "").split(), b.first("NET_ONLINE")
    # three connections in a row, each through the relay to the registry
    assert b.first("REGISTRY") == " ".join(["status=200 api=registry/2.0"] * 3), b.first("REGISTRY")
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


# -- (a) and (b): the timer updates the node, and gets past a failed update -------------------------


def _by_role(state: dict[str, str]) -> dict[str, str]:
    """An :meth:`UpdateNode.esp_state` with the counters left out: ``active`` for ``active+2.efi``,
    ``active/tools-v2.sysext.raw`` for ``active.efi.extra.d/tools-v2.sysext.raw``."""
    out = {}
    for path, what in state.items():
        top, _, rest = path.partition("/")
        if rest:
            out[f"{top.removesuffix('.efi.extra.d')}/{rest}"] = what
        else:
            out[test_node._role_of(top)] = what
    return out


def _v_node(tmp_path: Path, title: str, version: str, files: dict[str, Path | str]) -> UpdateNode:
    """A node on OS ``version`` (active, with tools-vN), passive, recovery and statereset as built."""
    osu, upd = nodevm.os_ukis(), nodevm.update_sysexts()
    node = UpdateNode(
        tmp_path, title, [], sysexts={"tools": upd[f"v{version}"]}, active=osu[f"v{version}"], files=files
    )
    assert node.installed[0]["written"] == [f"EFI/Linux/active.efi.extra.d/tools-v{version}.sysext.raw"]
    assert node.installed[0]["validation"]["ok"] and not node.installed[0]["forced"]
    assert _by_role(node.esp_state()) == {
        "active": f"v{version}",
        f"active/tools-v{version}.sysext.raw": f"tools v{version}",
        "passive": "passive",
        "recovery": "recovery",
        "statereset": "statereset",
    }
    return node


def _os_pair(active: str, passive: str) -> dict[str, str]:
    """The ESP by role with OS ``active`` and ``passive``, each with its own tools extension."""
    return {
        "active": f"v{active}",
        f"active/tools-v{active}.sysext.raw": f"tools v{active}",
        "passive": f"v{passive}",
        f"passive/tools-v{passive}.sysext.raw": f"tools v{passive}",
        "recovery": "recovery",
        "statereset": "statereset",
    }


@retry_on_guest_crash
def test_the_timer_updates_the_node_and_gets_past_a_failed_update(
    pieces: dict[str, Path],
    tmp_path: Path,
    node_factory: list[Node],
    *,
    registry: noderegistry.Registry,
    releases: dict[str, Path],
) -> None:
    repo = f"bk/node-{tmp_path.name}"  # a retry starts from an empty repository
    to = f"oci:{registry.host}/{repo}"
    push("2", f"{to}:v2", ca=registry.ca)
    node = _v_node(
        tmp_path,
        "update (a)+(b): v1 updates itself to v2; v3 fails its health check, v4 replaces it",
        "1",
        {
            "bktest/oem.yaml": oem(registry.source(repo)),
            CA_ON_ESP: registry.ca,
            "bktest/history": "1\n",
            "bktest/stay-up": f"{STAY_UP}\n",
        },
    )
    node_factory.append(node)
    node.net = registry.net

    # (a) boot 1: v1 is blessed, then the timer's update fetches v2 with tools-v2, applies, reboots
    b1 = node.boot()
    assert _os(b1) == ("VERSION_ID=1", "tools v1")
    assert (node.rows[0].role, node.rows[0].after, node.rows[0].verdict) == ("active", "active.efi", "good")
    assert b1.ending == "reboot", f"the update did not reboot the node; see {node.work}/boot1.log"
    # v2 is active with tools-v2 (the v1 build of tools gone from active: same SYSEXT_ID), v1 with its own
    # tools-v1 is passive, both with fresh tries
    assert _by_role(node.esp_state()) == _os_pair("2", "1")
    assert _counters(node.disk)["active"] == "active+2.efi" and _counters(node.disk)["passive"] == "passive+2.efi"

    # v3 is pushed as stable and fails its health check wherever it runs
    push("3", f"{to}:v3", ca=registry.ca)
    node.set_faults(["v3=always:service"])

    # boot 2: v2 runs with tools v2, is blessed; the timer finds v3 and updates to it
    b2 = node.boot()
    assert _os(b2) == ("VERSION_ID=2", "tools v2")
    assert (node.rows[1].role, node.rows[1].after, node.rows[1].verdict) == ("active", "active.efi", "good")
    assert b2.ending == "reboot"
    assert _by_role(node.esp_state()) == _os_pair("3", "2")

    # (b) boots 3 and 4: v3 fails (bk-health; the generator's FailureAction=reboot), its tries run out;
    # boot 5: passive, v2, runs and is blessed: what bootkeeper simulate says of the same faults
    predicted = node.simulate(["active=always:service"], 3)
    b3, b4 = node.boot(), node.boot()
    for b in (b3, b4):
        assert b.first("OSFAULT") is not None and "fail" in b.mark("HEALTH"), b.marks.get("OSFAULT")
        assert b.ending == "reboot"
    assert [r.after for r in node.rows[2:4]] == ["active+1-1.efi", "active+0-2.efi"]
    # v4 is pushed as stable; the next scheduled update replaces the bad v3 (no hand step on the ESP) and
    # keeps the running v2 as passive
    push("4", f"{to}:v4", ca=registry.ca)
    b5 = node.boot()
    node.check_against(predicted, 3)
    assert node.rows[4].role == "passive" and node.rows[4].verdict == "good"
    assert _os(b5) == ("VERSION_ID=2", "tools v2")
    assert b5.ending == "reboot", f"the update did not replace the bad v3; see {node.work}/boot5.log"
    assert _by_role(node.esp_state()) == _os_pair("4", "2")
    assert _counters(node.disk)["active"] == "active+2.efi"

    # boot 6: v4 with tools v4, blessed; nothing newer: the node stays up until the rig powers it off
    node.stay_up(STAY_UP_IDLE)
    b6 = node.boot()
    assert _os(b6) == ("VERSION_ID=4", "tools v4")
    assert (node.rows[5].role, node.rows[5].after, node.rows[5].verdict) == ("active", "active.efi", "good")
    assert b6.ending == "poweroff"
    assert _by_role(node.esp_state()) == _os_pair("4", "2")
    # the history has the three updates, each replacing active: v1 -> v2, v2 -> v3, v3 -> v4
    ups = _history(b6)["upgrades"]
    assert [(u["role"], u["from"]["os"]["VERSION_ID"], u["to"]["os"]["VERSION_ID"]) for u in ups] == [
        ("active", "1", "2"),
        ("active", "2", "3"),
        ("active", "3", "4"),
    ], ups


# -- (c), (d), (e): active and passive both out of tries: recovery repairs --------------------------


def _repair_node(tmp_path: Path, title: str, files: dict[str, Path | str]) -> UpdateNode:
    """A node on v1 whose active and passive have used their tries: the next boot is recovery."""
    node = _v_node(tmp_path, title, "1", {"bktest/history": "1\n", "bktest/stay-up": f"{STAY_UP}\n", **files})
    _out_of_tries(node, "active", "passive")
    assert sorted(_counters(node.disk).values()) == [
        "active+0-2.efi",
        "passive+0-2.efi",
        "recovery+2.efi",
        "statereset+2.efi",
    ]
    return node


def _repaired(node: UpdateNode, release: str) -> None:
    """Boot 1 was recovery, not blessed, and its repair rebuilt active and passive and rebooted; boot 2
    is active on ``release``, blessed, and recovery's counter is re-armed."""
    b1 = node.boots[0]
    r1 = node.rows[0]
    assert (r1.role, r1.before, r1.booted, r1.verdict) == (
        "recovery",
        "recovery+2.efi",
        "recovery+1-1.efi",
        "not blessed (recovery)",
    ), r1
    assert b1.ending == "reboot", f"the repair did not reboot the node; see {node.work}/boot1.log"
    state = _by_role(node.esp_state())
    # active from the release with its own extension. The passive that used its tries is gone, not
    # rebuilt: on Type #2 a copy of the release as passive would boot before active (one .osrel, ids
    # compared descending: docs/upgrades.md, "Rebuild (for repair)"), so recovery is the fallback until
    # the next update makes this active passive
    assert state["active"] == f"v{release}" and state[f"active/tools-v{release}.sysext.raw"] == f"tools v{release}"
    assert "passive" not in state, state
    # boot 2 started the rebuilt active from its fresh counter, and blessing it dropped the counter
    assert (node.rows[1].before, node.rows[1].booted) == ("active+2.efi", "active+1-1.efi"), node.rows[1]
    names = _counters(node.disk)
    assert names["active"] == "active.efi" and "passive" not in names, names
    b2 = node.boots[1]
    assert _os(b2) == (f"VERSION_ID={release}", f"tools v{release}")
    assert (node.rows[1].role, node.rows[1].after, node.rows[1].verdict) == ("active", "active.efi", "good")
    # the good active boot gave recovery its tries back
    assert _counters(node.disk)["recovery"] == "recovery+2.efi", _counters(node.disk)
    assert _repairs(_history(b2)), _history(b2)


@retry_on_guest_crash
def test_recovery_repairs_the_node_from_the_registry(
    pieces: dict[str, Path],
    tmp_path: Path,
    node_factory: list[Node],
    *,
    registry: noderegistry.Registry,
    releases: dict[str, Path],
) -> None:
    repo = f"bk/repair-{tmp_path.name}"
    push("2", f"oci:{registry.host}/{repo}:v2", ca=registry.ca)
    node = _repair_node(
        tmp_path,
        "update (c): active and passive out of tries; recovery repairs from the registry",
        {"bktest/oem.yaml": oem(registry.source(repo)), CA_ON_ESP: registry.ca},
    )
    node_factory.append(node)
    node.net = registry.net
    node.boot()
    node.stay_up(None)  # the repaired active: report and power off (bktest/stay-up empty)
    node.boot()
    _repaired(node, "2")


@retry_on_guest_crash
def test_recovery_repairs_the_node_from_a_usb_stick_without_network(
    pieces: dict[str, Path],
    tmp_path: Path,
    node_factory: list[Node],
    *,
    releases: dict[str, Path],
) -> None:
    node = _repair_node(
        tmp_path,
        "update (d): active and passive out of tries, no NIC; recovery repairs from the USB stick",
        {"bktest/oem.yaml": oem(None), "bktest/rigcheck": "1\n"},
    )
    node_factory.append(node)
    # the release as an OCI layout at the stick's root (the node's tree, made after it: Node makes tmp_path)
    stick_tree = tmp_path / "stick-tree"
    push("2", f"ocifile:{stick_tree}")
    assert (stick_tree / "oci-layout").is_file() and (stick_tree / "index.json").is_file()
    node.stick = nodevm.make_stick(stick_tree, tmp_path / "stick.img")
    assert "oci-layout" in nodevm.stick_tree(node.stick)
    node.boot()
    b1 = node.boots[0]
    assert (b1.first("NET_LINKS") or "").split() == ["lo"]  # no NIC: the stick is the only source
    # network-online.target reached at once: wait-online skipped where there is no NIC (it never waits)
    online = dict(kv.split("=", 1) for kv in (b1.first("ONLINE_TARGET") or "").split())
    assert online.get("rc") == "0" and int(online["ms"]) < 15000, online
    assert any(line.startswith("sda removable=1") for line in b1.mark("BLOCK")), b1.mark("BLOCK")
    node.stay_up(None)
    nodevm.esp_write(node.disk, "bktest/rigcheck", "")
    node.boot()
    _repaired(node, "2")


@retry_on_guest_crash
def test_a_repair_that_cannot_finish_ends_in_statereset_which_hands_back(
    pieces: dict[str, Path],
    tmp_path: Path,
    node_factory: list[Node],
    *,
    registry: noderegistry.Registry,
    releases: dict[str, Path],
) -> None:
    # the source is the registry, but the node has no NIC, and no stick: nothing to repair from
    node = _repair_node(
        tmp_path,
        "update (e): no NIC, no stick: the repair fails, recovery's tries run out, statereset hands back",
        {"bktest/oem.yaml": oem(registry.source("bk/unreachable")), CA_ON_ESP: registry.ca},
    )
    node_factory.append(node)
    node.stay_up(STAY_UP_IDLE)  # where a failed repair leaves the node up, the rig powers it off
    predicted = node.simulate([], 4)
    assert [p["role"] for p in predicted] == ["recovery", "recovery", "statereset", "active"]
    for _ in range(3):
        node.boot()
    assert [r.after for r in node.rows] == ["recovery+1-1.efi", "recovery+0-2.efi", "statereset+2.efi"]
    for b in node.boots[:2]:  # recovery stayed up, or its failed repair rebooted it: never a panic
        assert b.ending in ("poweroff", "reboot") and b.first("HEALTH") == "ok", b.ending
    # statereset's bless handed back: every entry re-armed, the count on the ESP
    assert predicted[2]["handback"] == "handed-back"
    ukis = [n for n in nodevm.esp_names(node.disk) if n.endswith(".efi")]  # not the .extra.d folders
    assert ukis == ["active+2.efi", "passive+2.efi", "recovery+2.efi", "statereset+2.efi"], ukis
    status = node.boots[2].status()
    assert status is not None and status["booted"]["role"] == "statereset"
    assert status["handback"]["count"] == 1
    # every failed attempt is in the history (both recovery boots; statereset's too, where it ran one)
    # and in status
    tried = _repairs(_history(node.boots[2]))
    assert len(tried) >= 2, tried
    assert "repair" in json.dumps(status).lower(), status
    # the next boot is active again: v1, blessed
    node.stay_up(None)
    node.boot()
    node.check_against(predicted, 1)
    assert _os(node.boots[3]) == ("VERSION_ID=1", "tools v1")
    assert node.rows[3].after == "active.efi" and node.rows[3].verdict == "good"
