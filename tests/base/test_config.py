"""The config's ``sysext`` block: defaults, merging in lexical order, and errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootkeeper import config
from bootkeeper.errors import ConfigError


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_are_enforced_with_signed_policy() -> None:
    c = config.load([])
    assert c.sysext.mode is config.SysextMode.ENFORCED
    assert c.sysext.policy == "root=signed+absent:usr=signed+absent"
    assert c.sysext.firmware == ("db",)
    assert c.warnings == ()


def test_design_example_parses(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "90_sysext.yaml",
        """
sysext:
  mode: permissive
  policy: "root=signed+absent:usr=signed+absent"
  certificates: ["-----BEGIN CERTIFICATE-----..."]
  entries:
    active: ["k3s-v1\\\\.30\\\\..*"]
    passive: ["k3s-v1\\\\.29\\\\..*"]
""",
    )
    c = config.load([p])
    assert c.sysext.mode is config.SysextMode.PERMISSIVE
    assert dict(c.sysext.entries).get("active") == (r"k3s-v1\.30\..*",)
    assert "recovery" not in dict(c.sysext.entries)
    assert c.sysext.certificates[0].where == f"{p}: sysext.certificates[0]"


def test_later_file_wins_per_key(tmp_path: Path) -> None:
    a = _write(tmp_path, "10.yaml", "sysext:\n  mode: disabled\n  refresh: true\n")
    b = _write(tmp_path, "20.yaml", "sysext:\n  mode: enforced\n")
    c = config.load(None, oem_dir=tmp_path)
    assert [Path(s).name for s in c.sources] == [a.name, b.name]
    assert c.sysext.mode is config.SysextMode.ENFORCED
    assert c.sysext.refresh is True


def _load(paths: list[Path] | None, oem: Path | None = None) -> tuple[config.Config, list[str]]:
    """As a verb loads it (cli/common.py): the config, and the policy checked by sysext/policy.py, whose
    grammar config.py does not know (issue 15, item 13: base never imports sysext)."""
    from bootkeeper.sysext import policy

    c = config.load(paths, oem_dir=oem) if oem is not None else config.load(paths)
    return c, [*c.warnings, *policy.check_config(c.sysext.policy, c.sysext.policy_where)[1]]


def test_seed_policy_gives_a_warning(tmp_path: Path) -> None:
    p = _write(tmp_path, "s.yaml", 'sysext:\n  policy: "root=verity+signed+absent:usr=verity+signed+absent"\n')
    _, warnings = _load([p])
    assert len(warnings) == 1
    assert "admits unsigned verity images" in warnings[0] and str(p) in warnings[0]


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        ("sysext:\n  mode: strict\n", "sysext.mode: 'strict' is not one of disabled, permissive, enforced"),
        ("sysext:\n  modes: enforced\n", "sysext.modes: unknown key"),
        ("sysext:\n  policy: 42\n", "sysext.policy: expected an image-policy string"),
        ("sysext:\n  policy: root=bogus\n", "unknown policy flag 'bogus'"),
        ("sysext:\n  certificates: 7\n", "sysext.certificates: expected a list of non-empty strings"),
        ("sysext:\n  entries: [active]\n", "sysext.entries: expected a mapping"),
        ("sysext:\n  entries:\n    active: ['k3s(']\n", "sysext.entries.active[0]: 'k3s(' is not a regular expression"),
        ("sysext:\n  entries:\n    ../x: ['a']\n", "sysext.entries.../x: not a boot entry name"),
        ("sysext:\n  sources: [relative/dir]\n", "sysext.sources: 'relative/dir' is not an absolute path"),
        ("sysext:\n  firmware: [MOK]\n", "sysext.firmware: 'MOK' is not one of db, KEK, PK"),
        ("sysext:\n  full_check: 'yes'\n", "sysext.full_check: 'yes' is not true or false"),
        ("sysext:\n  vendor: a/b\n", "sysext.vendor: 'a/b' is not a folder name"),
        ("sysext: [1]\n", "sysext: expected a mapping"),
    ],
)
def test_wrong_types_name_file_and_key(tmp_path: Path, body: str, expect: str) -> None:
    p = _write(tmp_path, "bad.yaml", body)
    with pytest.raises(ConfigError) as ei:
        _load([p])
    msg = str(ei.value)
    assert str(p) in msg
    assert expect in msg
    assert "\n" not in msg


def test_merged_warning_names_the_file_that_set_the_key(tmp_path: Path) -> None:
    a = _write(tmp_path, "10.yaml", "sysext:\n  policy: root=verity+signed+absent:usr=verity+signed+absent\n")
    b = _write(tmp_path, "20.yaml", "sysext:\n  mode: permissive\n")
    c, warnings = _load(None, tmp_path)
    assert c.sysext.mode is config.SysextMode.PERMISSIVE
    assert len(warnings) == 1
    assert str(a) in warnings[0] and str(b) not in warnings[0]


def test_require_valid_dates(tmp_path: Path) -> None:
    p = tmp_path / "a.yaml"
    p.write_text("sysext: {}\n")
    assert config.load([p]).sysext.require_valid_dates is False  # systemd's behaviour
    p.write_text("sysext:\n  require_valid_dates: true\n")
    assert config.load([p]).sysext.require_valid_dates is True
    p.write_text("sysext:\n  require_valid_dates: 'yes'\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: sysext\.require_valid_dates: 'yes' is not true or false$"):
        config.load([p])


@pytest.mark.parametrize("body", ["[" * 100_000, "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 3000))])
def test_deeply_nested_config_is_one_line(tmp_path: Path, body: str) -> None:
    """PyYAML recurses per nesting level: the config verb's answer is a ConfigError naming the file
    (exit 4 through the CLI), never a RecursionError; shown through the real CLI too."""
    import subprocess
    import sys

    p = tmp_path / "90.yaml"
    p.write_text(body)
    with pytest.raises(ConfigError) as err:
        config.load([p])
    assert str(err.value).startswith(str(p)) and "\n" not in str(err.value)
    r = subprocess.run(
        [sys.executable, "-m", "bootkeeper", "arm", "--esp", str(tmp_path), "--config", str(p)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 4 and "Traceback" not in r.stderr and str(p) in r.stderr, r.stderr


# --- the settings table (issue 15, item 15): bootkeeper.yaml(5) documents every key with its default ------


def _settings_page() -> list[tuple[str, str, str]]:
    """bootkeeper.yaml(5)'s SETTINGS: (key, default as written, meaning), in the page's order."""
    import re

    from manpage import BOOTKEEPER_YAML_5, items, section

    rows = []
    for tag, meaning in items(section(BOOTKEEPER_YAML_5, "SETTINGS")):
        m = re.fullmatch(r"([a-z_]+\.[a-z_]+) \(default: (.*)\)", tag)
        assert m is not None, tag
        rows.append((m.group(1), m.group(2), meaning))
    return rows


def test_the_man_page_documents_every_setting_with_its_default_and_help() -> None:
    """bootkeeper.yaml(5) has one entry per row of SETTINGS, in its order; each default, read as
    YAML and parsed by the setting's own parser, is the default; the meaning is the help text."""
    import yaml

    rows = _settings_page()
    assert [key for key, _, _ in rows] == [s.path for s in config.SETTINGS]
    for (key, default, meaning), s in zip(rows, config.SETTINGS, strict=True):
        assert s.parse(yaml.safe_load(default), f"bootkeeper.yaml(5): {key}") == s.default, key
        assert meaning == s.help, key


def test_every_field_of_a_section_is_a_setting() -> None:
    """The dataclasses the rest of bootkeeper reads and the table cannot drift: each field is a key
    (or where one was set), each key a field."""
    from dataclasses import fields, replace

    for name, cls in config.SECTIONS.items():
        keys = {s.key for s in config.SETTINGS if s.section == name}
        recorded = {s.where_field for s in config.SETTINGS if s.section == name and s.where_field}
        assert {f.name for f in fields(cls)} == keys | recorded, name
    loaded = config.load([])  # the table's defaults are the dataclasses' defaults
    assert loaded.boot_assessment == config.BootAssessment()
    assert loaded.sysext == replace(config.Sysext(), policy_where="<defaults>: sysext.policy")


def test_the_man_pages_example_config_loads(tmp_path: Path) -> None:
    from manpage import BOOTKEEPER_YAML_5, example

    c = config.load([_write(tmp_path, "90_example.yaml", example(BOOTKEEPER_YAML_5))])
    assert dict(c.sysext.entries).get("active") == (r"k3s-v1\.30\..*",)
    assert c.boot_assessment.services == (config.ServiceSpec("k3s.service", config.RebootOnFailure.ACTIVE),)


def test_unknown_key_lists_the_table_order(tmp_path: Path) -> None:
    """The message lists a section's keys from the table (boot_assessment's as it always did, sorted)."""
    p = _write(tmp_path, "a.yaml", "boot_assessment:\n  retries: 3\n")
    with pytest.raises(ConfigError, match=r"allowed: handbacks, rearm, recovery_tries, services, tries, good_when\)$"):
        config.load([p])
    p.write_text("sysext:\n  modes: enforced\n")
    with pytest.raises(ConfigError) as ei:
        config.load([p])
    allowed = (
        "mode, policy, certificates, entries, sources, firmware, verity_dirs, full_check, refresh, hierarchies, "
        "vendor, require_valid_dates, systemd_version, store, store_dir, timeout, required"
    )
    assert str(ei.value) == f"{p}: sysext.modes: unknown key (allowed: {allowed})"
