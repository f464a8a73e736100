"""The repair flow end to end on a scratch node (docs/updates.md, "Repair"): a failed attempt (the configured
registry unreachable, no medium) recorded with its reason and the ESP untouched, and a repair from a
``dir:`` release that rebuilds active and passive. It drives node/update.py's fetch and transaction, so it
is collected (renamed test_repair_flow.py) once that module is merged beside node/repair.py.

The release's UKI is signed by the real ``sbsign`` with a key whose certificate is the firmware's ``db``
(a folder laid out like efivarfs under the node's root), as the update's trust check reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

import ukikit
from bootkeeper import config
from bootkeeper.assess import history
from bootkeeper.esp import scratch
from bootkeeper.node import media
from bootkeeper.node import repair as node
from helpers import bk, fake_efivars, tree


def _recovery_node(tmp: Path) -> tuple[Path, Path]:
    """Booted recovery, active and passive used up (the state repair exists for)."""
    root, esp = tmp / "root", scratch.make(tmp / "esp", ukis=True)
    for r in ("active", "passive"):
        (esp / f"loader/entries/{r}+3.conf").rename(esp / f"loader/entries/{r}+0-3.conf")
    (root / "run/cos").mkdir(parents=True)
    (root / "run/cos/recovery_mode").touch()
    fake_efivars(root / "sys/firmware/efi/efivars")
    return root, esp


def test_an_unreachable_registry_and_no_medium_is_a_recorded_failure_and_the_esp_is_untouched(tmp_path: Path) -> None:
    root, esp = _recovery_node(tmp_path)
    (root / "oem").mkdir()
    # port 1 on the loopback: nothing listens, the connection is refused at once
    (root / "oem/90.yaml").write_text("update:\n  source: oci:127.0.0.1:1/os/node\n  channel: stable\n")
    cfg = config.load(None, oem_dir=root / "oem")
    before = tree(esp)
    said: list[str] = []
    out = node.repair(
        cfg, root, esp, None, said.append, lambda: "b1", True, node.RepairOptions(media=media.Host(only=()))
    )
    assert out.result == "failed" and out.error is not None
    assert out.reason is not None and out.reason.startswith("oci:127.0.0.1:1/os/node:stable: ")
    assert out.reason.endswith("; no removable medium holds a release")
    assert out.reboots is False  # --root is not /
    assert tree(esp) == before
    (rec,) = history.read_all(root).repairs
    assert (rec.boot_id, rec.role, rec.result, rec.reason) == ("b1", "recovery", "failed", out.reason)


def _sign(tmp: Path, osrel: str) -> tuple[bytes, Path]:
    """A UKI of ``osrel`` signed by sbsign with a fresh key; the certificate (PEM)."""
    ukikit.need_tools()
    key, crt = ukikit.key_pair(tmp, "db", "repair test db")
    plain = ukikit.make_uki(tmp / "uki", tmp / "unsigned.efi", osrel, b"kernel 2" * 1024)
    return ukikit.sign(plain, tmp / "signed.efi", key, crt).read_bytes(), crt


@pytest.mark.integration
def test_a_dir_release_rebuilds_active_and_passive_from_recovery(tmp_path: Path) -> None:
    root, esp = _recovery_node(tmp_path)
    signed, crt = _sign(tmp_path, 'ID=kairos\nVERSION_ID=2\nIMAGE_VERSION=2.0\nPRETTY_NAME="Kairos 2"\n')
    rel = tmp_path / "release"
    rel.mkdir()
    (rel / "kairos-2.0.efi").write_bytes(signed)
    (root / "etc/bootkeeper").mkdir(parents=True)
    (root / "etc/bootkeeper/db.pem").write_bytes(crt.read_bytes())
    (root / "oem").mkdir()
    (root / "oem/90.yaml").write_text("sysext:\n  certificates: [/etc/bootkeeper/db.pem]\n  firmware: []\n")
    r = bk("repair", "--root", root, "--esp", esp, "--source", f"dir:{rel}", "--no-reboot")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == f"repaired: active and passive rebuilt from dir:{rel} (2.0)"
    names = set(tree(esp))
    assert not {"loader/entries/active+0-3.conf", "loader/entries/passive+0-3.conf"} & names, names
    (rec,) = history.read_all(root).repairs
    assert (rec.role, rec.result, rec.version, rec.source) == ("recovery", "repaired", "2.0", f"dir:{rel}")
