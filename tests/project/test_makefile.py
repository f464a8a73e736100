"""The Makefile's ``.PHONY`` names only targets that exist (a phony name without a rule makes ``make``
say nothing is to be done, silently), and ``make check`` is among them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULE = re.compile(r"^([^\s#=:][^#=:]*?)\s*::?(?!=)", re.M)


def _makefiles() -> list[str]:
    """The Makefile and the files it includes, as text."""
    main = (ROOT / "Makefile").read_text()
    included = re.findall(r"^-?include\s+(\S+)", main, re.M)
    return [main, *((ROOT / name).read_text() for name in included)]


def _phony_and_targets(texts: list[str]) -> tuple[set[str], set[str]]:
    phony: set[str] = set()
    targets: set[str] = set()
    for text in texts:
        for names in RULE.findall(text):
            if names == ".PHONY":
                continue
            targets.update(names.split())
        for line in re.findall(r"^\.PHONY\s*:(.*)$", text, re.M):
            phony.update(line.split("#", 1)[0].split())
    return phony, targets


def test_every_phony_name_is_a_target() -> None:
    phony, targets = _phony_and_targets(_makefiles())
    assert {"demo", "test", "check", "lint"} <= phony
    assert phony - targets == set()


def test_the_checker_sees_a_phony_name_without_a_rule() -> None:
    """The control: a phony name no rule makes is found, a rule's target and a variable are told apart."""
    text = ".PHONY: a b gone\nX := 1\na: $(STAMP)\n\techo a\nb:\n\techo b\n"
    phony, targets = _phony_and_targets([text])
    assert phony - targets == {"gone"} and "X" not in targets
