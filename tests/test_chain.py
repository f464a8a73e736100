from __future__ import annotations

from pathlib import Path

import pytest

from bootkeeper.assess import bootloader, chain
from bootkeeper.config import BootAssessment
from bootkeeper.errors import EspError, ParseError
from bootkeeper.esp.store import EspStore
from helpers import entry_body, esp_with, names

CFG = BootAssessment(tries=3, recovery_tries=2)


def test_arm_counters_sort_keys_and_pinning_default(tmp_path: Path) -> None:
    root = esp_with(
        tmp_path,
        {f"{r}.conf": entry_body(r, sort_key=False) for r in ("active", "passive", "recovery", "statereset")},
        "timeout 0\ndefault active.conf\n",
    )
    res = chain.arm(EspStore(root), CFG)
    assert names(root) == ["active+3.conf", "passive+3.conf", "recovery+2.conf", "statereset+2.conf"]
    assert "sort-key 2-passive" in (root / "loader" / "entries" / "passive+3.conf").read_text()
    assert (root / "loader" / "loader.conf").read_text() == "timeout 0\n"
    assert any("removed 'default active.conf'" in a for a in res.actions)
    # and the fallback order the model now predicts is the chain
    snap = EspStore(root).snapshot(257)
    from bootkeeper.esp.entries import menu_order

    assert [e.role.value for e in menu_order(list(snap.entries), 257) if e.role] == [
        "active",
        "passive",
        "recovery",
        "statereset",
    ]
    again = chain.arm(EspStore(root), CFG)
    assert again.actions == []  # idempotent


def test_arm_keeps_a_default_that_cannot_pin(tmp_path: Path) -> None:
    root = esp_with(
        tmp_path,
        {"active.conf": entry_body("active"), "recovery.conf": entry_body("recovery")},
        "default passive-old.conf\n",
    )
    chain.arm(EspStore(root), CFG)
    assert "default passive-old.conf" in (root / "loader" / "loader.conf").read_text()


def test_arm_refuses_duplicates_and_junk(tmp_path: Path) -> None:
    root = esp_with(tmp_path / "a", {"active.conf": entry_body("active"), "active+1-2.conf": entry_body("active")})
    with pytest.raises(EspError, match="more than one active"):
        chain.arm(EspStore(root), CFG)
    assert names(root) == ["active+1-2.conf", "active.conf"]
    root2 = esp_with(tmp_path / "b", {"active.conf": entry_body("active") + "junkline\n"})
    with pytest.raises(ParseError, match=r"active\.conf: line 5"):
        chain.arm(EspStore(root2), CFG)


def test_rotate_moves_good_active_to_passive_with_fresh_counter(tmp_path: Path) -> None:
    root = esp_with(
        tmp_path,
        {
            "active+1-2.conf": entry_body("active"),
            "passive.conf": entry_body("passive"),
            "recovery+2.conf": entry_body("recovery"),
        },
    )
    new = tmp_path / "new.conf"
    new.write_text("title new\nlinux /EFI/kairos/vmlinuz\n")
    chain.rotate(EspStore(root), CFG, new)
    assert names(root) == ["active+3.conf", "passive+3.conf", "recovery+2.conf"]
    assert "title active" in (root / "loader" / "entries" / "passive+3.conf").read_text()
    assert "sort-key 2-passive" in (root / "loader" / "entries" / "passive+3.conf").read_text()
    c = bootloader.choose(EspStore(root).snapshot(257))
    assert c is not None and c.entry.file_name == "active+3.conf"


def test_rotate_drops_a_bad_active_and_keeps_passive(tmp_path: Path) -> None:
    root = esp_with(tmp_path, {"active+0-3.conf": entry_body("active"), "passive.conf": entry_body("passive")})
    new = tmp_path / "new.conf"
    new.write_text("title new\nlinux /EFI/kairos/vmlinuz\n")
    chain.rotate(EspStore(root), CFG, new)
    assert names(root) == ["active+3.conf", "passive.conf"]


def test_rotate_rejects_bad_input(tmp_path: Path) -> None:
    root = esp_with(tmp_path, {"active.conf": entry_body("active")})
    bad = tmp_path / "new.conf"
    bad.write_text("title no loader\n")
    with pytest.raises(ParseError):
        chain.rotate(EspStore(root), CFG, bad)
    with pytest.raises(ParseError):
        chain.rotate(EspStore(root), CFG, tmp_path / "missing.conf")
    assert names(root) == ["active.conf"]


def test_rotate_type2_ukis(tmp_path: Path) -> None:
    from test_entries import make_uki

    root = esp_with(tmp_path / "esp", {})
    linux = root / "EFI" / "Linux"
    linux.mkdir(parents=True)
    make_uki(linux / "active+0-1.efi", b"ID=kairos\nVERSION_ID=2\n")
    make_uki(linux / "passive.efi", b"ID=kairos\nVERSION_ID=1\n")
    new = make_uki(tmp_path / "kairos-3.efi", b"ID=kairos\nVERSION_ID=3\n")
    # active is bad (+0-1 after a bless bad): it is dropped and passive stays
    chain.rotate(EspStore(root), CFG, new)
    assert sorted(p.name for p in linux.iterdir()) == ["active+3.efi", "passive.efi"]
    c = bootloader.choose(EspStore(root).snapshot(257))
    assert c is not None and c.entry.file_name == "active+3.efi" and c.rename_to == "active+2-1.efi"
    # a good active moves to passive with a fresh counter
    (linux / "active+3.efi").rename(linux / "active.efi")
    chain.rotate(EspStore(root), CFG, make_uki(tmp_path / "kairos-4.efi", b"ID=kairos\nVERSION_ID=4\n"))
    assert sorted(p.name for p in linux.iterdir()) == ["active+3.efi", "passive+3.efi"]


def test_rotate_refuses_an_efi_entry(tmp_path: Path) -> None:
    root = esp_with(tmp_path, {"active.conf": entry_body("active")})
    new = tmp_path / "new.conf"
    new.write_text("title chainloaded\nefi /EFI/kairos/vmlinuz\n")
    with pytest.raises(ParseError, match="needs a linux or uki line"):
        chain.rotate(EspStore(root), CFG, new)
    assert names(root) == ["active.conf"]
