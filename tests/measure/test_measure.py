"""``bootkeeper tpm predict`` over hand-made ESPs: the archive systemd-stub measures into PCR 13 (and
PCR 12's), checked against bytes written out from src/boot/cpio.c (v257.9) by hand and against GNU
cpio reading it; what changes PCR 13 and what does not; PCR 12's command lines and credentials; a
section whose VirtualSize exceeds its file data; hostile UKIs and policies. The values against the
real systemd-measure/ukify are in test_measure_interop.py; against a real boot in test_node_tpm.py."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from helpers import bk, one_line_error, uki

OSREL = "ID=kairos\nVERSION_ID=1\nIMAGE_ID=active\n"


def esp(root: Path, extras: dict[str, bytes] | None = None, name: str = "active+3.efi") -> Path:
    (root / "EFI/Linux").mkdir(parents=True, exist_ok=True)
    (root / "EFI/Linux" / name).write_bytes(uki(OSREL))
    d = root / "EFI/Linux/active.efi.extra.d"
    for n, data in (extras or {}).items():
        d.mkdir(exist_ok=True)
        (d / n).write_bytes(data)
    return root


def predict(root: Path, *extra: str) -> dict[str, Any]:
    p = bk("tpm", "predict", "--esp", root, "--json", *extra)
    assert p.returncode == 0, p.stderr
    (entry,) = json.loads(p.stdout)["entries"]
    assert isinstance(entry, dict)
    return entry


def extend(value: bytes, data: bytes) -> bytes:
    return hashlib.sha256(value + hashlib.sha256(data).digest()).digest()


# One file, a.raw = b"xy", as pack_cpio() lays it out: written out field by field from cpio.c
Z = b"00000000"
HAND_CPIO = (
    # magic, ino, mode, uid, gid, nlink, mtime, size, 4x dev, namesize, crc; name; pad
    b"070701" + b"00000001" + b"0000416d" + Z * 2 + b"00000001" + Z * 6 + b"00000007" + Z
    + b".extra\0" + b"\0" * 3  # 110 + 7 = 117, padded to 120
    + b"070701" + b"00000002" + b"0000416d" + Z * 2 + b"00000001" + Z * 6 + b"0000000e" + Z
    + b".extra/sysext\0"  # 110 + 14 = 124
    + b"070701" + b"00000003" + b"00008124" + Z * 2 + b"00000001" + Z + b"00000002" + Z * 4 + b"00000014" + Z
    + b".extra/sysext/a.raw\0" + b"\0" * 2  # 110 + 20 = 130, padded to 132
    + b"xy\0\0"
    + b"070701" + Z * 4 + b"00000001" + Z * 6 + b"0000000B" + Z + b"TRAILER!!!\0\0\0\0"
)  # fmt: skip


def test_the_sysext_archive_is_the_one_cpio_c_writes(tmp_path: Path) -> None:
    from bootkeeper.measure import cpio

    d = tmp_path / "x"
    d.mkdir()
    (d / "a.raw").write_bytes(b"xy")
    out = bytearray()
    refs = cpio.write(".extra/sysext", 0o555, 0o444, cpio.members(d, ".raw", ".confext.raw", "x"), out.extend, "x")
    assert bytes(out) == HAND_CPIO
    assert [(r.name, r.size, r.sha256) for r in refs] == [("a.raw", 2, hashlib.sha256(b"xy").hexdigest())]
    entry = predict(esp(tmp_path / "esp", {"a.raw": b"xy"}))
    assert entry["pcrs"]["sha256"]["13"] == extend(bytes(32), HAND_CPIO).hex()
    (ev,) = [e for e in entry["events"] if e["pcr"] == 13]
    assert ev["type"] == "EV_IPL" and ev["description"] == "System extension initrd"
    assert ev["files"] == [{"name": "a.raw", "size": 2, "sha256": hashlib.sha256(b"xy").hexdigest()}]


def test_gnu_cpio_reads_the_archive_back_with_the_stubs_modes(tmp_path: Path) -> None:
    from bootkeeper.measure import cpio

    d = tmp_path / "x"
    d.mkdir()
    files = {"b.raw": os.urandom(5001), "a.raw": os.urandom(3), "c.sysext.raw": b""}
    for n, data in files.items():
        (d / n).write_bytes(data)
    out = bytearray()
    cpio.write(".extra/sysext", 0o555, 0o444, cpio.members(d, ".raw", ".confext.raw", "x"), out.extend, "x")
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=bytes(out), capture_output=True, check=True
    ).stdout.decode()
    lines = [ln.split() for ln in listing.splitlines()]
    assert [ln[-1] for ln in lines] == [
        ".extra",
        ".extra/sysext",
        ".extra/sysext/a.raw",
        ".extra/sysext/b.raw",
        ".extra/sysext/c.sysext.raw",
    ]
    assert [ln[0] for ln in lines] == ["dr-xr-xr-x"] * 2 + ["-r--r--r--"] * 3
    x = tmp_path / "extract"
    x.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], input=bytes(out), cwd=x, check=True)
    assert {p.name: p.read_bytes() for p in (x / ".extra/sysext").iterdir()} == files


def test_pcr13_follows_every_byte_name_and_presence_and_nothing_else(tmp_path: Path) -> None:
    base = {"tools.raw": b"t" * 1000, "net.sysext.raw": b"n" * 77}
    ref = predict(esp(tmp_path / "ref", base))["pcrs"]["sha256"]["13"]
    assert ref != "0" * 64
    changed = {
        "a byte": {**base, "tools.raw": b"t" * 999 + b"u"},
        "a name": {"tools2.raw": base["tools.raw"], "net.sysext.raw": base["net.sysext.raw"]},
        "one more": {**base, "z.raw": b""},
        "one less": {"tools.raw": base["tools.raw"]},
    }
    for why, files in changed.items():
        assert predict(esp(tmp_path / why.replace(" ", "-"), files))["pcrs"]["sha256"]["13"] != ref, why
    same = {
        "a confext": {**base, "etc.confext.raw": b"c"},
        "a dot file": {**base, ".tools.raw.bk-tmp": b"partial"},
        "not .raw": {**base, "README": b"r", "tools.raw.sig": b"s"},
    }
    for why, files in same.items():
        assert predict(esp(tmp_path / why.replace(" ", "-"), files))["pcrs"]["sha256"]["13"] == ref, why
    sub = esp(tmp_path / "subdir", base)
    (sub / "EFI/Linux/active.efi.extra.d/dir.raw").mkdir()
    assert predict(sub)["pcrs"]["sha256"]["13"] == ref
    upper = predict(esp(tmp_path / "upper", {"TOOLS.RAW": b"t"}))
    assert [f["name"] for e in upper["events"] if e["pcr"] == 13 for f in e["files"]] == ["TOOLS.RAW"]
    # an empty .extra.d measures nothing: PCR 13 stays zero
    empty = esp(tmp_path / "empty")
    (empty / "EFI/Linux/active.efi.extra.d").mkdir()
    assert predict(empty)["pcrs"]["sha256"]["13"] == "0" * 64


def test_confexts_and_credentials_go_to_pcr12_in_the_stubs_order(tmp_path: Path) -> None:
    root = esp(tmp_path / "e", {"etc.confext.raw": b"c", "a.cred": b"secret", "tools.raw": b"t"})
    (root / "loader/credentials").mkdir(parents=True)
    (root / "loader/credentials/g.cred").write_bytes(b"global")
    entry = predict(root)
    pcr12 = [e["description"] for e in entry["events"] if e["pcr"] == 12]
    assert pcr12 == ["Credentials initrd", "Global credentials initrd", "Configuration extension initrd"]
    assert [f["name"] for e in entry["events"] if e["pcr"] == 13 for f in e["files"]] == ["tools.raw"]


def test_a_type1_entrys_options_are_measured_by_the_boot_loader_and_by_the_stub(tmp_path: Path) -> None:
    root = tmp_path / "e"
    (root / "EFI/kairos").mkdir(parents=True)
    (root / "EFI/kairos/active.efi").write_bytes(uki(OSREL))
    (root / "loader/entries").mkdir(parents=True)
    (root / "loader/entries/active+3.conf").write_text(
        "title Kairos\nefi /EFI/kairos/active.efi\noptions  root=LABEL=x\tquiet \n"
    )
    entry = predict(root)
    assert entry["uki"] == "EFI/kairos/active.efi" and entry["extra_dir"] == "EFI/kairos/active.efi.extra.d"
    pcr12 = [(e["source"], e["description"]) for e in entry["events"] if e["pcr"] == 12]
    # systemd-boot passes the joined options as they are; the stub measures them mangled
    options = [e for e in pcr12 if e[0] == "systemd-boot"]
    assert len(options) == 1 and options[0][1].strip() == "root=LABEL=x\tquiet"
    assert ("systemd-stub", "root=LABEL=x quiet") in pcr12
    by_hand = hashlib.sha256(bytes(32) + hashlib.sha256((options[0][1] + "\0").encode("utf-16-le")).digest()).digest()
    by_hand = hashlib.sha256(by_hand + hashlib.sha256("root=LABEL=x quiet\0".encode("utf-16-le")).digest()).digest()
    assert entry["pcrs"]["sha256"]["12"] == by_hand.hex()
    # a UKI without .cmdline keeps the passed one under Secure Boot too; one with .cmdline drops it
    assert predict(root, "--secure-boot", "on")["pcrs"]["sha256"]["12"] == by_hand.hex()
    from bootkeeper.esp import scratch

    with_cmdline = scratch.stand_in_uki(((b".linux", b"k"), (b".osrel", OSREL.encode()), (b".cmdline", b"ro")))
    (root / "EFI/kairos/active.efi").write_bytes(with_cmdline)
    sb = predict(root, "--secure-boot", "on")
    assert [e["source"] for e in sb["events"] if e["pcr"] == 12] == ["systemd-boot"]
    assert any("drops the passed command line" in n for n in sb["notes"])


def _pe(sections: list[tuple[bytes, bytes, int]]) -> bytes:
    """A PE whose sections have their own VirtualSize (name, file data, VirtualSize)."""
    pe_off, opt = 0x80, 0xF0
    table = pe_off + 24 + opt
    data_off = 0x400
    out = bytearray(b"MZ" + b"\0" * 0x3A + struct.pack("<I", pe_off)).ljust(pe_off, b"\0")
    out += b"PE\0\0" + struct.pack("<HHIIIHH", 0x8664, len(sections), 0, 0, 0, opt, 0x22) + bytes(opt)
    body = bytearray()
    for name, data, vsize in sections:
        raw = data.ljust((len(data) + 0x1FF) & ~0x1FF, b"\xee")  # file padding that must not be measured
        # SizeOfRawData is the data's own size: VirtualSize above it must read as zeros, not as the padding
        out += struct.pack(
            "<8sIIIIIIHHI", name.ljust(8, b"\0"), vsize, 0x1000, len(data), data_off + len(body), 0, 0, 0, 0, 0
        )
        body += raw
    assert len(out) <= table + 40 * len(sections) <= data_off
    return bytes(out.ljust(data_off, b"\0") + body)


def test_pcr11_takes_virtualsize_bytes_zero_padded_and_skips_empty_and_pcrsig(tmp_path: Path) -> None:
    pe = _pe(
        [
            (b".linux", b"KERNEL", 9),
            (b".osrel", b"ID=x\n" + b"\xee" * 20, 5),
            (b".cmdline", b"", 0),
            (b".pcrsig", b"{}", 2),
        ]
    )
    (tmp_path / "EFI/Linux").mkdir(parents=True)
    (tmp_path / "EFI/Linux/active.efi").write_bytes(pe)
    entry = predict(tmp_path)
    v = bytes(32)
    for name, data in ((b".linux", b"KERNEL\0\0\0"), (b".osrel", b"ID=x\n")):
        v = extend(v, name + b"\0")
        v = extend(v, data)
    assert entry["pcrs"]["sha256"]["11"] == v.hex()
    assert [e["description"] for e in entry["events"] if e["pcr"] == 11] == [".linux", ".linux", ".osrel", ".osrel"]


@pytest.mark.parametrize(
    "data,words",
    [
        (b"not a pe at all", ["EFI/Linux/active.efi", "not a PE"]),
        (uki(OSREL, linux=False), ["EFI/Linux/active.efi", "no .linux"]),
        (uki(OSREL)[:-502], ["EFI/Linux/active.efi", "past the end"]),
    ],
)
def test_a_broken_uki_is_a_one_line_error(tmp_path: Path, data: bytes, words: list[str]) -> None:
    (tmp_path / "EFI/Linux").mkdir(parents=True)
    (tmp_path / "EFI/Linux/active.efi").write_bytes(data)
    (tmp_path / "EFI/Linux/passive.efi").write_bytes(uki(OSREL.replace("active", "passive")))
    one_line_error(bk("tpm", "predict", "--esp", tmp_path), 4, *words)
    # another entry still predicts
    assert bk("tpm", "predict", "--esp", tmp_path, "--entry", "passive").returncode == 0


def test_no_uki_is_not_applicable(tmp_path: Path) -> None:
    (tmp_path / "loader").mkdir()
    one_line_error(bk("tpm", "predict", "--esp", tmp_path), 3, "no boot entry", "runs a UKI")


@pytest.mark.parametrize(
    "text,words",
    [
        (b"[1]", ["not a JSON object"]),
        (b"{", ["not JSON"]),
        (b'{"md5": []}', ["unknown bank"]),
        (b'{"sha256": {}}', ["sha256", "not a list"]),
        (b'{"sha256": [{"pcrs": [11], "pkfp": "zz", "pol": "00", "sig": ""}]}', ["sha256[0]", "not hex"]),
        (b'{"sha256": [{"pcrs": ["11"], "pkfp": "00", "pol": "00", "sig": ""}]}', ["pcrs"]),
        (b'{"sha256": [{"pcrs": [11], "pkfp": "00", "pol": "00", "sig": "!!"}]}', ["sig", "base64"]),
        (b'{"sha256": [{"pcrs": [11], "pkfp": "00", "pol": "00"}]}', ["sig", "missing"]),
        (b"\xff\xfe", ["not JSON"]),
    ],
)
def test_a_hostile_pcrsig_is_one_malformed_error(text: bytes, words: list[str]) -> None:
    from bootkeeper.errors import MalformedError
    from bootkeeper.measure import policy

    with pytest.raises(MalformedError) as exc:
        policy.parse_pcrsig(text, ".pcrsig of x.efi")
    assert "\n" not in str(exc.value) and str(exc.value).startswith(".pcrsig of x.efi")
    for w in words:
        assert w in str(exc.value)


def test_sign_policy_usage_and_bad_keys(tmp_path: Path) -> None:
    esp(tmp_path / "e")
    efi = tmp_path / "e/EFI/Linux/active+3.efi"
    one_line_error(bk("tpm", "sign-policy", "--uki", efi), 2, "--key")
    one_line_error(bk("tpm", "sign-policy", "--uki", efi, "--entry", "active", "--print-digests"), 2, "one of --entry")
    (tmp_path / "k.pem").write_text("not a key")
    one_line_error(bk("tpm", "sign-policy", "--uki", efi, "--key", tmp_path / "k.pem"), 4, "k.pem", "PEM private key")
    one_line_error(bk("tpm", "sign-policy", "--uki", tmp_path / "none.efi", "--key", tmp_path / "k.pem"), 7, "none.efi")
    p = bk("tpm", "sign-policy", "--esp", tmp_path / "e", "--entry", "active", "--print-digests", "--bank", "sha256")
    assert p.returncode == 0 and [d["phase"] for d in json.loads(p.stdout)] == [
        "enter-initrd",
        "enter-initrd:leave-initrd",
        "enter-initrd:leave-initrd:sysinit",
        "enter-initrd:leave-initrd:sysinit:ready",
    ]
    p = bk(
        "tpm",
        "sign-policy",
        "--uki",
        efi,
        "--print-digests",
        "--bank",
        "sha256",
        "--phase",
        "::sysinit:",
        "--phase",
        "enter-initrd",
    )
    assert [d["phase"] for d in json.loads(p.stdout)] == ["enter-initrd", "sysinit"]
