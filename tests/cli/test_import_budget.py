"""The boot path's import budget (issue 15, item 18): the verbs the units run at every boot import no
heavy library they do not need. Each verb runs as the unit runs it, in a fresh interpreter, on a node
root with a config in /oem; afterwards the third-party top-level modules it loaded are compared with
what that verb needs, exactly (a new import fails the test, and so does a dropped one: then the budget
here is out of date)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import entry_body, esp_with, fake_efivars

HEAVY = {"rich", "cryptography", "yaml", "asn1crypto", "prometheus_client"}

# verb -> the heavy modules it needs: PyYAML for /oem/*.yaml wherever the verb reads the config,
# cryptography where it judges signatures; rich never (it is for people at a terminal)
BUDGET = {
    "bless good": {"yaml"},
    "bless status": set(),
    "history record": set(),
    "motd": set(),
    "sysext activate --no-refresh": {"yaml", "cryptography"},
    "random-seed": set(),  # bootkeeper-random-seed.service, before sysinit.target
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("node")
    esp_with(root / "efi", {"active+2-1.conf": entry_body("active"), "passive+3.conf": entry_body("passive")})
    fake_efivars(
        root / "sys/firmware/efi/efivars",
        LoaderBootCountPath="\\loader\\entries\\active+2-1.conf",
        LoaderEntrySelected="active+2-1.conf",
    )
    (root / "oem").mkdir()
    (root / "oem/90.yaml").write_text("boot_assessment:\n  tries: 3\nsysext:\n  firmware: []\n")
    return root


PROBE = """
import json, sys
from bootkeeper.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
sys.stdout.flush()
print("@@@", json.dumps(sorted({m.split(".")[0] for m in sys.modules})), file=sys.stderr)
"""


@pytest.mark.parametrize("verb", list(BUDGET))
def test_boot_path_verbs_import_only_what_they_need(root: Path, verb: str) -> None:
    args = [*verb.split(), "--root", str(root)]
    if not verb.startswith("sysext"):
        args += ["--esp", str(root / "efi")]
    if verb == "bless good":  # on a copy: it renames the entry
        import shutil

        shutil.rmtree(root / "efi-copy", ignore_errors=True)
        shutil.copytree(root / "efi", root / "efi-copy")
        args[-1] = str(root / "efi-copy")
    env = None
    if verb == "random-seed":  # the real bootctl runs (and refuses a folder that is not a mount: exit 6)
        import os

        tools = Path(os.environ.get("VM_CACHE", Path(__file__).resolve().parents[2] / ".cache/vm")) / "host-tools"
        env = {**os.environ, "PATH": f"{tools}:{os.environ.get('PATH', '')}"}
    p = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=False, env=env)
    marks = [ln for ln in p.stderr.splitlines() if ln.startswith("@@@ ")]
    assert marks, p.stderr
    loaded = set(json.loads(marks[-1][4:])) & HEAVY
    assert "Traceback" not in p.stderr, p.stderr
    assert loaded == BUDGET[verb], f"{verb}: imports {sorted(loaded)}, its budget is {sorted(BUDGET[verb])}"


def test_the_generator_is_standard_library_only() -> None:
    """It runs as python3 -IS, before any unit: not even bootkeeper is importable there."""
    import ast

    from bootkeeper.assess import generator

    tree = ast.parse(Path(generator.__file__).read_text())
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module.split(".")[0])
    assert mods - {"__future__"} <= set(sys.stdlib_module_names), sorted(mods)
