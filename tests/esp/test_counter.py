"""Boot-counting names, against the grammar systemd-boot documents and implements."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootkeeper.esp import counter
from bootkeeper.esp.counter import EntryState


@pytest.mark.parametrize(
    ("name", "left", "done", "nxt"),
    [
        ("active+3.conf", 3, 0, "active+2-1.conf"),
        ("active+2-1.conf", 2, 1, "active+1-2.conf"),
        ("active+1-2.conf", 1, 2, "active+0-3.conf"),
        ("active+0-3.conf", 0, 3, "active+0-4.conf"),  # a bad entry that is booted counts up only
        ("foobar+4-0.conf", 4, 0, "foobar+3-1.conf"),
        ("a+b+3.conf", 3, 0, "a+b+2-1.conf"),  # the last '+' introduces the counter
        ("ACTIVE+3.CONF", 3, 0, "ACTIVE+2-1.conf"),  # suffix compared case-insensitively, rewritten lower
        ("+3.conf", 3, 0, "+2-1.conf"),
        ("x+007-01.conf", 7, 1, "x+6-2.conf"),
    ],
)
def test_counted(name: str, left: int, done: int, nxt: str) -> None:
    c = counter.parse(name, ".conf")
    assert (c.tries_left, c.tries_done) == (left, done)
    assert c.next_name() == nxt


@pytest.mark.parametrize(
    "name",
    [
        "active.conf",
        "active+.conf",  # no digits
        "active+-1.conf",
        "active+3-.conf",
        "active+3-1-2.conf",  # counter in the middle of the name
        "active+3.conf.bak",
        "active+3x.conf",
        "active+2147483648.conf",  # above INT_MAX
        "active+1-2147483648.conf",
        "active+99999999999999999999999.conf",  # above UINT64_MAX
        "active+3.efi",  # wrong suffix for a Type #1 entry
    ],
)
def test_not_counted(name: str) -> None:
    c = counter.parse(name, ".conf")
    assert not c.counted
    assert c.state is EntryState.GOOD
    assert c.next_name() is None
    assert c.base == name


def test_states_and_names() -> None:
    assert counter.parse("a+2-1.conf", ".conf").state is EntryState.INDETERMINATE
    bad = counter.parse("a+0-3.efi", ".efi")
    assert bad.state is EntryState.BAD
    assert bad.base == "a.efi" and bad.stem == "a"
    assert counter.parse("a+2-1.conf", ".conf").bad_name() == "a+0-1.conf"


def test_done_saturates_at_int_max() -> None:
    c = counter.parse(f"a+0-{counter.INT_MAX}.conf", ".conf")
    assert c.next_name() == f"a+0-{counter.INT_MAX}.conf"


# An independent statement of the grammar, straight from the Boot Loader Specification text:
# "+LEFT[-DONE]" right before the suffix, introduced by the last "+".
_SPEC = re.compile(
    r"^(?P<prefix>[^+]*(?:\+[^+]*)*?)\+(?P<left>[0-9]+)(?:-(?P<done>[0-9]+))?(?P<suffix>\.conf)$", re.IGNORECASE
)

names = st.text(alphabet=st.sampled_from(list("ab+-.019CONFconf_")), max_size=20).map(lambda s: s)


@given(names)
def test_parse_agrees_with_the_spec_regex(name: str) -> None:
    c = counter.parse(name, ".conf")
    m = _SPEC.match(name)
    spec_counted = bool(m) and "+" not in name[name.rfind("+") + 1 :]
    if m and spec_counted:
        left = int(m["left"])
        done = int(m["done"] or 0)
        spec_counted = left <= counter.INT_MAX and done <= counter.INT_MAX
    assert c.counted == spec_counted, name
    if c.counted:
        assert m is not None
        assert c.tries_left == int(m["left"]) and c.tries_done == int(m["done"] or 0)
        assert c.prefix == name[: name.rfind("+")]


@given(
    st.text(alphabet=st.characters(blacklist_characters="+/\0", blacklist_categories=["Cs"]), min_size=1, max_size=30),
    st.sampled_from([".conf", ".efi"]),
    st.integers(0, counter.INT_MAX),
    st.one_of(st.none(), st.integers(0, counter.INT_MAX)),
)
def test_format_parse_round_trip(stem: str, suffix: str, left: int, done: int | None) -> None:
    name = counter.format_name(stem, suffix, left, done)
    c = counter.parse(name, suffix)
    assert c.counted
    assert (c.tries_left, c.tries_done) == (left, done or 0)
    assert c.base == stem + suffix
    nxt = c.next_name()
    assert nxt is not None
    n2 = counter.parse(nxt, suffix)
    assert n2.tries_left == max(left - 1, 0)
    assert n2.tries_done == min((done or 0) + 1, counter.INT_MAX)


@given(st.text(max_size=60))
def test_parse_never_raises(name: str) -> None:
    c = counter.parse(name, ".conf")
    assert c.name == name


SAME_ENTRY = [
    ("active+2-1.conf", "active.conf", True),
    ("active+2-1.conf", "active+0-3.conf", True),
    ("active+3.conf", "ACTIVE+1-2.CONF", True),
    ("active.conf", "active.conf", True),
    ("active+2-1.conf", "passive+2-1.conf", False),
    ("active+2-1.conf", "active-2.conf", False),
    ("active+x.conf", "active.conf", False),  # "+x" is no counter: the base is active+x.conf
    ("a+1+2.conf", "a+1+0-3.conf", True),  # the last "+" introduces the counter
    ("a+1+2.conf", "a+1.conf", False),  # a+1.conf is the entry a.conf
]


@pytest.mark.parametrize(("a", "b", "same"), SAME_ENTRY)
def test_the_same_entry_with_and_without_a_counter_is_one_rule(a: str, b: str, same: bool) -> None:
    """counter.CountedName.same_entry is the rule; loader.conf's default follows a rename exactly
    when the renamed file is the entry the default names (esp/loader.py), and the ESP check groups
    files by the same key (esp/store.py), bless's siblings too (assess/bless.py)."""
    from bootkeeper.esp import loader

    ca, cb = counter.parse(a, ".conf"), counter.parse(b, ".conf")
    assert ca.same_entry(cb) is same and cb.same_entry(ca) is same
    assert (ca.entry_key == cb.entry_key) is same
    followed, _ = loader.default_after_rename(loader.parse(f"default {a}\n"), b, "renamed.conf")
    assert followed is same
