"""The layering DESIGN.md promises, enforced (issue 15, item 13): base <- esp <- assess, sysext; cli on top;
assess and sysext never import each other. Every import of every module under src/bootkeeper, at any
depth (the lazy ones inside functions too), is read from the source and checked against the arrows."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "bootkeeper"
WINGS = ("esp", "assess", "sysext", "measure", "cli")
# layer -> the layers it may import
ALLOWED = {
    "base": {"base"},
    "esp": {"base", "esp"},
    "assess": {"base", "esp", "assess"},
    "sysext": {"base", "esp", "sysext"},
    "measure": {"base", "esp", "measure"},
    "cli": {"base", "esp", "assess", "sysext", "measure", "cli"},
    "entry": {"cli"},  # __main__: python -m bootkeeper
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[:2] == ["bootkeeper", "__main__"]:
        return "entry"
    return parts[1] if len(parts) > 1 and parts[1] in WINGS else "base"


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported bootkeeper module) for every import in the file; ``from bootkeeper import x``
    counts as ``bootkeeper.x``, relative imports are resolved against ``module``."""
    out = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            if base == "bootkeeper":
                out += [(node.lineno, f"bootkeeper.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, base))
    return [(n, m) for n, m in out if m == "bootkeeper" or m.startswith("bootkeeper.")]


def modules() -> list[tuple[Path, str]]:
    out = []
    for p in sorted(SRC.rglob("*.py")):
        rel = p.relative_to(SRC.parent).with_suffix("")
        out.append((p, ".".join(rel.parts).removesuffix(".__init__")))
    return out


def test_no_import_crosses_the_layers() -> None:
    wrong = []
    for path, module in modules():
        mine = layer_of(module)
        for line, target in imports(path, module):
            theirs = layer_of(target)
            if theirs not in ALLOWED[mine]:
                wrong.append(f"{path.relative_to(SRC.parent)}:{line}: {mine} -> {theirs} ({target})")
    assert wrong == [], "\n".join(wrong)


def test_the_checker_sees_a_forbidden_arrow(tmp_path: Path) -> None:
    """The control: an assess module importing sysext, lazily inside a function, is caught."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from bootkeeper.sysext import deploy\n    from bootkeeper import config\n")
    got = imports(f, "bootkeeper.assess.x")
    assert got == [(2, "bootkeeper.sysext"), (3, "bootkeeper.config")]
    assert layer_of(got[0][1]) not in ALLOWED[layer_of("bootkeeper.assess.x")]
    assert layer_of(got[1][1]) in ALLOWED["assess"]
