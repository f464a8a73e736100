from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bootkeeper.esp import edit, entries

body_lines = st.lists(
    st.sampled_from(["title T", "sort-key old", "  sort-key older", "linux /k", "options a=b", "# sort-key c", ""]),
    max_size=8,
)


@given(body_lines, st.text(alphabet="abc-123", min_size=1, max_size=10))
def test_set_key_round_trip(lines: list[str], value: str) -> None:
    text = "\n".join(lines) + "\n"
    out = edit.set_key(text, "sort-key", value)
    e = entries.parse_type1("x.conf", out, loader_exists=True)
    assert e.sort_key == value
    # every other line is kept, in order
    others = [x for x in text.splitlines() if not x.strip().startswith("sort-key")]
    assert [x for x in out.splitlines() if not x.startswith("sort-key ")] == others


def test_set_key_inserts_after_title() -> None:
    assert edit.set_key("title A\nlinux /k", "sort-key", "1") == "title A\nsort-key 1\nlinux /k"
