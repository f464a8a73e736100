"""The model's choices, each tied to behaviour the real systemd-boot showed (reference notes and
tests/vm/test_vm_bootcount.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootkeeper.assess import bootloader
from bootkeeper.esp.efivars import LoaderVars
from bootkeeper.esp.entries import EntryState
from bootkeeper.esp.store import EspStore
from helpers import entry_body, esp_with


def _choose(root: Path, version: int | str, ev: LoaderVars | None = None) -> bootloader.BootChoice:
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
    assert c257.entry.state is EntryState.BAD and "booted anyway" in c257.reason
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


@pytest.mark.parametrize(("version", "renamed"), [(252, True), ("257.13", True), ("258", False), (262, False)])
def test_efi_key_entry_is_counted_only_before_258(tmp_path: Path, version: int | str, renamed: bool) -> None:
    """Booted on 252.39, 257.13 (renamed) and 262.1 (not); 729f3c21c5 made the change in 258."""
    root = esp_with(tmp_path, {"active+3.conf": "sort-key 1\nefi /EFI/kairos/vmlinuz\n"})
    c = _choose(root, version)
    assert (c.rename_to == "active+2-1.conf") is renamed
    assert (c.boot_count_path is not None) is renamed


def test_after_boot_renames_only_the_chosen(tmp_path: Path) -> None:
    """The boot loader's act as the simulator performs it: rename the chosen file to path_after."""
    root = esp_with(tmp_path, {"active+1.conf": entry_body("active"), "passive+3.conf": entry_body("passive")})
    store = EspStore(root)
    c = bootloader.choose(store.snapshot(257))
    assert c is not None
    store.rename(c.entry.path, c.path_after)
    after = store.snapshot(257)
    assert sorted(e.file_name for e in after.entries) == ["active+0-1.conf", "passive+3.conf"]
    c2 = bootloader.choose(after)
    assert c2 is not None and c2.entry.file_name == "passive+3.conf"


def test_no_entries(tmp_path: Path) -> None:
    root = esp_with(tmp_path, {"broken.conf": "title nothing to boot\n"})
    assert bootloader.choose(EspStore(root).snapshot(257)) is None


def _ab(tmp_path: Path, active: str, passive: str, conf: str) -> Path:
    return esp_with(tmp_path, {active: entry_body("active"), passive: entry_body("passive")}, conf)


@pytest.mark.parametrize(
    ("version", "booted"), [(252, "active+3.conf"), (257, "active+3.conf"), (262, "passive+3.conf")]
)
def test_preferred_exists_from_260(tmp_path: Path, version: int, booted: str) -> None:
    """450e0dce02 (260): older boot loaders ignore the key, so the menu order decides."""
    root = _ab(tmp_path, "active+3.conf", "passive+3.conf", "preferred passive*\n")
    assert _choose(root, version).entry.file_name == booted


def test_preferred_skips_a_bad_entry_default_does_not(tmp_path: Path) -> None:
    """Booted on 262.1: ``preferred active*`` with active bad boots passive; ``default`` pins it."""
    root = _ab(tmp_path, "active+0-3.conf", "passive+3.conf", "preferred active*\n")
    c = _choose(root, 262)
    assert c.entry.file_name == "passive+3.conf" and "preferred matches no entry with tries left" in c.reason
    root2 = _ab(tmp_path / "d", "active+0-3.conf", "passive+3.conf", "default active*\n")
    assert _choose(root2, 262).entry.file_name == "active+0-3.conf"


def test_preferred_falls_through_to_default_which_may_pin_bad(tmp_path: Path) -> None:
    root = _ab(tmp_path, "active+0-3.conf", "passive+0-3.conf", "preferred passive*\ndefault active*\n")
    c = _choose(root, 262)
    assert c.entry.file_name == "active+0-3.conf" and c.entry.state is EntryState.BAD


def test_preferred_order_of_sources(tmp_path: Path) -> None:
    """One-shot, then LoaderEntryPreferred, then loader.conf preferred, then LoaderEntryDefault."""
    root = esp_with(
        tmp_path,
        {n: entry_body(n.split("+")[0]) for n in ("active+3.conf", "passive+3.conf", "recovery+3.conf")},
        "preferred recovery*\n",
    )
    assert _choose(root, 262).entry.role.value == "recovery"  # type: ignore[union-attr]
    ev = LoaderVars(entry_preferred="passive.conf", entry_default="active.conf")
    assert _choose(root, 262, ev).entry.file_name == "passive+3.conf"
    ev = LoaderVars(entry_oneshot="active.conf", entry_preferred="passive.conf")
    assert _choose(root, 262, ev).entry.file_name == "active+3.conf"
    ev = LoaderVars(entry_default="active.conf")
    assert _choose(root, 262, ev).entry.file_name == "recovery+3.conf"  # preferred before default
    assert _choose(root, 257, ev).entry.file_name == "active+3.conf"  # 257: no preferred


def test_sysfail_never_changes_the_choice(tmp_path: Path) -> None:
    """004e3e4082 (258) reads LoaderEntrySysFail, but sysfail_process() runs after the choice."""
    root = _ab(tmp_path, "active+3.conf", "passive+3.conf", "")
    assert _choose(root, 262, LoaderVars(entry_sysfail="passive.conf")).entry.file_name == "active+3.conf"


def test_read_only_attribute_is_not_renamed_but_still_sorts(tmp_path: Path) -> None:
    """Booted on 252.39, 257.13, 262.1: the file keeps its name, no LoaderBootCountPath."""
    root = _ab(tmp_path, "active+2.conf", "passive+2.conf", "")
    (root / "loader" / "entries" / "active+2.conf").chmod(0o444)
    for v in (252, 257, 262):
        c = _choose(root, v)
        assert c.entry.file_name == "active+2.conf"
        assert c.rename_to is None and c.boot_count_path is None and "read-only" in c.reason
    bad = _ab(tmp_path / "b", "active+0-2.conf", "passive+2.conf", "")
    (bad / "loader" / "entries" / "active+0-2.conf").chmod(0o444)
    assert _choose(bad, 262).entry.file_name == "passive+2.conf"  # its counter still sorts it last


def test_mixed_case_counted_id_is_matched_by_nothing_on_the_backports(tmp_path: Path) -> None:
    root = _ab(tmp_path, "Active+0-3.conf", "passive+3.conf", "default active.conf\n")
    assert _choose(root, "257.13").entry.file_name == "passive+3.conf"  # id "Active.conf": no match
    assert _choose(root, "262.1").entry.file_name == "Active+0-3.conf"  # id "active.conf": pinned
