"""docs/design.md places every module of src/bootkeeper (issue 28 item 8): a module added without its
line in the design fails here, and so does a line naming a module that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "bootkeeper"
DESIGN = ROOT / "docs" / "design.md"


def _modules() -> set[str]:
    found = {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")}
    return found | {p.relative_to(SRC).as_posix() for p in (SRC / "data").iterdir() if p.is_file()}


def _placed() -> set[str]:
    """The first cell of each row of the module tables: `` `esp/counter.py` ``."""
    text = DESIGN.read_text()
    every = text[text.index("\n## Every module\n") : text.index("\n## An upgrade is a transaction\n")]
    return set(re.findall(r"^\| `([\w/.]+)` \|", every, re.MULTILINE))


def test_every_module_is_placed_in_the_design() -> None:
    assert sorted(_modules() - _placed()) == []


def test_the_design_places_no_module_that_is_gone() -> None:
    assert sorted(_placed() - _modules()) == []


def test_each_module_sits_under_its_layer() -> None:
    """A module's row is in the table of its layer (base: the modules directly under src/bootkeeper)."""
    text = DESIGN.read_text()
    tables = re.split(r"^### ", text[text.index("\n## Every module\n") : text.index("\n## An upgrade")], flags=re.M)[1:]
    for table in tables:
        layer = table.splitlines()[0].strip()
        for module in re.findall(r"^\| `([\w/.]+)` \|", table, re.MULTILINE):
            expected = module.split("/")[0] + "/" if "/" in module and module.split("/")[0] != "data" else "base"
            assert layer == expected, (module, layer)
