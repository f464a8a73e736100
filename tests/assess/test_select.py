"""``bootkeeper select``: a pin that respects boot assessment (cli/select_cmd.py, assess/pin.py, the
writer in esp/efivars.py), on real files: a scratch ESP and a folder laid out like efivarfs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bootkeeper.assess import bootloader
from bootkeeper.esp import efivars as efivars_mod
from bootkeeper.esp import scratch
from bootkeeper.esp.efivars import LOADER_GUID, LoaderVars
from bootkeeper.esp.store import EspStore
from helpers import bk, entry_body, esp_with, fake_efivars, one_line_error, tree

ONESHOT = f"LoaderEntryOneShot-{LOADER_GUID}"
ENTRIES = "loader/entries"


def nxt(esp: Path, ev: Path, version: str) -> str:
    """What the model says boots next, read back from the files."""
    choice = bootloader.choose(EspStore(esp).snapshot(version), LoaderVars.read(ev))
    assert choice is not None
    return choice.entry.path


@pytest.fixture
def esp(tmp_path: Path) -> Path:
    return scratch.make(tmp_path / "esp")


@pytest.fixture
def ev(tmp_path: Path) -> Path:
    d = tmp_path / "efivars"
    d.mkdir()
    return d


def sel(esp: Path, ev: Path, *args: str, version: str | None = None) -> subprocess.CompletedProcess[str]:
    extra = ("--systemd-boot-version", version) if version else ()
    return bk("select", *args, "--esp", str(esp), "--efivars", str(ev), *extra)


# -- --once -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "entry_id"), [("252", "passive+3.conf"), ("257", "passive.conf"), ("262", "passive.conf")]
)
def test_once_writes_the_id_this_boot_loader_matches(esp: Path, ev: Path, version: str, entry_id: str) -> None:
    p = sel(esp, ev, "passive", "--once", "--json", version=version)
    assert p.returncode == 0, p.stderr
    raw = (ev / ONESHOT).read_bytes()
    assert raw[:4] == b"\x07\x00\x00\x00"  # NON_VOLATILE|BOOTSERVICE_ACCESS|RUNTIME_ACCESS: survives the reboot
    assert raw[4:] == entry_id.encode("utf-16-le") + b"\x00\x00"
    out = json.loads(p.stdout)
    assert out["written"] == [
        {"kind": "efi-variable", "path": "LoaderEntryOneShot", "key": None, "old": None, "new": entry_id}
    ]
    assert out["next"]["path"] == f"{ENTRIES}/passive+3.conf"
    assert out["next"]["reason"] == f"EFI variable LoaderEntryOneShot '{entry_id}' matches it"
    assert out["pin"]["kind"] == "once" and out["pin"]["in_effect"] is True and out["warnings"] == []
    assert nxt(esp, ev, version) == f"{ENTRIES}/passive+3.conf"
    human = sel(esp, ev, "passive", "--once", version=version)
    assert human.returncode == 0 and human.stderr == ""
    assert human.stdout.splitlines()[-1] == (
        f"next boot: {ENTRIES}/passive+3.conf (renamed to {ENTRIES}/passive+2-1.conf): "
        f"EFI variable LoaderEntryOneShot '{entry_id}' matches it"
    )
    assert "already pinned" in human.stdout  # same bytes: no second write


def test_once_by_path_file_name_or_id_and_on_a_bad_entry(esp: Path, ev: Path) -> None:
    for target in (
        f"{ENTRIES}/recovery+3.conf",
        str(esp / ENTRIES / "recovery+3.conf"),
        "recovery+3.conf",
        "recovery.conf",
    ):
        p = sel(esp, ev, target, "--once", version="257")
        assert p.returncode == 0, (target, p.stderr)
        assert efivars_mod.read_string(ev, "LoaderEntryOneShot") == "recovery.conf"
    (esp / ENTRIES / "passive+3.conf").rename(esp / ENTRIES / "passive+0-3.conf")
    p = sel(esp, ev, "passive", "--once", version="257")
    assert p.returncode == 0, p.stderr
    assert "has no tries left: the one-shot boots it anyway, once" in p.stderr
    assert nxt(esp, ev, "257") == f"{ENTRIES}/passive+0-3.conf"


def _flags_hold(d: Path) -> bool:
    probe = d / "probe"
    probe.write_bytes(b"x")
    try:
        ok = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, check=False).returncode == 0
        return ok and "i" in subprocess.run(["lsattr", str(probe)], capture_output=True, text=True).stdout.split()[0]
    finally:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True, check=False)
        probe.unlink()


@pytest.mark.root
def test_an_immutable_variable_is_overwritten_and_deleted(esp: Path, tmp_path: Path) -> None:
    """efivarfs marks LoaderEntryOneShot immutable (not on the kernel's allow list): without
    dropping FS_IMMUTABLE_FL first the write and the delete fail with EPERM, as root too. On this
    folder's file system if it holds the flag, else on a tmpfs in a private mount namespace."""
    for tool in ("chattr", "lsattr", "unshare"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing (e2fsprogs, util-linux); scripts/setup-test-deps.sh installs it")
    ev = tmp_path / "efivars"
    ev.mkdir()
    var = ev / ONESHOT
    seed = tmp_path / "seed"
    seed.write_bytes(efivars_mod.encode_string("statereset+3.conf", 0x7))  # longer than the new value
    direct = _flags_hold(ev)
    mount = "" if direct else f"mount -t tmpfs -o size=1m tmpfs {ev}"
    py = sys.executable
    script = f"""
set -e
{mount}
cp {seed} {var}
chattr +i {var}
if sh -c 'printf x > "$1"' sh {var} 2>/dev/null; then echo NOT-IMMUTABLE; exit 9; fi
echo "BEFORE $(lsattr {var} | cut -d' ' -f1)"
{py} -m bootkeeper select passive --once --esp {esp} --efivars {ev} --systemd-boot-version 257
echo "HEX $({py} -c 'import sys; print(open(sys.argv[1], "rb").read().hex())' {var})"
echo "AFTER $(lsattr {var} | cut -d' ' -f1)"
{py} -m bootkeeper select --clear --esp {esp} --efivars {ev}
if [ -e {var} ]; then echo STILL-THERE; else echo GONE; fi
"""
    cmd = ["sh", "-c", script] if direct else ["unshare", "-m", "--propagation", "private", "sh", "-c", script]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    finally:
        if var.exists():
            subprocess.run(["chattr", "-i", str(var)], capture_output=True, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    out = dict(
        line.split(" ", 1) for line in p.stdout.splitlines() if line.split(" ", 1)[0] in ("BEFORE", "HEX", "AFTER")
    )
    assert "i" in out["BEFORE"], out
    assert bytes.fromhex(out["HEX"]) == b"\x07\x00\x00\x00" + "passive.conf\0".encode("utf-16-le")
    assert "i" in out["AFTER"], "the flag goes back as systemd's efi_set_variable() puts it back"
    assert "EFI variable LoaderEntryOneShot = 'passive.conf' (was 'statereset+3.conf')" in p.stdout
    assert "removed EFI variable LoaderEntryOneShot 'passive.conf'" in p.stdout
    assert p.stdout.splitlines()[-1] == "GONE"


def test_writer_replaces_a_longer_value_in_a_plain_folder_with_one_write(
    ev: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    efivars_mod.write_string(ev, "LoaderEntryOneShot", "statereset+3.conf")
    writes: list[int] = []
    real = os.write

    def counting(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return real(fd, data)

    monkeypatch.setattr(os, "write", counting)
    assert efivars_mod.write_string(ev, "LoaderEntryOneShot", "a.conf") is True
    assert writes == [4 + len("a.conf\0") * 2]
    assert (ev / ONESHOT).read_bytes() == b"\x07\x00\x00\x00" + "a.conf\0".encode("utf-16-le")
    assert efivars_mod.write_string(ev, "LoaderEntryOneShot", "a.conf") is False  # unchanged: no write
    assert writes == [4 + len("a.conf\0") * 2]
    assert efivars_mod.delete_variable(ev, "LoaderEntryOneShot") is True
    assert efivars_mod.delete_variable(ev, "LoaderEntryOneShot") is False


# -- --persistent -----------------------------------------------------------------------------


def test_persistent_on_262_writes_preferred_which_skips_a_bad_entry(esp: Path, ev: Path) -> None:
    conf_before = (esp / "loader/loader.conf").read_bytes()
    entries_before = {k: v for k, v in tree(esp).items() if k.startswith(ENTRIES)}
    p = sel(esp, ev, "passive", "--persistent", "--json", version="262")
    assert p.returncode == 0, p.stderr
    assert (esp / "loader/loader.conf").read_bytes() == conf_before + b"preferred passive.conf\n"
    assert {k: v for k, v in tree(esp).items() if k.startswith(ENTRIES)} == entries_before
    assert list(ev.iterdir()) == []
    out = json.loads(p.stdout)
    assert out["written"] == [
        {"kind": "loader.conf", "path": "loader/loader.conf", "key": "preferred", "old": None, "new": "passive.conf"}
    ]
    assert out["pin"]["kind"] == "preferred" and out["pin"]["in_effect"] is True
    assert out["next"]["path"] == f"{ENTRIES}/passive+3.conf"
    assert nxt(esp, ev, "262") == f"{ENTRIES}/passive+3.conf"
    # passive used its tries: preferred skips it, the chain takes over
    (esp / ENTRIES / "passive+3.conf").rename(esp / ENTRIES / "passive+0-3.conf")
    assert nxt(esp, ev, "262") == f"{ENTRIES}/active+3.conf"
    again = sel(esp, ev, "passive", "--persistent", version="262")
    assert again.returncode == 0, again.stderr
    assert "already pinned: nothing to change" in again.stdout
    assert (
        f"the pin is not in effect: passive ({ENTRIES}/passive+0-3.conf) has no tries left: "
        f"active ({ENTRIES}/active+3.conf) boots next" in again.stderr
    )


@pytest.mark.parametrize("version", ["252", "257"])
def test_persistent_before_260_pins_by_sort_key(esp: Path, ev: Path, version: str) -> None:
    before = tree(esp)
    p = sel(esp, ev, "passive", "--persistent", version=version)
    assert p.returncode == 0, p.stderr
    after = tree(esp)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {f"{ENTRIES}/passive+3.conf"}
    assert after[f"{ENTRIES}/passive+3.conf"] == before[f"{ENTRIES}/passive+3.conf"].replace(
        b"sort-key 2-passive\n", b"sort-key 0-passive\n"
    )
    assert p.stdout.splitlines()[0] == f"{ENTRIES}/passive+3.conf: sort-key 0-passive (was '2-passive')"
    assert nxt(esp, ev, version) == f"{ENTRIES}/passive+3.conf"
    (esp / ENTRIES / "passive+3.conf").rename(esp / ENTRIES / "passive+0-3.conf")
    assert nxt(esp, ev, version) == f"{ENTRIES}/active+3.conf"
    # pinning another role moves the pin: passive gets its standard key back
    p = sel(esp, ev, "recovery", "--persistent", version=version)
    assert p.returncode == 0, p.stderr
    assert b"sort-key 2-passive\n" in (esp / ENTRIES / "passive+0-3.conf").read_bytes()
    assert nxt(esp, ev, version) == f"{ENTRIES}/recovery+3.conf"


def _uki(esp: Path, name: str, image_id: str) -> None:
    (esp / "EFI/Linux").mkdir(parents=True, exist_ok=True)
    osrel = f"ID=kairos\nIMAGE_ID={image_id}\nVERSION_ID=1\n".encode()
    (esp / "EFI/Linux" / name).write_bytes(scratch.stand_in_uki(((b".osrel", osrel),)))


def test_persistent_type2_before_260_is_refused_and_works_from_260(tmp_path: Path, ev: Path) -> None:
    esp = esp_with(tmp_path / "esp", {"active+3.conf": entry_body("active")})
    _uki(esp, "passive+3.efi", "passive")
    before = tree(esp)
    line = one_line_error(
        sel(esp, ev, "passive", "--persistent", version="257"), 3, "EFI/Linux/passive+3.efi", ".osrel", "260"
    )
    assert "bootkeeper cannot rewrite" in line
    assert "hint: bootkeeper select --once" in sel(esp, ev, "passive", "--persistent", version="257").stderr
    assert tree(esp) == before
    p = sel(esp, ev, "passive", "--persistent", version="262")
    assert p.returncode == 0, p.stderr
    assert b"preferred passive.efi\n" in (esp / "loader/loader.conf").read_bytes()
    assert nxt(esp, ev, "262") == "EFI/Linux/passive+3.efi"
    assert sel(esp, ev, "passive", "--once", version="257").returncode == 0  # a one-shot is fine on 257


def test_persistent_warns_when_loader_entry_preferred_or_a_default_decides(tmp_path: Path) -> None:
    esp = scratch.make(tmp_path / "esp")
    ev = fake_efivars(tmp_path / "ev", LoaderEntryPreferred="active.conf")
    p = sel(esp, ev, "passive", "--persistent", "--json", version="262")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["pin"]["in_effect"] is False
    assert "EFI variable LoaderEntryPreferred 'active.conf' matches it" in out["pin"]["why_not"]
    assert any("LoaderEntryPreferred 'active.conf' is set (not by bootkeeper)" in w for w in out["warnings"])
    assert out["next"]["path"] == f"{ENTRIES}/active+3.conf"
    # before 260 a loader.conf default beats the sort order: the pin is not in effect, and said so
    esp2 = scratch.make(tmp_path / "esp2", default="active.conf")
    conf = (esp2 / "loader/loader.conf").read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    p = sel(esp2, empty, "passive", "--persistent", version="257")
    assert p.returncode == 0, p.stderr
    assert "the pin is not in effect: loader.conf default 'active.conf' matches its id 'active.conf'" in p.stderr
    assert "`bootkeeper arm` removes a pinning default" in p.stderr
    assert (esp2 / "loader/loader.conf").read_bytes() == conf  # select never writes a default


# -- --clear ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["257", "262"])
def test_clear_restores_every_byte(esp: Path, ev: Path, version: str) -> None:
    before = tree(esp)
    assert sel(esp, ev, "passive", "--persistent", version=version).returncode == 0
    assert sel(esp, ev, "recovery", "--once", version=version).returncode == 0
    assert tree(esp) != before and (ev / ONESHOT).exists()
    p = sel(esp, ev, "--clear", "--json", version=version)
    assert p.returncode == 0, p.stderr
    assert tree(esp) == before
    assert list(ev.iterdir()) == []
    kinds = [w["kind"] for w in json.loads(p.stdout)["written"]]
    assert sorted(kinds) == ["efi-variable", "loader.conf" if version == "262" else "sort-key"]
    again = sel(esp, ev, "--clear", version=version)
    assert again.returncode == 0 and again.stdout.splitlines()[0] == "no pin: nothing to clear"
    assert tree(esp) == before


# -- hostile input ----------------------------------------------------------------------------


def test_unknown_ambiguous_and_unlisted_targets(tmp_path: Path, esp: Path, ev: Path) -> None:
    before = tree(esp)
    one_line_error(sel(esp, ev, "nobody", "--once"), 3, "'nobody'", "not a role", "file name, path or id")
    line = one_line_error(sel(esp, ev, "x" * 5000, "--persistent"), 3, "not a role")
    assert len(line) < 300
    one_line_error(sel(esp, ev, "/etc/passwd", "--once"), 2, "/etc/passwd", "not a file on the ESP")
    one_line_error(sel(esp, ev, "passive"), 2, "exactly one of --once", "--persistent", "--clear")
    one_line_error(sel(esp, ev, "passive", "--once", "--persistent"), 2, "not --once and --persistent")
    one_line_error(sel(esp, ev, "passive", "--clear"), 2, "takes no ROLE|ENTRY")
    one_line_error(sel(esp, ev, "--once"), 2, "needs a ROLE")
    both = esp_with(tmp_path / "both", {"passive+3.conf": entry_body("passive")})
    _uki(both, "passive+3.efi", "passive")
    one_line_error(
        sel(both, ev, "passive", "--once"),
        2,
        "2 passive entries",
        f"{ENTRIES}/passive+3.conf",
        "EFI/Linux/passive+3.efi",
    )
    (esp / "EFI/kairos/vmlinuz").unlink()
    one_line_error(sel(esp, ev, "passive", "--once"), 3, "no passive entry that systemd-boot lists")
    one_line_error(sel(esp, ev, f"{ENTRIES}/passive+3.conf", "--once"), 3, "does not list it", "not on the ESP")
    assert list(ev.iterdir()) == []
    assert {k: v for k, v in tree(esp).items() if k != "EFI/kairos/vmlinuz"} == {
        k: v for k, v in before.items() if k != "EFI/kairos/vmlinuz"
    }


def _no_dac(tool: str = "setpriv") -> tuple[str, ...]:
    """Run as root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH: folder modes bind root too."""
    if shutil.which(tool) is None:
        pytest.fail("setpriv (util-linux) is missing; scripts/setup-test-deps.sh installs it")
    return (tool, "--bounding-set", "-dac_override,-dac_read_search")


def test_unreadable_efivars_and_not_a_folder(esp: Path, ev: Path, tmp_path: Path) -> None:
    ev.chmod(0o444)  # listable, not searchable: no variable can be read
    try:
        p = bk("select", "passive", "--once", "--esp", str(esp), "--efivars", str(ev), prefix=_no_dac())
        one_line_error(p, 7, f"{ev}: cannot read the folder (Permission denied)")
    finally:
        ev.chmod(0o755)
    (ev / ONESHOT).write_bytes(efivars_mod.encode_string("active.conf"))
    (ev / ONESHOT).chmod(0o000)
    p = bk("select", "passive", "--persistent", "--esp", str(esp), "--efivars", str(ev), prefix=_no_dac())
    one_line_error(p, 7, f"{ev / ONESHOT}: cannot read (Permission denied)")
    p = bk("select", "--clear", "--esp", str(esp), "--efivars", str(ev), prefix=_no_dac())
    assert p.returncode == 0, p.stderr  # what cannot be read can still be removed
    assert "warning: removed a " in p.stderr and "cannot read (Permission denied)" in p.stderr
    assert list(ev.iterdir()) == []
    file_ = tmp_path / "a-file"
    file_.write_bytes(b"")
    one_line_error(sel(esp, file_, "passive", "--once"), 6, "cannot write (Not a directory)")
    one_line_error(sel(esp, tmp_path / "absent", "passive", "--once"), 6, "cannot write (No such file or directory)")
    assert "hint: is efivarfs mounted" in sel(esp, tmp_path / "absent", "passive", "--once").stderr


def test_efivars_folder_without_any_permission(esp: Path, ev: Path) -> None:
    ev.chmod(0o000)
    try:
        p = bk("select", "passive", "--once", "--esp", str(esp), "--efivars", str(ev), prefix=_no_dac())
    finally:
        ev.chmod(0o755)
    one_line_error(p, 7, f"{ev}: cannot read the folder")


@pytest.mark.parametrize("garbage", [b"\x07\x00", b"\x07\x00\x00\x00abc", b"\x07\x00\x00\x00\x00\xd8\x41\x00"])
def test_garbage_one_shot(esp: Path, ev: Path, tmp_path: Path, garbage: bytes) -> None:
    (ev / ONESHOT).write_bytes(garbage)
    before = tree(esp)
    one_line_error(sel(esp, ev, "passive", "--persistent"), 4, str(ev / ONESHOT))
    assert "hint: bootkeeper select --clear removes it" in sel(esp, ev, "passive", "--persistent").stderr
    one_line_error(bk("status", "--esp", str(esp), "--efivars", str(ev), "--root", str(tmp_path)), 4, ONESHOT)
    assert tree(esp) == before
    p = sel(esp, ev, "passive", "--once", version="257")  # replaced: it no longer decodes anyway
    assert p.returncode == 0, p.stderr
    assert "warning: replaced a " in p.stderr and ONESHOT in p.stderr
    assert efivars_mod.read_string(ev, "LoaderEntryOneShot") == "passive.conf"
    (ev / ONESHOT).write_bytes(garbage)
    p = sel(esp, ev, "--clear")
    assert p.returncode == 0, p.stderr
    assert "removed EFI variable LoaderEntryOneShot" in p.stdout and "warning: removed a " in p.stderr
    assert list(ev.iterdir()) == []
