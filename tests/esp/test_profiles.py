"""Multi-profile UKIs (esp/pe.py read_profiles, esp/entries.py ids and order, store.snapshot's
``profiles``, assess/bootloader.py): as systemd-boot's src/boot/boot.c does it at v257, v257.13,
v258.1, v258.3, v259, v261 (read in the sources; 252, 257.13 and 262.1 also booted in
tests/vm/test_vm_bootcount.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bootkeeper.assess import bootloader
from bootkeeper.errors import MalformedError
from bootkeeper.esp import pe
from bootkeeper.esp.efivars import LoaderVars
from bootkeeper.esp.entries import Entry, menu_order, parse_type2
from bootkeeper.esp.scratch import stand_in_uki
from bootkeeper.esp.store import EspStore, Snapshot
from helpers import type2_esp

OSREL = b"ID=kairos\nIMAGE_ID=kairos\nVERSION_ID=1\n"


def _uki(*profiles: bytes, osrel: bytes = OSREL, extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A base with ``.osrel``, then one ``.profile`` section per argument (profile 0, 1, …)."""
    sections: tuple[tuple[bytes, bytes], ...] = ((b".osrel", osrel), *extra)
    for p in profiles:
        sections += ((b".profile", p),)
    return stand_in_uki(sections)


def _profile(file_name: str, n: int = 1, pid: str | None = None) -> Entry:
    return parse_type2(file_name, OSREL, profile=n, profile_id=pid)


# --- ids, per version -------------------------------------------------------------------------------

ID_TABLE = [
    # version, file, ID=, id of profile 1
    ("257.0", "Foo+3-0.efi", None, "foo+3-0.efi@1"),
    ("257.9", "Foo+3-0.efi", None, "foo+3-0.efi@1"),
    ("258.0", "Foo+3-0.efi", None, "foo+3-0.efi@1"),
    ("257.10", "Foo+3-0.efi", None, "Foo.efi"),
    ("257.13", "Foo+3-0.efi", None, "Foo.efi"),
    ("258.1", "Foo+3-0.efi", None, "Foo.efi"),
    ("258.2", "Foo+3-0.efi", None, "Foo.efi"),
    ("257.13", "Foo.efi", None, "foo.efi@1"),  # uncounted files keep the suffix
    ("258.2", "Foo.efi", "Debug", "foo.efi@debug"),
    ("258.3", "Foo+3-0.efi", None, "Foo.efi@1"),
    ("259", "Foo+3-0.efi", None, "Foo.efi@1"),
    ("262.1", "Foo+3-0.efi", None, "Foo.efi@1"),
    ("259", "Foo+3-0.efi", "Debug", "Foo.efi@Debug"),  # appended after lower-casing: ID= keeps its case
    ("261.2", "Foo.efi", "Debug", "foo.efi@Debug"),
    ("262.1", "Foo+3-0.efi", "Debug", "Foo.efi@debug"),  # booted: 262.1 lower-cases ID=
    ("258.3", "Foo.efi", "Debug", "foo.efi@Debug"),  # the same code at v258.3 (a91fdd399f)
    ("257.9", "Foo.efi", "Debug", "foo.efi@debug"),
]


@pytest.mark.parametrize(("version", "file_name", "pid", "want"), ID_TABLE)
def test_profile_ids_per_version(version: str, file_name: str, pid: str | None, want: str) -> None:
    assert _profile(file_name, 1, pid).entry_id(version) == want
    # profile 0 keeps the file's id on every version
    assert parse_type2(file_name, OSREL).entry_id(version) == parse_type2(file_name, OSREL, profile=0).entry_id(version)


def test_no_profile_entries_before_257(tmp_path: Path) -> None:
    root = type2_esp(tmp_path, {"active+3.efi": _uki(b"TITLE=base\n", b"ID=debug\n")})
    assert EspStore(root).snapshot("252").profiles == ()
    snap = EspStore(root).snapshot("257.13")
    assert [(e.profile, e.profile_id) for e in snap.profiles] == [(1, "debug")]
    assert len(snap.entries) == 1  # one Entry per file: chain, lint, bless are unchanged


# --- reading .profile sections ------------------------------------------------------------------------


def test_first_profile_section_is_profile_0(tmp_path: Path) -> None:
    """pe_section_table_find_profile_start(): the first .profile starts profile 0, not 1."""
    p = tmp_path / "x.efi"
    p.write_bytes(_uki(b"ID=main\nTITLE=Main\n", b"ID=one\n", b"# nothing\n", osrel=b"ID=a\n"))
    got = pe.read_profiles(p)
    assert [(x.number, x.id, x.title) for x in got] == [(0, "main", "Main"), (1, "one", None), (2, None, None)]
    assert all(x.osrel == b"ID=a\n" for x in got)
    p.write_bytes(_uki(osrel=b"ID=a\n"))
    assert [(x.number, x.id) for x in pe.read_profiles(p)] == [(0, None)]


def test_profile_osrel_overrides_base(tmp_path: Path) -> None:
    data = stand_in_uki(
        ((b".osrel", OSREL), (b".profile", b""), (b".profile", b"ID=x\n"), (b".osrel", b"ID=other\nVERSION_ID=9\n"))
    )
    root = type2_esp(tmp_path, {"a.efi": data})
    snap = EspStore(root).snapshot("262")
    (p1,) = snap.profiles
    assert p1.sort_key == "other" and p1.version == "9" and p1.title == "other (x)"
    assert snap.entries[0].sort_key == "kairos"


def test_profile_without_osrel_is_skipped_not_renumbered(tmp_path: Path) -> None:
    data = stand_in_uki(
        ((b".profile", b""), (b".osrel", OSREL), (b".profile", b"ID=x\n"), (b".profile", b""), (b".osrel", OSREL))
    )
    snap = EspStore(type2_esp(tmp_path, {"a.efi": data})).snapshot("262")
    assert [e.entry_id(snap.sdboot) for e in snap.profiles] == ["a.efi@2"]
    assert snap.entries[0].listed


@pytest.mark.parametrize(
    ("sections", "words"),
    [
        (((b".osrel", OSREL), (b".profile", b"ID=" + b"x" * (pe.MAX_PROFILE_READ + 1))), "more than"),
        (((b".osrel", OSREL), (b".profile", b""), (b".osrel", b"A=" * pe.MAX_PROFILE_READ)), "more than"),
    ],
)
def test_hostile_profile_sections(tmp_path: Path, sections: tuple[tuple[bytes, bytes], ...], words: str) -> None:
    p = tmp_path / "EFI" / "Linux" / "a+3.efi"
    type2_esp(tmp_path, {"a+3.efi": stand_in_uki(sections)})
    with pytest.raises(MalformedError, match=words) as exc:
        pe.read_profiles(p)
    assert "\n" not in str(exc.value) and str(p) in str(exc.value)
    snap = EspStore(tmp_path).snapshot("262")
    assert snap.entries[0].listed and snap.profiles == ()  # the file still boots; its profiles are a finding
    assert any("UKI profiles are not modelled" in x for x in snap.problems)


def test_profile_section_past_end_of_file(tmp_path: Path) -> None:
    data = bytearray(_uki(b"ID=a\n", b"ID=b\n"))
    table = 0x80 + 24 + 0xF0
    off = table + 40 * 2  # the second .profile's header: make its raw data start past the end
    data[off + 20 : off + 24] = (len(data) + 4096).to_bytes(4, "little")
    type2_esp(tmp_path, {"a.efi": bytes(data)})
    with pytest.raises(MalformedError, match="past the end"):
        pe.read_profiles(tmp_path / "EFI" / "Linux" / "a.efi")


def test_many_profiles_are_bounded_by_the_section_table(tmp_path: Path) -> None:
    type2_esp(tmp_path, {"a.efi": _uki(*(b"" for _ in range(95)))})
    snap = EspStore(tmp_path).snapshot("262")
    assert len(snap.profiles) == 94  # 95 .profile sections: profiles 0..94
    type2_esp(tmp_path / "b", {"a.efi": _uki(*(b"" for _ in range(96)))})  # 97 sections: not a PE systemd-boot reads
    assert not EspStore(tmp_path / "b").snapshot("262").entries[0].listed


# --- order ------------------------------------------------------------------------------------------


def _order(entries: list[Entry], version: str) -> list[str]:
    return [f"{e.file_name}#{e.profile}" for e in menu_order(entries, version)]


def test_profiles_follow_their_file_then_by_number() -> None:
    a, b = parse_type2("a.efi", OSREL), parse_type2("b.efi", OSREL)
    es = [a, b, _profile("a.efi", 2), _profile("a.efi", 1), _profile("b.efi", 1, "z")]
    # 257–260.1: equal sort key and version: id descending (b before a), the file's profiles after it
    assert _order(es, "259") == ["b.efi#0", "b.efi#1", "a.efi#0", "a.efi#1", "a.efi#2"]


def test_261_orders_profile_after_version_across_ukis() -> None:
    """6a4a4f0302: the profile is compared inside the sort-key branch: all profiles 0 first."""
    a, b = parse_type2("a.efi", OSREL), parse_type2("b.efi", OSREL)
    es = [a, b, _profile("a.efi", 1), _profile("b.efi", 1)]
    want = ["b.efi#0", "a.efi#0", "b.efi#1", "a.efi#1"]
    for v in ("261", "262.1", "258.8", "259.6", "260.2"):
        assert _order(es, v) == want, v
    for v in ("258.7", "259.5", "260.1"):
        assert _order(es, v) == ["b.efi#0", "b.efi#1", "a.efi#0", "a.efi#1"], v


@pytest.mark.parametrize("file_name", ["Foo+3-0.efi", "foo+3-0.efi"])
def test_257_13_counted_profile_0_sorts_last(file_name: str) -> None:
    """Read at v257.13: profile 1 is ordered by id_without_profile 'foo+3-0.efi', profile 0 by its
    id 'Foo.efi' (or 'foo.efi'); -strverscmp_improved puts profile 1 first."""
    es = [parse_type2(file_name, OSREL), _profile(file_name, 1), _profile(file_name, 2)]
    assert _order(es, "257.13") == [f"{file_name}#1", f"{file_name}#2", f"{file_name}#0"]
    assert _order(es, "258.3") == [f"{file_name}#0", f"{file_name}#1", f"{file_name}#2"]
    assert _order(es, "257.9") == [f"{file_name}#0", f"{file_name}#1", f"{file_name}#2"]


# --- which entry boots -----------------------------------------------------------------------------------


def _snap(
    tmp_path: Path, version: str, loader_conf: str = "timeout 0\n", files: dict[str, bytes] | None = None
) -> Snapshot:
    return EspStore(type2_esp(tmp_path, files or {"active+3.efi": _uki(b"", b"")}, loader_conf)).snapshot(version)


@pytest.mark.parametrize(
    ("version", "file", "profile", "rename"),
    [
        ("252", "active+3.efi", 0, "active+2-1.efi"),  # no profiles: falls back
        # ids lost @1: no match; fallback: profile 1 sorts before profile 0 (test below)
        ("257.13", "active+3.efi", 1, "active+2-1.efi"),
        ("258.3", "active+3.efi", 1, "active+2-1.efi"),
        ("262.1", "active+3.efi", 1, "active+2-1.efi"),
    ],
)
def test_default_pattern_at_star(tmp_path: Path, version: str, file: str, profile: int, rename: str) -> None:
    c = bootloader.choose(_snap(tmp_path, version, "timeout 0\ndefault active*@*\n"))
    assert c is not None and c.entry.profile == profile and c.rename_to == rename
    assert c.boot_count_path == f"\\EFI\\Linux\\{rename}"


def test_literal_pattern_is_profile_0_only(tmp_path: Path) -> None:
    snap = _snap(tmp_path, "262.1", "timeout 0\ndefault active.efi\n")
    c = bootloader.choose(snap, LoaderVars(entry_oneshot="active.efi@1"))
    assert c is not None and c.entry.profile == 1 and c.entry_id == "active.efi@1"
    c = bootloader.choose(snap)
    assert c is not None and c.entry.profile == 0 and c.entry_id == "active.efi"


def test_261_fallback_never_a_profile(tmp_path: Path) -> None:
    """a93fa2c6b4: with profile 1 first in menu order (257.13's order on 258.x), 261 skips it."""
    data = stand_in_uki(((b".profile", b""), (b".profile", b""), (b".osrel", OSREL)))  # profile 0 has no .osrel
    snap = _snap(tmp_path, "262.1", files={"a.efi": data, "b.efi": _uki(b"", b"")})
    order = menu_order(list(snap.menu_entries), snap.sdboot)
    assert [(e.file_name, e.profile) for e in order][:2] == [("b.efi", 0), ("b.efi", 1)]
    # a.efi@1 only (no profile 0), b.efi before a.efi: fallback is b.efi; now drop b.efi
    (tmp_path / "EFI" / "Linux" / "b.efi").unlink()
    only = EspStore(tmp_path).snapshot("262.1")
    assert [e.profile for e in only.menu_entries if e.listed] == [1]
    assert bootloader.choose(only) is None  # the menu waits: no entry may auto-boot
    c = bootloader.choose(EspStore(tmp_path).snapshot("260.1"))
    assert c is not None and c.entry.profile == 1 and c.reason == "first entry in menu order"


def test_261_fallback_skips_profile_first_in_order(tmp_path: Path) -> None:
    snap = _snap(tmp_path, "262.1", files={"Foo+3-0.efi": _uki(b"", b"")})
    order = menu_order(list(snap.menu_entries), snap.sdboot)
    # put profile 1 first: a later entry with profile 0 is chosen
    p1 = next(e for e in order if e.profile == 1)
    from dataclasses import replace

    forced = replace(snap, profiles=(replace(p1, sort_key="0-first"),))
    c = bootloader.choose(forced)
    assert c is not None and c.entry.profile == 0 and "never a profile > 0" in c.reason
    c = bootloader.choose(replace(forced, sdboot=type(snap.sdboot).parse("260.1")))
    assert c is not None and c.entry.profile == 1


def test_booting_a_profile_renames_the_file_for_all_profiles(tmp_path: Path) -> None:
    snap = _snap(tmp_path, "262.1", "timeout 0\ndefault active.efi@1\n")
    c = bootloader.choose(snap)
    assert c is not None and c.entry.profile == 1 and c.boot_count_path == "\\EFI\\Linux\\active+2-1.efi"
    store = EspStore(tmp_path)
    store.rename(c.entry.path, c.path_after)  # the boot loader's act, as the simulator performs it
    after = store.snapshot("262.1")
    assert [e.file_name for e in after.entries] == ["active+2-1.efi"]
    assert [e.file_name for e in after.profiles] == ["active+2-1.efi"]
    c2 = bootloader.choose(after)
    assert c2 is not None and c2.entry.profile == 1 and c2.rename_to == "active+1-2.efi"


def test_type1_profile_key_from_259(tmp_path: Path) -> None:
    from bootkeeper.esp.entries import parse_type1

    text = "title x\nsort-key 1\nlinux /k\nprofile 1\n"
    assert parse_type1("a.conf", text, sdboot_version="262.1").profile == 1
    assert parse_type1("a.conf", text, sdboot_version="258.3").profile == 0
    assert parse_type1("a.conf", text.replace("1\n", "x\n"), sdboot_version="262.1").profile == 0
    e = parse_type1("a.conf", text, sdboot_version="262.1")
    assert e.entry_id("262.1") == "a.conf" and not e.may_auto_boot


def test_entries_view_lists_profiles(tmp_path: Path) -> None:
    from bootkeeper.cli.main import cli

    type2_esp(tmp_path, {"active+3.efi": _uki(b"", b"ID=debug\n")})
    (tmp_path / "efivars").mkdir()
    r = CliRunner().invoke(
        cli,
        [
            "entries",
            "--esp",
            str(tmp_path),
            "--efivars",
            str(tmp_path / "efivars"),
            "--json",
            "--systemd-boot-version",
            "262.1",
        ],
    )
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["entries"]
    assert [(x["path"], x["id"], x["profile"]) for x in rows] == [
        ("EFI/Linux/active+3.efi", "active.efi", 0),
        ("EFI/Linux/active+3.efi", "active.efi@debug", 1),
    ]
