"""systemd's command-line conventions, a root hint, and what `simulate` shows (issue 15, items 8–10)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import bk, entry_body, esp_with, one_line_error, uki


def test_json_pretty_short_and_off() -> None:
    pretty = bk("simulate", "--boots", "2", "--json")
    short = bk("simulate", "--boots", "2", "--json=short")
    named = bk("simulate", "--boots", "2", "--json=pretty")
    off = bk("simulate", "--boots", "2", "--json=off")
    plain = bk("simulate", "--boots", "2")
    assert pretty.returncode == short.returncode == named.returncode == off.returncode == 0
    assert pretty.stdout == named.stdout and pretty.stdout.count("\n") > 10
    assert short.stdout.count("\n") == 1 and json.loads(short.stdout) == json.loads(pretty.stdout)
    assert off.stdout == plain.stdout and not off.stdout.startswith("{")
    one_line_error(bk("simulate", "--json=yaml"), 2, "--json=yaml: not one of pretty, short, off")
    # a verb without --json still refuses it, whatever the mode
    one_line_error(bk("demo", "--json=short"), 2, "No such option", "--json")


def test_json_before_a_positional_argument_is_still_a_flag(tmp_path: Path) -> None:
    """--json takes no value of its own: `--json IMAGE` must not read IMAGE as the mode."""
    img = tmp_path / "x.raw"
    img.write_bytes(b"\0" * 4096)
    p = bk("sysext", "validate", "--json", str(img))
    assert p.returncode == 1 and json.loads(p.stdout)["images"][0]["image"] == str(img), p.stderr
    p = bk("sysext", "validate", "--json=short", str(img))
    assert p.returncode == 1 and p.stdout.count("\n") == 1 and json.loads(p.stdout)["images"][0]["ok"] is False


def test_no_legend_and_no_pager() -> None:
    full = bk("simulate", "--boots", "2").stdout.splitlines()
    bare = bk("simulate", "--boots", "2", "--no-legend", "--no-pager").stdout.splitlines()
    assert full[0].startswith("boot ") and full[1].startswith("----")
    assert bare == full[2:]  # the rows alone; the line after the table stays
    assert bk("entries", "--no-pager", "--help").returncode == 0


def test_shell_completion_as_documented() -> None:
    """bootkeeper(8), ENVIRONMENT: `eval "$(_BOOTKEEPER_COMPLETE=bash_source bootkeeper)"`; the lazy verbs
    complete too."""
    exe = shutil.which("bootkeeper", path=str(Path(sys.executable).parent))
    assert exe is not None
    src = subprocess.run(
        [exe], env={**os.environ, "_BOOTKEEPER_COMPLETE": "bash_source"}, capture_output=True, text=True, check=True
    )
    assert "complete -o nosort -F _bootkeeper_completion bootkeeper" in src.stdout
    env = {
        **os.environ,
        "_BOOTKEEPER_COMPLETE": "bash_complete",
        "COMP_WORDS": "bootkeeper sysext va",
        "COMP_CWORD": "2",
    }
    got = subprocess.run([exe], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert got == ["plain,validate"]
    zsh = subprocess.run(
        [exe], env={**os.environ, "_BOOTKEEPER_COMPLETE": "zsh_source"}, capture_output=True, text=True
    )
    assert "#compdef bootkeeper" in zsh.stdout


def _unprivileged() -> tuple[str, ...]:
    tool = shutil.which("setpriv")
    if tool is None:
        pytest.fail("setpriv (util-linux) is missing; scripts/setup-test-deps.sh installs it")
    return (tool, "--bounding-set", "-dac_override,-dac_read_search,-fowner,-sys_admin")


def test_a_verb_that_needs_root_says_so(tmp_path: Path) -> None:
    esp = esp_with(tmp_path / "esp", {"active+2-1.conf": entry_body("active")})
    (esp / "loader" / "entries").chmod(0o555)  # root may rename in it; a process without root's powers may not
    args = ("bless", "good", "--esp", str(esp), "--entry", "loader/entries/active+2-1.conf", "--root", str(tmp_path))
    try:
        p = bk(*args, prefix=_unprivileged())
        one_line_error(p, 6, "active+2-1.conf: rename to active.conf failed (Permission denied)")
        assert "hint: this needs root: bootkeeper runs as uid 0 without CAP_DAC_OVERRIDE and CAP_SYS_ADMIN" in p.stderr
        assert (esp / "loader/entries/active+2-1.conf").exists()
        # root itself gets no such hint: a failure that is not about permissions gets none either
        miss = bk(
            "bless",
            "good",
            "--esp",
            str(tmp_path / "nope"),
            "--entry",
            "loader/entries/x+1.conf",
            prefix=_unprivileged(),
        )
        assert miss.returncode == 7 and "needs root" not in miss.stderr, miss.stderr
    finally:
        (esp / "loader" / "entries").chmod(0o755)
    ok = bk(*args)
    assert ok.returncode == 0 and "needs root" not in ok.stderr, ok.stderr


def test_simulate_on_type2_lists_the_ukis_after(tmp_path: Path) -> None:
    esp = tmp_path / "esp"
    (esp / "loader").mkdir(parents=True)
    (esp / "loader" / "loader.conf").write_text("timeout 0\n")
    (esp / "EFI" / "Linux").mkdir(parents=True)
    for role, key in (("active", 1), ("passive", 2)):
        osrel = f'ID=kairos\nIMAGE_ID={role}\nIMAGE_VERSION={3 - key}\nPRETTY_NAME="{role}"\n'
        (esp / "EFI" / "Linux" / f"{role}+3.efi").write_bytes(uki(osrel, tag=role))
    p = bk("simulate", "--esp", str(esp), "--boots", "3", "--fail", "active=always", "--json")
    assert p.returncode == 0, p.stderr
    after = json.loads(p.stdout)["entries_after"]
    # active (IMAGE_ID sorts first) boots three times and fails each: its counter runs down; passive is untouched
    assert after == ["EFI/Linux/active+0-3.efi", "EFI/Linux/passive+3.efi"], after
    text = bk("simulate", "--esp", str(esp), "--boots", "3", "--fail", "active=always").stdout
    last = text.strip().splitlines()[-1]
    assert last.startswith("entries after: ") and all(Path(a).name in last for a in after), last
