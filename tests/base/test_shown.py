"""Untrusted text shown to operators (issue 27, defect 3): names from the ESP, images, efivars are
bytes until they are shown, and shown through one escaping rule (src/bootkeeper/shown.py). Every verb
runs as the real command line, with a UTF-8 locale (as under systemd: stdout strict, so a name that
is not UTF-8 cannot slip out as raw bytes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from bootkeeper.esp import scratch
from helpers import fake_efivars, one_line_error, uki

FORGED = "warning: the node is fine, ignore the above"
# names an attacker with write access to the ESP can give extension images (vfat takes all of these)
HOSTILE = {
    "nl": f"evil\n{FORGED}.raw",
    "cr": "cr\rOVERWRITTEN.raw",
    "esc": "esc\x1b[2J\x1b[H.raw",
    "osc": "osc\x1b]0;pwned\x07.raw",
    "c1": "csi\x9b2J.raw",
    "del": "del\x7f.raw",
    "bidi": "bidi\u202ewar.exe.raw",
    "ls": "ls\u2028sep.raw",
}
BAD_UTF8 = b"bad\xff\xfe.raw"  # not UTF-8: os.listdir gives it back with surrogateescape
OSREL = 'PRETTY_NAME="Kairos\x1b[2J\x1b[H v3\u202e"\nID=kairos\nVERSION_ID=24.04\nIMAGE_VERSION=v3\x1b]0;x\x07\n'


def bk(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "PYTHONUTF8")}
    env["LC_ALL"] = "C.UTF-8"
    return subprocess.run([sys.executable, "-m", "bootkeeper", *args], capture_output=True, check=False, env=env)


def hostile_node(tmp_path: Path) -> tuple[Path, Path, Path]:
    root = tmp_path / "root"
    esp = scratch.make(tmp_path / "esp", ukis=True)
    (esp / "EFI/kairos/active.efi").write_bytes(uki(OSREL))
    d = esp / "EFI/kairos/active.efi.extra.d"
    d.mkdir()
    for name in [*HOSTILE.values(), "k3s.raw"]:
        (d / name).write_bytes(b"x" * 4096)
    with open(os.fsencode(d) + b"/" + BAD_UTF8, "wb") as f:
        f.write(b"x" * 4096)
    efivars = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\active+3.conf")
    return root, esp, efivars


def raw_controls(data: bytes) -> list[str]:
    """Every control character, line separator, bidi control or undecodable byte in ``data`` but the
    newline ending each line."""
    text = data.decode("utf-8", "surrogateescape")
    return [
        repr(ch)
        for ch in text
        if ch != "\n"
        and (unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067")
    ]


def test_the_rule() -> None:
    """The escaping, written out by hand: controls as \\xNN, bytes that are not UTF-8 as the byte,
    bidi controls and separators as \\uNNNN, the backslash doubled in a name, printable text as it is."""
    from bootkeeper.shown import shown, shown_line

    assert shown("k3s-v1.30.raw") == "k3s-v1.30.raw"
    assert shown("grüße-日本.raw") == "grüße-日本.raw"
    assert shown("a\nb") == "a\\x0ab"
    assert shown("a\r\tb") == "a\\x0d\\x09b"
    assert shown("\x1b[2J") == "\\x1b[2J"
    assert shown("\x7f\x85\x9b") == "\\x7f\\x85\\x9b"
    assert shown(b"bad\xff.raw") == "bad\\xff.raw"
    assert shown(os.fsdecode(b"bad\xff.raw")) == "bad\\xff.raw"
    assert shown("\ud800") == "\\ud800"
    assert shown("a\u202eb\u2066c\u200fd") == "a\\u202eb\\u2066c\\u200fd"
    assert shown("a\u2028b\u2029c") == "a\\u2028b\\u2029c"
    assert shown("back\\slash") == "back\\\\slash"
    # a line bootkeeper composed keeps its own backslashes (an EFI path), the rest as above
    assert shown_line("\\loader\\entries\\a.conf: x\ny") == "\\loader\\entries\\a.conf: x\\x0ay"


def test_status_and_motd_give_each_name_its_line_and_no_control_reaches_the_screen(tmp_path: Path) -> None:
    """Before: a newline in an image's name forged a status and a MOTD line, the .osrel's ESC[2J
    reached the login screen, and the name that is not UTF-8 made motd exit 70."""
    root, esp, efivars = hostile_node(tmp_path)
    args = ["--root", str(root), "--esp", str(esp), "--efivars", str(efivars)]
    r = bk("status", *args)
    assert r.returncode == 0, r.stderr
    assert raw_controls(r.stdout) == [] and raw_controls(r.stderr) == []
    m = bk("motd", *args)
    assert m.returncode == 0, m.stderr
    motd = (root / "run/motd.d/bootkeeper").read_bytes()
    assert raw_controls(motd) == []
    for out, indent in ((r.stdout.decode(), ""), (motd.decode(), "  ")):
        lines = out.splitlines()
        assert not any(FORGED in ln and not ln.startswith(f"{indent}extensions installed") for ln in lines), out
        installed = [ln for ln in lines if ln.startswith(f"{indent}extensions installed for active: ")]
        assert len(installed) == 1, out
        for want in (
            "evil\\x0a" + FORGED + ".raw",
            "cr\\x0dOVERWRITTEN.raw",
            "esc\\x1b[2J\\x1b[H.raw",
            "osc\\x1b]0;pwned\\x07.raw",
            "csi\\x9b2J.raw",
            "del\\x7f.raw",
            "bidi\\u202ewar.exe.raw",
            "ls\\u2028sep.raw",
            "bad\\xff\\xfe.raw",
            "k3s.raw",
        ):
            assert want in installed[0], (want, installed[0])
        osrel = [ln for ln in lines if ln.startswith(f"{indent}  active ")]
        assert osrel == [
            f"{indent}  active       Kairos\\x1b[2J\\x1b[H v3\\u202e (VERSION_ID=24.04, IMAGE_VERSION=v3\\x1b]0;x\\x07)"
        ]


def test_status_json_keeps_the_true_names_and_gives_bytes_that_are_not_utf8_escaped(tmp_path: Path) -> None:
    """JSON carries the names as they are (its own escapes); the one that is not UTF-8, which JSON cannot
    carry, in the escaped form the text shows (documented in docs/operator-guide.md)."""
    root, esp, efivars = hostile_node(tmp_path)
    r = bk("status", "--root", str(root), "--esp", str(esp), "--efivars", str(efivars), "--json")
    assert r.returncode == 0, r.stderr
    r.stdout.decode("utf-8")  # strict: valid UTF-8
    j = json.loads(r.stdout)
    assert sorted(j["extensions"]["installed"]["active"]) == sorted([*HOSTILE.values(), "k3s.raw", "bad\\xff\\xfe.raw"])
    assert j["roles"][0]["os"]["PRETTY_NAME"] == "Kairos\x1b[2J\x1b[H v3\u202e"


@pytest.fixture(scope="module")
def real_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real signed extension, built by the CLI (its name inside: hello)."""
    d = tmp_path_factory.mktemp("img")
    assert bk("keys", "generate", "--key", str(d / "k.pem"), "--cert", str(d / "c.pem")).returncode == 0
    (d / "tree/usr/bin").mkdir(parents=True)
    (d / "tree/usr/bin/hello").write_bytes(b"hello" * 1000)
    out = d / "hello.raw"
    r = bk("sysext", "build", str(d / "tree"), "-o", str(out), "--key", str(d / "k.pem"), "--cert", str(d / "c.pem"))
    assert r.returncode == 0, r.stderr
    return out


def test_sysext_list_keeps_each_name_in_its_cell(tmp_path: Path, real_image: Path) -> None:
    root = tmp_path / "root"
    esp = scratch.make(tmp_path / "esp", ukis=True)
    d = esp / "EFI/kairos/active.efi.extra.d"
    d.mkdir()
    for name in HOSTILE.values():
        (d / name).write_bytes(real_image.read_bytes())
    with open(os.fsencode(d) + b"/" + BAD_UTF8, "wb") as f:
        f.write(real_image.read_bytes())
    r = bk("sysext", "list", "--root", str(root), "--esp", str(esp))
    assert r.returncode == 0, r.stderr
    assert raw_controls(r.stdout) == [] and raw_controls(r.stderr) == []
    out = r.stdout.decode()
    assert not any(ln.lstrip().startswith(FORGED) for ln in out.splitlines()), out
    rows = [ln for ln in out.splitlines() if ln.startswith("active ")]
    assert len(rows) == len(HOSTILE) + 1, out  # one row per image
    assert any("evil\\x0a" + FORGED + ".raw" in ln for ln in rows), out
    assert any("bad\\xff\\xfe.raw" in ln for ln in rows), out


def hostile_entries(tmp_path: Path) -> tuple[Path, Path]:
    """A Type #1 entry whose file name has a newline and ESC, and one whose name is not UTF-8."""
    esp = scratch.make(tmp_path / "esp", ukis=True)  # 'efi' entries: lint's BK201 names every one
    e = esp / "loader/entries"
    body = (e / "passive+3.conf").read_bytes()
    (e / EVIL_ENTRY).write_bytes(body.replace(b"sort-key ", b"sort-key 9"))
    with open(os.fsencode(e) + b"/bad\xff+3.conf", "wb") as f:
        f.write(body.replace(b"sort-key ", b"sort-key 8"))
    return esp, fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\active+3.conf")


EVIL_ENTRY = f"evil\n{FORGED}\x1bc+3.conf"  # ESC c: the terminal's full reset (lower case: select can pin it)


@pytest.mark.parametrize(
    "verb", [["entries"], ["status"], ["select", "--once", EVIL_ENTRY], ["select", "--once", "bad\udcff+3.conf"]]
)
def test_entry_file_names_stay_on_their_line_in_every_view(tmp_path: Path, verb: list[str]) -> None:
    esp, efivars = hostile_entries(tmp_path)
    extra = ["--root", str(tmp_path / "root")] if verb[0] == "status" else []
    r = bk(*verb, "--esp", str(esp), "--efivars", str(efivars), *extra)
    # an id that is not UTF-8 cannot be written to an EFI variable: select says so (3), never 70
    assert r.returncode == (3 if verb[-1].startswith("bad") else 0), r.stderr
    assert raw_controls(r.stdout) == [] and raw_controls(r.stderr) == []
    out = r.stdout.decode() + r.stderr.decode()
    assert not any(ln.lstrip().startswith(FORGED) for ln in out.splitlines()), out
    if verb[0] != "select" or verb[2] == EVIL_ENTRY:
        assert f"evil\\x0a{FORGED}\\x1bc+3.conf" in out, out
    if verb[0] != "select" or verb[2] != EVIL_ENTRY:
        assert "bad\\xff+3.conf" in out, out


def test_lint_findings_name_a_hostile_file_on_the_findings_line(tmp_path: Path) -> None:
    """A finding is two lines (the finding, its fix); the file's name adds none."""
    f = tmp_path / f"x\n{FORGED}\x1bc.yaml"
    f.write_text("stages:\n  boot:\n   - [unclosed\n")
    r = bk("lint", str(f))
    assert r.returncode == 1, r.stderr
    assert raw_controls(r.stdout) == [] and raw_controls(r.stderr) == []
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 3 and lines[1].startswith("    fix: ") and lines[2] == "1 finding(s), 1 error(s)", lines
    assert lines[0].startswith(f"{tmp_path}/x\\x0a{FORGED}\\x1bc.yaml:4: error BK100: "), lines


def test_an_error_quoting_a_hostile_name_is_one_line(tmp_path: Path) -> None:
    """The error names the file; its newline does not make a second ``bootkeeper: error:`` line."""
    missing = tmp_path / "x\nbootkeeper: error: forged\x1b[2J.raw"
    r = bk("sysext", "inspect", str(missing))
    p = subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())
    line = one_line_error(p, 7, "\\x0abootkeeper: error: forged\\x1b[2J.raw")
    assert raw_controls(r.stderr) == [], line


def test_a_table_on_a_terminal_styles_its_own_words_and_escapes_the_names(tmp_path: Path) -> None:
    """On a terminal ``entries`` draws its table with rich: the header keeps rich's styling, the
    hostile entry's name stays in its cell as text (not rich markup, no raw ESC, no second line)."""
    import pty

    esp = scratch.make(tmp_path / "esp", ukis=True)
    e = esp / "loader/entries"
    (e / f"evil\n{FORGED}\x1bc[red]x+3.conf").write_bytes((e / "passive+3.conf").read_bytes())
    efivars = fake_efivars(tmp_path / "ev", LoaderBootCountPath="\\loader\\entries\\active+3.conf")
    leader, follower = pty.openpty()
    env = {**os.environ, "LC_ALL": "C.UTF-8", "COLUMNS": "250", "TERM": "xterm"}
    argv = [sys.executable, "-m", "bootkeeper", "entries", "--esp", str(esp), "--efivars", str(efivars)]
    p = subprocess.Popen(argv, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert p.wait(timeout=60) == 0, out
    text = out.decode()
    assert "\x1b[1m" in text  # rich's bold header: its own styling is kept
    assert "\x1bc" not in text and not any(ln.lstrip().startswith(FORGED) for ln in text.splitlines()), text
    rows = [ln for ln in text.splitlines() if f"evil\\x0a{FORGED}\\x1bc[red]x+3.conf" in ln]
    assert len(rows) == 1, text


def test_the_generator_escapes_by_the_same_rule() -> None:
    """The generator (standard library only, run as python3 -IS) carries its own copy of the rule."""
    from bootkeeper.assess import generator
    from bootkeeper.shown import shown_line

    every = "".join(chr(c) for c in range(0x3000)) + "\ud800\udc80\udcff\ufeff"
    assert generator.shown_line(every) == shown_line(every)
    assert (
        generator.shown_line("active (LoaderEntrySelected=a\nb\x1b[2J)")
        == "active (LoaderEntrySelected=a\\x0ab\\x1b[2J)"
    )


def test_the_backstop_escapes_what_no_caller_did() -> None:
    """stdout and stderr of the command line (bootkeeper.shown.guard_streams): control characters but
    newline and tab, bytes that are not UTF-8 and bidi controls escaped; backslashes and lines kept."""
    import io

    import click

    from bootkeeper.shown import Guarded

    buf = io.StringIO()
    g = Guarded(buf)
    g.write("a\tb\\c\n")
    g.write("d\x1b]0;t\x07e\r" + os.fsdecode(b"\xff") + "\u202e\x85\n")
    click.echo("f\x1bcg", file=g)  # type: ignore[arg-type]
    assert buf.getvalue() == "a\tb\\c\nd\\x1b]0;t\\x07e\\x0d\\xff\\u202e\\x85\nf\\x1bcg\n"
    with pytest.raises(TypeError):
        g.write(b"bytes")  # type: ignore[arg-type]
