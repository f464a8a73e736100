"""The layering docs/design.md promises, enforced: base <- esp <- assess, sysext, measure <- node <- cli;
assess, sysext and measure never import each other; node joins them, prints nothing and returns typed
results; cli parses options and renders. Every import of every module under src/bootkeeper, at any
depth (the lazy ones inside functions too), is read from the source and checked against the arrows."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "bootkeeper"
WINGS = ("esp", "assess", "sysext", "measure", "update", "node", "cli")
# layer -> the layers it may import
ALLOWED = {
    "base": {"base"},
    "esp": {"base", "esp"},
    "assess": {"base", "esp", "assess"},
    "sysext": {"base", "esp", "sysext"},
    "measure": {"base", "esp", "measure"},
    "update": {"base", "esp", "update"},
    "node": {"base", "esp", "assess", "sysext", "measure", "update", "node"},
    "cli": {"base", "esp", "assess", "sysext", "measure", "update", "node", "cli"},
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


# what a join layer module may not do: it returns results, the CLI renders them
SPEAKS = ("click", "rich")
PRINTS = ("print", "echo", "secho")


def speaking(path: Path) -> list[str]:
    """Lines of ``path`` that import a UI library or write to the terminal (print(), click.echo,
    sys.stdout/sys.stderr)."""
    out = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            out += [f"{node.lineno}: imports {n}" for n in names if n.split(".")[0] in SPEAKS]
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name in PRINTS:
                out.append(f"{node.lineno}: calls {name}()")
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in ("stdout", "stderr")
            and isinstance(node.value, ast.Name)
            and node.value.id == "sys"
        ):
            out.append(f"{node.lineno}: uses sys.{node.attr}")
    return sorted(out, key=lambda w: int(w.partition(":")[0]))


def test_the_join_layer_prints_nothing() -> None:
    wrong = []
    for path, module in modules():
        if layer_of(module) == "node":
            wrong += [f"{path.relative_to(SRC.parent)}:{w}" for w in speaking(path)]
    assert wrong == [], "\n".join(wrong)


def test_the_speaking_check_sees_a_print(tmp_path: Path) -> None:
    """The control: each way of speaking is caught."""
    f = tmp_path / "x.py"
    f.write_text("import sys\nimport click\ndef f():\n    print(1)\n    sys.stderr.write('x')\n    click.echo(2)\n")
    assert speaking(f) == ["2: imports click", "4: calls print()", "5: uses sys.stderr", "6: calls echo()"]
