"""Read bootkeeper's man pages (man/) the way the tests that compare the docs with the code need: a
section's text, its ``.TP`` items as (tag, body) with roff's escapes undone, and its example."""

from __future__ import annotations

import re
from pathlib import Path

MAN = Path(__file__).resolve().parent.parent / "man"
BOOTKEEPER_8 = MAN / "bootkeeper.8"
BOOTKEEPER_YAML_5 = MAN / "bootkeeper.yaml.5"


def plain(roff: str) -> str:
    """Roff's inline escapes undone: fonts dropped, ``\\-``, ``\\e``, ``\\(aq``, ``\\[uXXXX]`` and ``\\&`` read back."""
    text = re.sub(r"\\f[BIRP]", "", roff)
    text = re.sub(r"\\\[u([0-9A-F]{4,5})\]", lambda m: chr(int(m.group(1), 16)), text)
    text = text.replace("\\-", "-").replace("\\(aq", "'").replace("\\&", "")
    return text.replace("\\e", "\\")


def section(page: Path, name: str) -> str:
    """The roff source of section ``.SH NAME``, up to the next ``.SH``."""
    text = page.read_text()
    start = text.index(f"\n.SH {name}\n")
    end = text.find("\n.SH ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def items(roff: str) -> list[tuple[str, str]]:
    """Each ``.TP`` item of the text: (its tag line, its body lines joined), both plain."""
    out = []
    for block in roff.split("\n.TP\n")[1:]:
        lines = block.split("\n")
        body = []
        for line in lines[1:]:
            if line.startswith("."):
                break
            body.append(line)
        out.append((plain(lines[0]), plain(" ".join(body))))
    return out


def example(page: Path) -> str:
    """The text of the page's EXAMPLE (between ``.EX`` and ``.EE``), plain."""
    text = section(page, "EXAMPLE")
    return plain(text[text.index("\n.EX\n") + 4 : text.index("\n.EE")] + "\n")
