"""Every input the fuzzers ever kept (``tests/data/fuzz/<target>/``: the valid seeds and each
crash, minimised) through the same code the fuzz target runs (``fuzz/targets.py``, no atheris
needed): the parser raises nothing but the errors it documents, and those carry one line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from bootkeeper.errors import MalformedError

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # fuzz/ is a package at the top
from fuzz import targets

# Crashers found by fuzz/run.py whose fix is not in the tree yet (see fuzz/FINDINGS.md). Drop a
# line when its fix lands: the case then runs as a plain regression test.
OPEN: dict[str, str] = {}  # kept inputs that still fail (each line: the file and why)


def _cases() -> list[Any]:
    out = []
    for name in targets.TARGETS:
        for p in targets.corpus(name):
            key = f"{name}/{p.name}"
            marks = [pytest.mark.xfail(reason=OPEN[key], strict=True)] if key in OPEN else []
            out.append(pytest.param(name, p, id=key, marks=marks))
    return out


@pytest.mark.parametrize(("name", "path"), _cases())
def test_kept_input(name: str, path: Path) -> None:
    targets.check(name, path.read_bytes())


def test_every_target_has_seeds() -> None:
    for name in targets.TARGETS:
        assert any(p.name.startswith("seed-") for p in targets.corpus(name)), name


def test_open_cases_exist() -> None:
    """An OPEN line whose file was renamed or removed would hide nothing and mislead."""
    for key in OPEN:
        assert (targets.CORPUS / key).is_file(), key


def test_no_stray_corpus() -> None:
    """A folder without a target would be kept and never run."""
    assert {p.name for p in targets.CORPUS.iterdir()} <= set(targets.TARGETS)


def _raise(exc: BaseException) -> targets.Target:
    def run(data: bytes) -> None:
        raise exc

    return targets.Target("probe", run, (MalformedError,), True, 16, "")


def test_check_passes_documented_errors_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness itself: a documented one-line error is fine, anything else escapes."""
    monkeypatch.setitem(targets.TARGETS, "probe", _raise(MalformedError("x.conf: line 1: bad")))
    targets.check("probe", b"")
    monkeypatch.setitem(targets.TARGETS, "probe", _raise(MalformedError("x.conf:\n  bad")))
    with pytest.raises(targets.BadMessage):
        targets.check("probe", b"")
    monkeypatch.setitem(targets.TARGETS, "probe", _raise(MalformedError("")))
    with pytest.raises(targets.BadMessage):
        targets.check("probe", b"")
    monkeypatch.setitem(targets.TARGETS, "probe", _raise(IndexError("list index out of range")))
    with pytest.raises(IndexError):
        targets.check("probe", b"")
