"""The man pages (man/bootkeeper.8, man/bootkeeper.yaml.5) are what the code says and what man shows:
each generated section is what scripts/manpages.py makes from the CLI's command tree, EXIT_CODES,
lint.RULES and config.SETTINGS today (so a new verb, option, code, rule or setting without its doc
fails here), and each page renders with no warning from groff or man."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from manpage import BOOTKEEPER_8, BOOTKEEPER_YAML_5, MAN, items, section

ROOT = Path(__file__).resolve().parents[2]
PAGES = [BOOTKEEPER_8, BOOTKEEPER_YAML_5]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("manpages", ROOT / "scripts" / "manpages.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_committed_page_is_what_the_code_generates(page: Path) -> None:
    gen = _generator()
    assert page.name in gen.PAGES
    text = page.read_text()
    assert text.count('.\\" BEGIN GENERATED ') >= 1
    assert gen.render(text) == text, f"{page.name} is out of date: run python scripts/manpages.py"


def test_the_generator_would_see_a_setting_without_its_doc(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: one more row in SETTINGS changes the generated page."""
    from bootkeeper import config

    gen = _generator()
    text = BOOTKEEPER_YAML_5.read_text()
    extra = config.SETTINGS[0]._replace(help="a setting nobody documented")
    monkeypatch.setattr(config, "SETTINGS", (*config.SETTINGS, extra))
    assert "a setting nobody documented" in gen.render(text)


def test_every_verb_and_option_of_the_cli_is_on_the_page() -> None:
    import click

    from bootkeeper.cli.main import VERBS, cli

    text = section(BOOTKEEPER_8, "COMMANDS")
    heads = [line.removeprefix(".SS ").replace("\\-", "-") for line in text.splitlines() if line.startswith(".SS ")]
    assert [h.split()[0] for h in heads] == [v for v in VERBS for h in heads if h.split()[0] == v]
    assert set(VERBS) == {h.split()[0] for h in heads}
    ctx = click.Context(cli, info_name="bootkeeper")
    for verb in VERBS:
        cmd = cli.get_command(ctx, verb)
        assert cmd is not None
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                assert p.opts[0].replace("-", "\\-") in text, (verb, p.opts[0])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_man_renders_the_page_without_warnings(page: Path) -> None:
    man, groff = shutil.which("man"), shutil.which("groff")
    if man is None or groff is None:
        pytest.fail("man or groff is missing; scripts/setup-test-deps.sh installs man-db and groff")
    g = subprocess.run([groff, "-man", "-ww", "-z", str(page)], capture_output=True, text=True, check=False)
    assert g.returncode == 0 and g.stderr == "", g.stderr
    env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"}
    r = subprocess.run([man, "-l", "--warnings=w", str(page)], capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert len(r.stdout.splitlines()) > 50


def test_the_exit_code_and_lint_lists_have_one_item_per_row() -> None:
    """The items the other tests read (tests/cli/test_exit_codes.py, tests/assess/test_lint.py) are there."""
    assert len(items(section(BOOTKEEPER_8, "EXIT STATUS"))) >= 9
    assert len(items(section(BOOTKEEPER_8, "LINT RULES"))) >= 20
    assert sorted(p.name for p in MAN.iterdir()) == sorted(p.name for p in PAGES)


def test_the_debian_package_is_built_with_the_man_pages() -> None:
    """What scripts/build-deb.sh copies into the build includes man/, debian/bootkeeper.manpages names
    each page (dh_installman puts them in usr/share/man/man8 and man5, dh_compress gzips them -9n), and
    the node tests' cached package is rebuilt when a page changes (tests/node/test_deb.py checks ``dpkg -c``)."""
    import nodevm

    script = (ROOT / "scripts" / "build-deb.sh").read_text()
    copied = next(line for line in script.splitlines() if line.startswith("tar -C") and " -cf - " in line)
    assert " man " in copied.split(" -cf - ")[1] + " "
    assert (ROOT / "debian" / "bootkeeper.manpages").read_text().split() == [str(p.relative_to(ROOT)) for p in PAGES]
    assert "man" in nodevm.DEB_SOURCES
