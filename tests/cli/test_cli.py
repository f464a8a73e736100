"""The command line on bad input: one line on stderr, the documented exit code, the ESP unchanged."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import bk, entry_body, esp_with, fake_efivars, names, one_line_error, tree


@pytest.fixture
def esp(tmp_path: Path) -> Path:
    return esp_with(
        tmp_path / "esp",
        {
            "active+2-1.conf": entry_body("active"),
            "passive+3.conf": entry_body("passive"),
            "recovery+3.conf": entry_body("recovery"),
        },
    )


def test_entries_json_shape(esp: Path) -> None:
    p = bk("entries", "--esp", str(esp), "--json", "--systemd-boot-version", "257")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["next"]["path"] == "loader/entries/active+2-1.conf"
    assert out["next"]["next_after_boot"] == "loader/entries/active+1-2.conf"
    assert [e["role"] for e in out["entries"]] == ["active", "passive", "recovery"]
    assert (
        out["entries"][0]
        | {"tries_left": 2, "tries_done": 1, "state": "indeterminate", "sort_key": "1-active", "id": "active.conf"}
        == out["entries"][0]
    )


def test_bless_from_efivars_and_status(esp: Path, tmp_path: Path) -> None:
    ev = fake_efivars(tmp_path / "efivars", LoaderBootCountPath="\\loader\\entries\\active+2-1.conf")
    assert bk("bless", "status", "--esp", str(esp), "--efivars", str(ev)).stdout.strip() == "indeterminate"
    p = bk("bless", "good", "--esp", str(esp), "--efivars", str(ev), "--root", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert "active.conf" in names(esp)
    assert bk("bless", "status", "--esp", str(esp), "--efivars", str(ev)).stdout.strip() == "good"
    st = json.loads(bk("status", "--esp", str(esp), "--efivars", str(ev), "--json").stdout)
    assert st["booted"]["blessed"] == "good" and st["booted"]["role"] == "active"


def test_not_booted_with_counting(esp: Path, tmp_path: Path) -> None:
    empty = tmp_path / "no-vars"
    empty.mkdir()
    assert bk("bless", "status", "--esp", str(esp), "--efivars", str(empty)).stdout.strip() == "clean"
    one_line_error(
        bk("bless", "good", "--esp", str(esp), "--efivars", str(empty), "--root", str(tmp_path)),
        3,
        "not booted with boot counting",
    )


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["bless", "good", "--entry", "../../etc/x+1.conf"], 4, ["'..'"]),
        (["bless", "good", "--entry", "loader/entries/active.conf"], 3, ["does not contain a boot counter"]),
        (["bless", "good", "--entry", "loader/entries/gone+2-1.conf"], 3, ["can't find"]),
        (["arm", "--config", "/nonexistent.yaml"], 7, ["/nonexistent.yaml: cannot read (No such file or directory)"]),
    ],
)
def test_bad_input_leaves_esp_unchanged(esp: Path, args: list[str], code: int, words: list[str]) -> None:
    before = tree(esp)
    one_line_error(bk(*args, "--esp", str(esp)), code, *words)
    assert tree(esp) == before


def test_not_an_esp(tmp_path: Path) -> None:
    one_line_error(bk("entries", "--esp", str(tmp_path)), 4, "not an ESP")
    one_line_error(
        bk("bless", "good", "--esp", str(tmp_path / "missing"), "--entry", "loader/entries/a+1.conf"),
        7,
        "missing: does not exist",
    )


def test_bad_config_names_file_and_key(esp: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "90_boot.yaml"
    cfg.write_text("boot_assessment:\n  tries: many\n")
    before = tree(esp)
    one_line_error(bk("arm", "--esp", str(esp), "--config", str(cfg)), 4, str(cfg), "boot_assessment.tries", "'many'")
    cfg.write_text("boot_assessment: [\n")
    one_line_error(bk("arm", "--esp", str(esp), "--config", str(cfg)), 4, str(cfg))
    assert tree(esp) == before


def test_junk_entry_is_reported_and_arm_refuses(esp: Path) -> None:
    (esp / "loader" / "entries" / "statereset.conf").write_text(
        "title s\nsort-key 4\nthis-is-junk\nlinux /EFI/kairos/vmlinuz\n"
    )
    p = bk("entries", "--esp", str(esp))
    assert p.returncode == 0 and "statereset.conf: line 3" in p.stderr
    before = tree(esp)
    one_line_error(bk("arm", "--esp", str(esp), "--root", str(esp.parent)), 4, "statereset.conf", "line 3")
    assert tree(esp) == before


def test_two_runs_at_once(esp: Path) -> None:
    """A second run waits BOOTKEEPER_LOCK_TIMEOUT seconds for the ESP lock (10 by default), then is
    busy: exit 5, one line, nothing changed. A malformed value is a usage error."""
    import time

    fd = os.open(esp, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    args = ["bless", "good", "--esp", str(esp), "--entry", "loader/entries/active+2-1.conf"]
    try:
        before = tree(esp)
        start = time.monotonic()
        p = subprocess.run(
            [sys.executable, "-m", "bootkeeper", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "BOOTKEEPER_LOCK_TIMEOUT": "0.3"},
            check=False,
        )
        assert time.monotonic() - start < 8, "BOOTKEEPER_LOCK_TIMEOUT was not honoured"
        one_line_error(p, 5, "holds the ESP lock", "waited 0.3 s")
        assert tree(esp) == before
        for bad in ("soon", "-1", "nan", "3601"):
            p = subprocess.run(
                [sys.executable, "-m", "bootkeeper", *args],
                capture_output=True,
                text=True,
                env={**os.environ, "BOOTKEEPER_LOCK_TIMEOUT": bad},
                check=False,
            )
            one_line_error(p, 2, "BOOTKEEPER_LOCK_TIMEOUT", "expected seconds")
        assert tree(esp) == before
    finally:
        os.close(fd)


def test_simulate_and_demo_run(tmp_path: Path) -> None:
    p = bk("simulate", "--fail", "active=always", "--boots", "6", "--json", "--root", str(tmp_path))
    assert p.returncode == 0, p.stderr
    boots = json.loads(p.stdout)["boots"]
    assert [b["role"] for b in boots] == ["active", "active", "active", "passive", "passive", "passive"]
    one_line_error(bk("simulate", "--fail", "nobody=2", "--root", str(tmp_path)), 2, "nobody")
    d = bk("demo")
    assert d.returncode == 0, d.stderr
    assert "fell back to passive" in d.stdout


@pytest.mark.root
@pytest.mark.integration
def test_read_only_esp_is_remounted_and_back(esp: Path, tmp_path: Path) -> None:
    """A real read-only mount (tmpfs in a private mount namespace): bless remounts rw, renames, and
    leaves it read-only again."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is missing; scripts/setup-test-deps.sh installs it")
    mnt = tmp_path / "efi"
    mnt.mkdir()
    script = f"""
set -e
mount -t tmpfs -o size=4m tmpfs {mnt}
cp -a {esp}/. {mnt}/
mount -o remount,ro {mnt}
touch {mnt}/probe 2>/dev/null && {{ echo "not read-only"; exit 9; }}
{sys.executable} -m bootkeeper bless good --esp {mnt} --entry loader/entries/active+2-1.conf
ls {mnt}/loader/entries
grep -w {mnt} /proc/self/mounts
"""
    p = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True, text=True, check=False
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "active.conf" in p.stdout.split()
    mount_line = [x for x in p.stdout.splitlines() if str(mnt) in x and "tmpfs" in x][-1]
    assert " ro," in mount_line or mount_line.split()[3].startswith("ro")


def test_version_and_entry_help_say_what_they_do() -> None:
    """issue 15, item 9: --version did not exist; --entry's help on remove described install's default."""
    import re
    import subprocess
    import sys
    import tomllib
    from pathlib import Path

    want = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["version"]
    p = subprocess.run([sys.executable, "-m", "bootkeeper", "--version"], capture_output=True, text=True, check=False)
    assert p.returncode == 0 and re.fullmatch(rf"\S*bootkeeper {re.escape(want)}\n", p.stdout), p.stdout
    helps = {}
    for verb in ("install", "remove"):
        h = subprocess.run([sys.executable, "-m", "bootkeeper", "sysext", verb, "--help"], capture_output=True,
                           text=True, check=False).stdout  # fmt: skip
        helps[verb] = " ".join(h.split())
    assert "Install for these entries" in helps["install"] and "Default: from every entry" in helps["remove"]


OEM_TRIES_5 = "boot_assessment:\n  tries: 5\n  rearm: true\n"


def _traced(args: list[str], log: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run a verb under the real strace: its result and every path it named to the kernel."""
    import re

    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is missing; scripts/setup-test-deps.sh installs it")
    p = subprocess.run(
        [strace, "-f", "-qq", "-e", "trace=%file", "-o", str(log), sys.executable, "-m", "bootkeeper", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    return p, re.findall(r'"(/[^"]*)"', log.read_text())


@pytest.mark.parametrize("verb", ["bless", "arm", "rotate", "simulate"])
def test_verbs_read_the_config_under_root_and_never_the_hosts_oem(tmp_path: Path, esp: Path, verb: str) -> None:
    """bless, arm, rotate and simulate read ROOT/oem/*.yaml under --root (here tries: 5, rearm:
    true, which each verb's result shows) and never look at the host's /oem (strace)."""
    root = tmp_path / "root"
    (root / "oem").mkdir(parents=True)
    (root / "oem/90_boot.yaml").write_text(OEM_TRIES_5)
    new = tmp_path / "new.conf"
    new.write_text(entry_body("active"))
    args = {
        "bless": ["bless", "good", "--entry", "loader/entries/active+2-1.conf", "--esp", str(esp)],
        "arm": ["arm", "active", "--esp", str(esp)],
        "rotate": ["rotate", str(new), "--esp", str(esp)],
        "simulate": ["simulate", "--fail", "active=always", "--boots", "7", "--json"],
    }[verb]
    p, paths = _traced([*args, "--root", str(root)], tmp_path / "strace.log")
    assert p.returncode == 0, p.stderr
    assert any(x.startswith(f"{root}/oem") for x in paths), "ROOT/oem was not read"
    assert not [x for x in paths if x == "/oem" or x.startswith("/oem/")]
    if verb == "simulate":
        assert [b["role"] for b in json.loads(p.stdout)["boots"]].count("active") == 5
    else:
        assert "active+5.conf" in names(esp), names(esp)
