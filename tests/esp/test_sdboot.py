"""The version string a systemd-boot binary carries decides its behaviours (esp/sdboot.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bootkeeper.errors import UsageError
from bootkeeper.esp import pe, sdboot
from bootkeeper.esp.sdboot import SdBoot
from helpers import esp_with
from vmboot import CACHE


@pytest.mark.parametrize(
    ("text", "major", "minor"),
    [
        ("252.39-1~deb12u2", 252, 39),
        ("systemd-boot 262.1-1", 262, 1),
        ("v257.13", 257, 13),
        ("257", 257, 0),
        ("259~rc1", 259, 0),
    ],
)
def test_parse(text: str, major: int, minor: int) -> None:
    v = SdBoot.parse(text)
    assert (v.major, v.minor) == (major, minor)


@pytest.mark.parametrize("text", ["", "abc", "25", "1000.1", "x257", "\0" * 10, "9" * 5000])
def test_parse_refuses_what_is_not_a_version(text: str) -> None:
    with pytest.raises(UsageError, match="not a systemd-boot version"):
        SdBoot.parse(text)


def test_a_bare_major_is_the_point_release_checked_here() -> None:
    assert sdboot.of(257) == SdBoot(257, 13) and sdboot.of("257") == SdBoot(257, 13)
    assert sdboot.of(258) == SdBoot(258, 0)
    assert sdboot.of("257.9") < sdboot.of(257)


@pytest.mark.parametrize(
    ("version", "efi", "uki", "ids", "preferred"),
    [
        ("252.39", True, False, False, False),
        ("257.9", True, False, False, False),
        ("257.10", True, False, True, False),
        ("258", False, True, False, False),
        ("258.1", False, True, True, False),
        ("259", False, True, True, False),
        ("260", False, True, True, True),
        ("262.1", False, True, True, True),
    ],
)
def test_behaviours_per_release(version: str, efi: bool, uki: bool, ids: bool, preferred: bool) -> None:
    v = SdBoot.parse(version)
    assert (v.counts_efi_key, v.knows_uki_key, v.ids_drop_counter, v.has_preferred) == (efi, uki, ids, preferred)
    assert v.counted_key() == ("efi" if efi else "uki")


@pytest.mark.parametrize(("version", "text"), [(252, "252.39-1~deb12u2"), (257, "257.13-1~deb13u1"), (262, "262.1-1")])
def test_the_real_binaries_carry_their_full_version(version: int, text: str, tmp_path: Path) -> None:
    binary = CACHE / f"sdboot-{version}" / "systemd-bootx64.efi"
    if not binary.exists():
        pytest.fail(f"{binary} missing: run scripts/setup-test-deps.sh (make test does)")
    assert pe.sdboot_version(binary) == text
    esp = esp_with(tmp_path, {})
    (esp / "EFI" / "BOOT").mkdir(parents=True)
    (esp / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(binary.read_bytes())
    from bootkeeper.esp.store import EspStore

    snap = EspStore(esp).snapshot()
    assert str(snap.sdboot) == text and text in snap.sdboot_version_source


def test_cli_refuses_a_version_that_is_not_one(tmp_path: Path) -> None:
    esp = esp_with(tmp_path, {})
    p = subprocess.run(
        [sys.executable, "-m", "bootkeeper", "entries", "--esp", str(esp), "--systemd-boot-version", "banana"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 2 and "not a systemd-boot version" in p.stderr and "Traceback" not in p.stderr


def _entries_json(esp: Path, efivars: Path) -> dict[str, object]:
    import json

    p = subprocess.run(
        [sys.executable, "-m", "bootkeeper", "entries", "--esp", str(esp), "--efivars", str(efivars), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    out: dict[str, object] = json.loads(p.stdout)
    return out


def test_loader_info_fills_in_for_an_esp_without_a_binary(tmp_path: Path) -> None:
    """LoaderInfo is the booted boot loader's own version string: better than assuming one."""
    from helpers import entry_body, fake_efivars

    esp = esp_with(tmp_path / "esp", {"active+3.conf": entry_body("active")})
    ev = fake_efivars(tmp_path / "ev", LoaderInfo="systemd-boot 252.39-1~deb12u2")
    out = _entries_json(esp, ev)
    version = out["systemd_boot_version"]
    assert isinstance(version, dict) and version["value"] == 252 and "LoaderInfo" in version["source"]
    assert out["next"]["id"] == "active+3.conf"  # type: ignore[index]  # 252: the id keeps the counter
    assumed = _entries_json(esp, tmp_path / "no-efivars")
    assert "assumed" in assumed["systemd_boot_version"]["source"]  # type: ignore[index]
    assert assumed["next"]["id"] == "active.conf"  # type: ignore[index]


def test_a_booted_boot_loader_that_is_not_the_esps_is_a_problem(tmp_path: Path) -> None:
    from helpers import entry_body, fake_efivars

    binary = CACHE / "sdboot-262" / "systemd-bootx64.efi"
    if not binary.exists():
        pytest.fail(f"{binary} missing: run scripts/setup-test-deps.sh (make test does)")
    esp = esp_with(tmp_path / "esp", {"active+3.conf": entry_body("active")})
    (esp / "EFI" / "BOOT").mkdir(parents=True)
    (esp / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(binary.read_bytes())
    ev = fake_efivars(tmp_path / "ev", LoaderInfo="systemd-boot 257.13-1~deb13u1")
    out = _entries_json(esp, ev)
    assert out["systemd_boot_version"]["value"] == 262  # type: ignore[index]  # the next boot runs the ESP's
    assert any("started by systemd-boot 257.13-1~deb13u1 (LoaderInfo)" in p for p in out["problems"])  # type: ignore[attr-defined]
    same = fake_efivars(tmp_path / "ev2", LoaderInfo="systemd-boot 262.1-1")
    assert not any("LoaderInfo" in p for p in _entries_json(esp, same)["problems"])  # type: ignore[attr-defined]
