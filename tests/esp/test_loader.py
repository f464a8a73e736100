from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bootkeeper.esp import loader


def test_parse_last_default_wins() -> None:
    c = loader.parse('timeout 0\ndefault a.conf\n# x\ndefault   "B*.conf"\nbogus-key 1\n')
    assert c.default == "B*.conf" and c.default_pattern == "b*.conf" and c.default_line == 4
    assert any("bogus-key" in p for p in c.problems)
    assert loader.parse("default @foo\n").default_pattern is None  # unsupported special id is ignored
    assert loader.parse("default @saved\n").default_pattern == "@saved"


def test_set_default_touches_only_default_lines() -> None:
    text = "timeout 0\r\ndefault active+3.conf\r\neditor no\n"
    assert loader.set_default(text, "active.conf") == "timeout 0\r\ndefault active.conf\r\neditor no\n"
    assert loader.set_default(text, None) == "timeout 0\r\neditor no\n"
    assert loader.set_default("timeout 0", "x.conf") == "timeout 0\ndefault x.conf\n"
    assert loader.set_default("defaultish 1\n", None) == "defaultish 1\n"


lines = st.lists(
    st.sampled_from(
        ["timeout 0", "default a.conf", "  default b+3.conf", "editor no", "# default c", "defaulted x", ""]
    ),
    max_size=8,
)


@given(lines, st.one_of(st.none(), st.sampled_from(["x.conf", "y*.conf"])))
def test_set_default_property(ls: list[str], value: str | None) -> None:
    text = "\n".join(ls) + "\n"
    out = loader.set_default(text, value)
    keep = [x for x in text.splitlines() if not x.strip().startswith("default ") and x.strip() != "default"]
    assert [x for x in out.splitlines() if not x.startswith("default ")] == keep
    assert loader.parse(out).default == value


def test_default_after_rename_is_the_seeds_sed_done_by_parsing() -> None:
    conf = loader.parse("default active+3.conf\n")
    assert loader.default_after_rename(conf, "active+2-1.conf", "active.conf") == (True, "active.conf")
    assert loader.default_after_rename(conf, "active+2-1.conf", "active+0-1.conf") == (True, None)  # never pin bad
    assert loader.default_after_rename(conf, "passive+2-1.conf", "passive.conf") == (False, None)
    assert loader.default_after_rename(loader.parse("default active*.conf\n"), "active+2-1.conf", "active.conf") == (
        False,
        None,
    )
    # the seed's sed would also have rewritten 'activeBad+3.conf'; parsing only touches the renamed entry
    assert loader.default_after_rename(
        loader.parse("default activeBad+3.conf\n"), "active+2-1.conf", "active.conf"
    ) == (False, None)
