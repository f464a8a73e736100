"""bootkeeper lint: every finding has a file that triggers it and a fixed twin that does not; the
seed files' YAML blocks (tests/data/lint/seed*) are linted as they were published; the rendered
cloud-config lints clean; the role-condition evaluator is property-tested."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootkeeper.assess import lint
from bootkeeper.esp import scratch
from bootkeeper.esp.entries import Role
from helpers import bk, entry_body, esp_with, fake_efivars

DATA = Path(__file__).parents[1] / "data" / "lint"


def codes(*args: str) -> tuple[list[str], int, dict[str, Any]]:
    r = bk("lint", "--json", *args)
    assert "Traceback" not in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    return sorted(f["code"] for f in doc["findings"]), r.returncode, doc


@pytest.mark.parametrize(
    ("bad", "fixed", "expected"),
    [
        ("bk101-inverted.yaml", "bk101-fixed.yaml", ["BK101", "BK103"]),
        ("bk102-contradictory.yaml", "bk102-fixed.yaml", ["BK102", "BK102"]),
        ("bk103-loop.yaml", "bk103-fixed.yaml", ["BK103"]),
        ("bk104-not-enabled.yaml", "bk104-fixed.yaml", ["BK104"]),
        ("bk105-before-only.conf", "bk105-fixed.conf", ["BK105"]),
        ("bk106-persistent.yaml", "bk106-fixed.yaml", ["BK106"]),
        ("bk107-bk108-bless-override.conf", "bk107-bk108-fixed.conf", ["BK107", "BK108"]),
        ("bk109-cycle.service", "bk109-fixed.service", ["BK109"]),
    ],
)
def test_each_finding_and_its_fixed_twin(bad: str, fixed: str, expected: list[str]) -> None:
    found, rc, doc = codes(str(DATA / bad))
    assert found == expected
    errors = [f for f in doc["findings"] if isinstance(f, dict) and f["severity"] == "error"]
    assert rc == (1 if errors else 0)
    for f in doc["findings"]:
        assert isinstance(f, dict) and f["file"] == str(DATA / bad) and f["line"] and f["fix"]
    assert codes(str(DATA / fixed))[:2] == ([], 0)


def test_lines_point_at_the_fault() -> None:
    _, _, doc = codes(str(DATA / "bk101-inverted.yaml"))
    text = (DATA / "bk101-inverted.yaml").read_text().splitlines()
    by_code = {f["code"]: f for f in doc["findings"] if isinstance(f, dict)}
    assert "if:" in text[by_code["BK101"]["line"] - 1]
    assert "FailureAction=reboot" in text[by_code["BK103"]["line"] - 1]


def test_seed_active_only_example_is_flagged_as_inverted() -> None:
    """Seed 001's second example: '! -f active_mode' for the active case (and '! -f passive_mode')."""
    found, rc, doc = codes(str(DATA / "seed001-active-only.yaml"))
    assert found == ["BK101", "BK101", "BK102", "BK103", "BK106", "BK106"]
    assert rc == 1
    msgs = [f["message"] for f in doc["findings"] if isinstance(f, dict) and f["code"] == "BK101"]
    assert any("meant for active" in m and "false on active" in m for m in msgs)
    assert any("meant for passive" in m for m in msgs)
    loop = next(f for f in doc["findings"] if isinstance(f, dict) and f["code"] == "BK103")
    assert "passive, recovery, statereset" in str(loop["message"])


def test_seed_every_entry_example_is_a_boot_loop() -> None:
    assert codes(str(DATA / "seed001-every-entry.yaml"))[:2] == (["BK103"], 1)


@pytest.mark.parametrize("name", ["seed000-every-entry.yaml", "seed000-active-only.yaml"])
def test_seed_000_blocks_lost_their_indentation(name: str) -> None:
    """The same page, flattened: not YAML any more; one finding with the line, no traceback."""
    found, rc, doc = codes(str(DATA / name))
    assert (found, rc) == (["BK100"], 1)
    f = doc["findings"][0]
    assert "not valid YAML" in f["message"] and f["line"] > 1


def test_seed_002_and_003_blocks() -> None:
    assert codes(str(DATA / "seed002-bless-override.conf"))[:2] == (["BK107", "BK108"], 0)
    assert codes(str(DATA / "seed003-extensions-by-entry.yaml"))[:2] == ([], 0)
    found, rc, _ = codes(str(DATA / "seed003-extensions-by-image.yaml"))  # an unclosed quote
    assert (found, rc) == (["BK100"], 1)


@pytest.mark.parametrize("policy", ["never", "active", "always"])
def test_rendered_cloud_config_lints_clean_except_always(tmp_path: Path, policy: str) -> None:
    r = bk("cloud-config", "render", "k3s", "health.service", "--reboot-on-failure", policy)
    assert r.returncode == 0, r.stderr
    (tmp_path / "cc.yaml").write_text(r.stdout)
    found, _, _ = codes(str(tmp_path / "cc.yaml"))
    assert found == (["BK103", "BK103"] if policy == "always" else [])


def test_rendered_cloud_config_structure(tmp_path: Path) -> None:
    import yaml

    r = bk("cloud-config", "render", "k3s", "--reboot-on-failure", "active")
    doc = yaml.safe_load(r.stdout)
    assert r.stdout.startswith("#cloud-config\n")
    steps = doc["stages"]["initramfs"]
    assert "if" not in steps[0]
    assert steps[1]["if"].startswith(
        '[ -f "/run/cos/active_mode" ] && [ -e "/sys/firmware/efi/efivars/LoaderBootCountPath-'
    )
    assert steps[1]["files"][0]["path"] == "/run/systemd/system/k3s.service.d/50-bootkeeper-failure-action.conf"
    assert "FailureAction=reboot" in steps[1]["files"][0]["content"]
    assert "FailureAction" not in "".join(
        ln for ln in steps[0]["files"][0]["content"].splitlines() if not ln.startswith("#")
    )
    assert steps[0]["files"][0]["permissions"] == 0o644
    assert steps[-1]["systemctl"]["enabled"] == ["k3s.service"]
    # the same drop-in text that 'service enroll' writes
    root = tmp_path / "root"
    assert bk("service", "enroll", "k3s", "--reboot-on-failure", "active", "--root", str(root)).returncode == 0
    enrolled = (root / "etc/systemd/system/k3s.service.d/50-bootkeeper-assessment.conf").read_text()
    assert steps[0]["files"][0]["content"] == enrolled


def test_render_refuses_bad_names() -> None:
    r = bk("cloud-config", "render", "k3s; reboot")
    assert r.returncode == 2 and "is not a unit name" in r.stderr


def _esp(tmp_path: Path, entries: dict[str, str], loader: str = "timeout 0\n") -> Path:
    return esp_with(tmp_path / "esp", entries, loader)


GOOD = {
    "active+3.conf": entry_body("active"),
    "passive+3.conf": entry_body("passive"),
    "recovery+3.conf": entry_body("recovery"),
    "statereset+3.conf": entry_body("statereset"),
}


def esp_codes(esp: Path, *extra: str) -> list[str]:
    return codes("--esp", str(esp), "--systemd-boot-version", "257", *extra)[0]


def test_esp_clean(tmp_path: Path) -> None:
    assert esp_codes(_esp(tmp_path, GOOD)) == []


@pytest.mark.parametrize("version", ["252", "257", "262"])
def test_esp_efi_key(tmp_path: Path, version: str) -> None:
    """An 'efi' role entry is a finding only where 'efi' is not counted (258+, 729f3c21c5); the
    fix then says what arm does, and the fixed twin ('linux', counted everywhere) is clean."""
    bad = {**GOOD, "active+3.conf": "title active\nsort-key 1-active\nefi /EFI/kairos/vmlinuz\n"}
    found, rc, doc = codes("--esp", str(_esp(tmp_path / "bad", bad)), "--systemd-boot-version", version)
    if version == "262":
        assert (found, rc) == (["BK201"], 1)
        f = doc["findings"][0]
        assert f["severity"] == "error"
        assert f["message"] == (
            "active entry uses the 'efi' key: systemd-boot 262 does not count 'efi' entries (729f3c21c5), but "
            "/EFI/kairos/vmlinuz is not a UKI (not a PE file), so a bad active is booted again and again and never "
            "falls back"
        )
        assert f["fix"] == "boot the kernel with 'linux' (and 'initrd') lines, which every systemd-boot counts"
    else:
        assert (found, rc) == ([], 0)
    fixed = {**GOOD, "active+3.conf": "title active\nsort-key 1-active\nlinux /EFI/kairos/vmlinuz\n"}
    assert codes("--esp", str(_esp(tmp_path / "fixed", fixed)), "--systemd-boot-version", version)[:2] == ([], 0)


def _kairos(tmp_path: Path, version: int | None, **kw: Any) -> Path:
    from test_chain import kairos_esp

    return kairos_esp(tmp_path / "esp", version, **kw)


def _esp_findings(esp: Path, *extra: str) -> list[dict[str, Any]]:
    r = bk("lint", "--json", "--esp", str(esp), *extra)
    assert "Traceback" not in r.stderr, r.stderr
    found: list[dict[str, Any]] = json.loads(r.stdout)["findings"]
    return found


@pytest.mark.parametrize("version", [252, 257, 262])
def test_esp_kairos_efi_layout_per_version(tmp_path: Path, version: int) -> None:
    """Kairos's 'efi /EFI/kairos/<role>.efi' (UKIs), with the real systemd-boot on the ESP: fine on
    252 and 257, BK201 on 262 with the fix arm carries out; after arm, clean."""
    esp = _kairos(tmp_path, version)
    found = _esp_findings(esp)
    if version == 262:
        assert [(f["code"], f["severity"]) for f in found] == [("BK201", "error")] * 4
        assert found[0]["file"] == f"{esp}/loader/entries/active+3.conf"
        assert found[0]["message"] == (
            "active entry uses the 'efi' key: systemd-boot 262.1-1 does not count 'efi' entries (729f3c21c5), so a "
            "bad active is booted again and again and never falls back"
        )
        assert found[0]["fix"] == "bootkeeper arm converts it to 'uki' (systemd-boot 262.1-1 knows it)"
        assert bk("arm", "--esp", str(esp), "--root", f"{esp}.noroot").returncode == 0
    assert _esp_findings(esp) == []


@pytest.mark.parametrize("version", [252, 257, 262])
def test_esp_uki_key_per_version(tmp_path: Path, version: int) -> None:
    """'uki' before 258 (e2a3d56218): systemd-boot drops the entry (booted on 252.39, 257.13), BK207;
    counted by 262, no finding. The fix names 'efi', and arm's conversion leaves a clean ESP."""
    esp = _kairos(tmp_path, version, key="uki")
    found = _esp_findings(esp)
    if version == 262:
        assert found == []
        return
    # every entry is dropped: no recovery, no statereset either (BK205)
    assert [(f["code"], f["severity"]) for f in found] == [("BK207", "error")] * 4 + [("BK205", "warning")] * 2
    sd = {252: "252.39-1~deb12u2", 257: "257.13-1~deb13u1"}[version]
    assert found[0]["message"] == (
        f"active entry uses the 'uki' key: systemd-boot {sd} does not know 'uki' (added in 258, e2a3d56218): "
        "the entry is dropped and never boots"
    )
    assert found[0]["fix"] == "use 'efi' (counted by this version); bootkeeper arm converts it"
    assert bk("arm", "--esp", str(esp), "--root", f"{esp}.noroot").returncode == 0
    assert _esp_findings(esp) == []


def test_esp_read_only_counted_entry(tmp_path: Path) -> None:
    """BK208: a counted role entry with the FAT read-only attribute (vfat: no write bits) is never
    renamed by any systemd-boot; a read-only entry without a counter is not a finding."""
    import os

    esp = _esp(tmp_path / "bad", GOOD)
    os.chmod(esp / "loader/entries/passive+3.conf", 0o444)
    found = _esp_findings(esp, "--systemd-boot-version", "262")
    assert [(f["code"], f["severity"], f["file"]) for f in found] == [
        ("BK208", "error", f"{esp}/loader/entries/passive+3.conf")
    ]
    assert found[0]["message"] == (
        "passive entry has the read-only attribute: systemd-boot never renames it (booted on 252.39, 257.13 and "
        "262.1), so its tries never run down and a bad passive never falls back"
    )
    assert found[0]["fix"] == "bootkeeper arm clears the attribute (or mattrib -r / chmod u+w)"
    blessed = _esp(
        tmp_path / "blessed",
        {**{k: v for k, v in GOOD.items() if "passive" not in k}, "passive.conf": GOOD["passive+3.conf"]},
    )
    os.chmod(blessed / "loader/entries/passive.conf", 0o444)
    assert esp_codes(blessed) == []
    assert bk("arm", "--esp", str(esp), "--root", f"{esp}.noroot").returncode == 0
    assert esp_codes(esp) == []


@pytest.mark.parametrize("version", [252, 257])
def test_esp_no_finding_suggests_uki_before_258(tmp_path: Path, version: int) -> None:
    """Every key a role entry can have, a read-only one and a missing sort key, on 252 and 257:
    no fix names 'uki', which these versions do not know (an entry with it is dropped)."""
    import os

    esp = _kairos(tmp_path, version)
    entries = esp / "loader/entries"
    (entries / "passive+3.conf").write_text((entries / "passive+3.conf").read_text().replace("efi /", "uki /"))
    (entries / "recovery+3.conf").write_text("title r\nefi /EFI/kairos/vmlinuz\n")  # no UKI, no sort key
    os.chmod(entries / "statereset+3.conf", 0o444)
    found = _esp_findings(esp)
    assert sorted(f["code"] for f in found) == ["BK204", "BK207", "BK208"]
    for f in found:
        assert "uki" not in f["fix"].lower(), f


def test_esp_key_on_an_assumed_version(tmp_path: Path) -> None:
    """No systemd-boot binary: lint says the version is assumed and names --systemd-boot-version."""
    found = _esp_findings(_kairos(tmp_path, None))
    assert [(f["code"], f["severity"]) for f in found] == [("BK201", "warning")] * 4
    assert (
        "257.13 is only assumed" in found[0]["message"] and "no systemd-boot binary on the ESP" in found[0]["message"]
    )
    assert "--systemd-boot-version" in found[0]["fix"]


def test_esp_key_with_two_binaries_that_disagree(tmp_path: Path) -> None:
    found = _esp_findings(_kairos(tmp_path, 257, systemd_dir=262))
    assert [(f["code"], f["severity"]) for f in found] == [("BK201", "error")] * 4
    assert "EFI/systemd/systemd-bootx64.efi is systemd-boot 262.1-1" in found[0]["message"]
    assert "EFI/BOOT/BOOTX64.EFI is 257.13-1~deb13u1" in found[0]["message"]
    assert "bootctl update" in found[0]["fix"] and "uki" not in found[0]["fix"]


def test_esp_default_that_pins_a_bad_entry(tmp_path: Path) -> None:
    esp = _esp(tmp_path / "bad", GOOD, "timeout 0\ndefault active.conf\n")
    assert esp_codes(esp) == ["BK202"]
    assert esp_codes(_esp(tmp_path / "glob", GOOD, "timeout 0\ndefault active*\n")) == ["BK202"]
    assert esp_codes(_esp(tmp_path / "fixed", GOOD, "timeout 0\ndefault @saved\n")) == []
    efivars = fake_efivars(tmp_path / "efivars", LoaderEntryDefault="passive.conf")
    assert esp_codes(_esp(tmp_path / "var", GOOD), "--efivars", str(efivars)) == ["BK202"]


def test_esp_counted_and_uncounted_twins(tmp_path: Path) -> None:
    esp = _esp(tmp_path / "bad", {**GOOD, "active.conf": entry_body("active")})
    assert esp_codes(esp) == ["BK203"]


def test_esp_without_sort_keys(tmp_path: Path) -> None:
    bad = {k: entry_body(k.split("+")[0], sort_key=False) for k in GOOD}
    assert esp_codes(_esp(tmp_path / "bad", bad)) == ["BK204"]


def test_esp_without_recovery_or_statereset(tmp_path: Path) -> None:
    esp = _esp(tmp_path / "bad", {"active+3.conf": entry_body("active"), "passive+3.conf": entry_body("passive")})
    assert esp_codes(esp) == ["BK205", "BK205"]
    assert esp_codes(_esp(tmp_path / "one", {k: v for k, v in GOOD.items() if "statereset" not in k})) == ["BK205"]


def test_unreadable_and_binary_input(tmp_path: Path) -> None:
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00stages:")
    found, rc, _ = codes(str(tmp_path / "bin.yaml"))
    assert (found, rc) == (["BK100"], 1)
    r = bk("lint", str(tmp_path / "missing.yaml"))
    assert r.returncode == 7 and "missing.yaml: cannot read" in r.stderr


MODE = st.sampled_from([r.value for r in Role] + ["other"])
TERM = st.builds(
    lambda neg, op, mode, test: (
        f"test {'! ' if neg else ''}{op} /run/cos/{mode}_mode"
        if test
        else f'[ {"! " if neg else ""}{op} "/run/cos/{mode}_mode" ]'
    ),
    st.booleans(),
    st.sampled_from(["-f", "-e"]),
    MODE,
    st.booleans(),
)


@settings(deadline=None)  # each example runs sh four times: a loaded machine missed the 200 ms deadline
@given(st.lists(TERM, min_size=1, max_size=4), st.lists(st.sampled_from(["&&", "||"]), min_size=3, max_size=3))
def test_condition_evaluation_matches_the_shell(terms: list[str], ops: list[str]) -> None:
    """Mode-file conditions are evaluated exactly like sh would (left to right, && and || equal)."""
    cond = terms[0] + "".join(f" {op} {t}" for op, t in zip(ops, terms[1:], strict=False))
    for role in Role:
        value, _ = lint.evaluate(cond, role)
        assert value is not None
        expected = _shell(cond, role)
        assert value == expected, (cond, role)


def _shell(cond: str, role: Role) -> bool:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "run/cos").mkdir(parents=True)
        (Path(d) / f"run/cos/{role.value}_mode").touch()
        script = cond.replace("/run/cos/", f"{d}/run/cos/")
        return subprocess.run(["sh", "-c", script], check=False).returncode == 0


@given(st.text(max_size=60))
def test_condition_evaluation_never_raises(cond: str) -> None:
    for role in Role:
        value, _ = lint.evaluate(cond, role)
        assert value in (True, False, None)


COUNT_CASES = ["active+2-1.conf", "active+1-2.conf", "active+0-3.conf", "active+0-4.conf", "active+0-9.efi"]


@pytest.mark.parametrize("tries", [2, 3])
@pytest.mark.parametrize("booted", COUNT_CASES)
def test_rendered_active_condition_is_the_generators_rule(tmp_path: Path, booted: str, tries: int) -> None:
    """The rendered if: run by the real sh on a real efivarfs-format file (4 attribute bytes, UTF-16LE,
    NUL): it writes FailureAction exactly when generator.failure_reboots() would (no reboot loop on
    an entry booted with no tries left)."""
    import subprocess

    import yaml

    from bootkeeper.assess import cloudconfig, generator

    cfg = tmp_path / "oem/90.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(f"boot_assessment:\n  tries: {tries}\n")
    r = bk("cloud-config", "render", "k3s", "--reboot-on-failure", "active", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    cond = yaml.safe_load(r.stdout)["stages"]["initramfs"][1]["if"]
    var = tmp_path / "LoaderBootCountPath"
    value = "\\loader\\entries\\" + booted
    var.write_bytes(b"\x06\0\0\0" + (value + "\0").encode("utf-16-le"))
    mode = tmp_path / "active_mode"
    mode.touch()
    cond = cond.replace(cloudconfig.COUNT_PATH, str(var)).replace("/run/cos/active_mode", str(mode))
    ran = subprocess.run(["sh", "-c", cond], check=False).returncode == 0
    assert ran == generator.failure_reboots(value, None, tries)[0]
    var.unlink()  # not counting: never
    assert subprocess.run(["sh", "-c", cond], check=False).returncode != 0


# --- BK209: the menu order of Type #2 UKIs --------------------------------------------------------

ROLE_NAMES = ("active", "passive", "recovery", "statereset")


def _type2_esp(root: Path, osrel: dict[str, str], counters: dict[str, str] | None = None) -> Path:
    """EFI/Linux/<role>+3.efi stand-in UKIs with the given .osrel per role (no Type #1 entries)."""
    (root / "EFI/Linux").mkdir(parents=True)
    (root / "loader").mkdir()
    (root / "loader/loader.conf").write_text("timeout 0\n")
    for role, text in osrel.items():
        name = f"{role}{(counters or {}).get(role, '+3')}.efi"
        (root / "EFI/Linux" / name).write_bytes(scratch.stand_in_uki(((b".osrel", text.encode()),)))
    return root


SAME = {r: "ID=kairos\nVERSION_ID=2\n" for r in ROLE_NAMES}
BY_IMAGE_ID = {r: f"ID=kairos\nIMAGE_ID=kairos-{i + 1}-{r}\nVERSION_ID=2\n" for i, r in enumerate(ROLE_NAMES)}
BY_VERSION = {r: f"ID=kairos\nIMAGE_VERSION={4 - i}\n" for i, r in enumerate(ROLE_NAMES)}


@pytest.mark.parametrize(
    ("osrel", "counters", "bk209"),
    [
        (SAME, None, True),  # one sort key, one version: the file names decide, last first
        ({**SAME, "active": "ID=kairos\nVERSION_ID=1\n"}, None, True),  # the issue: old active kept a newer version
        ({**BY_VERSION, "passive": "ID=kairos\nIMAGE_VERSION=5\n"}, None, True),
        (BY_IMAGE_ID, None, False),
        (BY_VERSION, None, False),
        (SAME, {"active": "+3", "passive": "+0-3", "recovery": "+0-3", "statereset": "+0-3"}, False),  # bad: last
        (BY_IMAGE_ID, {"passive": "+0-3"}, False),
    ],
)
def test_esp_type2_menu_order_is_not_the_role_order(
    tmp_path: Path, osrel: dict[str, str], counters: dict[str, str] | None, bk209: bool
) -> None:
    """BK209 per layout: the UKIs' .osrel decides their order, and bootkeeper cannot rewrite it.
    Before: lint --esp reported none of these (only arm warned)."""
    esp = _type2_esp(tmp_path / "esp", osrel, counters)
    found, rc, doc = codes("--esp", str(esp), "--systemd-boot-version", "257")
    assert found == (["BK209"] if bk209 else []) and rc == (1 if bk209 else 0)
    if bk209:
        f = doc["findings"][0]
        assert f["severity"] == "error" and f["file"] == f"{esp}/EFI/Linux"
        assert "IMAGE_ID, else ID" in f["message"] and "IMAGE_VERSION, else VERSION, VERSION_ID" in f["message"]
        assert f["fix"].startswith("bootkeeper cannot rewrite a UKI's .osrel: build the UKIs so that it orders them")
        assert "Type #1 entries with sort-key" in f["fix"]


def test_esp_type2_order_names_the_ukis_and_their_keys(tmp_path: Path) -> None:
    esp = _type2_esp(tmp_path / "esp", {**SAME, "active": "ID=kairos\nVERSION_ID=1\n"})
    _, _, doc = codes("--esp", str(esp), "--systemd-boot-version", "257")
    msg = doc["findings"][0]["message"]
    assert msg.startswith(
        "the UKIs boot in the order statereset+3.efi → recovery+3.efi → passive+3.efi → active+3.efi, not the role "
        "order: statereset+3.efi boots before recovery+3.efi."
    )
    assert msg.endswith(
        "statereset+3.efi: sort key 'kairos', version '2'; recovery+3.efi: sort key 'kairos', version '2'; "
        "passive+3.efi: sort key 'kairos', version '2'; active+3.efi: sort key 'kairos', version '1'"
    )


def test_esp_type1_uki_layout_has_no_type2_order_finding(tmp_path: Path) -> None:
    """Kairos's UKIs in EFI/kairos/, booted from Type #1 entries with sort keys: their .osrel
    (one ID, one VERSION_ID) orders nothing."""
    esp = scratch.make(tmp_path / "esp", ukis=True)
    assert "BK209" not in esp_codes(esp)


def test_lint_dash_reads_standard_input() -> None:
    """issue 15, item 10: `lint -` as systemd's tools read '-' (a cloud-config piped in)."""
    import subprocess

    text = (
        "stages:\n  boot:\n    - files:\n        - path: /etc/systemd/system/k3s.service.d/x.conf\n"
        "          content: |\n            [Unit]\n            FailureAction=reboot\n"
    )
    p = subprocess.run([sys.executable, "-m", "bootkeeper", "lint", "-"], input=text, capture_output=True,
                       text=True, check=False)  # fmt: skip
    assert p.returncode == 1, p.stderr
    assert p.stdout.startswith("<stdin>:7: error BK103: k3s.service: FailureAction=reboot"), p.stdout


# --- the table of rules (issue 15, item 15): each code has one function, the docs document each -------

SERVICES_GUIDE = Path(__file__).parents[2] / "docs" / "services.md"


def _man_codes() -> dict[str, str]:
    """bootkeeper(8)'s LINT RULES: code -> severity as written ('error', 'warning', 'error/warning')."""
    import re

    from manpage import BOOTKEEPER_8, items, section

    rows = [re.fullmatch(r"(BK\d{3}) \(([a-z/]+)\)", tag) for tag, _ in items(section(BOOTKEEPER_8, "LINT RULES"))]
    assert all(rows), "an item of LINT RULES is not 'BKnnn (severity)'"
    codes = [(m.group(1), m.group(2)) for m in rows if m]
    assert len(codes) == len({code for code, _ in codes}), "a code documented twice"
    return dict(codes)


def _guide_codes() -> dict[str, str]:
    """docs/services.md's table of lint codes: code -> severity as written."""
    import re

    rows = re.findall(r"^\| (BK\d{3}) \| ([a-z/]+) \|", SERVICES_GUIDE.read_text(), re.MULTILINE)
    assert len(rows) == len({code for code, _ in rows}), "a code documented twice"
    return dict(rows)


def _node_codes() -> set[str]:
    """The codes of the node's systemd-sysext setup, which sysext/conf.py reports (not in the table)."""
    import re

    from bootkeeper.sysext import conf

    return set(re.findall(r'"(BK3\d\d)"', Path(conf.__file__).read_text()))


@pytest.mark.parametrize("documented", [_man_codes, _guide_codes], ids=["bootkeeper.8", "services.md"])
def test_the_docs_document_every_rule_of_the_table_with_its_severity(documented: Callable[[], dict[str, str]]) -> None:
    codes = documented()
    table = {r.code: "/".join(s.value for s in r.severities) for r in lint.RULES}
    assert len(table) == len(lint.RULES), "a code registered twice"
    assert {c: codes.get(c) for c in table} == table
    node = _node_codes()
    assert node and not node & set(table)
    assert set(codes) == set(table) | node, "the docs document a code nothing reports"


def _text_hazard(text: str, name: str = "x.yaml") -> Callable[[Path], list[dict[str, Any]]]:
    return lambda _: [f.as_json() for f in lint.lint_text(text, name)]


def _esp_hazard(make: Callable[[Path], Path], version: str = "257") -> Callable[[Path], list[dict[str, Any]]]:
    return lambda tmp: codes("--esp", str(make(tmp)), "--systemd-boot-version", version)[2]["findings"]


def _read_only_passive(tmp: Path) -> Path:
    import os

    esp = _esp(tmp, GOOD)
    os.chmod(esp / "loader/entries/passive+3.conf", 0o444)
    return esp


def _with_temporary(tmp: Path) -> Path:
    esp = _esp(tmp, GOOD)
    (esp / "loader/entries/.bootkeeper-0a1b2c3d4e5f.tmp").write_bytes(b"x" * 93)
    return esp


def _step(name: str, cond: str | None, path: str, content: str) -> str:
    body = "".join(f"            {ln}\n" for ln in content.splitlines())
    cond_line = f"      if: '{cond}'\n" if cond else ""
    return (
        f"stages:\n  boot:\n    - name: {name}\n{cond_line}      files:\n        - path: {path}\n"
        f"          content: |\n{body}"
    )


ACTIVE = '[ -f "/run/cos/active_mode" ]'
HAZARDS: dict[str, Callable[[Path], list[dict[str, Any]]]] = {
    "BK100": _text_hazard("stages:\n  boot: [\n"),
    "BK101": _text_hazard(_step("active only", '[ ! -f "/run/cos/active_mode" ]', "/run/motd", "hi")),
    "BK102": _text_hazard(_step("x", f'{ACTIVE} && [ -f "/run/cos/passive_mode" ]', "/run/motd", "hi")),
    "BK103": _text_hazard("[Unit]\nFailureAction=reboot\n", "x.conf"),
    "BK104": _text_hazard(
        _step("x", None, "/run/systemd/system/h.service", "[Install]\nRequiredBy=boot-complete.target")
    ),
    "BK105": _text_hazard("[Unit]\nBefore=boot-complete.target\n", "x.conf"),
    "BK106": _text_hazard(_step("x", ACTIVE, "/etc/systemd/system/h.service.d/x.conf", "[Unit]\nDescription=x")),
    "BK107": _text_hazard("[Service]\nExecStart=sed -i s/a/b/ /efi/loader/loader.conf\n", "x.conf"),
    "BK108": _text_hazard("[Service]\nExecStartPost=mount -o remount,ro /efi\n", "x.conf"),
    "BK109": _text_hazard("[Unit]\nAfter=boot-complete.target\n[Install]\nWantedBy=multi-user.target\n", "x.service"),
    "BK201": _esp_hazard(
        lambda tmp: _esp(tmp, {**GOOD, "active+3.conf": "title a\nsort-key 1-active\nefi /EFI/kairos/vmlinuz\n"}),
        "262",
    ),
    "BK202": _esp_hazard(lambda tmp: _esp(tmp, GOOD, "timeout 0\ndefault active.conf\n")),
    "BK203": _esp_hazard(lambda tmp: _esp(tmp, {**GOOD, "active.conf": entry_body("active")})),
    "BK204": _esp_hazard(lambda tmp: _esp(tmp, {k: entry_body(k.split("+")[0], sort_key=False) for k in GOOD})),
    "BK205": _esp_hazard(lambda tmp: _esp(tmp, {k: v for k, v in GOOD.items() if "statereset" not in k})),
    "BK206": _esp_hazard(_with_temporary),
    "BK207": _esp_hazard(
        lambda tmp: _esp(tmp, {**GOOD, "passive+3.conf": "title p\nsort-key 2-passive\nuki /EFI/kairos/p.efi\n"})
    ),
    "BK208": _esp_hazard(_read_only_passive),
    "BK209": _esp_hazard(lambda tmp: _type2_esp(tmp / "esp", SAME)),
}


@pytest.mark.parametrize("rule", lint.RULES, ids=lambda r: r.code)
def test_each_rule_of_the_table_is_reached_by_its_hazard(tmp_path: Path, rule: lint.Rule[Any]) -> None:
    """One input per code (a code without one fails here): exactly that code fires, with a severity
    the table declares."""
    found = HAZARDS[rule.code](tmp_path)
    assert {f["code"] for f in found} == {rule.code}, found
    assert all(f["severity"] in rule.severities for f in found), found
