"""docs/operator-guide.md and docs/seed-audit.md promise only what tests prove: every
``tests/test_x.py::test_name`` they name is a test function of that file (read with ast, so a renamed or
deleted test fails here), and every section names at least one."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "operator-guide.md"
AUDIT = ROOT / "docs" / "seed-audit.md"
REF = re.compile(r"`(tests/(?:\w+/)?test_\w+\.py)::(test_\w+)`")


def _file(ref: str) -> Path | None:
    """The test file a doc names, at its path or by its name in the folder of tests/ it moved to."""
    if (ROOT / ref).is_file():
        return ROOT / ref
    found = sorted((ROOT / "tests").rglob(Path(ref).name))
    return found[0] if len(found) == 1 else None


def _tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


@pytest.mark.parametrize("doc", [GUIDE, AUDIT], ids=["operator-guide", "seed-audit"])
def test_every_test_the_guide_names_exists(doc: Path) -> None:
    refs = REF.findall(doc.read_text())
    assert len(refs) >= 20
    missing = [f"{f}::{t}" for f, t in refs if (p := _file(f)) is None or t not in _tests(p)]
    assert missing == []


def test_each_section_names_its_tests() -> None:
    sections = re.split(r"^## ", GUIDE.read_text(), flags=re.M)[1:]
    assert [s.splitlines()[0] for s in sections] == [
        "Signing keys for system extensions",
        "Releases: push, update, a failed update, repair",
        "The extension step's timeout",
        "Extension changes and the disk",
        "Names as they are shown",
    ]
    for s in sections:
        assert REF.search(s), s.splitlines()[0]


def test_the_seed_audit_names_each_wish_of_issue_26_with_a_test() -> None:
    sections = re.split(r"^## ", AUDIT.read_text(), flags=re.M)[1:]
    assert [s.split(".", 1)[0] for s in sections] == [str(n) for n in range(1, 10)]
    for s in sections:
        assert s.count("\n> ") >= 1, s.splitlines()[0]  # the seed's words
        assert REF.search(s), s.splitlines()[0]


def test_the_checker_sees_a_missing_test(tmp_path: Path) -> None:
    """The control: a name that is not a test function of the file is not found."""
    f = tmp_path / "test_x.py"
    f.write_text("def test_a() -> None:\n    pass\n\n\ndef helper() -> None:\n    pass\n")
    assert _tests(f) == {"test_a"}
