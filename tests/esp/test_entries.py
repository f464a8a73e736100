"""Entry parsing and menu order against systemd-boot's rules."""

from __future__ import annotations

from functools import cmp_to_key
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootkeeper.esp import entries, pe, scratch
from bootkeeper.esp.entries import EntryKind, LoaderType, Role, strverscmp_improved


def test_strverscmp_follows_systemds_documented_order() -> None:
    # The order given in the comment of systemd's strverscmp_improved(), oldest first.
    order = [
        "122.1",
        "123~rc1-1",
        "123",
        "123-a",
        "123-a.1",
        "123-1",
        "123-1.1",
        "123^post1",
        "123.a-1",
        "123.1-1",
        "123a-1",
        "124-1",
    ]
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            assert strverscmp_improved(a, b) < 0, (a, b)
            assert strverscmp_improved(b, a) > 0, (b, a)
    assert strverscmp_improved("00123", "123") == 0
    assert strverscmp_improved(None, "1") < 0
    assert strverscmp_improved("", "1") < 0


@given(st.text(alphabet="0123456789.-~^ab_", max_size=12), st.text(alphabet="0123456789.-~^ab_", max_size=12))
def test_strverscmp_is_antisymmetric(a: str, b: str) -> None:
    assert strverscmp_improved(a, b) == -strverscmp_improved(b, a)


def _t1(name: str, body: str, version: int | str = 257) -> entries.Entry:
    return entries.parse_type1(name, body, loader_exists=True, sdboot_version=version)


def test_type1_parse_like_systemd_boot() -> None:
    e = _t1(
        "active+2-1.conf",
        '  title  "Kairos active"\n# comment\nsort-key 1-active\r\noptions a=1\n'
        "options b=2\ninitrd /i1\ninitrd /i2\nlinux /vmlinuz\nmachine-id abc\nversion 1.2\njunk\n",
    )
    assert e.title == "Kairos active"
    assert e.sort_key == "1-active" and e.machine_id == "abc" and e.version == "1.2"
    assert e.options == "a=1 b=2" and e.initrd == ("/i1", "/i2")
    assert e.loader_type is LoaderType.LINUX and e.listed
    assert e.role is Role.ACTIVE
    assert any("line 11" in p for p in e.problems)  # the junk line is named, and ignored


def test_type1_problems_and_unlisted() -> None:
    dup = _t1("a.conf", "title one\ntitle two\nlinux /k\n")
    assert dup.title == "two" and any("duplicate key 'title'" in p for p in dup.problems)
    assert not _t1("a.conf", "title x\n").listed  # no loader line
    mixed = _t1("a.conf", "linux /k\nefi /e\n")
    assert not mixed.listed and mixed.loader_type is LoaderType.BAD
    assert not entries.parse_type1("a.conf", "linux /k\n", loader_exists=False).listed
    assert not _t1("a.conf", "linux /k\narchitecture aa64\n").listed
    assert _t1("a.conf", "title x\0linux /k\n").loader_type is LoaderType.UNDEFINED  # NUL ends the text


@pytest.mark.parametrize(("version", "counted"), [(252, True), ("257.13", True), ("258", False), ("262.1", False)])
def test_efi_entries_are_counted_before_258(version: str | int, counted: bool) -> None:
    e = _t1("active+3.conf", "efi /EFI/x.efi\n", version=version)
    assert e.counted
    assert (e.next_name(version) == "active+2-1.conf") is counted
    assert any("'efi' key" in p for p in e.problems) is not counted


@pytest.mark.parametrize(("version", "known"), [(252, False), ("257.13", False), ("258", True), ("262.1", True)])
def test_uki_key_known_from_258(version: str | int, known: bool) -> None:
    e = _t1("a+3.conf", "uki /EFI/a.efi\n", version=version)
    assert e.listed is known
    if known:
        assert e.next_name(version) == "a+2-1.conf"


def test_read_only_entry_is_never_renamed() -> None:
    e = entries.parse_type1("a+3.conf", "linux /k\n", loader_exists=True, read_only=True)
    assert e.counted and e.next_name(252) is None and e.next_name("262.1") is None


@pytest.mark.parametrize(
    ("version", "type1", "type2"),
    [
        (252, "active+3.conf", "active+3.efi"),
        ("257.9", "active+3.conf", "active+3.efi"),
        ("257.10", "Active.conf", "Active.efi"),  # the backport strips after lower-casing
        ("257.13", "Active.conf", "Active.efi"),
        ("258", "active+3.conf", "active+3.efi"),
        ("258.1", "Active.conf", "Active.efi"),
        ("259", "active.conf", "Active.efi"),  # 259 lower-cases Type #1 ids after stripping
        ("262.1", "active.conf", "Active.efi"),
    ],
)
def test_ids_per_version(version: str | int, type1: str, type2: str) -> None:
    assert _t1("Active+3.conf", "linux /k\n").entry_id(version) == type1
    e2 = entries.parse_type2("Active+3.efi", b"ID=kairos\n")
    assert e2.entry_id(version) == type2
    assert _t1("Active.conf", "linux /k\n").entry_id(version) == "active.conf"  # uncounted: always lower case


def _order(names_bodies: list[tuple[str, str]], version: int = 257) -> list[str]:
    es = [_t1(n, b, version) for n, b in names_bodies]
    return [e.file_name for e in entries.menu_order(es, version)]


def test_bad_last_then_sort_key() -> None:
    got = _order(
        [
            ("recovery+3.conf", "sort-key 3-recovery\nlinux /k\n"),
            ("active+0-3.conf", "sort-key 1-active\nlinux /k\n"),
            ("passive+1-2.conf", "sort-key 2-passive\nlinux /k\n"),
        ]
    )
    assert got == ["passive+1-2.conf", "recovery+3.conf", "active+0-3.conf"]


def test_without_sort_keys_ids_sort_descending() -> None:
    # what made recovery boot first on a real 252 ESP without sort keys (reference notes)
    got = _order([("active+3.conf", "linux /k\n"), ("passive+3.conf", "linux /k\n"), ("recovery.conf", "linux /k\n")])
    assert got == ["recovery.conf", "passive+3.conf", "active+3.conf"]


def test_sort_key_entries_before_those_without_and_version_newest_first() -> None:
    got = _order(
        [
            ("z.conf", "linux /k\n"),
            ("b.conf", "sort-key k\nversion 1\nlinux /k\n"),
            ("a.conf", "sort-key k\nversion 2\nlinux /k\n"),
        ]
    )
    assert got == ["a.conf", "b.conf", "z.conf"]


def test_more_tries_left_first_when_otherwise_equal() -> None:
    es = [_t1("x+1-2.conf", "linux /k\n", 257), _t1("x+2-1.conf", "linux /k\n", 257)]

    def cmp(a: entries.Entry, b: entries.Entry) -> int:
        return entries.compare(a, b, 257)

    ordered = sorted(es, key=cmp_to_key(cmp))
    assert [e.file_name for e in ordered] == ["x+2-1.conf", "x+1-2.conf"]


def make_uki(path: Path, osrel: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()) -> Path:
    path.write_bytes(scratch.stand_in_uki(((b".osrel", osrel), *extra)))
    return path


def test_type2_from_osrel(tmp_path: Path) -> None:
    uki = make_uki(tmp_path / "active+3.efi", b'ID=kairos\nNAME="Kairos"\nPRETTY_NAME="Kairos active"\nVERSION_ID=3\n')
    e = entries.parse_type2(uki.name, pe.read_osrel(uki))
    assert e.kind is EntryKind.TYPE2 and e.title == "Kairos active"
    assert e.sort_key == "kairos" and e.version == "3"
    assert e.next_name() == "active+2-1.efi"
    img = entries.parse_type2(
        "x.efi", pe.read_osrel(make_uki(tmp_path / "x.efi", b"IMAGE_ID=img\nID=k\nIMAGE_VERSION=9\n"))
    )
    assert img.sort_key == "img" and img.version == "9" and img.title == "img"
    none = entries.parse_type2("y.efi", pe.read_osrel(make_uki(tmp_path / "y.efi", b"VERSION_ID=1\n")))
    assert not none.listed


def test_type2_order_by_version(tmp_path: Path) -> None:
    es = []
    for role, v in (("recovery", 1), ("active", 3), ("passive", 2)):
        u = make_uki(tmp_path / f"{role}+3.efi", f"ID=kairos\nVERSION_ID={v}\n".encode())
        es.append(entries.parse_type2(u.name, pe.read_osrel(u)))
    assert [e.role for e in entries.menu_order(es)] == [Role.ACTIVE, Role.PASSIVE, Role.RECOVERY]


@pytest.mark.parametrize("data", [b"", b"MZ", b"MZ" + b"\0" * 58 + b"\xff\xff\xff\x7f", b"NOTPE" * 20])
def test_hostile_pe(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "bad.efi"
    p.write_bytes(data)
    with pytest.raises(Exception) as ei:
        pe.read_osrel(p)
    assert "bad.efi" in str(ei.value)


def test_sdboot_version_from_real_style_magic(tmp_path: Path) -> None:
    magic = b"#### LoaderInfo: systemd-boot 252.39-1~deb12u2 ####"
    p = make_uki(tmp_path / "BOOTX64.EFI", b"", extra=((b".sdmagic", magic),))
    assert pe.sdboot_version(p) == "252.39-1~deb12u2"


@pytest.mark.parametrize(
    ("entry_id", "role"),
    [
        ("active+2.efi", "active"),  # 252 ids keep the counter
        ("passive.conf", "passive"),
        ("active.efi@debug", "active"),  # a UKI profile (257+)
        ("recovery+0-3.conf", "recovery"),
        ("Statereset.efi", "statereset"),
        ("auto-windows", None),
        ("activex.conf", None),
    ],
)
def test_role_from_the_id_systemd_boot_reports(entry_id: str, role: str | None) -> None:
    """One home (issue 15, item 14) for what status and the persistent store's activate read from
    LoaderEntrySelected."""
    from bootkeeper.esp.entries import Role

    got = Role.from_entry_id(entry_id)
    assert (got.value if got else None) == role
