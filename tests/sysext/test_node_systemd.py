"""The node's systemd userspace (issue 13, item 5): its version read offline from a root tree
(``bootkeeper.systemd_version``), ``sysext activate --refresh`` with what that systemd-sysext
understands and a failed refresh as an error, and lint of the node's sysext setup
(``bootkeeper.sysext.conf``: BK301, BK302).

Real data: this machine's systemd (252) and the trixie tree's (257, ``tests/trixie.py``); the real
``systemd-sysext`` of this machine runs the refreshes, each in a private mount namespace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import trixie
from bootkeeper import config
from bootkeeper import systemd_version as sv
from bootkeeper.errors import ConfigError

BINARY = "usr/lib/systemd/systemd"
HOST = Path("/")


def _real_version(cmd: list[str]) -> int:
    """The major version a real systemd tool prints (``systemd 252 (252.38-1~deb12u1)``)."""
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = re.match(r"systemd (\d+)", out)
    assert m, out
    return int(m.group(1))


def _host_binary() -> Path:
    for p in (HOST / BINARY, HOST / "lib/systemd/systemd"):
        if p.is_file():
            return p
    pytest.fail("this machine has no /usr/lib/systemd/systemd; scripts/setup-test-deps.sh installs systemd")


def _trixie() -> Path:
    if not trixie.available():
        pytest.fail("the trixie tree is missing: run bash scripts/setup-test-deps.sh")
    return trixie.ROOT


def _node(tmp: Path, binary: Path | None, name: str = "root") -> Path:
    """A node tree holding only a copy of a real systemd binary (or nothing)."""
    root = tmp / name
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text("ID=kairos\nVERSION_ID=1\n")
    if binary is not None:
        (root / "usr/lib/systemd").mkdir()
        shutil.copyfile(binary, root / BINARY)
    return root


# --- the version, read offline ---------------------------------------------------------------------


def test_reads_this_machines_systemd_as_systemd_itself_says() -> None:
    binary = _host_binary()
    got = sv.node_systemd_version(HOST)
    assert got is not None
    assert got[0] == _real_version([str(binary), "--version"])
    assert "libsystemd-shared-" in got[1] and got[1].startswith(str(binary))


@pytest.mark.root
def test_reads_the_trixie_tree_as_its_systemctl_says() -> None:
    root = _trixie()
    got = sv.node_systemd_version(root)
    assert got is not None and got[1].startswith(str(root / BINARY)), got
    r = trixie.run("systemctl --version", Path("/tmp"))
    assert r.returncode == 0, r.stderr
    assert got[0] == int(re.match(r"systemd (\d+)", r.stdout).group(1)) == 257  # type: ignore[union-attr]


def test_each_source_on_its_own_and_their_order(tmp_path: Path) -> None:
    host = _host_binary()
    want = _real_version([str(host), "--version"])
    # (1) the binary alone, merged /usr and split /usr
    assert sv.node_systemd_version(_node(tmp_path, host, "bin")) == (
        want,
        f"{tmp_path / 'bin' / BINARY}: needs libsystemd-shared-{want}.so",
    )
    split = tmp_path / "split"
    (split / "lib/systemd").mkdir(parents=True)
    shutil.copyfile(host, split / "lib/systemd/systemd")
    assert sv.node_systemd_version(split) == (want, f"{split}/lib/systemd/systemd: needs libsystemd-shared-{want}.so")
    # (2) the library alone: the real file name of this machine's libsystemd-shared
    libs = sorted(Path("/usr/lib").glob("*-linux-gnu/systemd/libsystemd-shared-*.so"))
    assert libs, "no libsystemd-shared-*.so on this machine"
    lib = tmp_path / "lib" / libs[0].relative_to("/")
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"")  # the name is what counts
    assert sv.node_systemd_version(tmp_path / "lib") == (want, str(lib))
    # (3) dpkg's status alone: this machine's real one
    status = tmp_path / "dpkg/var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    shutil.copyfile("/var/lib/dpkg/status", status)
    got = sv.node_systemd_version(tmp_path / "dpkg")
    assert got is not None and got[0] == want and got[1].startswith(f"{status}: systemd {want}."), got
    # the binary wins over dpkg: trixie's binary (257) beside this machine's status (252)
    both = _node(tmp_path, _trixie() / BINARY, "both")
    (both / "var/lib/dpkg").mkdir(parents=True)
    shutil.copyfile(status, both / "var/lib/dpkg/status")
    assert sv.node_systemd_version(both) == (257, f"{both / BINARY}: needs libsystemd-shared-257.so")
    assert sv.node_systemd_version(_node(tmp_path, None, "empty")) is None


def test_dpkg_status_only_counts_an_installed_systemd(tmp_path: Path) -> None:
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: systemd-sysv\nStatus: install ok installed\nVersion: 260.1-1\n\n"
        "Package: systemd\nStatus: deinstall ok config-files\nVersion: 251.3-1\n"
    )
    assert sv.node_systemd_version(tmp_path) is None
    status.write_text(
        "Package: systemd\nStatus: install ok installed\nDescription: x\n Version: 1\nVersion: 1:255.4-1\n"
    )
    assert sv.node_systemd_version(tmp_path) == (255, f"{status}: systemd 1:255.4-1")


def test_hostile_trees_give_none_and_never_escape_the_root(tmp_path: Path) -> None:
    """Loops, a FIFO, a folder, a huge sparse file, garbage, links that point out of ROOT: None
    (this machine's own systemd would answer if a link were followed out of ROOT)."""
    cases: dict[str, Path] = {}

    def case(name: str) -> Path:
        root = tmp_path / name
        (root / "usr/lib/systemd").mkdir(parents=True)
        cases[name] = root
        return root / BINARY

    os.symlink("b", case("loop"))
    os.symlink("systemd", cases["loop"] / "usr/lib/systemd/b")
    os.symlink("/usr/lib/systemd/systemd", case("absolute-self"))  # inside ROOT: points at itself
    os.symlink("../../../../../../../../usr/lib/systemd/systemd", case("dotdot-self"))
    os.mkfifo(case("fifo"))
    case("folder").mkdir()
    with case("sparse").open("wb") as f:
        f.truncate(4 << 30)
    case("garbage").write_bytes(
        os.urandom(1 << 16) + b"libsystemd-shared-abc.so\0libsystemd-shared-99999.so\0libsystemd-shared-7.so\0"
    )
    dpkg = tmp_path / "dpkg/var/lib/dpkg"
    dpkg.mkdir(parents=True)
    (dpkg / "status").write_bytes(b"Package: systemd\nVersion: " + b"9" * (20 << 20))  # no newline, no sane number
    cases["dpkg"] = tmp_path / "dpkg"
    host_libs = sorted(Path("/usr/lib").glob("*-linux-gnu/systemd/libsystemd-shared-*.so"))
    assert host_libs, "no libsystemd-shared-*.so on this machine"
    arch = host_libs[0].parent.parent  # /usr/lib/x86_64-linux-gnu, where this machine's library is
    (tmp_path / "libloop/usr/lib").mkdir(parents=True)
    os.symlink(arch, tmp_path / "libloop" / arch.relative_to("/"))  # inside ROOT: a link to itself
    cases["libloop"] = tmp_path / "libloop"
    code = (
        "import sys; from pathlib import Path; from bootkeeper.systemd_version import node_systemd_version as v; "
        "print([v(Path(p)) for p in sys.argv[1:]])"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, *map(str, cases.values())], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr  # a FIFO opened for reading would hang: timeout
    assert r.stdout.strip() == str([None] * len(cases)), dict(zip(cases, r.stdout.split(", "), strict=False))


def test_precedence_option_config_read_assumed(tmp_path: Path) -> None:
    read = _node(tmp_path, _trixie() / BINARY)
    assert sv.resolve(read, 253, 252) == sv.NodeSystemd(252, "--systemd-version")
    assert sv.resolve(read, 253) == sv.NodeSystemd(253, "sysext.systemd_version")
    assert sv.resolve(read, None) == sv.NodeSystemd(257, f"{read / BINARY}: needs libsystemd-shared-257.so")
    unknown = sv.resolve(tmp_path / "nothing", None)
    assert (unknown.major, unknown.found, unknown.takes_image_policy) == (254, False, True)
    assert unknown.warning(tmp_path) == (
        f"{tmp_path}: the node's systemd version was not found (usr/lib/systemd/systemd, libsystemd-shared-*.so, "
        "dpkg status); assuming 254 or later (set sysext.systemd_version)"
    )
    assert not sv.NodeSystemd(253, "x").takes_image_policy and sv.NodeSystemd(254, "x").takes_image_policy


def test_config_key_systemd_version(tmp_path: Path) -> None:
    p = tmp_path / "90.yaml"
    p.write_text("sysext:\n  systemd_version: 252\n")
    assert config.load([p]).sysext.systemd_version == 252
    assert config.load([]).sysext.systemd_version is None
    for bad, why in (("'252'", "'252' is not a whole number from 200 to 999"), ("1000", "1000 is out of range")):
        p.write_text(f"sysext:\n  systemd_version: {bad}\n")
        with pytest.raises(ConfigError) as e:
            config.load([p])
        assert str(e.value).startswith(f"{p}: sysext.systemd_version: {why}"), str(e.value)


# --- activate --refresh ------------------------------------------------------------------------------


def _activate(root: Path, *more: str) -> subprocess.CompletedProcess[str]:
    """``sysext activate --refresh`` in a private mount namespace: whatever systemd-sysext mounts goes with it."""
    cmd = [sys.executable, "-m", "bootkeeper", "sysext", "activate", "--root", str(root), "--refresh", *more]
    return subprocess.run(["unshare", "-m", "--propagation", "private", *cmd], capture_output=True, text=True)


def _refresh(root: Path) -> dict[str, object]:
    report = json.loads((root / "run/bootkeeper/sysext.json").read_text())
    assert isinstance(report["refresh"], dict)
    return report["refresh"]


@pytest.mark.root
def test_refresh_on_a_252_node_passes_no_image_policy(tmp_path: Path) -> None:
    """Before: ``--image-policy`` was passed and systemd-sysext 252 refused it (exit 0 all the same)."""
    host = _host_binary()
    assert _real_version([str(host), "--version"]) == 252, "this test needs this machine's systemd 252 (Debian 12)"
    root = _node(tmp_path, host)
    (root / ".extra/sysext").mkdir(parents=True)
    r = _activate(root)
    refresh = _refresh(root)
    assert refresh["argv"] == ["systemd-sysext", "refresh", f"--root={root}"], refresh
    assert refresh["systemd"] == f"systemd 252 ({root / BINARY}: needs libsystemd-shared-252.so)"
    assert r.returncode == 0 and refresh["ok"], r.stderr


@pytest.mark.root
def test_refresh_on_a_257_node_passes_the_policy(tmp_path: Path) -> None:
    """trixie's systemd under ROOT: the policy is passed; this machine's systemd-sysext runs it, and if
    it is older than 254 it refuses the option, which is now an error (exit 6), not exit 0."""
    root = _node(tmp_path, _trixie() / BINARY)
    (root / ".extra/sysext").mkdir(parents=True)
    r = _activate(root)
    refresh = _refresh(root)
    policy = "--image-policy=root=signed+absent:usr=signed+absent"
    assert refresh["argv"] == ["systemd-sysext", "refresh", f"--root={root}", policy], refresh
    if _real_version(["systemd-sysext", "--version"]) < 254:
        assert r.returncode == 8 and not refresh["ok"]
        assert r.stderr.splitlines()[0] == (
            f"bootkeeper: error: systemd-sysext refresh --root={root} {policy} failed with exit status 1: "
            f"systemd-sysext: unrecognized option '{policy}'"
        ), r.stderr
        assert r.stderr.splitlines()[1].startswith("hint: the node's systemd-sysext is older than 254")
    else:
        assert r.returncode == 0 and refresh["ok"], r.stderr


@pytest.mark.root
def test_refresh_config_beats_what_is_read_and_unknown_warns(tmp_path: Path) -> None:
    root = _node(tmp_path, _trixie() / BINARY)
    (root / ".extra/sysext").mkdir(parents=True)
    (root / "oem").mkdir()
    (root / "oem/90.yaml").write_text("sysext:\n  systemd_version: 253\n")
    r = _activate(root)
    assert _refresh(root)["argv"] == ["systemd-sysext", "refresh", f"--root={root}"]
    assert _refresh(root)["systemd"] == "systemd 253 (sysext.systemd_version)"
    assert "warning" not in r.stderr, r.stderr
    bare = _node(tmp_path, None, "bare")
    (bare / ".extra/sysext").mkdir(parents=True)
    r = _activate(bare)
    assert r.stderr.splitlines()[0] == (
        f"bootkeeper: warning: {bare}: the node's systemd version was not found (usr/lib/systemd/systemd, "
        "libsystemd-shared-*.so, dpkg status); assuming 254 or later (set sysext.systemd_version)"
    ), r.stderr
    assert "--image-policy=root=signed+absent:usr=signed+absent" in _refresh(bare)["argv"]  # type: ignore[operator]


@pytest.mark.root
def test_a_failed_refresh_is_an_error_and_keeps_what_was_placed(tmp_path: Path) -> None:
    """disabled mode places a junk image unchecked; every systemd-sysext (252 on) exits 1 when it cannot
    read an image's metadata. Before: exit 0. Now exit 6, one line naming systemd-sysext and its
    message, the image still placed and the report written."""
    root = _node(tmp_path, _host_binary())
    (root / ".extra/sysext").mkdir(parents=True)
    (root / ".extra/sysext/junk.sysext.raw").write_bytes(os.urandom(100_000))
    r = _activate(root, "--mode", "disabled")
    assert r.returncode == 8, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith(f"bootkeeper: error: systemd-sysext refresh --root={root} failed with exit status 1: ")
    assert "junk.sysext" in lines[0], lines  # systemd-sysext's own message names the image
    assert lines[1] == (
        f"hint: the images stay placed in {root}/run/extensions; the report is {root}/run/bootkeeper/sysext.json"
    )
    assert "Traceback" not in r.stderr and len(lines) == 2
    assert (root / "run/extensions/junk.sysext.raw").is_file()
    refresh = _refresh(root)
    assert refresh["ok"] is False and refresh["error"] == lines[0].removeprefix("bootkeeper: error: ")


# --- lint of the node's sysext setup (BK301, BK302) -------------------------------------------------

STRICT = "root=signed+absent:usr=signed+absent"
SEED = "root=verity+signed+absent:usr=verity+signed+absent"
# What matters of systemd 261's unit (PR #41161): run in the initrd, --root=/sysroot, no --image-policy.
SYSROOT_UNIT = """[Unit]
Description=Merge system extensions of /sysroot in the initrd
ConditionPathExists=/etc/initrd-release
ConditionDirectoryNotEmpty=|/sysroot/etc/extensions
ConditionDirectoryNotEmpty=|/sysroot/var/lib/extensions

[Service]
Type=oneshot
ExecStart=systemd-sysext --root=/sysroot refresh

[Install]
WantedBy=initrd.target
"""


def _lint_root(tmp: Path, mode: str = "enforced", files: dict[str, str] | None = None) -> Path:
    root = tmp / "node"
    (root / "oem").mkdir(parents=True)
    (root / "oem/90.yaml").write_text(f"sysext:\n  mode: {mode}\n")
    for rel, text in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _lint(root: Path, *more: str) -> tuple[int, list[dict[str, object]]]:
    cmd = [sys.executable, "-m", "bootkeeper", "lint", "--root", str(root), "--json", *more]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout)["findings"]


def _codes(findings: list[dict[str, object]]) -> list[tuple[object, object, object]]:
    return [(f["code"], f["severity"], f["line"]) for f in findings]


def test_bk301_a_relaxing_image_policy_in_sysext_conf(tmp_path: Path) -> None:
    root = _lint_root(tmp_path, files={"etc/systemd/sysext.conf": f"# relaxed\n[SysExt]\nImagePolicy={SEED}\n"})
    rc, findings = _lint(root)
    assert rc == 1 and _codes(findings) == [("BK301", "error", 3)], findings
    f = findings[0]
    assert f["file"] == f"{root}/etc/systemd/sysext.conf"
    assert f["message"] == (
        f"ImagePolicy={SEED} admits more than bootkeeper's sysext.policy {STRICT} (root: verity; usr: verity): "
        f"systemd-sysext uses it wherever it runs without --image-policy= (systemd-sysext-sysroot.service, a "
        f"manual refresh), and as an explicit policy it also replaces the strict "
        f"{STRICT} for /.extra/sysext in the initrd"
    )
    assert f["fix"] == f"remove it, or set ImagePolicy={STRICT}"
    # permissive: a warning; '*' admits every protection level
    root = _lint_root(tmp_path / "p", "permissive", {"etc/systemd/sysext.conf": "[SysExt]\nImagePolicy=*\n"})
    rc, findings = _lint(root)
    assert rc == 0 and _codes(findings) == [("BK301", "warning", 2)], findings
    assert "(root: verity+encrypted+unprotected; usr: verity+encrypted+unprotected)" in str(findings[0]["message"])


def test_bk301_section_and_key_case_and_refused_values(tmp_path: Path) -> None:
    conf = "[Sysext]\nImagePolicy=*\n[SysExt]\nimagepolicy=*\n"
    rc, findings = _lint(_lint_root(tmp_path, files={"etc/systemd/sysext.conf": conf}))
    assert rc == 0 and _codes(findings) == [("BK301", "warning", 2), ("BK301", "warning", 4)], findings
    assert findings[0]["message"] == (
        "[Sysext] is not [SysExt] ImagePolicy=: systemd matches section and key names exactly and ignores this "
        "line, so ImagePolicy=* has no effect"
    )
    # a value systemd refuses stops its parser: the relaxing drop-in after it is never read
    files = {
        "usr/lib/systemd/sysext.conf": "[SysExt]\nImagePolicy=root=signd\n",
        "etc/systemd/sysext.conf.d/50-relax.conf": "[SysExt]\nImagePolicy=*\n",
    }
    rc, findings = _lint(_lint_root(tmp_path / "r", files=files))
    assert rc == 0 and _codes(findings) == [("BK301", "warning", 2)], findings
    assert str(findings[0]["message"]).startswith("systemd refuses this value (ImagePolicy 'root=signd': ")
    assert str(findings[0]["message"]).endswith("drop-ins included, has no effect")


def test_bk301_which_file_wins_as_systemd_reads_them(tmp_path: Path) -> None:
    """/etc's main file masks /usr/lib's; drop-ins follow in name order, /etc's masks the same name
    elsewhere (/dev/null), the last assignment wins, an empty one resets."""
    relax = f"[SysExt]\nImagePolicy={SEED}\n"
    files = {
        "usr/lib/systemd/sysext.conf": relax,
        "etc/systemd/sysext.conf": f"[SysExt]\nImagePolicy={STRICT}\n",
        "usr/lib/systemd/sysext.conf.d/10-vendor.conf": relax,
        "run/systemd/sysext.conf.d/30-reset.conf": "[SysExt]\nImagePolicy=\n",
    }
    root = _lint_root(tmp_path, files=files)
    (root / "etc/systemd/sysext.conf.d").mkdir()
    os.symlink("/dev/null", root / "etc/systemd/sysext.conf.d/10-vendor.conf")
    assert _lint(root) == (0, [])
    (root / "run/systemd/sysext.conf.d/20-relax.conf").write_text(
        "[SysExt]\nImagePolicy=\\\n  root=verity+signed+absent\n"
    )
    assert _lint(root) == (0, [])  # 30-reset.conf comes later
    (root / "run/systemd/sysext.conf.d/30-reset.conf").unlink()
    rc, findings = _lint(root)
    assert rc == 1 and _codes(findings) == [("BK301", "error", 3)], findings  # a continued line counts as its end
    assert findings[0]["file"] == f"{root}/run/systemd/sysext.conf.d/20-relax.conf"
    assert "(root: verity):" in str(findings[0]["message"])  # usr falls back to the default, ignore


def test_bk301_on_a_node_whose_systemd_does_not_read_sysext_conf_yet(tmp_path: Path) -> None:
    root = _lint_root(tmp_path, files={"etc/systemd/sysext.conf": f"[SysExt]\nImagePolicy={SEED}\n"})
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copyfile(_host_binary(), root / BINARY)  # 252
    rc, findings = _lint(root)
    assert rc == 0 and _codes(findings) == [("BK301", "warning", 2)], findings
    assert "(systemd 252 does not read sysext.conf; it takes effect from 259)" in str(findings[0]["message"])


def test_bk302_the_sysroot_unit_bypasses_the_policy(tmp_path: Path) -> None:
    unit = "usr/lib/systemd/system/systemd-sysext-sysroot.service"
    root = _lint_root(tmp_path, files={unit: SYSROOT_UNIT, "etc/extensions/k3s.raw": "x"})
    rc, findings = _lint(root)
    # the junk k3s.raw is also what the next activation would move into the quarantine (BK304)
    assert rc == 1 and _codes(findings) == [("BK302", "error", None), ("BK304", "error", None)], findings
    assert findings[0]["file"] == f"{root}/{unit}" and findings[1]["file"] == f"{root}/etc/extensions/k3s.raw"
    assert str(findings[0]["message"]).startswith(
        "systemd-sysext-sysroot.service merges the images in /sysroot/etc/extensions, /sysroot/run/extensions "
        "and /sysroot/var/lib/extensions in the initrd"
    )
    assert str(findings[0]["message"]).endswith(
        f"bypassing bootkeeper's sysext.policy {STRICT} (now: ROOT/etc/extensions: 1)"
    )
    assert "rd.systemd.sysext=0" in str(findings[0]["fix"])
    # each fix silences it: permissive mode, a mask in /etc, rd.systemd.sysext=0, a strict sysext.conf
    assert _lint(_lint_root(tmp_path / "p", "permissive", {unit: SYSROOT_UNIT})) == (0, [])
    masked = _lint_root(tmp_path / "m", files={unit: SYSROOT_UNIT})
    (masked / "etc/systemd/system").mkdir(parents=True)
    os.symlink("/dev/null", masked / "etc/systemd/system/systemd-sysext-sysroot.service")
    assert _lint(masked) == (0, [])
    assert _lint(
        _lint_root(tmp_path / "c", files={unit: SYSROOT_UNIT, "etc/kernel/cmdline": "quiet rd.systemd.sysext=0\n"})
    ) == (0, [])
    strict = _lint_root(
        tmp_path / "s", files={unit: SYSROOT_UNIT, "etc/systemd/sysext.conf": f"[SysExt]\nImagePolicy={STRICT}\n"}
    )
    assert _lint(strict) == (0, [])


def test_lint_survives_a_hostile_node_tree(tmp_path: Path) -> None:
    root = _lint_root(tmp_path)
    etc = root / "etc/systemd"
    etc.mkdir(parents=True)
    os.mkfifo(etc / "sysext.conf")  # never opened for waiting: skipped, the next main file is read
    (root / "run/systemd").mkdir(parents=True)
    os.symlink("sysext.conf", root / "run/systemd/sysext.conf")  # a loop
    (root / "usr/lib/systemd/sysext.conf.d/x.conf").mkdir(parents=True)  # a folder
    (root / "usr/lib/systemd/sysext.conf").write_bytes(b"[SysExt]\n" + os.urandom(4096) + b"\nImagePolicy=\xff\xfe\n")
    (root / "usr/lib/systemd/system").mkdir(parents=True)
    os.symlink(
        "/usr/lib/systemd/system/systemd-sysext-sysroot.service",
        root / "usr/lib/systemd/system/systemd-sysext-sysroot.service",
    )
    rc, findings = _lint(root)
    assert {f["code"] for f in findings} <= {"BK301"} and all(f["severity"] == "warning" for f in findings), findings
    (etc / "sysext.conf").unlink()
    (etc / "sysext.conf").write_bytes(b"[SysExt]\nImagePolicy=" + b"x" * (2 << 20) + b"\n")
    rc, findings = _lint(root)
    assert rc == 0 and _codes(findings) == [("BK301", "warning", 2)], findings
    assert "a line longer than 1 MiB: systemd stops reading its configuration here" in str(findings[0]["message"])
    with (etc / "sysext.conf").open("wb") as f:
        f.truncate(1 << 30)  # sparse: never read in full
    rc, findings = _lint(root)
    assert rc == 0 and _codes(findings) == [("BK301", "warning", None)], findings
    assert "larger than 16 MiB: not checked" in str(findings[0]["message"])
