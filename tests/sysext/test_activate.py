"""Extensions on the node, end to end on a temporary root, through the CLI:

a scratch ESP with active/passive/recovery UKIs; five images (two signed by the trusted key, one by
an untrusted key, one unsigned, one tampered) installed per the config's entry mapping; the booted
entry's ``.extra.d`` copied to ``<root>/.extra/sysext`` as systemd-stub does; ``sysext activate`` in
each mode; the exact files in ``<root>/run/extensions`` and the report asserted. Then the real
``systemd-dissect --validate`` (systemd 257) on the same images.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

import trixie
from bootkeeper.esp import scratch
from bootkeeper.esp.entries import Role
from bootkeeper.sysext import image, signature
from helpers import bk

POLICY = "root=signed+absent:usr=signed+absent"
TRUSTED = signature.self_signed("rsa", "kairos-test-db")
UNTRUSTED = signature.self_signed("rsa", "someone else")
SIGNED = ["k3s-v1.30.0.sysext.raw", "tools.sysext.raw"]
BAD = {
    "rogue.sysext.raw": "no trusted certificate",
    "unsigned.sysext.raw": "no signature partition",
    "k3s-v1.30.1.sysext.raw": "does not match its hash",
}
ALL = sorted([*SIGNED, *BAD])


def _pem(obj: Any) -> bytes:
    if hasattr(obj, "private_bytes"):
        return bytes(
            obj.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return bytes(obj.public_bytes(serialization.Encoding.PEM))


def _build(work: Path, name: str, key: Any, cert: Any) -> Path:
    tree = work / f"tree-{name}"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin" / name.split(".")[0]).write_bytes(os.urandom(300_000))
    out = work / name
    image.build(tree, out, key, cert, os_release={"ID": "kairos", "VERSION_ID": "1"})
    return out


def _tamper(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    data = image.inspect(path).found["root"].data
    off = data.offset + 2 * 4096 + 100  # a byte of the erofs data, well inside the verity data blocks
    raw[off] ^= 0x40
    path.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("images")
    imgs = {n: _build(work, n, *TRUSTED) for n in SIGNED}
    imgs["rogue.sysext.raw"] = _build(work, "rogue.sysext.raw", *UNTRUSTED)
    # unsigned: the file system of a built image, re-assembled without a verity-sig partition
    src = _build(work, "unsigned.sysext.raw", *TRUSTED)
    data = image.inspect(src).found["root"].data
    fs = src.read_bytes()[data.offset : data.offset + data.size]
    src.write_bytes(image.assemble(fs, None, None))
    imgs["unsigned.sysext.raw"] = src
    t = _build(work, "k3s-v1.30.1.sysext.raw", *TRUSTED)
    _tamper(t)
    imgs["k3s-v1.30.1.sysext.raw"] = t

    r = tmp_path_factory.mktemp("root")
    esp = scratch.make(r / "efi", roles=(Role.ACTIVE, Role.PASSIVE, Role.RECOVERY), ukis=True)
    (r / "etc/bootkeeper").mkdir(parents=True)
    (r / "etc/bootkeeper/db.pem").write_bytes(_pem(TRUSTED[1]))
    (r / "etc/os-release").write_text("ID=kairos\nVERSION_ID=1\n")
    (r / "oem").mkdir()
    (r / "oem/90_sysext.yaml").write_text(
        "sysext:\n"
        "  mode: enforced\n"
        f"  policy: {POLICY}\n"
        "  certificates: [/etc/bootkeeper/db.pem]\n"
        "  firmware: []\n"
        "  entries:\n"
        "    active: ['k3s-v1\\.30\\..*']\n"
        "    passive: ['k3s-v1\\.29\\..*']\n"
    )
    return {"root": r, "esp": esp, "work": work, **{n: p for n, p in imgs.items()}}


def _installed(esp: Path, entry: str) -> list[str]:
    d = esp / "EFI/kairos" / f"{entry}.efi.extra.d"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


@pytest.fixture(scope="module")
def deployed(node: dict[str, Path]) -> dict[str, list[subprocess.CompletedProcess[str]]]:
    """Install all five through the CLI: the bad ones first without, then with --force."""
    common = ["--esp", str(node["esp"]), "--root", str(node["root"])]
    runs: dict[str, list[subprocess.CompletedProcess[str]]] = {}
    for n in SIGNED:
        runs[n] = [bk("sysext", "install", str(node[n]), *common, "--json")]
    for n in BAD:
        refused = bk("sysext", "install", str(node[n]), *common)
        leaked = [e for e in ("active", "passive", "recovery") if n in _installed(node["esp"], e)]
        runs[n] = [refused, bk("sysext", "install", str(node[n]), *common, "--force")]
        assert not leaked, f"{n} was written although refused"
    return runs


def test_install_follows_the_mapping_and_refuses_bad_images(
    node: dict[str, Path], deployed: dict[str, list[subprocess.CompletedProcess[str]]]
) -> None:
    root, esp = node["root"], node["esp"]
    common = ["--esp", str(esp), "--root", str(root)]
    for n in SIGNED:
        (r,) = deployed[n]
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["validation"]["signer"] == "CN=kairos-test-db"
    for n, why in BAD.items():
        refused, forced = deployed[n]
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "refused under policy" in refused.stderr and why in refused.stderr
        assert refused.stderr.splitlines()[0].startswith("bootkeeper: error:")
        assert forced.returncode == 0, forced.stderr
        assert forced.stderr.count("--force although it fails validation") == 1, forced.stderr
    # k3s-v1.30.* only to active (a rule names it); the rest to active and passive; recovery never
    assert _installed(esp, "active") == ALL
    assert _installed(esp, "passive") == sorted(["tools.sysext.raw", "rogue.sysext.raw", "unsigned.sysext.raw"])
    assert _installed(esp, "recovery") == []
    assert not [p for p in esp.rglob(".bootkeeper-*")]
    # installing again writes nothing
    r = bk("sysext", "install", str(node["tools.sysext.raw"]), *common, "--json")
    assert json.loads(r.stdout)["written"] == [] and len(json.loads(r.stdout)["unchanged"]) == 2
    listing = json.loads(bk("sysext", "list", *common, "--json").stdout)
    rows = {(x["entry"], x["name"]): x for x in listing["extensions"]}
    assert rows[("active", "tools.sysext.raw")]["signer"] == "CN=kairos-test-db"
    assert rows[("active", "tools.sysext.raw")]["ok"] is True
    assert rows[("passive", "rogue.sysext.raw")]["ok"] is False
    assert listing["entries"] == ["active", "passive", "recovery"]


def test_list_names_a_broken_image_and_lists_the_others(
    node: dict[str, Path], deployed: dict[str, list[subprocess.CompletedProcess[str]]], tmp_path: Path
) -> None:
    """One file in an .extra.d that is not a GPT image is a row that says why, not the end of the list
    (before: exit 4 at the first such file, nothing listed)."""
    esp = tmp_path / "esp"
    shutil.copytree(node["esp"], esp, symlinks=True)
    (esp / "EFI/kairos/active.efi.extra.d/aaa-junk.raw").write_bytes(b"not a disk image\n" * 64)
    r = bk("sysext", "list", "--esp", str(esp), "--root", str(node["root"]), "--json")
    assert r.returncode == 0, r.stderr
    rows = {(x["entry"], x["name"]): x for x in json.loads(r.stdout)["extensions"]}
    junk = rows[("active", "aaa-junk.raw")]
    assert junk["ok"] is False and junk["signer"] is None and len(junk["reasons"]) == 1, junk
    assert "aaa-junk.raw" in junk["reasons"][0], junk
    assert rows[("active", "tools.sysext.raw")]["ok"] is True  # the ones after it are still judged
    plain = bk("sysext", "list", "--esp", str(esp), "--root", str(node["root"]))
    assert plain.returncode == 0 and "aaa-junk.raw" in plain.stdout and "tools.sysext.raw" in plain.stdout


def _boot(node: dict[str, Path], entry: str = "active") -> Path:
    """What systemd-stub does: the booted UKI's .extra.d/*.raw become /.extra/sysext/."""
    root = node["root"]
    extra = root / ".extra/sysext"
    shutil.rmtree(extra, ignore_errors=True)
    extra.mkdir(parents=True)
    for p in (node["esp"] / "EFI/kairos" / f"{entry}.efi.extra.d").glob("*.raw"):
        shutil.copyfile(p, extra / p.name)
    return extra


@pytest.mark.parametrize(
    ("mode", "placed", "verdicts"),
    [
        ("enforced", SIGNED, {**dict.fromkeys(SIGNED, "passed"), **dict.fromkeys(BAD, "refused")}),
        # permissive places only what systemd-sysext would merge: a signature that does not verify or
        # a hash tree that does not match would make it merge none (issue 26 item 4)
        (
            "permissive",
            sorted([*SIGNED, "unsigned.sysext.raw"]),
            {
                **dict.fromkeys(SIGNED, "passed"),
                **dict.fromkeys(BAD, "refused"),
                "unsigned.sysext.raw": "failed-but-placed",
            },
        ),
        ("disabled", ALL, dict.fromkeys(ALL, "unchecked")),
    ],
)
def test_activate_modes(
    node: dict[str, Path], deployed: object, mode: str, placed: list[str], verdicts: dict[str, str]
) -> None:
    root = node["root"]
    _boot(node)
    r = bk("sysext", "activate", "--root", str(root), "--mode", mode, "--no-refresh")
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stdout.splitlines() if x.startswith("bootkeeper-sysext: ") and ".raw:" in x]
    assert len(lines) == 5  # one line per image
    assert sorted(p.name for p in (root / "run/extensions").iterdir()) == sorted(placed)
    report = json.loads((root / "run/bootkeeper/sysext.json").read_text())
    assert report["mode"] == mode
    got = {i["name"]: i for i in report["images"]}
    assert {n: i["verdict"] for n, i in got.items()} == verdicts
    for n in BAD:
        if mode != "disabled":
            assert any(BAD[n] in why for why in got[n]["reasons"]), got[n]
    for n in SIGNED:
        if mode != "disabled":
            assert got[n]["signer"] == "CN=kairos-test-db" and got[n]["reasons"] == []
    # placed copies are byte-identical to what the stub handed over
    for n in placed:
        assert (root / "run/extensions" / n).read_bytes() == (root / ".extra/sysext" / n).read_bytes()
    # the trust anchor is exported for systemd-sysext's own check (not in disabled mode)
    if mode == "disabled":
        assert "exported" not in report["trust"]
    else:
        assert report["trust"]["exported"]["dir"] == str(root / "run/verity.d")
        exported = sorted((root / "run/verity.d").glob("bootkeeper-*.crt"))
        assert [p.read_bytes() for p in exported] == [_pem(TRUSTED[1])]


def test_activate_never_follows_symlinks_or_odd_names(node: dict[str, Path], deployed: object, tmp_path: Path) -> None:
    root = node["root"]
    extra = _boot(node)
    outside = tmp_path / "outside.raw"
    shutil.copyfile(node["tools.sysext.raw"], outside)  # a valid signed image, but outside /.extra
    (extra / "link.sysext.raw").symlink_to(outside)
    (extra / "..evil.raw").write_bytes(b"x")
    os.mkfifo(extra / "fifo.raw")
    for mode in ("disabled", "enforced"):
        r = bk("sysext", "activate", "--root", str(root), "--mode", mode, "--no-refresh", "--json")
        assert r.returncode == 0, r.stderr
        got = {i["name"]: i for i in json.loads(r.stdout)["images"]}
        assert got["link.sysext.raw"]["placed"] is False
        assert "symbolic link" in got["link.sysext.raw"]["reasons"][0]
        assert got["fifo.raw"]["placed"] is False and "not a regular file" in got["fifo.raw"]["reasons"][0]
        assert got["..evil.raw"]["placed"] is False
        names = {p.name for p in (root / "run/extensions").iterdir()}
        assert not names & {"link.sysext.raw", "fifo.raw", "..evil.raw"}
        assert not [n for n in names if n.startswith(".bootkeeper-")]


def test_enforced_run_removes_images_an_earlier_run_placed(node: dict[str, Path], deployed: object) -> None:
    root = node["root"]
    _boot(node)
    assert bk("sysext", "activate", "--root", str(root), "--mode", "disabled", "--no-refresh").returncode == 0
    assert len(list((root / "run/extensions").iterdir())) == 5
    r = bk("sysext", "activate", "--root", str(root), "--no-refresh", "--json")  # config: enforced
    assert sorted(p.name for p in (root / "run/extensions").iterdir()) == SIGNED
    assert sorted(json.loads(r.stdout)["removed"]) == sorted(BAD)


@pytest.mark.root
def test_systemd_dissect_on_the_same_images(node: dict[str, Path]) -> None:
    """Every image activate placed under enforced passes the real systemd-dissect --validate with the
    same policy; for the refused ones, record which systemd-dissect would have caught."""
    if not trixie.available():
        pytest.fail(f"no systemd 257 tree at {trixie.ROOT}: scripts/setup-trixie.sh makes it (make test runs it)")
    work = node["work"]
    verdict = {}
    for n in ALL:
        r = trixie.run(f"systemd-dissect --validate --image-policy={POLICY} {n}", work)
        verdict[n] = r.returncode
    assert all(verdict[n] == 0 for n in SIGNED), verdict
    # dissect checks structure and policy only: a foreign signature and tampered data pass it,
    # a missing signature partition does not
    assert verdict["rogue.sysext.raw"] == 0
    assert verdict["k3s-v1.30.1.sysext.raw"] == 0
    assert verdict["unsigned.sysext.raw"] != 0


def _fault_root(tmp_path: Path, names: list[str]) -> tuple[Path, Any]:
    from bootkeeper.config import Certificate, Sysext

    work = tmp_path / "work"
    work.mkdir()
    root = tmp_path / "root"
    (root / ".extra/sysext").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text("ID=kairos\nVERSION_ID=1\n")
    for n in names:
        shutil.copyfile(_build(work, n, *TRUSTED), root / ".extra/sysext" / n)
    cfg = Sysext(certificates=(Certificate(_pem(TRUSTED[1]).decode(), "test"),), firmware=(), verity_dirs=())
    return root, cfg


def _faulty_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection below the boundary under test: validation of 'boom' raises what no code
    expects, validation of 'die' kills its (worker) process; the others run the real validate."""
    real = image.validate

    def validate(path: Path, *args: Any, **kw: Any) -> image.Validation:
        if kw.get("name", "").startswith("boom"):
            raise RuntimeError("unexpected\nfault")
        if kw.get("name", "").startswith("die"):
            os._exit(3)
        return real(path, *args, **kw)

    monkeypatch.setattr(image, "validate", validate)


def test_an_exception_while_judging_one_image_refuses_only_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bootkeeper.config import SysextMode
    from bootkeeper.sysext import activate as act

    root, cfg = _fault_root(tmp_path, ["boom.sysext.raw", "tools.sysext.raw"])
    _faulty_validate(monkeypatch)
    lines: list[str] = []
    report = act.activate(root, cfg, SysextMode.ENFORCED, log=lines.append)
    got = {o.name: o for o in report.images}
    assert got["tools.sysext.raw"].verdict == "passed"
    assert got["boom.sysext.raw"].verdict == "refused"
    assert got["boom.sysext.raw"].reasons == ["validation stopped (RuntimeError: unexpected fault)"]
    assert sorted(p.name for p in (root / "run/extensions").iterdir()) == ["tools.sysext.raw"]
    assert (root / act.REPORT).is_file() and len(lines) == 2


def test_a_worker_process_that_dies_refuses_only_its_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bootkeeper.config import SysextMode
    from bootkeeper.sysext import activate as act

    root, cfg = _fault_root(tmp_path, ["boom.sysext.raw", "die.sysext.raw", "k3s.sysext.raw", "tools.sysext.raw"])
    _faulty_validate(monkeypatch)
    monkeypatch.setattr(act, "PARALLEL_FROM", 0)  # judge these small images in worker processes
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    report = act.activate(root, cfg, SysextMode.ENFORCED)
    got = {o.name: (o.verdict, o.reasons) for o in report.images}
    assert got == {
        "boom.sysext.raw": ("refused", ["validation stopped (RuntimeError: unexpected fault)"]),
        "die.sysext.raw": ("refused", ["validation stopped (its worker process died)"]),
        "k3s.sysext.raw": ("passed", []),
        "tools.sysext.raw": ("passed", []),
    }
    assert sorted(p.name for p in (root / "run/extensions").iterdir()) == ["k3s.sysext.raw", "tools.sysext.raw"]


def test_judging_workers_die_with_activate(tmp_path: Path) -> None:
    """kill -9 of activate while its worker processes judge images: none of them outlives it.
    In a fork of this process, the judging is made to hang (a stand-in for a slow validation, so
    the kill lands mid-judging every time); the pool and its initializer are activate's own."""
    import signal
    import time

    from bootkeeper.sysext.activation import judging

    pid = os.fork()
    if pid == 0:  # the "activate" process
        try:
            judging.judge_one = _hang  # type: ignore[assignment]
            checks = judging.Checks(None, (), None, True)  # type: ignore[arg-type]
            judging.in_workers({"a.raw": tmp_path / "a", "b.raw": tmp_path / "b"}, 2, {}, checks)
        finally:
            os._exit(0)
    workers: set[int] = set()
    deadline = time.monotonic() + 60  # a bound on the wait, not an assertion about speed
    while len(workers) < 2 and time.monotonic() < deadline:
        workers = {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == pid}
        time.sleep(0.01)
    assert len(workers) == 2, "no worker processes started"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    deadline = time.monotonic() + 20
    while any(_ppid(Path(f"/proc/{w}")) is not None for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [w for w in workers if _ppid(Path(f"/proc/{w}")) is not None]
    for w in survivors:
        os.kill(w, signal.SIGKILL)
    assert not survivors, f"worker processes {survivors} outlived activate"


def _hang(*args: object, **kwargs: object) -> None:
    """A validation that never ends (module level: the pool pickles the function by name)."""
    import time

    time.sleep(3600)


def _ppid(proc: Path) -> int | None:
    """The parent of a live (not zombie) process, or None."""
    try:
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[1])


def test_report_and_log_lines_follow_the_steps(tmp_path: Path) -> None:
    """Copy, judge, place, then prune (issue 15, item 15: the steps of activate): the report's keys,
    the images in the order listed, one log line each, then one per earlier copy pruned; the report
    on disk is the one returned."""
    from bootkeeper.config import SysextMode
    from bootkeeper.sysext import activate as act

    root, cfg = _fault_root(tmp_path, ["a.sysext.raw", "b.sysext.raw"])
    (root / ".extra/sysext/c.confext.raw").write_bytes(b"x")
    dest = root / act.DEST_DIR
    dest.mkdir(parents=True)
    (dest / "old.sysext.raw").write_bytes(b"an earlier run's copy")
    (root / act.REPORT).parent.mkdir(parents=True)
    (root / act.REPORT).write_text(json.dumps({"images": [{"name": "old.sysext.raw", "placed": True}]}))
    lines: list[str] = []
    report = act.activate(root, cfg, SysextMode.ENFORCED, log=lines.append)
    doc = json.loads((root / act.REPORT).read_text())
    assert doc == report.as_json()
    assert set(doc) == {
        "mode",
        "policy",
        "root",
        "sources",
        "images",
        "removed",
        "trust",
        "store",
        "refresh",
        "seconds",
        "residents",  # /etc/extensions, /var/lib/extensions (sysext/extdirs.py): none here
        "required",
    }
    assert doc["residents"] == []
    assert [(i["name"], i["verdict"], i["placed"]) for i in doc["images"]] == [
        ("a.sysext.raw", "passed", True),
        ("b.sysext.raw", "passed", True),
        ("c.confext.raw", "skipped", False),
    ]
    assert set(doc["images"][0]) == {
        "name", "source", "placed", "verdict", "reasons", "signer", "root_hash", "qualified_as", "seconds", "file"
    }  # fmt: skip
    # where each was found, from the root: one per file, where a name is not (issue 27)
    assert [i["file"] for i in doc["images"]] == [
        f"/.extra/sysext/{n}" for n in ("a.sysext.raw", "b.sysext.raw", "c.confext.raw")
    ]
    assert doc["removed"] == ["old.sysext.raw"]
    assert lines == [
        *(o.line() for o in report.images),
        f"old.sysext.raw: removed from {dest} (an earlier copy; not placed now)",
    ]
    assert sorted(p.name for p in dest.iterdir()) == ["a.sysext.raw", "b.sysext.raw"]
