"""Enrolment of services that decide a boot, and bootkeeper-generator, run as installed.

The generator is run the way systemd runs it (the installed script, three output folders) for every
booted role; its output and every unit install-units and enroll write are checked by the real
systemd-analyze verify, with a misspelt key as the control that the generator's folder is read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as settings_
from hypothesis import strategies as st

from bootkeeper.esp import counter
from helpers import bk, fake_efivars

UNITS = "etc/systemd/system"
GEN = "etc/systemd/system-generators/bootkeeper-generator"
K3S = "[Unit]\nDescription=k3s\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"
CONFIG = """boot_assessment:
  services:
    - name: k3s.service
      reboot_on_failure: active
    - name: health
      reboot_on_failure: never
    - name: watchdog.service
      reboot_on_failure: always
"""


def tool(name: str) -> str:
    """A tool scripts/setup-test-deps.sh installs (systemd, coreutils): its path, or the test fails;
    never a guess that is run anyway."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing; scripts/setup-test-deps.sh installs it (package systemd or coreutils)")
    return path


def node(root: Path, config: str = CONFIG) -> Path:
    """A root with k3s from an 'extension' in /usr/lib, a health check in /etc, units installed."""
    (root / "oem").mkdir(parents=True, exist_ok=True)
    (root / "oem/90.yaml").write_text(config)
    (root / "usr/lib/systemd/system").mkdir(parents=True, exist_ok=True)
    (root / "usr/lib/systemd/system/k3s.service").write_text(K3S)
    (root / UNITS).mkdir(parents=True, exist_ok=True)
    (root / UNITS / "health.service").write_text("[Service]\nType=oneshot\nExecStart=/bin/true\n")
    (root / UNITS / "watchdog.service").write_text("[Service]\nExecStart=/bin/sleep infinity\n")
    r = bk("install-units", "--root", str(root), "--exe", tool("true"), "--python", sys.executable)
    assert r.returncode == 0, r.stderr
    return root


def boot_as(root: Path, role: str | None, selected: str | None = None, counting: str | None = None) -> None:
    shutil.rmtree(root / "run/cos", ignore_errors=True)
    shutil.rmtree(root / "sys", ignore_errors=True)
    if role is not None:
        (root / "run/cos").mkdir(parents=True)
        (root / f"run/cos/{role}_mode").touch()
    values = {}
    if selected is not None:
        values["LoaderEntrySelected"] = selected
    if counting is not None:
        values["LoaderBootCountPath"] = counting
    fake_efivars(root / "sys/firmware/efi/efivars", **values)


def generate(root: Path, out: Path) -> tuple[dict[str, str], str]:
    """Run the installed generator as systemd does; returns the files it wrote and its log."""
    shutil.rmtree(out, ignore_errors=True)
    dirs = [out / "normal", out / "early", out / "late"]
    for d in dirs:
        d.mkdir(parents=True)
    env = {**os.environ, "BOOTKEEPER_GENERATOR_ROOT": str(root)}
    p = subprocess.run([str(root / GEN), *map(str, dirs)], capture_output=True, text=True, env=env, check=False)
    assert p.returncode == 0, p.stderr  # never fails the boot
    files = {str(f.relative_to(out)): f.read_text() for f in sorted(out.rglob("*")) if f.is_file()}
    return files, p.stderr


def settings(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


COUNTING = "\\loader\\entries\\active+2-1.conf"


def test_generator_on_active_with_counting_writes_failure_action_for_active_services_only(tmp_path: Path) -> None:
    root = node(tmp_path / "root")
    boot_as(root, "active", counting=COUNTING)
    files, log = generate(root, tmp_path / "gen")
    assert list(files) == ["normal/k3s.service.d/50-bootkeeper-failure-action.conf"]
    assert settings(files["normal/k3s.service.d/50-bootkeeper-failure-action.conf"]) == [
        "[Unit]",
        "FailureAction=reboot",
    ]
    assert "run/cos/active_mode" in log and "FailureAction=reboot" in log


@pytest.mark.parametrize(
    ("role", "selected", "counting", "why"),
    [
        ("passive", None, "\\loader\\entries\\passive+2-1.conf", "booted role passive"),
        ("recovery", None, "\\loader\\entries\\recovery+1-2.conf", "booted role recovery"),
        ("statereset", None, "\\loader\\entries\\statereset+1-0.conf", "booted role statereset"),
        (None, "custom.conf", "\\loader\\entries\\custom+1-2.conf", "booted role unknown"),
        (None, None, None, "booted role unknown"),
        ("active", None, None, "without boot counting"),
    ],
)
def test_generator_writes_nothing_off_active(
    tmp_path: Path, role: str | None, selected: str | None, counting: str | None, why: str
) -> None:
    root = node(tmp_path / "root")
    boot_as(root, role, selected, counting)
    files, log = generate(root, tmp_path / "gen")
    assert files == {}
    assert why in log


def test_generator_falls_back_to_loader_entry_selected(tmp_path: Path) -> None:
    root = node(tmp_path / "root")
    boot_as(root, None, selected="active+2-1.conf", counting=COUNTING)
    files, log = generate(root, tmp_path / "gen")
    assert list(files) == ["normal/k3s.service.d/50-bootkeeper-failure-action.conf"]
    assert "LoaderEntrySelected=active+2-1.conf" in log
    # /run/cos wins over the EFI variable
    boot_as(root, "passive", selected="active+2-1.conf", counting=COUNTING)
    assert generate(root, tmp_path / "gen")[0] == {}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (b"{not json", "not JSON"),
        (b'{"version": 2, "services": {}}', 'expected {"version": 1'),
        (b'{"version": 1, "services": {"../x.service": "active"}}', "is not a unit name"),
        (b'{"version": 1, "services": {"k3s.service": "sometimes"}}', "'sometimes' is not one of"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_generator_bad_config_logs_and_writes_nothing(tmp_path: Path, config: bytes, message: str) -> None:
    root = node(tmp_path / "root")
    boot_as(root, "active", counting=COUNTING)
    (root / "etc/bootkeeper/services.json").write_bytes(config)
    files, log = generate(root, tmp_path / "gen")
    assert files == {}
    assert message in log and "writing nothing" in log and "Traceback" not in log


def test_generator_ambiguous_role_or_bad_variable_writes_nothing(tmp_path: Path) -> None:
    root = node(tmp_path / "root")
    boot_as(root, "active", counting=COUNTING)
    (root / "run/cos/passive_mode").touch()
    files, log = generate(root, tmp_path / "gen")
    assert files == {} and "more than one mode file" in log
    boot_as(root, None, counting=COUNTING)
    from bootkeeper.esp.efivars import LOADER_GUID

    (root / f"sys/firmware/efi/efivars/LoaderEntrySelected-{LOADER_GUID}").write_bytes(b"\x06\0\0\0a")
    files, log = generate(root, tmp_path / "gen")
    assert files == {} and "not an EFI string variable" in log


def _set_tries(root: Path, tries: object) -> None:
    record = root / "etc/bootkeeper/services.json"
    doc = json.loads(record.read_text())
    doc["tries"] = tries
    record.write_text(json.dumps(doc))


ENTRIES = "\\loader\\entries\\"


@pytest.mark.parametrize(
    ("counting", "selected", "tries", "reboots", "why"),
    [
        # +1-2 -> +0-3: the last of 3 tries; a reboot falls back to passive
        (ENTRIES + "active+0-3.conf", None, None, True, "this was its last try"),
        # +0-3 -> +0-4: booted with no tries left (a default pins it, or it is the only entry)
        (ENTRIES + "active+0-4.conf", None, None, False, "booted with no tries left"),
        (ENTRIES + "active+0-3.conf", None, 2, False, "more than the 2 tries"),
        (ENTRIES + "active+0-5.conf", None, 5, True, "at most the 5 tries"),
        # systemd-boot 252: LoaderEntrySelected is the name before the rename, counter included
        (ENTRIES + "active+0-2.conf", "active+0-1.conf", None, False, "LoaderEntrySelected=active+0-1.conf"),
        (ENTRIES + "active+0-2.conf", "active+1-1.conf", None, True, "LoaderEntrySelected=active+1-1.conf"),
        # an id that systemd-boot's rename does not turn into LoaderBootCountPath says nothing
        (ENTRIES + "active+0-4.conf", "active+2-1.conf", None, False, "booted with no tries left"),
        (ENTRIES + "active+0-4.conf", "passive+1-3.conf", None, False, "booted with no tries left"),
        ("\\EFI\\Linux\\active+0-4.efi", None, None, False, "booted with no tries left"),
        (ENTRIES + "active.conf", None, None, False, "has no boot counter"),
        (ENTRIES + "active+0-" + "9" * 1500 + ".conf", None, None, False, "has no boot counter"),
    ],
)
def test_generator_reboots_only_while_a_try_was_left(
    tmp_path: Path, counting: str, selected: str | None, tries: int | None, reboots: bool, why: str
) -> None:
    root = node(tmp_path / "root")
    if tries is not None:
        _set_tries(root, tries)
    boot_as(root, "active", selected=selected, counting=counting)
    files, log = generate(root, tmp_path / "gen")
    assert list(files) == (["normal/k3s.service.d/50-bootkeeper-failure-action.conf"] if reboots else [])
    assert why in log and "Traceback" not in log


@pytest.mark.parametrize("tries", [0, 101, "3", True, None])
def test_generator_bad_tries_writes_nothing(tmp_path: Path, tries: object) -> None:
    root = node(tmp_path / "root")
    _set_tries(root, tries)
    boot_as(root, "active", counting=COUNTING)
    files, log = generate(root, tmp_path / "gen")
    assert files == {}
    assert "services.json: tries:" in log and "writing nothing" in log


def test_generator_defaults_agree_with_config() -> None:
    from bootkeeper.assess import generator
    from bootkeeper.config import BootAssessment

    assert BootAssessment().tries == generator.DEFAULT_TRIES
    assert counter.INT_MAX == generator.INT_MAX


@settings_(max_examples=2000, deadline=None)
@given(st.text(alphabet="ab+-0123456789.conefiCONEFI", max_size=24))
def test_generator_counter_grammar_is_counter_py(name: str) -> None:
    """The generator restates esp/counter.py's grammar (it runs without bootkeeper importable)."""
    from bootkeeper.assess import generator

    got = generator.parse_counter(name)
    suffix = ".efi" if name.lower().endswith(".efi") else ".conf"
    want = counter.parse(name, suffix)
    if not want.counted:
        assert got is None
    else:
        assert got == (want.base.lower(), want.tries_left, want.tries_done)


def _verify(root: Path, gen: Path, *names: str) -> subprocess.CompletedProcess[str]:
    analyze = tool("systemd-analyze")
    path = f"{root / UNITS}:{gen / 'normal'}:{root / 'usr/lib/systemd/system'}:"
    env = {**os.environ, "SYSTEMD_UNIT_PATH": path, "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run([analyze, "verify", "--man=no", *names], capture_output=True, text=True, env=env, check=False)


ALL = ("k3s.service", "health.service", "watchdog.service", "bootkeeper-bless.service", "bootkeeper-boot.service")


def test_everything_written_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    root = node(tmp_path / "root")
    boot_as(root, "active", counting=COUNTING)
    files, _ = generate(root, tmp_path / "gen")
    assert files
    r = _verify(root, tmp_path / "gen", *ALL, "boot-complete.target", "bootkeeper-sysext.service")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    units = root / UNITS
    assert os.readlink(units / "systemd-bless-boot.service") == "/dev/null"
    assert os.readlink(units / "boot-complete.target.requires/k3s.service") == "/usr/lib/systemd/system/k3s.service"
    assert os.readlink(units / "boot-complete.target.requires/health.service") == "/etc/systemd/system/health.service"
    wants = units / "basic.target.wants/bootkeeper-bless.service"
    assert os.readlink(wants) == "/etc/systemd/system/bootkeeper-bless.service"
    bless = (units / "bootkeeper-bless.service").read_text()
    for line in ("Requires=boot-complete.target", "DefaultDependencies=no", "ExecStart=/"):
        assert line in bless
    assert "bless good" in bless
    # always: FailureAction in the static drop-in; active: only from the generator; never: none
    assert "FailureAction=reboot" in settings((units / "watchdog.service.d/50-bootkeeper-assessment.conf").read_text())
    for name in ("k3s", "health"):
        s = settings((units / f"{name}.service.d/50-bootkeeper-assessment.conf").read_text())
        assert s == [
            "[Unit]",
            "After=default.target graphical.target multi-user.target",
            "Before=boot-complete.target",
            "[Install]",
            "RequiredBy=boot-complete.target",
        ]


def test_verify_reads_the_generator_output(tmp_path: Path) -> None:
    """The control: a misspelt key in the generator's drop-in is reported, so the pass above means it."""
    root = node(tmp_path / "root")
    boot_as(root, "active", counting=COUNTING)
    generate(root, tmp_path / "gen")
    p = tmp_path / "gen/normal/k3s.service.d/50-bootkeeper-failure-action.conf"
    p.write_text(p.read_text().replace("FailureAction=", "FailureActionn="))
    r = _verify(root, tmp_path / "gen", "k3s.service")
    assert "FailureActionn" in r.stderr


def test_enroll_list_remove_round_trip(tmp_path: Path) -> None:
    root = node(tmp_path / "root", "boot_assessment: {}\n")
    before = {str(p.relative_to(root)) for p in root.rglob("*")}
    r = bk("service", "enroll", "k3s", "--reboot-on-failure", "always", "--root", str(root))
    assert r.returncode == 0, r.stderr
    r = bk("service", "list", "--root", str(root), "--json")
    assert json.loads(r.stdout)["services"] == [
        {
            "name": "k3s.service",
            "reboot_on_failure": "always",
            "dropin": True,
            "linked": True,
            "unit_file": "/usr/lib/systemd/system/k3s.service",
        }
    ]
    # a new policy rewrites the drop-in: FailureAction gone from it, the generator takes over
    assert bk("service", "enroll", "k3s.service", "--reboot-on-failure", "active", "--root", str(root)).returncode == 0
    dropin = (root / UNITS / "k3s.service.d/50-bootkeeper-assessment.conf").read_text()
    assert "FailureAction" not in settings(dropin)
    assert json.loads((root / "etc/bootkeeper/services.json").read_text())["services"] == {"k3s.service": "active"}
    r = bk("service", "remove", "k3s", "--root", str(root))
    assert r.returncode == 0, r.stderr
    after = {str(p.relative_to(root)) for p in root.rglob("*")}
    # boot-complete.target.requires/ holds install-units' own links (good_when, sysext.required) already,
    # and etc/bootkeeper/ its sysext-submounts step where the node's systemd-sysext needs it
    left = {"etc/bootkeeper/services.json"} | ({"etc/bootkeeper"} - before)
    assert after - before == left
    assert json.loads((root / "etc/bootkeeper/services.json").read_text())["services"] == {}
    assert not [p for p in root.rglob(".bootkeeper-*")]


def test_half_enrolled_is_listed_and_healed(tmp_path: Path) -> None:
    root = node(tmp_path / "root", "boot_assessment: {}\n")
    assert bk("service", "enroll", "health", "--root", str(root)).returncode == 0
    (root / "etc/bootkeeper/services.json").write_text('{"version": 1, "services": {}}')  # crash before the record
    rows = json.loads(bk("service", "list", "--root", str(root), "--json").stdout)["services"]
    assert rows[0]["name"] == "health.service" and rows[0]["reboot_on_failure"] is None
    assert "no record" in bk("service", "list", "--root", str(root)).stdout
    assert bk("service", "enroll", "health", "--root", str(root)).returncode == 0
    rows = json.loads(bk("service", "list", "--root", str(root), "--json").stdout)["services"]
    assert rows[0]["reboot_on_failure"] == "never"


@pytest.mark.parametrize("name", ["../evil", "a/b.service", "", "x y.service", "k3s.service\n"])
def test_enroll_refuses_bad_names_and_writes_nothing(tmp_path: Path, name: str) -> None:
    root = node(tmp_path / "root", "boot_assessment: {}\n")
    before = {str(p.relative_to(root)) for p in root.rglob("*")}
    r = bk("service", "enroll", name, "--root", str(root))
    assert r.returncode == 2, r.stderr
    assert "is not a unit name" in r.stderr and len(r.stderr.strip().splitlines()) <= 2
    assert {str(p.relative_to(root)) for p in root.rglob("*")} == before


def test_enroll_with_nothing_to_do_is_a_usage_error(tmp_path: Path) -> None:
    root = node(tmp_path / "root", "boot_assessment: {}\n")
    r = bk("service", "enroll", "--root", str(root))
    assert r.returncode == 2 and "no service named" in r.stderr


def test_requires_link_is_the_one_systemctl_enable_makes(tmp_path: Path) -> None:
    """The real systemctl (--root, offline) enabling the unit with our drop-in's [Install] makes the
    same boot-complete.target.requires link that enroll makes."""
    systemctl = tool("systemctl")
    links = []
    for how in ("bootkeeper", "systemctl"):
        root = tmp_path / how
        (root / "usr/lib/systemd/system").mkdir(parents=True)
        (root / "usr/lib/systemd/system/k3s.service").write_text("[Service]\nExecStart=/bin/true\n")
        assert bk("service", "enroll", "k3s", "--root", str(root)).returncode == 0
        link = root / UNITS / "boot-complete.target.requires/k3s.service"
        if how == "systemctl":
            link.unlink()
            r = subprocess.run([systemctl, f"--root={root}", "enable", "k3s.service"], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
        links.append(os.readlink(link))
    assert links[0] == links[1] == "/usr/lib/systemd/system/k3s.service"


def test_rendered_cloud_config_files_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """The files 'cloud-config render' makes yip write, placed where yip would put them (the active
    step's too), and the units they touch, verified together."""
    import yaml

    root = node(tmp_path / "root", "boot_assessment: {}\n")
    r = bk("cloud-config", "render", "k3s", "health", "--reboot-on-failure", "active")
    assert r.returncode == 0, r.stderr
    written = []
    for step in yaml.safe_load(r.stdout)["stages"]["initramfs"]:
        for f in step.get("files", []):
            p = root / f["path"].lstrip("/")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f["content"])
            written.append(f["path"])
    assert "/run/systemd/system/k3s.service.d/50-bootkeeper-failure-action.conf" in written
    path = f"{root / UNITS}:{root / 'run/systemd/system'}:{root / 'usr/lib/systemd/system'}:"
    env = {**os.environ, "SYSTEMD_UNIT_PATH": path, "SYSTEMD_LOG_COLOR": "0"}
    analyze = tool("systemd-analyze")
    p = subprocess.run(
        [analyze, "verify", "--man=no", "k3s.service", "health.service"], capture_output=True, text=True, env=env
    )
    assert p.returncode == 0 and p.stderr == "", p.stderr
    # the control: the runtime drop-in is read
    dropin = root / "run/systemd/system/k3s.service.d/50-bootkeeper-failure-action.conf"
    dropin.write_text(dropin.read_text().replace("FailureAction=", "FailureActionn="))
    p = subprocess.run([analyze, "verify", "--man=no", "k3s.service"], capture_output=True, text=True, env=env)
    assert "FailureActionn" in p.stderr


def test_install_units_and_enroll_record_the_tries_the_generator_needs(tmp_path: Path) -> None:
    """With tries: 5, +0-5 is the last try (a reboot falls back) and +0-6 a boot with none left: the
    generator can only tell them apart if the record carries boot_assessment.tries."""
    root = node(tmp_path / "root", CONFIG.replace("boot_assessment:\n", "boot_assessment:\n  tries: 5\n", 1))
    assert json.loads((root / "etc/bootkeeper/services.json").read_text())["tries"] == 5
    boot_as(root, "active", counting=ENTRIES + "active+0-5.conf")
    files, log = generate(root, tmp_path / "gen")
    assert list(files) == ["normal/k3s.service.d/50-bootkeeper-failure-action.conf"], log
    boot_as(root, "active", counting=ENTRIES + "active+0-6.conf")
    assert generate(root, tmp_path / "gen")[0] == {}
    # service enroll records the config's tries too (here after the config changed to 2)
    (root / "oem/90.yaml").write_text("boot_assessment:\n  tries: 2\n")
    assert bk("service", "enroll", "health", "--root", str(root)).returncode == 0
    assert json.loads((root / "etc/bootkeeper/services.json").read_text())["tries"] == 2


def test_every_writer_of_a_reboot_always_drop_in_says_what_lint_will_call_it(tmp_path: Path) -> None:
    """service enroll, cloud-config render and install-units write FailureAction=reboot for every entry
    with reboot_on_failure: always, which lint reports as error BK103: each says so when it writes it
    (issue 15, item 6), and says nothing for 'active'."""
    always = "boot_assessment:\n  services:\n    - name: health.service\n      reboot_on_failure: always\n"
    root = node(tmp_path / "root", always)
    runs = {
        "enroll": bk("service", "enroll", "health", "--reboot-on-failure", "always", "--root", str(root)),
        "render": bk("cloud-config", "render", "--root", str(root)),
        "install-units": bk(
            "install-units",
            "--root",
            str(root),
            "--exe",
            tool("true"),
            "--python",
            sys.executable,
        ),
    }
    for verb, r in runs.items():
        assert r.returncode == 0, (verb, r.stderr)
        warned = [ln for ln in r.stderr.splitlines() if ln.startswith("bootkeeper: warning: health.service:")]
        assert len(warned) == 1 and "(lint: BK103)" in warned[0], (verb, r.stderr)
    from bootkeeper.assess.services import DROPIN

    lint = bk("lint", str(root / UNITS / "health.service.d" / DROPIN))
    assert "BK103" in lint.stdout + lint.stderr
    quiet = bk("service", "enroll", "health", "--reboot-on-failure", "active", "--root", str(root))
    assert quiet.returncode == 0 and "BK103" not in quiet.stderr


@pytest.mark.parametrize("name", ["k3s", "k3s.service", "foo.bar", "getty@tty1", "backup.timer", "a.b.socket"])
def test_every_writer_names_a_bare_unit_alike(name: str) -> None:
    """One rule adds ``.service`` to a bare name (generator.with_unit_suffix): enrolment, the
    cloud-config render, its reader for lint and the BK103 warning all give the same unit name
    (the warning used to keep ``foo.bar`` while enrolment wrote ``foo.bar.service``)."""
    from bootkeeper.assess import cloudconfig, services
    from bootkeeper.config import RebootOnFailure, ServiceSpec

    want = services.unit_name(name, "service")
    (warning,) = services.loop_warnings([ServiceSpec(name, RebootOnFailure.ALWAYS)])
    assert warning.startswith(f"{want}: ")
    rendered = cloudconfig.render([ServiceSpec(name, RebootOnFailure.NEVER)])
    assert f"          - {want}\n" in rendered
    assert cloudconfig.enabled_units(cloudconfig.load(rendered, "render")) == {want}


def test_cloud_config_writes_the_drop_in_the_generator_writes(tmp_path: Path) -> None:
    """The ``active`` drop-in has one text, whether bootkeeper-generator writes it at boot or a
    cloud-config step does."""
    import yaml

    from bootkeeper.assess import cloudconfig
    from bootkeeper.config import RebootOnFailure, ServiceSpec

    root = node(tmp_path / "root")
    boot_as(root, "active", counting=COUNTING)
    files, _ = generate(root, tmp_path / "gen")
    generated = files["normal/k3s.service.d/50-bootkeeper-failure-action.conf"]
    doc = yaml.safe_load(cloudconfig.render([ServiceSpec("k3s", RebootOnFailure.ACTIVE)]))
    written = {f["path"]: f["content"] for step in doc["stages"]["initramfs"] for f in step.get("files", [])}
    assert written["/run/systemd/system/k3s.service.d/50-bootkeeper-failure-action.conf"] == generated


@pytest.mark.parametrize("tries", [2, 3, 5])
@pytest.mark.parametrize(
    "counted",
    [
        "active+3.conf",
        "active+2-1.conf",
        "active+1-2.conf",
        "active+0-2.conf",
        "active+0-3.conf",
        "active+0-5.conf",
        "active+0-6.conf",
        "active+1-0.efi",
        "active+0-3.efi",
        "active+0-12.conf",
    ],
)
def test_cloud_config_condition_is_the_generators_rule(tmp_path: Path, counted: str, tries: int) -> None:
    """The cloud-config ``if:`` (cloudconfig.active_if, run by the real sh) restates
    generator.failure_reboots for yip, which cannot run Python: over every LoaderBootCountPath
    systemd-boot can set, it says reboot exactly when the generator does (without
    LoaderEntrySelected, the 252-only refinement it leaves out)."""
    from bootkeeper.assess import cloudconfig, generator
    from bootkeeper.esp.efivars import encode_string

    path = ENTRIES + counted if counted.endswith(".conf") else "\\EFI\\Linux\\" + counted
    var = tmp_path / "LoaderBootCountPath"
    var.write_bytes(encode_string(path))
    (tmp_path / "cos").mkdir()
    (tmp_path / "cos/active_mode").touch()
    cond = cloudconfig.active_if(tries).replace(cloudconfig.COUNT_PATH, str(var))
    cond = cond.replace("/run/cos/", f"{tmp_path}/cos/")
    sh = tool("sh")
    shell = subprocess.run([sh, "-c", cond], capture_output=True, text=True, check=False)
    assert shell.stderr == ""
    assert (shell.returncode == 0) is generator.failure_reboots(path, None, tries)[0], (path, tries)
    (tmp_path / "cos/active_mode").unlink()  # off active, never
    assert subprocess.run([sh, "-c", cond], capture_output=True, check=False).returncode != 0


@settings_(max_examples=3000, deadline=None)
@given(
    st.text(alphabet="activepsrynoe+-_.@ 0123456789CONFEFI", max_size=24)
    | st.sampled_from(["active+2.efi", "passive.conf", "active.efi@debug", "Statereset.efi", "recovery+0-3.conf"])
)
def test_generator_role_rule_is_entries_py(entry_id: str) -> None:
    """The generator restates Role.from_entry_id (it runs without bootkeeper importable): for every
    id systemd-boot can put in LoaderEntrySelected, both name the same role."""
    from bootkeeper.assess import generator
    from bootkeeper.esp.entries import Role

    want = Role.from_entry_id(entry_id)
    assert generator.role_from_entry(entry_id) == (want.value if want else None)
