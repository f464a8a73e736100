"""The model's choices, each tied to behaviour the real systemd-boot showed (reference notes and
tests/test_vm_bootcount.py)."""

from __future__ import annotations

from pathlib import Path

from bootkeeper.assess import bootloader
from bootkeeper.esp.efivars import LoaderVars
from bootkeeper.esp.store import EspStore
from helpers import entry_body, esp_with


def _choose(root: Path, version: int, ev: LoaderVars | None = None) -> bootloader.BootChoice:
    c = bootloader.choose(EspStore(root).snapshot(version), ev)
    assert c is not None
    return c


def test_default_literal_matches_bad_entry_on_257_not_on_252(tmp_path: Path) -> None:
    root = esp_with(
        tmp_path,
        {"active+0-3.conf": entry_body("active"), "passive+3.conf": entry_body("passive")},
        "default active.conf\n",
    )
    c257 = _choose(root, 257)
    assert c257.entry.file_name == "active+0-3.conf" and c257.rename_to == "active+0-4.conf"
    assert c257.pins_bad and "booted anyway" in c257.reason
    c252 = _choose(root, 252)
    assert c252.entry.file_name == "passive+3.conf"
    assert c252.entry_id == "passive+3.conf"
    assert c252.boot_count_path == "\\loader\\entries\\passive+2-1.conf"


def test_glob_pins_bad_on_both(tmp_path: Path) -> None:
    root = esp_with(
        tmp_path,
        {"active+0-3.conf": entry_body("active"), "passive+3.conf": entry_body("passive")},
        "default active*.conf\n",
    )
    for v in (252, 257):
        assert _choose(root, v).entry.file_name == "active+0-3.conf"


def test_efi_variables_take_precedence(tmp_path: Path) -> None:
    root = esp_with(
        tmp_path, {"active+3.conf": entry_body("active"), "passive+3.conf": entry_body("passive")}, "default active*\n"
    )
    assert _choose(root, 257, LoaderVars(entry_default="passive.conf")).entry.role.value == "passive"  # type: ignore[union-attr]
    c = _choose(root, 257, LoaderVars(entry_oneshot="PASSIVE*", entry_default="active.conf"))
    assert c.entry.file_name == "passive+3.conf" and "OneShot" in c.reason
    saved = _choose(root, 257, LoaderVars(entry_default="@saved", entry_last_booted="passive.conf"))
    assert saved.entry.file_name == "passive+3.conf"


def test_efi_key_entry_is_not_renamed(tmp_path: Path) -> None:
    root = esp_with(tmp_path, {"active+3.conf": "sort-key 1\nefi /EFI/kairos/vmlinuz\n"})
    c = _choose(root, 257)
    assert c.rename_to is None and c.boot_count_path is None


def test_after_boot_renames_only_the_chosen(tmp_path: Path) -> None:
    root = esp_with(tmp_path, {"active+1.conf": entry_body("active"), "passive+3.conf": entry_body("passive")})
    snap = EspStore(root).snapshot(257)
    c = bootloader.choose(snap)
    assert c is not None
    after = bootloader.after_boot(snap, c)
    assert sorted(e.file_name for e in after.entries) == ["active+0-1.conf", "passive+3.conf"]
    c2 = bootloader.choose(after)
    assert c2 is not None and c2.entry.file_name == "passive+3.conf"


def test_no_entries(tmp_path: Path) -> None:
    root = esp_with(tmp_path, {"broken.conf": "title nothing to boot\n"})
    assert bootloader.choose(EspStore(root).snapshot(257)) is None
