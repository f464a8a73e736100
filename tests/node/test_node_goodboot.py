"""What makes a boot good, on the real node (issue 26, items 2 and 3): booted by systemd-boot 257 on the
guest of test_node.py, one disk, three boots.

1. Active, with a unit multi-user.target requires failing (the rig's bktest-goodboot-multiuser.service,
   on the roles ``bktest/fail-multiuser`` names): multi-user.target is never reached, so
   bootkeeper-boot-check.service (``boot_assessment.good_when: multi-user``, the default) fails its start
   job, boot-complete.target is not reached and the entry is not blessed: it counts down (the enrolled
   bk-health.service, ordered after multi-user.target but not requiring it, still passes: on main it
   alone decided, and this boot was blessed).
2. Active again, now with ``sysext.required: [tools-a]`` (the scenario's /oem file, from the ESP:
   ``bktest/oem.yaml``) and active's tools-a signed by an untrusted key: the activation refuses it and
   leaves its verdict, bootkeeper-sysext-required.service fails, and by the generator's rule (a counted
   active boot, its last try) reboots.
3. Passive, with its own good tools-a: blessed; its status says why active was left, from the history.

The entries, their renames and verdicts are what ``bootkeeper simulate`` predicts for a failing service
(boot 1 as a service that does not reboot the node, 2 and 3 as one that reboots active).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import nodevm
import test_node
from bootkeeper.assess import units
from bootkeeper.sysext import required
from test_node import Node, _unit, retry_on_guest_crash

# the node suite's fixtures, found by pytest under these names in this module
pieces = test_node.pieces
node_factory = test_node.node_factory

pytestmark = pytest.mark.node

NOT_GOOD = "not good (service failed)"
OEM = "# tests/node/test_node_goodboot.py, boots 2 and 3\nsysext:\n  required: [tools-a]\n"


class GoodNode(Node):
    """The node of test_node.py; a boot failed by bootkeeper's own checks has simulate's verdict for a
    failing service too (test_node's verdict knows bk-health alone)."""

    @staticmethod
    def _verdict(b: nodevm.Boot, role: str, after: str) -> str:
        if any(m.startswith("fail") for m in b.mark("MULTIUSER")) or (b.first("GB_FAILED") or "none") != "none":
            return NOT_GOOD
        return Node._verdict(b, role, after)


@retry_on_guest_crash
def test_a_boot_is_good_once_up_and_with_its_required_extensions(
    pieces: dict[str, Path], tmp_path: Path, node_factory: list[Node]
) -> None:
    node = GoodNode(
        tmp_path,
        "goodboot: multi-user.target not reached on active; then a required extension refused on active; passive",
        [],
        files={
            # active's tools-a is the image signed by the untrusted key: activation refuses it
            "EFI/Linux/active.efi.extra.d/tools-a.sysext.raw": pieces["rogue"],
            "EFI/Linux/passive.efi.extra.d/tools-a.sysext.raw": pieces["tools-a"],
            "bktest/fail-multiuser": "active\n",
        },
    )
    node_factory.append(node)

    # 1. multi-user.target cannot be reached: not blessed, the counter went down
    predicted = node.simulate(["active=1:service"], 1)
    b1 = node.boot()
    node.check_against(predicted, 1)
    assert b1.mark("MULTIUSER") == ["fail (active)"]
    assert b1.first("HEALTH") == "ok"  # the enrolled service passed: it alone would have blessed this boot
    assert b1.first("GB_FAILED") == "none"
    assert json.loads(b1.first("GB_SXREQ") or "null") == _nothing_required()
    assert "bktest-goodboot-multiuser.service" in (b1.first("FAILED") or "").split()
    assert _unit(b1, "boot-complete.target")["ActiveState"] == "inactive"
    assert _unit(b1, units.BLESS_UNIT)["ActiveState"] == "inactive"
    row = node.rows[0]
    assert (row.before, row.booted, row.after, b1.ending) == (
        "active+2.efi",
        "active+1-1.efi",
        "active+1-1.efi",
        "poweroff",
    )
    status = b1.status()
    assert status is not None and status["booted"]["blessed"] == "indeterminate"
    assert "NOT blessed yet" in "\n".join(b1.mark("STATUS"))

    # 2. and 3. a required extension refused on active: not blessed, reboots (its last try), passive runs
    nodevm.esp_write(node.disk, "bktest/fail-multiuser", "")
    nodevm.esp_write(node.disk, "bktest/oem.yaml", OEM)
    faults = ["active=always:service"]
    predicted = node.simulate(faults, 2)
    assert [(p["role"], p["verdict"]) for p in predicted] == [("active", NOT_GOOD), ("passive", "good")]
    b2 = node.boot()
    b3 = node.boot()
    node.check_against(predicted, 2)
    node.rows[1].then = f"{units.REQUIRED_UNIT} failed: systemctl reboot"
    assert b2.mark("MULTIUSER") in ([], ["ok (active)"])
    assert b2.first("GB_OEM") == OEM.replace("\n", "|")
    sxreq = json.loads(b2.first("GB_SXREQ") or "null")
    assert sxreq["ok"] is False and sxreq["names"] == ["tools-a"] and sxreq["missing"] == []
    assert [r["name"] for r in sxreq["refused"]] == ["tools-a"]
    failed = b2.first("GB_FAILED") or ""
    assert failed.startswith("required extension tools-a refused: tools-a.sysext.raw: "), failed
    assert "no trusted certificate" in failed
    text = b2.text()
    assert "bootkeeper: error: this boot is not good: required extension tools-a refused" in text
    assert "counting, this was its last try" in text and "rebooting" in text
    assert b2.ending == "reboot" and b2.status() is None  # rebooted before the rig's report
    assert (node.rows[1].booted, node.rows[1].after) == ("active+0-2.efi", "active+0-2.efi")

    # passive, with its own good set: merged, blessed; status says why active was left
    assert (b3.first("BOOT") or "").startswith("role=passive")
    assert b3.first("GB_FAILED") == "none"
    assert json.loads(b3.first("GB_SXREQ") or "null")["ok"] is True
    assert _unit(b3, "boot-complete.target")["ActiveState"] == "active"
    assert _unit(b3, units.BLESS_UNIT)["Result"] == "success"
    assert (node.rows[2].before, node.rows[2].after) == ("passive+2.efi", "passive.efi")
    status = b3.status()
    assert status is not None
    assert status["booted"]["role"] == "passive" and status["booted"]["blessed"] == "good"
    assert status["extensions"]["required"]["ok"] is True
    (fallback,) = status["booted"]["why"]["fallback_from"]
    assert fallback["role"] == "active" and fallback["tries_used"] == 2
    (why,) = fallback["last_try_not_good"]
    assert why.startswith(f"{required.UNIT}: required extension tools-a refused: tools-a.sysext.raw: "), why
    lines = "\n".join(b3.mark("STATUS"))
    assert "not good because bootkeeper-sysext-required.service: required extension tools-a refused" in lines
    assert "extensions required: tools-a: all merged" in lines


def _nothing_required() -> dict[str, object]:
    return {"names": [], "enforced": True, "ok": True, "missing": [], "refused": [], "text": "none required"}
