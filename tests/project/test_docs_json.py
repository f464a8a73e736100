"""The JSON the guides document is the JSON the views give (issue 28 item 8): the key lists of
``status --json`` (docs/services.md) and ``entries --json`` (docs/upgrades.md, the frozen view
assess/menu.py:Menu) are the ones tests/assess/test_status.py and tests/assess/test_menu.py hold the code to."""

from __future__ import annotations

import re
from pathlib import Path

from test_menu import KEYS as MENU_KEYS
from test_status import STATUS_KEYS

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _names(text: str) -> list[str]:
    return re.findall(r"`(\w+)`", text)


def test_the_status_keys_the_guide_lists_are_the_views() -> None:
    text = (DOCS / "services.md").read_text()
    start = text.index("`status --json` keys, in order:")
    listed = " ".join(text[start : text.index("(`tests/assess/test_status.py`)", start)].split()).split(":", 1)[1]
    nested = dict(re.findall(r"`(\w+)` \(([^)]*)\)", listed))
    assert _names(re.sub(r"\([^)]*\)", "", listed)) == STATUS_KEYS
    assert _names(nested["booted"]) == ["entry", "role", "blessed", "counting", "why"]
    assert _names(nested["extensions"]) == ["installed", "activation", "mode", "shadowed", "required"]


def test_the_menu_keys_the_guide_lists_are_the_views() -> None:
    text = (DOCS / "upgrades.md").read_text()
    start = text.index("frozen view `assess/menu.py:Menu` (")
    listed = text[start : text.index(", in that order)", start)].split("(", 1)[1]
    assert _names(listed) == MENU_KEYS
