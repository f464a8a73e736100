"""Mounts below a merged hierarchy (issue 26, item 1; seed 003: "as soon as sysext finds any extensions
it creates an overlayfs on /usr ... our current /usr/local with all the state and such gets lost").

Real systemd-sysext, each run in a private mount namespace on a scratch root (``--root=``) whose
``/usr/local`` is a persistent bind mount holding a marker and whose
``/usr/share/pki/trust/anchors`` is a bind mount too, with a directory extension shipping
``/usr/bin/tool``: this machine's 252, and trixie's 257 (``tests/trixie.py``). The scratch root is
bind-mounted on itself and made shared, as ``/`` is on a booted node: systemd-sysext builds its
overlay in a namespace of its own and relies on propagation to bring it back.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import trixie
from bootkeeper import submounts
from bootkeeper.sysext.conf import DROPIN
from helpers import entry_body, esp_with

TOOL = "#!/bin/sh\necho tool-ok\n"
MERGED = {"marker": "marker", "write": "ok", "tool": "tool-ok", "anchor": "anchor"}


def _tree(root: Path, ext_local: bool = False) -> Path:
    """The node tree: an OS, a persistent /usr/local and a trust-anchor folder kept elsewhere (bound at
    run time), and one directory extension in run/extensions."""
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    for d in ("usr/bin", "usr/local", "usr/share/pki/trust/anchors", "opt", "persist/local", "persist/anchors"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "persist/local/marker").write_text("marker\n")
    (root / "persist/anchors/ca.pem").write_text("anchor\n")
    ext = root / "run/extensions/tool"
    (ext / "usr/lib/extension-release.d").mkdir(parents=True)
    (ext / "usr/lib/extension-release.d/extension-release.tool").write_text("ID=_any\n")
    (ext / "usr/bin").mkdir()
    (ext / "usr/bin/tool").write_text(TOOL)
    (ext / "usr/bin/tool").chmod(0o755)
    if ext_local:  # an extension that also ships something in /usr/local
        (ext / "usr/local/share").mkdir(parents=True)
        (ext / "usr/local/share/from-extension").write_text("x\n")
    (root / ".extra/sysext").mkdir(parents=True)
    return root


def _script(root: str, steps: list[tuple[str, str]], nested: bool = False) -> str:
    """POSIX sh: set the mounts up (``nested``: a tmpfs inside the persistent /usr/local too), then run
    each (label, command) and report what the node sees."""
    lines = [
        "set -u",
        f"R={root}",
        'mount --bind "$R" "$R"',
        'mount --bind "$R/persist/local" "$R/usr/local"',
        'mount --bind "$R/persist/anchors" "$R/usr/share/pki/trust/anchors"',
        'mkdir -p "$R/usr/local/inner" && mount -t tmpfs tmpfs "$R/usr/local/inner"' if nested else ":",
        'mount --make-rshared "$R"',
        "check() {",
        '  m=$(cat "$R/usr/local/marker" 2>/dev/null || echo MISSING)',
        '  if echo "$1" >"$R/usr/local/written-$1" 2>/dev/null; then w=ok; else w=fail; fi',
        '  t=$("$R/usr/bin/tool" 2>/dev/null || echo MISSING)',
        '  a=$(cat "$R/usr/share/pki/trust/anchors/ca.pem" 2>/dev/null || echo MISSING)',
        '  echo "check $1 marker=$m write=$w tool=$t anchor=$a"',
        '  sed "s/^/mountinfo $1 /" /proc/self/mountinfo',
        "}",
        "check before",
    ]
    for label, cmd in steps:
        lines += [f'echo "step {label}"', f"{cmd} 2>&1 | sed 's/^/out {label} /'", f"check {label}"]
    return "\n".join(lines) + "\n"


class Run:
    def __init__(self, out: str, err: str) -> None:
        self.out, self.err = out, err
        self.checks: dict[str, dict[str, str]] = {}
        self.mountinfo: dict[str, list[submounts.Mount]] = {}
        self.said: dict[str, list[str]] = {}
        info: dict[str, list[str]] = {}
        for line in out.splitlines():
            kind, _, rest = line.partition(" ")
            label, _, rest = rest.partition(" ")
            if kind == "check":
                self.checks[label] = dict(kv.split("=", 1) for kv in rest.split())
            elif kind == "mountinfo":
                info.setdefault(label, []).append(rest)
            elif kind == "out":
                self.said.setdefault(label, []).append(rest)
        self.mountinfo = {k: submounts.parse_mountinfo("\n".join(v)) for k, v in info.items()}

    def shadowed(self, label: str, root: Path) -> list[str]:
        return [s.target for s in submounts.shadowed(self.mountinfo[label], root)]

    def __repr__(self) -> str:
        return f"checks={self.checks}\nsaid={self.said}\nstderr={self.err}"


def _on_host(root: Path, steps: list[tuple[str, str]], env: str = "", nested: bool = False) -> Run:
    """In a private mount namespace with its own /run (systemd-sysext 252 makes /run a slave mount)."""
    script = "mount -t tmpfs tmpfs /run\n" + (f"export {env}\n" if env else "") + _script(str(root), steps, nested)
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True, text=True
    )
    return Run(r.stdout, r.stderr)


def _in_trixie(work: Path, steps: list[tuple[str, str]], env: str = "", nested: bool = False) -> Run:
    if not trixie.available():
        pytest.fail("the trixie tree is missing: run bash scripts/setup-test-deps.sh")
    r = trixie.run((f"export {env}; " if env else "") + _script("/work/root", steps, nested), work)
    return Run(r.stdout, r.stderr)


def _host_252() -> None:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is missing; scripts/setup-test-deps.sh installs it")
    out = subprocess.run(["systemd-sysext", "--version"], capture_output=True, text=True, check=True).stdout
    assert re.match(r"systemd 252\b", out), f"this test needs this machine's systemd-sysext 252: {out}"


def _activate(root: Path) -> str:
    return f"{sys.executable} -m bootkeeper sysext activate --root {root} --refresh"


def _oem(root: Path, text: str) -> None:
    (root / "oem").mkdir(exist_ok=True)
    (root / "oem/90.yaml").write_text(text)


def _dropin_lines(root: Path, verb: str, inside: str) -> list[tuple[str, str]]:
    """The commands the installed drop-in runs for ``verb`` (Start: ExecStartPre, ExecStart,
    ExecStartPost; Reload: ExecReload), rooted at ``inside`` (the root as the namespace sees it):
    systemd-sysext gets ``--root=``, the script is the one installed under the root."""
    text = (root / "etc/systemd/system/systemd-sysext.service.d/10-bootkeeper.conf").read_text()
    keys = ("ExecStartPre", "ExecStart", "ExecStartPost") if verb == "start" else ("ExecReload",)
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        key, _, cmd = line.partition("=")
        if key not in keys or not cmd:
            continue
        cmd = cmd.removeprefix("-")
        if cmd.startswith("systemd-sysext "):
            cmd += f" --root={inside}"
        else:
            cmd = f"BOOTKEEPER_ROOT={inside} " + cmd.replace(f"/{submounts.SCRIPT}", f"{inside}/{submounts.SCRIPT}")
        out.append((f"{verb}{len(out)}", cmd))
    return out


def _install(root: Path, version: int, cfg: str = "sysext:\n  mode: permissive\n") -> None:
    _oem(root, cfg)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bootkeeper",
            "install-units",
            "--root",
            str(root),
            "--exe",
            "/usr/bin/bootkeeper",
            "--python",
            "/usr/bin/python3",
            "--systemd-version",
            str(version),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


# --- systemd 252 ---------------------------------------------------------------------------------------


def _bk(root: Path, *args: str) -> str:
    return f"{sys.executable} -m bootkeeper {' '.join(args)} --root {root}"


def _status(tmp: Path, root: Path, label: str) -> tuple[str, str]:
    """A step that runs ``bootkeeper status --json`` (a scratch ESP) into ``tmp/label.json``."""
    esp = tmp / "esp"
    if not esp.exists():
        esp_with(esp, {"active.conf": entry_body("active")})
        (tmp / "efivars").mkdir()
    return (
        label,
        f"{_bk(root, 'status', '--esp', str(esp), '--efivars', str(tmp / 'efivars'), '--json')} >{tmp / label}.json",
    )


def _findings(tmp: Path, root: Path, label: str) -> tuple[str, str]:
    """A step that runs ``bootkeeper lint --root ROOT --json`` into ``tmp/label.json``."""
    return (label, f"{_bk(root, 'lint', '--json')} >{tmp / label}.json")


@pytest.mark.root
def test_252_hides_a_persistent_usr_local_and_status_and_lint_say_so(tmp_path: Path) -> None:
    """The control, bootkeeper's old default (systemd's hierarchies, no step): 252's overlay on /usr
    hides the persistent /usr/local and the trust anchors (the extension's tool works); writes fail.
    ``bootkeeper status`` names both as shadowed from the real mountinfo, and ``lint`` warned before the
    merge (BK303: mounts below /usr, no drop-in with the step); after ``unmerge`` they are back."""
    _host_252()
    root = _tree(tmp_path / "root")
    _oem(root, "sysext:\n  mode: permissive\n  systemd_version: 252\n")
    steps = [
        _findings(tmp_path, root, "lint"),
        ("merged", f"systemd-sysext --root={root} refresh"),
        _status(tmp_path, root, "status"),
        ("unmerged", f"systemd-sysext --root={root} unmerge"),
    ]
    run = _on_host(root, steps)
    assert run.checks["before"] == MERGED | {"tool": "MISSING"}, run
    assert run.checks["merged"] == {"marker": "MISSING", "write": "fail", "tool": "tool-ok", "anchor": "MISSING"}, run
    assert run.shadowed("before", root) == []
    assert run.shadowed("merged", root) == ["/usr/local", "/usr/share/pki/trust/anchors"]
    assert run.checks["unmerged"] == MERGED | {"tool": "MISSING"}, run
    status = json.loads((tmp_path / "status.json").read_text())
    assert [m["by"] for m in status["extensions"]["shadowed"]] == ["/usr", "/usr"], status
    assert [m["target"] for m in status["extensions"]["shadowed"]] == ["/usr/local", "/usr/share/pki/trust/anchors"]
    assert (
        "/usr/local (" in status["warnings"][0]
        and "is shadowed by systemd-sysext's overlay on /usr: what is written there does not reach it"
        in status["warnings"][0]
    ), status["warnings"]
    lint = json.loads((tmp_path / "lint.json").read_text())["findings"]
    bk303 = [f for f in lint if f["code"] == "BK303"]
    assert [f["message"].split(" (")[0] for f in bk303] == ["/usr/local", "/usr/share/pki/trust/anchors"], lint
    assert bk303[0]["file"] == f"{root}/{DROPIN}" and bk303[0]["message"].endswith("the drop-in is missing")


@pytest.mark.root
def test_252_activate_refresh_keeps_usr_local_visible_and_writable(tmp_path: Path) -> None:
    """``sysext activate --refresh`` on a 252 node runs the step around the refresh: after the merge,
    a second refresh and an unmerge, /usr/local and the anchors show, are writable (the writes land
    on the persistent folder) and the extension's tool runs; nothing is shadowed."""
    _host_252()
    root = _tree(tmp_path / "root")
    _oem(root, "sysext:\n  mode: permissive\n  systemd_version: 252\n")
    steps = [
        ("merged", _activate(root)),
        ("again", _activate(root)),
        ("unmerged", f"systemd-sysext --root={root} unmerge"),
    ]
    run = _on_host(root, steps)
    assert run.checks["merged"] == MERGED, run
    assert run.checks["again"] == MERGED, run
    assert run.checks["unmerged"] == MERGED | {"tool": "MISSING"}, run
    assert run.shadowed("merged", root) == run.shadowed("again", root) == []
    # one overlay and one /usr/local over it: a refresh does not stack copies
    local = [m for m in run.mountinfo["again"] if m.target == f"{root}/usr/local"]
    assert len(local) == 2 and sum(m.sysext_overlay for m in run.mountinfo["again"]) == 1, local
    assert sorted(p.name for p in (root / "persist/local").iterdir()) == [
        "marker",
        "written-again",
        "written-before",
        "written-merged",
        "written-unmerged",
    ]
    report = json.loads((root / "run/bootkeeper/sysext.json").read_text())["refresh"]
    assert report["submounts"] == [
        f"sysext-submounts: {root}/usr/local: mounted again over the merged hierarchy",
        f"sysext-submounts: {root}/usr/share/pki/trust/anchors: mounted again over the merged hierarchy",
    ], report


@pytest.mark.root
def test_252_dropin_start_and_reload_keep_usr_local(tmp_path: Path) -> None:
    """The installed drop-in of a 252 node, its lines run as systemd runs them (start, then reload),
    with the script install-units wrote: /usr/local and the anchors stay visible and writable;
    ``status`` reports nothing shadowed and ``lint`` no BK303 (the drop-in runs the step)."""
    _host_252()
    root = _tree(tmp_path / "root")
    _install(root, 252, "sysext:\n  mode: permissive\n  systemd_version: 252\n")
    steps = _dropin_lines(root, "start", str(root)) + _dropin_lines(root, "reload", str(root))
    assert [c.split()[-1] for _, c in steps] == ["keep", f"--root={root}", "restore"] * 2, steps
    run = _on_host(root, [_findings(tmp_path, root, "lint"), *steps, _status(tmp_path, root, "status")])
    last = steps[-1][0]
    assert run.checks[steps[2][0]] == run.checks[last] == MERGED, run
    assert run.shadowed(last, root) == []
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["extensions"]["shadowed"] == [] and not any("shadowed" in w for w in status["warnings"]), status
    lint = json.loads((tmp_path / "lint.json").read_text())["findings"]
    assert [f for f in lint if f["code"] == "BK303"] == [], lint


@pytest.mark.root
def test_252_hierarchies_with_usr_local_freeze_it(tmp_path: Path) -> None:
    """README's old example, hierarchies [/usr, /opt, /usr/local], with an extension shipping
    /usr/local content: 252 shows the marker but read-only (its own overlay on /usr/local); with
    /usr/local alone, /usr is not merged (no tool). What lint's BK303 warns about."""
    _host_252()
    root = _tree(tmp_path / "root", ext_local=True)
    run = _on_host(
        root, [("merged", f"systemd-sysext --root={root} refresh")], "SYSTEMD_SYSEXT_HIERARCHIES=/usr:/opt:/usr/local"
    )
    assert run.checks["merged"] == MERGED | {"write": "fail", "anchor": "MISSING"}, run
    alone = _tree(tmp_path / "alone")
    run = _on_host(
        alone, [("merged", f"systemd-sysext --root={alone} refresh")], "SYSTEMD_SYSEXT_HIERARCHIES=/usr/local"
    )
    assert run.checks["merged"] == MERGED | {"tool": "MISSING"}, run


# --- systemd 257 (trixie) -----------------------------------------------------------------------------


@pytest.mark.root
def test_257_keeps_usr_local_itself_and_the_step_is_harmless(tmp_path: Path) -> None:
    """257 moves submounts over its overlay (PR #34381): with the drop-in rendered for 257 (no step)
    /usr/local and the anchors stay visible and writable, the tool runs, after start and reload. The
    drop-in rendered for an unknown version (254 assumed: with the step) changes nothing there."""
    root = _tree(tmp_path / "root")
    _install(root, 257)
    steps = _dropin_lines(root, "start", "/work/root") + _dropin_lines(root, "reload", "/work/root")
    assert [c for _, c in steps] == ["systemd-sysext refresh --root=/work/root"] * 2
    run = _in_trixie(tmp_path, steps)
    assert run.checks["start0"] == run.checks["reload0"] == MERGED, run
    assert run.shadowed("reload0", Path("/work/root")) == []
    shutil.rmtree(root)
    root = _tree(root)
    _install(root, 254)
    steps = _dropin_lines(root, "start", "/work/root") + _dropin_lines(root, "reload", "/work/root")
    run = _in_trixie(tmp_path, steps)
    assert [label for label, _ in steps] == ["start0", "start1", "start2", "reload0", "reload1", "reload2"]
    assert run.checks["start2"] == run.checks["reload2"] == MERGED, run
    assert not any("mounted again" in ln for v in run.said.values() for ln in v), run
    local = [m for m in run.mountinfo["reload2"] if m.target == "/work/root/usr/local"]
    assert len(local) == 1, local


@pytest.mark.root
def test_257_hierarchies_with_usr_local_hide_it(tmp_path: Path) -> None:
    """The control on 257: hierarchies [/usr, /opt, /usr/local] with an extension shipping /usr/local
    content puts a read-only overlay on /usr/local without the persistent folder: marker gone."""
    _tree(tmp_path / "root", ext_local=True)
    run = _in_trixie(
        tmp_path,
        [("merged", "systemd-sysext --root=/work/root refresh")],
        "SYSTEMD_SYSEXT_HIERARCHIES=/usr:/opt:/usr/local",
    )
    assert run.checks["merged"] == {"marker": "MISSING", "write": "fail", "tool": "tool-ok", "anchor": "anchor"}, run
    assert run.shadowed("merged", Path("/work/root")) == ["/usr/local"]


@pytest.mark.root
def test_257_aborts_on_a_nested_mount_and_lint_warns(tmp_path: Path) -> None:
    """257.13's move_submounts() aborts on a mount inside the persistent /usr/local (Flatcar #2111,
    fixed by PR #41875) and the persistent /usr/local is gone from the node's view; lint's BK303 names
    the nested mount beforehand (the same mounts, a 257 node)."""
    root = _tree(tmp_path / "root")
    run = _in_trixie(tmp_path, [("merged", "systemd-sysext --root=/work/root refresh")], nested=True)
    assert any("Assertion 'original_path' failed" in ln for ln in run.said["merged"]), run
    assert run.checks["merged"]["marker"] == "MISSING", run
    _oem(root, "sysext:\n  systemd_version: 257\n")
    run = _on_host(root, [_findings(tmp_path, root, "lint")], nested=True)
    lint = json.loads((tmp_path / "lint.json").read_text())["findings"]
    assert [(f["code"], f["file"]) for f in lint if f["code"] == "BK303"] == [("BK303", "/usr/local/inner")], lint
    run = _on_host(root, [_findings(tmp_path, root, "lint")])
    lint = json.loads((tmp_path / "lint.json").read_text())["findings"]
    assert [f for f in lint if f["code"] == "BK303"] == [], lint


# --- the pieces ------------------------------------------------------------------------------------------


def test_mountinfo_escapes_and_hostile_lines() -> None:
    text = (
        "36 1 0:40 / /usr/local\\040dir rw,relatime shared:2 - tmpfs tmp\\134fs rw\n"
        "garbage\n"
        "x y z - a b\n"
        "37 36 0:41 / /usr/local\\040dir/in rw shared:3 - ext4 /dev/vda2 rw\n"
    )
    ms = submounts.parse_mountinfo(text)
    assert [(m.id, m.target, m.source) for m in ms] == [
        (36, "/usr/local dir", "tmp\\fs"),
        (37, "/usr/local dir/in", "/dev/vda2"),
    ]
    loop = submounts.parse_mountinfo("5 6 0:1 / /a rw - tmpfs t rw\n6 5 0:2 / /a/b rw - tmpfs t rw\n")
    assert submounts.hidden(loop) == set()


def test_lint_warns_about_a_hierarchy_below_another(tmp_path: Path) -> None:
    """README's old example freezes /usr/local (the two tests above show it on 252 and 257): BK303,
    whatever the version; systemd's default hierarchies are quiet on 257 (it keeps mounts itself)."""
    root = tmp_path / "root"
    root.mkdir()
    _oem(root, "sysext:\n  hierarchies: [/usr, /opt, /usr/local]\n  systemd_version: 257\n")
    r = subprocess.run(
        [sys.executable, "-m", "bootkeeper", "lint", "--root", str(root), "--json"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    found = [f for f in json.loads(r.stdout)["findings"] if f["code"] == "BK303"]
    assert found == [
        {
            "code": "BK303",
            "severity": "warning",
            "file": "sysext.hierarchies",
            "line": None,
            "message": "/usr/local is below /usr: systemd-sysext mounts a read-only overlay of its own on /usr/local, "
            "so what is mounted there (a persistent /usr/local) turns read-only (systemd 252) or is hidden when an "
            "extension ships files in it (257)",
            "fix": "drop /usr/local from sysext.hierarchies: the mounts below /usr stay visible and writable over "
            "the merged /usr (systemd 257 moves them itself, bootkeeper's drop-in puts them back before)",
        }
    ]
    _oem(root, "sysext:\n  systemd_version: 257\n")
    r = subprocess.run(
        [sys.executable, "-m", "bootkeeper", "lint", "--root", str(root), "--json"], capture_output=True, text=True
    )
    assert [f for f in json.loads(r.stdout)["findings"] if f["code"] == "BK303"] == []


def test_siblings_on_one_path_the_later_is_on_top() -> None:
    """As the node's 257 leaves them with hierarchies [/usr, /opt, /usr/local] (test_node_usrlocal.py):
    the persistent /usr/local moved back onto the /usr overlay, and the /usr/local overlay after it on
    the same path: the persistent one is shadowed, by the /usr/local overlay."""
    text = (
        "1 0 0:1 / / rw - ext4 /dev/vda2 rw\n"
        "2 1 0:2 / /usr ro - overlay sysext ro\n"
        "3 2 0:1 /var/lib/bktest/usrlocal /usr/local rw - ext4 /dev/vda2 rw\n"
        "4 2 0:3 / /usr/local ro - overlay sysext ro\n"
        "5 3 0:4 / /usr/local/inner rw - tmpfs tmpfs rw\n"
    )
    ms = submounts.parse_mountinfo(text)
    assert submounts.hidden(ms) == {3, 5}
    assert [(s.target, s.by) for s in submounts.shadowed(ms)] == [
        ("/usr/local", "/usr/local"),
        ("/usr/local/inner", "/usr/local"),
    ]
    deep = "".join(f"{i} {i - 1} 0:1 / /{'a/' * i} rw - tmpfs t rw\n" for i in range(1, 3000))
    assert submounts.hidden(submounts.parse_mountinfo(deep)) == set()


def test_nested_hierarchies() -> None:
    assert submounts.nested(["/usr", "/opt", "/usr/local"]) == [("/usr/local", "/usr")]
    assert submounts.nested(["/usr/local", "/usr/"]) == [("/usr/local", "/usr/")]
    assert submounts.nested(["/usr", "/opt"]) == [] and submounts.nested(["/usr", "/usrx"]) == []
