"""The boot-time rule under attack (issue 12): for each hostile image class, ``sysext activate`` in
ENFORCED mode, through the real CLI, places every good image beside the bad one and refuses the bad
one with a one-line reason, exits 0 and writes the report. The one exception is a dbx that cannot be
read: revocation fails closed, so every image is refused (still exit 0, still reported).

Images are real: bootkeeper's own build (mkfs.erofs, mksquashfs), signed by the trusted key, then
made hostile where a test says so.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from bootkeeper.sysext import gpt, image, signature, trust
from helpers import build_esl
from test_attack_pkcs7 import malformed

POLICY = "root=signed+absent:usr=signed+absent"
TRUSTED = signature.self_signed("rsa", "kairos-test-db")
GOOD = ["good-a.sysext.raw", "good-b.sysext.raw"]
OWNER = uuid.UUID("11111111-2222-3333-4444-555555555555")


def _build(work: Path, name: str, fs: str = "erofs", blob: int = 300_000) -> Path:
    tree = work / f"tree-{name}"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin" / name.split(".")[0]).write_bytes(os.urandom(blob))
    return image.build(tree, work / name, *TRUSTED, fs=fs, os_release={"ID": "kairos", "VERSION_ID": "1"})


def _with_signature_blob(src: Path, out: Path, blob: bytes) -> Path:
    """``src`` with its verity-sig JSON carrying ``blob`` as the PKCS#7 (root hash and fingerprint kept)."""
    raw = bytearray(src.read_bytes())
    p = next(x for x in gpt.read(io.BytesIO(bytes(raw)), len(raw)).partitions if x.designator == "root-verity-sig")
    old = signature.parse_sig_json(bytes(raw[p.offset : p.offset + 4096]))
    raw[p.offset : p.offset + 4096] = signature.SigJson(old.root_hash, old.fingerprint, blob).dump()
    out.write_bytes(bytes(raw))
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("attack-images")
    out = {n: _build(work, n) for n in [*GOOD, "shared.sysext.raw"]}
    good = out[GOOD[0]]
    info = image.inspect(good)
    rh = info.sig["root"].root_hash
    for label, blob in malformed(rh, *TRUSTED).items():
        name = "pkcs7-" + "".join(c if c.isalnum() else "-" for c in label) + ".sysext.raw"
        out[name] = _with_signature_blob(good, work / name, blob)
    # a signed, verity-correct image whose root partition starts with hsqs but is no squashfs
    junk_fs = b"hsqs" + os.urandom(8188)
    (work / "hsqs-junk.sysext.raw").write_bytes(image.assemble(junk_fs, *TRUSTED))
    out["hsqs-junk.sysext.raw"] = work / "hsqs-junk.sysext.raw"
    out["real-squashfs.sysext.raw"] = _build(work, "real-squashfs.sysext.raw", fs="squashfs")
    return out


def _pem(cert: Any) -> bytes:
    return bytes(cert.public_bytes(Encoding.PEM))


def _root(tmp: Path, images: dict[str, Path], bad: list[str], extra: str = "  firmware: []\n") -> Path:
    root = tmp / "root"
    (root / "etc/bootkeeper").mkdir(parents=True)
    (root / "etc/bootkeeper/db.pem").write_bytes(_pem(TRUSTED[1]))
    (root / "etc/os-release").write_text("ID=kairos\nVERSION_ID=1\n")
    (root / "oem").mkdir()
    (root / "oem/90_sysext.yaml").write_text(
        f"sysext:\n  mode: enforced\n  policy: {POLICY}\n  certificates: [/etc/bootkeeper/db.pem]\n{extra}"
    )
    (root / ".extra/sysext").mkdir(parents=True)
    for n in [*GOOD, *bad]:
        shutil.copyfile(images[n], root / ".extra/sysext" / n)
    return root


def _cli(root: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "bootkeeper", "sysext", "activate", "--root", str(root), "--no-refresh", *more]


def _in_namespace(script: str, root: Path) -> subprocess.CompletedProcess[str]:
    """``script`` in a private mount namespace (its mounts vanish with it), with activate's CLI as "$@"."""
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *_cli(root)],
        capture_output=True,
        text=True,
        check=False,
    )


def _activate(root: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    r = subprocess.run(_cli(root), capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    return r, json.loads((root / "run/bootkeeper/sysext.json").read_text())


def _rule(
    root: Path, r: subprocess.CompletedProcess[str], report: dict[str, Any], bad: dict[str, str], good: list[str]
) -> None:
    """Every good image placed (byte for byte what the stub handed over), every bad one refused with
    a one-line reason containing the words given; one journal line per image."""
    got = {i["name"]: i for i in report["images"]}
    assert set(got) == {*good, *bad}, sorted(got)
    placed = sorted(p.name for p in (root / "run/extensions").iterdir())
    assert placed == sorted(good), placed
    for n in good:
        assert got[n]["verdict"] == "passed", got[n]
        src = Path(got[n]["source"])
        assert (root / "run/extensions" / n).read_bytes() == src.read_bytes()
    for n, words in bad.items():
        assert got[n]["verdict"] == "refused" and not got[n]["placed"], got[n]
        assert got[n]["reasons"] and all("\n" not in w for w in got[n]["reasons"]), got[n]
        assert any(words in w for w in got[n]["reasons"]), (n, got[n]["reasons"])
    lines = r.stdout.splitlines()
    assert all(x.startswith("bootkeeper-sysext: ") for x in lines), lines
    assert len([x for x in lines if ": passed, " in x or ": refused, " in x or ": skipped, " in x]) == len(got)


def test_malformed_pkcs7_blobs(tmp_path: Path, images: dict[str, Path]) -> None:
    bad = [n for n in images if n.startswith("pkcs7-")]
    root = _root(tmp_path, images, bad)
    r, report = _activate(root)
    # each is refused for its signature; the policy then names the missing signed protection
    _rule(root, r, report, dict.fromkeys(bad, "PKCS#7"), GOOD)


def test_squashfs_that_unsquashfs_cannot_read(tmp_path: Path, images: dict[str, Path]) -> None:
    root = _root(tmp_path, images, ["hsqs-junk.sysext.raw"])
    r, report = _activate(root)
    _rule(
        root, r, report, {"hsqs-junk.sysext.raw": "extension-release: hsqs-junk (root file system): squashfs: "}, GOOD
    )


@pytest.mark.root
@pytest.mark.integration
def test_squashfs_without_unsquashfs_on_the_node(tmp_path: Path, images: dict[str, Path]) -> None:
    """unsquashfs hidden by an empty bind mount (not executable) in a private mount namespace."""
    assert shutil.which("unshare"), "unshare (util-linux) is missing; scripts/setup-test-deps.sh installs it"
    found = [
        p for p in ("/usr/bin/unsquashfs", "/usr/sbin/unsquashfs", "/usr/local/bin/unsquashfs") if Path(p).exists()
    ]
    assert found, "unsquashfs (squashfs-tools) is missing; scripts/setup-test-deps.sh installs it"
    root = _root(tmp_path, images, ["real-squashfs.sysext.raw"])
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    binds = "".join(f"mount --bind {empty} {p}\n" for p in found)
    script = f'{binds}exec "$@"'
    r = _in_namespace(script, root)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((root / "run/bootkeeper/sysext.json").read_text())
    _rule(root, r, report, {"real-squashfs.sysext.raw": "required tool 'unsquashfs' not found"}, GOOD)


def test_a_directory_in_run_extensions_named_like_a_good_image(tmp_path: Path, images: dict[str, Path]) -> None:
    """good-b passes its checks, but a directory of its name is in /run/extensions: it is left alone
    and good-b reported as not placed; good-a is placed as usual."""
    root = _root(tmp_path, images, [])
    in_the_way = root / "run/extensions" / GOOD[1]
    in_the_way.mkdir(parents=True)
    (in_the_way / "keep").write_text("x")
    r, report = _activate(root)
    got = {i["name"]: i for i in report["images"]}
    assert got[GOOD[0]]["verdict"] == "passed" and (root / "run/extensions" / GOOD[0]).is_file()
    assert got[GOOD[1]]["verdict"] == "refused" and not got[GOOD[1]]["placed"]
    assert got[GOOD[1]]["reasons"] == [
        f"{in_the_way}: not a regular file in the way (a directory?); left alone, not placed"
    ]
    assert (in_the_way / "keep").read_text() == "x"
    assert not [p for p in (root / "run/extensions").iterdir() if p.name.startswith(".bootkeeper-")]
    assert len(r.stdout.splitlines()) == 3  # one line per image and the summary


def _efivar(d: Path, name: str, data: bytes) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}-{trust.VARIABLE_GUID[name]}").write_bytes(struct.pack("<I", 0x27) + data)


def _bad_certs() -> list[bytes]:
    der = bytes(signature.self_signed("ec", "abc")[1].public_bytes(Encoding.DER))
    v = der.index(b"\xa0\x03\x02\x01\x02")
    cn = der.rindex(b"\x0c\x03abc")
    return [
        der[:v] + b"\xa0\x03\x02\x01\x05" + der[v + 5 :],  # InvalidVersion at load
        der[:cn] + b"\x14\x03\xff\xfe\xfd" + der[cn + 5 :],  # ValueError when the subject is read
    ]


def test_malformed_db_and_verity_d_certificates(tmp_path: Path, images: dict[str, Path]) -> None:
    """The good images are signed by a key trusted only through firmware db, next to broken entries
    in db and in a verity.d folder: only the broken certificates are dropped."""
    root = _root(tmp_path, images, ["pkcs7-four-stray-bytes.sysext.raw"], "  verity_dirs: [/etc/verity.d]\n")
    (root / "oem/90_sysext.yaml").write_text(
        (root / "oem/90_sysext.yaml").read_text().replace("  certificates: [/etc/bootkeeper/db.pem]\n", "")
    )
    bad = _bad_certs()
    db = [bad[0], bytes(TRUSTED[1].public_bytes(Encoding.DER)), bad[1]]
    ev = root / "sys/firmware/efi/efivars"
    _efivar(ev, "db", build_esl([(trust.EFI_CERT_X509, OWNER, d) for d in db]))
    (root / "etc/verity.d").mkdir(parents=True)
    for i, d in enumerate(bad):
        (root / "etc/verity.d" / f"bad{i}.crt").write_bytes(d)
    r, report = _activate(root)
    _rule(root, r, report, {"pkcs7-four-stray-bytes.sysext.raw": "PKCS#7 blob does not parse"}, GOOD)
    assert [t["source"] for t in report["trust"]["trusted"]] == ["firmware db #1"]
    problems = report["trust"]["problems"]
    assert len(problems) == 4 and all("\n" not in p for p in problems), problems
    assert sum("entry 0 is not a usable" in p or "entry 2 is not a usable" in p for p in problems) == 2
    # and on the console (the journal), not only in the report: one warning line each (issue 15, item 8)
    warned = [ln for ln in r.stderr.splitlines() if ln.startswith("bootkeeper-sysext: warning: trust source skipped: ")]
    assert len(warned) == 4, r.stderr


@pytest.mark.parametrize(
    "dbx",
    [b"\x00\x01\x02\x03", struct.pack("<16sIII", trust.EFI_CERT_SHA256.bytes_le, 28, 0, 16)],
    ids=["four-stray-bytes", "empty-list-size-16"],
)
def test_unparsable_dbx_refuses_everything(tmp_path: Path, images: dict[str, Path], dbx: bytes) -> None:
    """The exception to the rule: revocation that cannot be read fails closed."""
    root = _root(tmp_path, images, [], "  firmware: [db]\n")
    ev = root / "sys/firmware/efi/efivars"
    _efivar(ev, "db", build_esl([(trust.EFI_CERT_X509, OWNER, bytes(TRUSTED[1].public_bytes(Encoding.DER)))]))
    _efivar(ev, "dbx", dbx)
    r, report = _activate(root)
    got = {i["name"]: i for i in report["images"]}
    assert sorted(got) == GOOD
    assert all(i["verdict"] == "refused" and not i["placed"] for i in got.values()), got
    assert list((root / "run/extensions").iterdir()) == []
    assert report["trust"]["trusted"] == []
    # the same certificate in db and in the config: revoked once, whichever source named it first
    assert [t["source"] for t in report["trust"]["revoked"]] == [
        f"{root / 'oem/90_sysext.yaml'}: sysext.certificates[0] (/etc/bootkeeper/db.pem)"
    ]
    (problem,) = report["trust"]["problems"]
    assert f"dbx-{trust.VARIABLE_GUID['dbx']}" in problem and "every trust anchor is treated as revoked" in problem
    # with dbx gone (absent: nothing revoked) the same images pass
    (ev / f"dbx-{trust.VARIABLE_GUID['dbx']}").unlink()
    r, report = _activate(root)
    _rule(root, r, report, {}, GOOD)


@pytest.mark.root
@pytest.mark.integration
def test_large_junk_images_never_take_the_room_of_good_ones(tmp_path: Path, images: dict[str, Path]) -> None:
    """/run is a real 2 MiB tmpfs (private mount namespace). "aaa-junk" (1.4 MiB of random bytes)
    fits alone but not beside the good images and sorts first; "aab-huge" (1 GiB, sparse) fits
    nowhere. Both are refused naming their size and the free space; both good images are placed."""
    assert shutil.which("unshare"), "unshare (util-linux) is missing; scripts/setup-test-deps.sh installs it"
    root = _root(tmp_path, images, [])
    (root / ".extra/sysext/aaa-junk.raw").write_bytes(os.urandom(1_400_000))
    with (root / ".extra/sysext/aab-huge.raw").open("wb") as f:
        f.truncate(1 << 30)
    out = tmp_path / "out"
    out.mkdir()
    (root / "run").mkdir()
    script = f"""
mount -t tmpfs -o size=2m tmpfs {root}/run || exit 99
"$@" --json > {out}/stdout; echo $? > {out}/rc
ls -a {root}/run/extensions > {out}/placed
df -B1 --output=avail {root}/run | tail -1 > {out}/avail
"""
    p = _in_namespace(script, root)
    assert p.returncode == 0 and (out / "rc").read_text().strip() == "0", p.stdout + p.stderr
    report = json.loads((out / "stdout").read_text())
    got = {i["name"]: i for i in report["images"]}
    assert [got[n]["verdict"] for n in GOOD] == ["passed", "passed"], got
    assert sorted((out / "placed").read_text().split()) == sorted([".", "..", *GOOD])
    for n, size in (("aaa-junk.raw", 1_400_000), ("aab-huge.raw", 1 << 30)):
        assert got[n]["verdict"] == "refused" and not got[n]["placed"]
        (why,) = got[n]["reasons"]
        assert f"does not fit: {n} is {size} bytes, {root}/run/extensions has " in why, why
        assert why.endswith(" bytes free")


@pytest.mark.root
def test_a_second_run_on_a_full_run_keeps_what_it_placed(tmp_path: Path, images: dict[str, Path]) -> None:
    """/run a real tmpfs with room for the two good images once, not twice: a second activate (a
    manual re-run, or --refresh) counts each earlier copy as room for its own replacement and places
    both again — it must not refuse them for space and then delete the copies it placed before."""
    sizes = [images[n].stat().st_size for n in GOOD]
    kib = (sum(sizes) + max(sizes) // 2) // 1024 + 64  # both once, plus half of one: never both twice
    root = _root(tmp_path, images, [])
    out = tmp_path / "out"
    out.mkdir()
    (root / "run").mkdir()
    script = f"""
mount -t tmpfs -o size={kib}k tmpfs {root}/run || exit 99
"$@" --json > {out}/first; echo $? > {out}/rc1
"$@" --json > {out}/second; echo $? > {out}/rc2
ls -a {root}/run/extensions > {out}/placed
"""
    p = _in_namespace(script, root)
    assert p.returncode == 0, p.stdout + p.stderr
    for run in ("first", "second"):
        report = json.loads((out / run).read_text())
        assert [(i["name"], i["verdict"], i["placed"]) for i in report["images"]] == [
            (n, "passed", True) for n in GOOD
        ], (run, report["images"])
        assert report["removed"] == [], run
    assert (out / "rc1").read_text().strip() == (out / "rc2").read_text().strip() == "0"
    assert sorted((out / "placed").read_text().split()) == sorted([".", "..", *GOOD])


def test_one_name_in_two_folders_is_reported_once_each(tmp_path: Path, images: dict[str, Path]) -> None:
    """The UKI's own image wins over a global one of the same name; the report has both lines: the
    one judged, and the one skipped with the reason."""
    root = _root(tmp_path, images, [])
    glob = root / ".extra/global_sysext"
    glob.mkdir(parents=True)
    shutil.copyfile(images["shared.sysext.raw"], glob / GOOD[0])
    _, report = _activate(root)
    rows = [(i["name"], i["verdict"], i["source"]) for i in report["images"]]
    assert rows == [
        (GOOD[0], "passed", str(root / ".extra/sysext" / GOOD[0])),
        (GOOD[1], "passed", str(root / ".extra/sysext" / GOOD[1])),
        (GOOD[0], "skipped", ""),
    ], rows
    assert report["images"][2]["reasons"] == [f"{glob / GOOD[0]}: an image of this name came from an earlier folder"]


def test_confext_and_global_extensions(tmp_path: Path, images: dict[str, Path]) -> None:
    """A .confext.raw is never placed in /run/extensions (it is systemd-confext's); global extensions
    (/.extra/global_sysext, from the ESP's loader/extensions) are judged like the UKI's own."""
    root = _root(tmp_path, images, ["pkcs7-truncated.sysext.raw"])
    shutil.copyfile(images[GOOD[0]], root / ".extra/sysext/etc-stuff.confext.raw")  # signed and valid
    glob = root / ".extra/global_sysext"
    glob.mkdir(parents=True)
    shutil.copyfile(images["shared.sysext.raw"], glob / "shared.sysext.raw")
    shutil.copyfile(images["pkcs7-truncated.sysext.raw"], glob / "shared-bad.sysext.raw")
    _, report = _activate(root)
    got = {i["name"]: i for i in report["images"]}
    assert got["etc-stuff.confext.raw"]["verdict"] == "skipped" and not got["etc-stuff.confext.raw"]["placed"]
    assert got["etc-stuff.confext.raw"]["reasons"] == [
        f"{root}/.extra/sysext/etc-stuff.confext.raw: a configuration extension: systemd-confext's, "
        "not placed in /run/extensions"
    ]
    assert str(glob) in report["sources"]
    assert got["shared.sysext.raw"]["verdict"] == "passed" and got["shared.sysext.raw"]["source"] == str(
        glob / "shared.sysext.raw"
    )
    assert got["shared-bad.sysext.raw"]["verdict"] == "refused"
    assert sorted(p.name for p in (root / "run/extensions").iterdir()) == sorted([*GOOD, "shared.sysext.raw"])


def test_names_with_control_characters_stay_on_one_journal_line(tmp_path: Path, images: dict[str, Path]) -> None:
    root = _root(tmp_path, images, [])
    evil = "x\nbootkeeper-sysext: good-z.sysext.raw: passed, placed\x1b[2K.raw"
    (root / ".extra/sysext" / evil).write_bytes(b"junk")
    r, report = _activate(root)
    lines = r.stdout.splitlines()
    assert all(x.startswith("bootkeeper-sysext: ") for x in lines), lines
    (line,) = [x for x in lines if x.startswith("bootkeeper-sysext: x\\x0a")]
    assert "\\x1b[2K.raw: skipped, not placed" in line, line
    assert not [x for x in lines if x.startswith("bootkeeper-sysext: good-z")]
    assert {i["name"] for i in report["images"]} == {*GOOD, evil}  # the report keeps the real name
