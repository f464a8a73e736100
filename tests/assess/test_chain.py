from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import vmboot
from bootkeeper.assess import bootloader, chain
from bootkeeper.config import BootAssessment
from bootkeeper.errors import EspError, MalformedError, UnreadableError, WriteError
from bootkeeper.esp import scratch
from bootkeeper.esp.entries import EntryState, Role
from bootkeeper.esp.store import EspStore
from helpers import entry_body, esp_with, names, tree

CFG = BootAssessment(tries=3, recovery_tries=2)
CFG3 = BootAssessment(tries=3, recovery_tries=3)  # scratch.make's counters: arm renames nothing
ENTRIES = "loader/entries"


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
    with pytest.raises(MalformedError, match=r"active\.conf: line 5"):
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
    with pytest.raises(MalformedError):
        chain.rotate(EspStore(root), CFG, bad)
    with pytest.raises(UnreadableError, match=r"missing\.conf: cannot read"):
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


# --- the loader key suits the boot loader on the ESP ------------------------------------------


def sdboot_binary(version: int) -> Path:
    p = vmboot.sdboot(version)
    assert p.is_file(), f"{p} is missing: run 'bash scripts/setup-test-deps.sh'"
    return p


def uki_bytes(role: str) -> bytes:
    """A stand-in UKI as ukify lays one out: .linux and .osrel (scratch's own has only .osrel)."""
    osrel = f"ID=kairos\nVERSION_ID=1\nIMAGE_ID={role}\n".encode()
    return scratch.stand_in_uki(((b".osrel", osrel), (b".linux", b"stand-in kernel")))


def kairos_esp(
    root: Path, version: int | None, *, key: str = "efi", ukis: bool = True, systemd_dir: int | None = None
) -> Path:
    """Kairos's layout (loader/entries/<role>+3.conf, 'efi /EFI/kairos/<role>.efi'), with the real
    systemd-boot ``version`` as EFI/BOOT/BOOTX64.EFI (None: no binary) and, with ``systemd_dir``,
    another one as EFI/systemd/systemd-bootx64.efi. ``ukis=False`` keeps scratch's stand-ins,
    which have no .linux section; ``key='uki'`` writes the entries with 'uki' instead."""
    scratch.make(root, ukis=True, sdboot=sdboot_binary(version) if version else None)
    for role in Role:
        if ukis:
            (root / f"EFI/kairos/{role.value}.efi").write_bytes(uki_bytes(role.value))
        if key != "efi":
            p = root / ENTRIES / f"{role.value}+3.conf"
            p.write_text(p.read_text().replace("\nefi /EFI/", f"\n{key} /EFI/"))
    if systemd_dir is not None:
        (root / "EFI/systemd").mkdir()
        (root / "EFI/systemd/systemd-bootx64.efi").write_bytes(sdboot_binary(systemd_dir).read_bytes())
    return root


def entry_texts(root: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((root / ENTRIES).iterdir())}


def first_choice(root: Path) -> bootloader.BootChoice:
    c = bootloader.choose(EspStore(root).snapshot())
    assert c is not None
    return c


@pytest.mark.parametrize("version", [252, 257])
def test_arm_keeps_efi_where_it_is_counted(tmp_path: Path, version: int) -> None:
    """252 and 257 count 'efi' (booted): arm leaves the key, and says nothing about 'uki'."""
    root = kairos_esp(tmp_path / "esp", version)
    before = tree(root)
    res = chain.arm(EspStore(root), CFG3)
    assert tree(root) == before
    assert res.actions == [] and res.warnings == []
    assert all("\nefi /EFI/kairos/" in t for t in entry_texts(root).values())
    c = first_choice(root)
    assert c.entry.file_name == "active+3.conf" and c.rename_to == "active+2-1.conf"


def test_arm_converts_efi_to_uki_on_262(tmp_path: Path) -> None:
    """262 counts 'uki', not 'efi' (729f3c21c5, booted): each role entry's key line becomes 'uki',
    every other byte of the ESP stays; afterwards the model predicts the rename."""
    root = kairos_esp(tmp_path / "esp", 262)
    before = tree(root)
    assert first_choice(root).rename_to is None  # as booted on 262.1: 'efi' is never renamed
    res = chain.arm(EspStore(root), CFG3)
    assert res.actions == [
        f"{ENTRIES}/{r.value}+3.conf: efi -> uki: systemd-boot 262.1-1 does not count 'efi' entries (729f3c21c5)"
        for r in Role
    ]
    assert res.warnings == []
    after = tree(root)
    assert after.keys() == before.keys()
    for path, data in before.items():
        if path.startswith(ENTRIES):
            role = path.split("/")[-1].split("+")[0]
            line = f"\nefi /EFI/kairos/{role}.efi\n".encode()
            assert data.count(line) == 1
            assert after[path] == data.replace(line, f"\nuki /EFI/kairos/{role}.efi\n".encode()), path
        else:
            assert after[path] == data, path
    c = first_choice(root)
    assert c.entry.file_name == "active+3.conf" and c.rename_to == "active+2-1.conf"
    assert chain.arm(EspStore(root), CFG3).actions == []  # idempotent


def test_arm_converts_uki_to_efi_on_257_and_the_entry_is_listed(tmp_path: Path) -> None:
    """257.13 does not know 'uki' and drops the entry (booted: with every role on 'uki' nothing
    boots); arm finds the unlisted entries and writes 'efi', which 257 counts."""
    root = kairos_esp(tmp_path / "esp", 257, key="uki")
    snap = EspStore(root).snapshot()
    assert [e.listed for e in snap.entries] == [False] * 4
    assert bootloader.choose(snap) is None
    res = chain.arm(EspStore(root), CFG)
    assert f"{ENTRIES}/active+3.conf: uki -> efi: systemd-boot 257.13-1~deb13u1 does not know 'uki' " in res.actions[0]
    assert "renamed loader/entries/recovery+3.conf -> recovery+2.conf" in res.actions
    assert all("\nefi /EFI/kairos/" in t and "uki" not in t for t in entry_texts(root).values())
    snap = EspStore(root).snapshot()
    assert all(e.listed for e in snap.entries)
    c = first_choice(root)
    assert c.entry.file_name == "active+3.conf" and c.rename_to == "active+2-1.conf"


def test_arm_keeps_efi_that_names_no_uki(tmp_path: Path) -> None:
    """On 262 'efi' is not counted, but a file without .linux (or not a PE at all) is no UKI:
    'uki' would not suit it, so the key stays and arm says why."""
    root = kairos_esp(tmp_path / "esp", 262, ukis=False)  # scratch's stand-ins: .osrel only
    before = entry_texts(root)
    res = chain.arm(EspStore(root), CFG3)
    assert entry_texts(root) == before
    assert res.warnings[0] == (
        f"{ENTRIES}/active+3.conf: 'efi' kept: systemd-boot 262.1-1 does not count 'efi' entries (729f3c21c5), "
        "but /EFI/kairos/active.efi is not a UKI (no .linux section)"
    )
    plain = esp_with(tmp_path / "plain", {"active+3.conf": "title a\nsort-key 1-active\nefi /EFI/kairos/vmlinuz\n"})
    (plain / "EFI/BOOT").mkdir()
    (plain / "EFI/BOOT/BOOTX64.EFI").write_bytes(sdboot_binary(262).read_bytes())
    res = chain.arm(EspStore(plain), CFG)
    assert any("'efi' kept" in w and "/EFI/kairos/vmlinuz is not a UKI (not a PE file)" in w for w in res.warnings)
    assert "efi /EFI/kairos/vmlinuz" in (plain / ENTRIES / "active+3.conf").read_text()


def test_arm_does_not_convert_on_an_assumed_version(tmp_path: Path) -> None:
    """No systemd-boot binary on the ESP: the key is not chosen; the warning says so and names
    --systemd-boot-version, which then converts."""
    root = kairos_esp(tmp_path / "esp", None)
    before = tree(root)
    res = chain.arm(EspStore(root), CFG3)
    assert tree(root) == before
    assert len(res.warnings) == 4
    assert res.warnings[0].startswith(
        f"{ENTRIES}/active+3.conf: 'efi' kept: no systemd-boot binary on the ESP (257.13 is only assumed)"
    )
    assert res.warnings[0].endswith("; give --systemd-boot-version")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bootkeeper",
            "arm",
            "--esp",
            str(root),
            "--systemd-boot-version",
            "262",
            "--root",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert f"{ENTRIES}/active+3.conf: efi -> uki: systemd-boot 262 does not count 'efi' entries (729f3c21c5)" in (
        r.stdout.splitlines()
    )
    assert all("\nuki /EFI/kairos/" in t for t in entry_texts(root).values())


def test_arm_refuses_when_the_two_binaries_disagree(tmp_path: Path) -> None:
    """EFI/systemd/systemd-bootx64.efi is 262.1 and EFI/BOOT/BOOTX64.EFI is 257.13: 'efi' is
    counted by one, 'uki' dropped by the other, and the firmware decides which runs. arm refuses
    with one line naming both, and writes nothing (it would have renamed recovery otherwise)."""
    root = kairos_esp(tmp_path / "esp", 257, systemd_dir=262)
    before = tree(root)
    with pytest.raises(EspError) as exc:
        chain.arm(EspStore(root), CFG)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{ENTRIES}/active+3.conf: 'efi' cannot be converted: ")
    assert "EFI/systemd/systemd-bootx64.efi is systemd-boot 262.1-1 (counts 'uki', not 'efi')" in msg
    assert "EFI/BOOT/BOOTX64.EFI is 257.13-1~deb13u1 (counts 'efi', does not know 'uki')" in msg
    assert "no key suits both" in msg and "bootctl update" in msg
    assert tree(root) == before
    r = subprocess.run(
        [sys.executable, "-m", "bootkeeper", "arm", "--esp", str(root), "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 4 and len(r.stderr.strip().splitlines()) <= 2 and "no key suits both" in r.stderr
    assert tree(root) == before
    # two binaries that agree about the keys (252 and 257 both count 'efi'): armed as usual
    agree = kairos_esp(tmp_path / "agree", 252, systemd_dir=257)
    assert chain.arm(EspStore(agree), CFG).actions == [
        "renamed loader/entries/recovery+3.conf -> recovery+2.conf",
        "renamed loader/entries/statereset+3.conf -> statereset+2.conf",
    ]


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_arm_clears_the_read_only_attribute(tmp_path: Path, umask_022: None) -> None:
    """A read-only counted file is never renamed by any systemd-boot (booted on 252, 257, 262): arm
    clears the attribute, on an entry it only renames as on one it rewrites, and then the model
    predicts the rename. The rewritten file is new (write_atomic): 0644 either way."""
    root = esp_with(
        tmp_path / "esp",
        {
            "active+3.conf": entry_body("active"),
            "passive+3.conf": entry_body("passive", sort_key=False),
            "recovery+2.conf": entry_body("recovery"),
        },
    )
    for n in ("active+3.conf", "passive+3.conf"):
        os.chmod(root / ENTRIES / n, 0o444)
    c = bootloader.choose(EspStore(root).snapshot(262))
    assert c is not None and c.entry.file_name == "active+3.conf" and c.rename_to is None
    res = chain.arm(EspStore(root), CFG)
    for n in ("active+3.conf", "passive+3.conf"):
        assert (
            f"{ENTRIES}/{n}: cleared the read-only attribute: no systemd-boot renames a read-only file, so its "
            "tries would never run down" in res.actions
        )
        assert stat.S_IMODE((root / ENTRIES / n).stat().st_mode) == 0o644, n
    for v in (252, 257, 262):
        snap = EspStore(root).snapshot(v)
        assert not any(e.read_only for e in snap.entries)
        c = bootloader.choose(snap)
        assert c is not None and c.entry.file_name == "active+3.conf" and c.rename_to == "active+2-1.conf"


def test_arm_refuses_an_entry_whose_attribute_cannot_be_cleared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = esp_with(
        tmp_path / "esp",
        {"active+3.conf": entry_body("active"), "passive+3.conf": entry_body("passive", sort_key=False)},
        "timeout 0\ndefault active.conf\n",
    )
    os.chmod(root / ENTRIES / "active+3.conf", 0o444)
    before = tree(root)

    def refuse(path: object, mode: int) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "chmod", refuse)
    with pytest.raises(WriteError) as exc:
        chain.arm(EspStore(root), CFG)
    assert str(exc.value).startswith(
        f"{root}/{ENTRIES}/active+3.conf: has the read-only attribute, and clearing it failed (Read-only file system)"
    )
    assert tree(root) == before  # passive's sort key, loader.conf's default: nothing written before it


def test_clear_read_only_sets_every_write_bit_where_vfat_refuses_u_w_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vfat takes the write bits all or none (of those its fmask allows): on a umask=0 mount
    chmod u+w is EPERM; every write bit is accepted and the kernel keeps those the mask allows."""
    root = esp_with(tmp_path / "esp", {"active+3.conf": entry_body("active")})
    os.chmod(root / ENTRIES / "active+3.conf", 0o555)
    real_chmod = os.chmod
    modes: list[int] = []

    def vfat_chmod(path: str, mode: int) -> None:
        modes.append(mode)
        if mode & 0o222 not in (0, 0o222):
            raise PermissionError(errno.EPERM, "Operation not permitted")
        real_chmod(path, mode)

    monkeypatch.setattr(os, "chmod", vfat_chmod)
    chain.arm(EspStore(root), CFG)
    assert modes == [0o755, 0o777]
    assert stat.S_IMODE((root / ENTRIES / "active+3.conf").stat().st_mode) == 0o777


def _with_binary(root: Path, version: int) -> Path:
    (root / "EFI/BOOT").mkdir(parents=True, exist_ok=True)
    (root / "EFI/BOOT/BOOTX64.EFI").write_bytes(sdboot_binary(version).read_bytes())
    return root


def _uki_entry(tmp_path: Path, root: Path, key: str) -> Path:
    (root / "EFI/kairos/new.efi").write_bytes(uki_bytes("active"))
    new = tmp_path / "new.conf"
    new.write_text(f"title new\n{key} /EFI/kairos/new.efi\noptions x=1\n")
    return new


@pytest.mark.parametrize(("version", "key", "written"), [(257, "efi", "efi"), (262, "efi", "uki"), (257, "uki", "efi")])
def test_rotate_writes_the_key_this_version_counts(tmp_path: Path, version: int, key: str, written: str) -> None:
    """A new active that boots a UKI: 'efi' is accepted where it is counted, converted to 'uki'
    where that exists (262) and 'uki' to 'efi' where it is unknown (257); the old active, moved to
    passive, gets the same key."""
    root = _with_binary(
        esp_with(
            tmp_path / "esp",
            {"active+1-2.conf": f"title old\n{key} /EFI/kairos/old.efi\n", "recovery+2.conf": entry_body("recovery")},
        ),
        version,
    )
    (root / "EFI/kairos/old.efi").write_bytes(uki_bytes("old"))
    res = chain.rotate(EspStore(root), CFG, _uki_entry(tmp_path, root, key))
    assert names(root) == ["active+3.conf", "passive+3.conf", "recovery+2.conf"]
    assert (root / ENTRIES / "active+3.conf").read_text() == (
        f"title new\nsort-key 1-active\n{written} /EFI/kairos/new.efi\noptions x=1\n"
    )
    assert f"{written} /EFI/kairos/old.efi" in (root / ENTRIES / "passive+3.conf").read_text()
    if written != key:
        assert any(a.startswith(f"{tmp_path}/new.conf: {key} -> {written}: systemd-boot ") for a in res.actions)
        assert any(a.startswith(f"{ENTRIES}/passive+3.conf: {key} -> {written}: ") for a in res.actions)
    c = first_choice(root)
    assert c.entry.file_name == "active+3.conf" and c.rename_to == "active+2-1.conf"


def test_rotate_refuses_an_efi_entry_where_it_is_never_counted(tmp_path: Path) -> None:
    """'efi' naming a file that is not a UKI, on 262: never counted and no 'uki' suits it."""
    root = _with_binary(esp_with(tmp_path, {"active.conf": entry_body("active")}), 262)
    new = tmp_path / "new.conf"
    new.write_text("title chainloaded\nefi /EFI/kairos/vmlinuz\n")
    with pytest.raises(MalformedError) as exc:
        chain.rotate(EspStore(root), CFG, new)
    assert str(exc.value) == (
        f"{new}: 'efi' is not counted: systemd-boot 262.1-1 does not count 'efi' entries (729f3c21c5), but "
        "/EFI/kairos/vmlinuz is not a UKI (not a PE file); a bad active would never fall back (use a linux line, "
        "or point efi/uki at a UKI)"
    )
    assert names(root) == ["active.conf"]
    # the same entry where 'efi' is counted is accepted as it is
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bootkeeper",
            "rotate",
            str(new),
            "--esp",
            str(root),
            "--systemd-boot-version",
            "257",
            "--root",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "efi /EFI/kairos/vmlinuz" in (root / ENTRIES / "active+3.conf").read_text()


def test_arm_json_reports_the_conversion(tmp_path: Path) -> None:
    root = kairos_esp(tmp_path / "esp", 262)
    r = subprocess.run(
        [sys.executable, "-m", "bootkeeper", "arm", "--esp", str(root), "--json", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["actions"][0].startswith(f"{ENTRIES}/active+3.conf: efi -> uki: systemd-boot 262.1-1 ")


class Crash(OSError):
    pass


def test_a_crash_at_any_step_of_a_conversion_leaves_a_bootable_esp(tmp_path: Path) -> None:
    """arm on 262 with a read-only active: the attribute, four key conversions and the renames are
    separate crash-safe steps; a crash at any of them leaves each entry file old or new (never torn)
    and an ESP where 262 boots a non-bad entry. The next arm finishes the job."""

    def make(root: Path) -> Path:
        return kairos_esp(root, 262)

    seen: list[str] = []
    first = make(tmp_path / "count")
    os.chmod(first / ENTRIES / "active+3.conf", 0o444)
    chain.arm(EspStore(first, fault=seen.append), CFG)
    assert any(s.startswith("chmod:active+3.conf") for s in seen) and len(seen) > 8
    for k in range(len(seen)):
        root = make(tmp_path / f"crash-{k}")
        os.chmod(root / ENTRIES / "active+3.conf", 0o444)
        before = entry_texts(root)
        count = [0]

        def fault(name: str, k: int = k, count: list[int] = count) -> None:
            count[0] += 1
            if count[0] - 1 == k:
                raise Crash(f"power cut at {name}")

        with pytest.raises(Crash):
            chain.arm(EspStore(root, fault=fault), CFG)
        for name, text in entry_texts(root).items():
            old = before.get(name) or before[name.split("+")[0] + "+3.conf"]
            assert text in (old, old.replace("\nefi /EFI/", "\nuki /EFI/")), (k, name)
        c = bootloader.choose(EspStore(root).snapshot())
        assert c is not None and c.entry.state is not EntryState.BAD, k
        chain.arm(EspStore(root), CFG)
        assert all("\nuki /EFI/kairos/" in t for t in entry_texts(root).values()), k
        assert first_choice(root).rename_to == "active+2-1.conf", k
