"""Config text never becomes unit text of its own (issue 27, defect 2): a newline in
``sysext.hierarchies`` used to write an ``ExecStartPre=`` into the systemd-sysext drop-in, run as root
at every boot. Two layers, each proven with the real tools:

* the config edge refuses what no hierarchy, path, image policy or unit name holds, in one line naming
  the file, the key and the value (``config.load`` through ``install-units``, exit 4, nothing written);
* the writers quote what is legal but tricky (spaces, ``%``, quotes, backslashes, ``$``, ``;``,
  non-ASCII) so that systemd reads exactly that value, and even a hostile value handed to them past the
  config makes no line of its own. The oracle is systemd itself: ``systemd-analyze verify`` for the
  files, and the manager's own parse of them (``systemd --test --system --unit=X``, which loads the
  units as boot would and dumps every setting: the Environment= entries and each command's argv) —
  the host's systemd 252 and trixie's 257.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import bk, install_units, systemd_verify

UNIT_DIR = "etc/systemd/system"
DROPIN = "systemd-sysext.service.d/10-bootkeeper.conf"
INJECTED = "ExecStartPre=/bin/sh -c 'touch /tmp/bootkeeper-pwned'"


# --- the manager's own parse -------------------------------------------------------------------------


def _dump_block(dump: str, unit: str) -> list[str]:
    lines = dump.replace("\u2192", "->").splitlines()  # 257 in a UTF-8 locale draws the arrow
    start = lines.index(f"\t-> Unit {unit}:")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("\t-> Unit ")), len(lines))
    return lines[start + 1 : end]


def systemd_parse(unit_dir: Path, unit: str, systemd: str = "host") -> dict[str, list[object]]:
    """What systemd's manager makes of ``unit`` (and its drop-ins) found in ``unit_dir`` first:
    ``{"Environment": [assignments], "ExecStart": [argv, ...], ...}``, from ``systemd --test``'s dump
    (as nobody: systemd refuses test mode as root). Command lines are dumped shell-quoted
    (quote_command_line()), which shlex reads back; before ``$`` substitution, which happens when the
    command runs. ``systemd``: ``host`` (252) or ``trixie`` (257)."""
    work = Path(tempfile.mkdtemp(prefix="bk-units-"))
    try:
        shutil.copytree(unit_dir, work / "units", symlinks=True)
        for p in [work, *work.rglob("*")]:
            if not p.is_symlink():
                p.chmod(0o755)
        cmd = "--test --system --no-pager --unit=" + shlex.quote(unit)
        drop = "setpriv --reuid=65534 --regid=65534 --clear-groups" if os.geteuid() == 0 else ""
        if systemd == "host":
            env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{work}/units:", "SYSTEMD_LOG_LEVEL": "err"}
            r = subprocess.run(
                f"{drop} /lib/systemd/systemd {cmd}", shell=True, capture_output=True, text=True, env=env, check=False
            )
        else:
            import trixie

            if not trixie.available():
                pytest.fail("the trixie tree is missing: run bash scripts/setup-test-deps.sh")
            line = f"SYSTEMD_UNIT_PATH=/work/units: SYSTEMD_LOG_LEVEL=err {drop} /usr/lib/systemd/systemd {cmd}"
            r = trixie.run(line, work)
    finally:
        shutil.rmtree(work)
    assert r.returncode == 0, r.stderr
    out: dict[str, list[object]] = {}
    current = None
    for ln in _dump_block(r.stdout, unit):
        if ln.startswith("\t\t-> Exec"):
            current = ln.strip()[3:-1]
            out.setdefault(current, [])
        elif ln.startswith("\t\t\tCommand Line: ") and current is not None:
            # quote_command_line() escapes '"\\`$' inside double quotes, as sh reads them; shlex takes
            # no '\\$' or '\\`' there: those two are undone first (after an even run of backslashes)
            text = re.sub(r"(?<!\\)((?:\\\\)*)\\([$`])", r"\1\2", ln.removeprefix("\t\t\tCommand Line: "))
            out[current].append(shlex.split(text))
        elif ln.startswith("\t\t") and not ln.startswith("\t\t\t"):
            current = None
            key, _, value = ln[2:].partition(": ")
            out.setdefault(key, []).append(value)
    return out


# --- layer 1: the config edge ------------------------------------------------------------------------

HOSTILE = [
    ("sysext", "hierarchies", ["/usr", f'/opt"\n{INJECTED}\n#'], "is not an absolute path of printable characters"),
    ("sysext", "hierarchies", ["/usr\r"], "is not an absolute path of printable characters"),
    ("sysext", "hierarchies", ["/usr\u2028/opt"], "is not an absolute path of printable characters"),
    ("sysext", "hierarchies", ["/usr/../etc"], "is not a hierarchy"),
    ("sysext", "hierarchies", ["/usr:/etc"], "is not a hierarchy"),
    ("sysext", "hierarchies", ["/"], "is not a hierarchy"),
    ("sysext", "hierarchies", ["/opt/"], "is not a hierarchy"),
    ("sysext", "hierarchies", ["//usr"], "is not a hierarchy"),
    ("sysext", "sources", [f"/srv\n{INJECTED}"], "is not an absolute path of printable characters"),
    ("sysext", "verity_dirs", ["/etc/verity.d\x1b[2J"], "is not an absolute path of printable characters"),
    ("sysext", "store_dir", "/var/lib/x\n[Service]", "is not an absolute path of printable characters"),
    ("sysext", "policy", "root=signed+absent:usr=signed+absent\n", "is not an image policy"),
    ("sysext", "policy", "root=signed+absent %n", "is not an image policy"),
    ("sysext", "timeout", f"5min\n{INJECTED}", "is not a systemd time span"),
    ("boot_assessment", "services", [{"name": f"k3s.service\n{INJECTED}"}], "is not a unit name"),
    ("boot_assessment", "services", [{"name": "k3s service"}], "is not a unit name"),
    ("boot_assessment", "services", [{"name": "%n.service"}], "is not a unit name"),
    ("boot_assessment", "services", [{"name": "a@b@c.service"}], "is not a unit name"),
    ("boot_assessment", "services", [{"name": "x" * 250 + ".service"}], "is not a unit name"),
]


@pytest.mark.parametrize(("section", "key", "value", "expected"), HOSTILE)
def test_config_refuses_what_would_become_unit_text(
    tmp_path: Path, section: str, key: str, value: object, expected: str
) -> None:
    """install-units with the value in /oem: exit 4, one line naming the file, the key and the value
    (repr-escaped: the line stays one line), and not a file written."""
    root = tmp_path / "root"
    (root / "oem").mkdir(parents=True)
    cfg = root / "oem/90_sysext.yaml"
    cfg.write_text(json.dumps({section: {key: value}}))  # JSON is YAML: the value exactly
    r = bk("install-units", "--root", str(root), "--exe", "/usr/bin/bootkeeper", "--python", "/usr/bin/python3")
    assert r.returncode == 4, r.stderr
    line = r.stderr.removeprefix("bootkeeper: error: ").rstrip("\n")
    assert "\n" not in line and "Traceback" not in line, r.stderr
    shown = value[-1] if isinstance(value, list) else value
    shown = shown["name"] if isinstance(shown, dict) else shown
    assert line.startswith(f"{cfg}: {section}.{key}") and repr(shown) in line and expected in line, line
    assert not (root / "etc").exists()


def test_a_service_name_is_refused_at_the_config_edge_naming_the_item(tmp_path: Path) -> None:
    """The unit-name rule at the config edge names the item (before: install-units wrote the units, then
    stopped at enrolment with exit 2 naming neither file nor key)."""
    from bootkeeper import config
    from bootkeeper.errors import ConfigError

    p = tmp_path / "90.yaml"
    p.write_text(json.dumps({"boot_assessment": {"services": [{"name": "k3s"}, {"name": "a\nb"}]}}))
    with pytest.raises(ConfigError) as err:
        config.load([p])
    assert str(err.value).startswith(f"{p}: boot_assessment.services[1].name: 'a\\nb' is not a unit name (")


# --- layer 2: the writers, read back by systemd ------------------------------------------------------

# legal, but each special to one of systemd's readers: word splitting, quotes, C escapes, specifiers,
# variables, the ';' separator, UTF-8; and '*' to the sysext-submounts script's word splitting
TRICKY = [
    "/opt/with space",
    "/opt/100%n",
    "/opt/q\"uo'te",
    "/opt/back\\slash",
    "/opt/$HOME",
    "/opt/sem;",
    "/é/ü",
    "/o*",
]


@pytest.mark.root
@pytest.mark.parametrize("systemd", ["host", "trixie"])
def test_tricky_hierarchies_reach_systemd_sysext_exactly(tmp_path: Path, systemd: str) -> None:
    """Through the real config and install-units: verify passes, and systemd's parse of the drop-in
    has exactly the configured value and no other setting. Before: '%n' became the unit's name."""
    units = install_units(tmp_path, json.dumps({"sysext": {"hierarchies": ["/usr", *TRICKY]}}))
    r = systemd_verify(units, "systemd-sysext.service", "bootkeeper-sysext.service")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    parsed = systemd_parse(units, "systemd-sysext.service", systemd)
    assert parsed["Environment"] == ["SYSTEMD_SYSEXT_HIERARCHIES=" + ":".join(["/usr", *TRICKY])]


@pytest.mark.root
def test_tricky_command_words_reach_the_command_exactly(tmp_path: Path) -> None:
    """--exe words with '%', quotes, a backslash and '$' (in an argument: systemd replaces '$$' with
    '$' when it runs the command, systemd.service(5) "Command lines") and a policy of '*': every unit's
    command is argv as given. Before: '%' was a specifier."""
    root = tmp_path / "root"
    (root / "oem").mkdir(parents=True)
    (root / "oem/90.yaml").write_text(json.dumps({"sysext": {"policy": "*"}}))
    program = tmp_path / "100%n" / "python3"  # a real program: verify checks that the parsed path is one
    program.parent.mkdir()
    program.symlink_to(sys.executable)
    exe = [str(program), "-m", "bootkeeper", "--x=%i", "q\"'", "b\\s", "$HOME", ";"]
    r = bk("install-units", "--root", str(root), "--exe", " ".join(exe), "--python", "/usr/bin/python3",
           "--systemd-version", "257")  # fmt: skip
    assert r.returncode == 0, r.stderr
    units = root / UNIT_DIR
    v = systemd_verify(units, "bootkeeper-sysext.service", "systemd-sysext.service")
    assert v.returncode == 0 and v.stderr == "", v.stderr
    sysext = systemd_parse(units, "bootkeeper-sysext.service")
    runs = [*exe[:6], "$$HOME", ";"]  # argv before '$' substitution
    assert sysext["ExecStart"] == [[*runs, "sysext", "activate", "--no-refresh"]]
    assert systemd_parse(units, "systemd-sysext.service")["ExecStart"] == [
        ["systemd-sysext", "refresh", "--image-policy=*"]
    ]


@pytest.mark.root
@pytest.mark.parametrize("systemd", ["host", "trixie"])
def test_a_hostile_value_past_the_config_makes_no_line_of_its_own(tmp_path: Path, systemd: str) -> None:
    """The second layer alone: a Config built in code (no config.load) with a newline, a quote and an
    injected ExecStartPre= in every text field that reaches a unit, rendered and installed by the real
    writers. systemd-analyze verify passes; systemd's parse has the one Environment= assignment (the
    newline inside it, as a C escape in the file) and no ExecStartPre= at all (a 257 node gets none)."""
    from bootkeeper.assess import units
    from bootkeeper.config import Config, Sysext

    evil = f'/opt"\n{INJECTED}\n#\\'
    cfg = Config(sysext=Sysext(hierarchies=("/usr", evil)))
    files = units.render(cfg, [sys.executable, "-m", "bootkeeper", f"x\n{INJECTED}"], sys.executable, systemd=257)
    root = tmp_path / "root"
    units.install(root, files)
    dropin = (root / UNIT_DIR / DROPIN).read_text()
    assert not [ln for ln in dropin.splitlines() if ln.startswith("ExecStartPre")], dropin
    unit_dir = root / UNIT_DIR
    r = systemd_verify(unit_dir, "systemd-sysext.service", "bootkeeper-sysext.service")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    parsed = systemd_parse(unit_dir, "systemd-sysext.service", systemd)
    assert "ExecStartPre" not in parsed and len(parsed["ExecStart"]) == 1
    env = parsed["Environment"]
    assert len(env) == 1 and str(env[0]).startswith('SYSTEMD_SYSEXT_HIERARCHIES=/usr:/opt"'), env
    service = systemd_parse(unit_dir, "bootkeeper-sysext.service", systemd)
    assert "ExecStartPre" not in service and len(service["ExecStart"]) == 1


def test_a_hostile_value_in_a_plain_setting_is_refused_by_the_writer(tmp_path: Path) -> None:
    """TimeoutSec= takes no quotes: a value that got past the config with a newline is refused by the
    writer (a one-line ConfigError), never written."""
    from bootkeeper.assess import units
    from bootkeeper.config import Config, Sysext
    from bootkeeper.errors import ConfigError

    value = f"5min\n{INJECTED}"
    with pytest.raises(ConfigError, match="^" + re.escape(f"TimeoutSec={value!r} cannot be written")):
        units.render(Config(sysext=Sysext(timeout=value)), ["/usr/bin/bootkeeper"], "/usr/bin/python3")


def test_the_program_of_a_command_line_is_no_variable(tmp_path: Path) -> None:
    """'$' in an argument is written '$$' (systemd gives the program '$'); in the program's own path
    systemd replaces nothing, so '--exe' with one is refused, exit 2, nothing written."""
    root = tmp_path / "root"
    (root / "oem").mkdir(parents=True)
    r = bk("install-units", "--root", str(root), "--exe", "/opt/$HOME/bootkeeper", "--python", "/usr/bin/python3",
           "--systemd-version", "257")  # fmt: skip
    assert r.returncode == 2 and "'/opt/$HOME/bootkeeper'" in r.stderr, r.stderr
    assert not (root / "etc").exists()


@pytest.mark.parametrize(
    ("python", "why"),
    [("/usr/bin/python3\nimport os", "printable"), ("/opt/my python/bin/python3", "blanks"), ("/" + "p" * 260, "255")],
)
def test_the_generators_interpreter_line_cannot_be_broken(tmp_path: Path, python: str, why: str) -> None:
    """--python becomes the generator's '#!' line: a newline there would be Python run at every boot.
    Refused with exit 2, nothing written (before: written as given)."""
    root = tmp_path / "root"
    (root / "oem").mkdir(parents=True)
    r = bk(
        "install-units",
        "--root",
        str(root),
        "--exe",
        "/usr/bin/bootkeeper",
        "--python",
        python,
        "--systemd-version",
        "257",
    )
    assert r.returncode == 2 and why in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (root / "etc").exists()


# --- services: the enrolment drop-in, the cloud-config, the generator's record ------------------------


def test_a_tricky_legal_unit_name_is_written_and_read_back_as_itself(tmp_path: Path) -> None:
    """A systemd-escaped instance name (backslashes, '@', ':'): the enrolment drop-in is read by
    systemd-analyze verify, and the cloud-config render reads back (YAML) with that name everywhere."""
    import yaml

    from bootkeeper.assess import cloudconfig, services
    from bootkeeper.config import RebootOnFailure, ServiceSpec

    name = "my\\x2dapp@a:b\\x20c.service"
    units = install_units(tmp_path, json.dumps({"boot_assessment": {"services": [{"name": name}]}}))
    dropin = units / f"{name}.d" / services.DROPIN
    assert dropin.is_file() and len(dropin.read_text().splitlines()) == len(
        services.render_dropin(ServiceSpec("x.service")).splitlines()
    )
    doc = yaml.safe_load(cloudconfig.render([ServiceSpec(name, RebootOnFailure.ACTIVE)]))
    steps = doc["stages"]["initramfs"]
    assert steps[0]["files"][0]["path"] == f"/etc/systemd/system/{name}.d/{services.DROPIN}"
    assert steps[1]["files"][0]["path"] == f"/run/systemd/system/{name}.d/50-bootkeeper-failure-action.conf"
    assert steps[-1]["systemctl"]["enabled"] == [name]


def test_comment_text_stays_one_line() -> None:
    """A comment written from a value (a unit name in the enrolment drop-in) is one line whatever it
    holds, and a backslash cannot end it."""
    from bootkeeper import unittext

    assert unittext.comment("a\nb\\") == "a\\nb\\\\"
    assert "\n" not in unittext.comment("x\u2028y\r\x85")


def test_unit_name_rule_is_the_generators(tmp_path: Path) -> None:
    """assess/generator.py runs alone and restates the unit-name rule: both agree, and neither takes a
    trailing newline (the generator's '$' did, writing a drop-in folder named 'k3s.service\\n.d')."""
    from bootkeeper import unittext
    from bootkeeper.assess import generator

    names = [
        *("k3s.service", "a@.service", "a@b.timer", "k3s.service\n", "\nk3s.service", "a b.service"),
        *("a@b@c.service", "-.mount", "x.slice", "x" * 248 + ".service", "x" * 247 + ".service"),
        *("my\\x2dapp@a:b.service", ".service"),
    ]
    for n in names:
        ok = unittext.unit_name_problem(n) is None
        assert ok == (bool(generator.UNIT_NAME.match(n)) and len(n) <= 255), n
    assert unittext.UNIT_TYPES == generator.UNIT_TYPES
    root = tmp_path / "root"
    (root / "etc/bootkeeper").mkdir(parents=True)
    (root / "etc/bootkeeper/services.json").write_text(
        json.dumps({"version": 1, "services": {"k3s.service\n": "active"}})
    )
    (root / "run/cos").mkdir(parents=True)
    (root / "run/cos/active_mode").touch()
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-IS", generator.__file__, str(out), str(out), str(out)],
        env={"BOOTKEEPER_GENERATOR_ROOT": str(root)}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0 and "is not a unit name" in r.stderr and not out.exists(), r.stderr


def test_sysext_submounts_splits_hierarchies_without_pathname_expansion(tmp_path: Path) -> None:
    """The script the drop-in runs (systemd < 257) reads SYSTEMD_SYSEXT_HIERARCHIES: a hierarchy '/u*'
    is that path, not every folder it would glob to (before: '/usr' matched it)."""
    from bootkeeper import submounts

    text = submounts.SCRIPT_TEXT
    func = text[text.index("below_hierarchy() {") : text.index("\n}\n", text.index("below_hierarchy() {")) + 3]
    script = (
        f"{func}root=\nhier='/u*'\nbelow_hierarchy /usr/lib && echo below; below_hierarchy '/u*/x' && echo literal\n"
    )
    r = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=False)
    assert r.stdout == "literal\n", r.stdout
