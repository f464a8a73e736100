"""Comments and docstrings in src/ cite what a reader has: a section of docs/ or of the man pages, never
an issue number, a seed or a file that is gone (DESIGN.md, README's old tables). Each doc file, section
and man page section cited must exist."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "bootkeeper"
DOCS = ROOT / "docs"
MAN = {"bootkeeper(8)": ROOT / "man" / "bootkeeper.8", "bootkeeper.yaml(5)": ROOT / "man" / "bootkeeper.yaml.5"}

# what a reader of the repository cannot look up: the story is in a doc section now
STALE = re.compile(r"\bissues? \d+|\bseeds? 00\d|\bDESIGN\.md\b|\bREADME\b")
# a comment that names README itself (the file, not a table or section in it): none in src/ today
NAMES_README: frozenset[str] = frozenset()
# docs/x.md, "Section" (a heading or a paragraph's bold lead; the quoted words begin it)
# (systemd's docs/ENVIRONMENT.md is systemd's, not ours)
OURS = r"(?<!systemd's )(?<![\w/.-])docs/"
DOC_SECTION = re.compile(OURS + r"([\w.-]+\.md)(?:'s)?,\s+\"([^\"]+)\"")
DOC_PATH = re.compile(OURS + r"([\w.-]+\.md)")
# bootkeeper(8)'s EXIT STATUS, bootkeeper.yaml(5), SETTINGS
MAN_SECTION = re.compile(r"(bootkeeper(?:\.yaml)?\([58]\))(?:'s|,)\s+([A-Z]{2,}(?:\s[A-Z]{2,})*)\b")


def _comments_and_docstrings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of each comment block (consecutive comment lines joined) and each docstring."""
    text = path.read_text()
    if path.suffix != ".py":  # data files (alerts.yml): their comment lines
        lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
        return _blocks([(n, line[1:]) for n, line in lines if line.startswith("#")])
    comments = [
        (tok.start[0], tok.string[1:])
        for tok in tokenize.generate_tokens(io.StringIO(text).readline)
        if tok.type == tokenize.COMMENT
    ]
    out = _blocks(comments)
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                out.append((node.body[0].lineno, doc))
    return out


def _blocks(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Consecutive lines as one text, so that a citation wrapped over two lines reads as one."""
    out: list[tuple[int, str]] = []
    last = -2
    for n, text in lines:
        if n == last + 1 and out:
            out[-1] = (out[-1][0], out[-1][1] + "\n" + text)
        else:
            out.append((n, text))
        last = n
    return out


def _normal(text: str) -> str:
    return " ".join(text.replace("*", "").replace('"', "'").split())


def _sections(doc: Path) -> list[str]:
    """The headings and the bold paragraph leads of a doc, normalized."""
    text = doc.read_text()
    heads = re.findall(r"^#+ (.+)$", text, re.M)
    leads = re.findall(r"^\*\*(.+?)\*\*", text, re.M)
    return [_normal(s) for s in heads + leads]


def _man_sections(page: Path) -> set[str]:
    return {_normal(s.replace("\\-", "-").strip('"')) for s in re.findall(r"^\.S[HS] (.+)$", page.read_text(), re.M)}


def problems(path: Path, rel: str) -> list[str]:
    """Every stale citation and every cited doc, section or man page section that does not exist in
    ``path`` (named ``rel``)."""
    found: list[str] = []
    for line, raw in _comments_and_docstrings(path):
        text = " ".join(raw.split())
        where = f"{rel}:{line}"
        found += [
            f"{where}: cites {m.group(0)!r}: cite the doc section instead"
            for m in STALE.finditer(text)
            if not (m.group(0) == "README" and text in NAMES_README)
        ]
        found += [
            f"{where}: docs/{m.group(1)} does not exist"
            for m in DOC_PATH.finditer(text)
            if not (DOCS / m.group(1)).is_file()
        ]
        for m in DOC_SECTION.finditer(text):
            doc = DOCS / m.group(1)
            if doc.is_file() and not any(s.startswith(_normal(m.group(2))) for s in _sections(doc)):
                found.append(f"{where}: docs/{m.group(1)} has no section {m.group(2)!r}")
        for m in MAN_SECTION.finditer(text):
            if _normal(m.group(2)) not in _man_sections(MAN[m.group(1)]):
                found.append(f"{where}: {m.group(1)} has no section {m.group(2)!r}")
    return found


def _files() -> list[Path]:
    return sorted(p for p in SRC.rglob("*") if p.suffix in {".py", ".yml", ".yaml"} and "__pycache__" not in p.parts)


@pytest.mark.parametrize(
    "path",
    _files(),
    ids=lambda p: str(p.relative_to(SRC)),
)
def test_comments_cite_doc_sections(path: Path) -> None:
    assert problems(path, str(path.relative_to(SRC))) == []


def test_the_check_sees_a_stale_citation(tmp_path: Path) -> None:
    """The check itself: each kind of bad citation is found, a good one passes."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""A module (seed 002: why).\n\nIts table is README\'s."""\n\n'
        "# one (issue 27)\n"
        "X = 1  # see DESIGN.md\n"
        '# docs/nowhere.md; docs/fleet.md, "No such\n# section"; bootkeeper(8)\'s NO SUCH\n'
        '# docs/fleet.md, "The metrics and\n# their labels"; bootkeeper(8)\'s EXIT STATUS\n'
    )
    found = problems(sample, "sample.py")
    assert [f.split(": ", 1)[1] for f in found] == [
        "cites 'issue 27': cite the doc section instead",
        "cites 'DESIGN.md': cite the doc section instead",
        "docs/nowhere.md does not exist",
        "docs/fleet.md has no section 'No such section'",
        "bootkeeper(8) has no section 'NO SUCH'",
        "cites 'seed 002': cite the doc section instead",
        "cites 'README': cite the doc section instead",
    ]
