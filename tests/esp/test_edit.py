from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootkeeper.esp import edit, entries
from bootkeeper.esp.keyvalue import KeyValue, split_lines

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


key_lines = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "title T",
                "efi /EFI/kairos/active.efi",
                "  efi\t/EFI/x.efi  ",
                '\tefi   "/EFI/q.efi"',
                "# efi /commented",
                "efi",
                "efi   ",
                "efix /not-the-key",
                "linux /k",
                "options efi /x",
                "",
            ]
        ),
        st.sampled_from(["\n", "\r\n", "\r"]),
    ),
    max_size=8,
)


@given(key_lines, st.booleans())
def test_rename_key_changes_only_the_key(lines: list[tuple[str, str]], nul: bool) -> None:
    """Exactly the lines systemd-boot reads as 'efi' (line_get_key_value: LF or CR ends a line,
    a key needs a value, nothing after a NUL) get 'uki'; every other byte is kept, so the rename
    back gives the same text."""
    text = "".join(a + b for a, b in lines) + ("\0efi /after-nul\n" if nul else "")
    out = edit.rename_key(text, "efi", "uki")
    before = [kv for kv in split_lines(text, " \t") if isinstance(kv, KeyValue)]
    after = [kv for kv in split_lines(out, " \t") if isinstance(kv, KeyValue)]
    assert [(kv.lineno, "uki" if kv.key == "efi" else kv.key, kv.value) for kv in before] == [
        (kv.lineno, kv.key, kv.value) for kv in after
    ]
    assert edit.rename_key(out, "uki", "efi") == text
    assert out.endswith("\0efi /after-nul\n") == nul


def test_rename_key_examples() -> None:
    assert edit.rename_key("title A\r\n  efi\t/EFI/a.efi \r\noptions efi /x\n", "efi", "uki") == (
        "title A\r\n  uki\t/EFI/a.efi \r\noptions efi /x\n"
    )
    assert edit.rename_key("efi\nefi   \n# efi /x\n", "efi", "uki") == "efi\nefi   \n# efi /x\n"
    with pytest.raises(ValueError, match="not an entry key"):
        edit.rename_key("efi /x\n", "efi", "u ki")


TEXTS = [
    "title A\nsort-key old\n",
    "title A\r\nsort-key old\r\nsort-key older\r\n",
    "title A\rsort-key old\rlinux /k\r",  # CR alone ends a line for systemd-boot
    "title A\x0csort-key old\nlinux /k\n",  # a form feed does not: this is one title line
    "title A\x85sort-key old\n",  # nor does NEL (str.splitlines() splits at both)
    "title A\nsort-key\nlinux /k\n",  # no value: systemd-boot skips the line
    "title A\nsort-keyx old\n# sort-key c\n",
    "title A\nlinux /k",
    "title A\nsort-key old\n\0sort-key hidden\n",  # nothing after a NUL is read
    "",
]


def _read(text: str, key: str) -> tuple[str | None, list[tuple[str, str]]]:
    """What systemd-boot reads: the last value of ``key``, and every other key and value in order."""
    items = [i for i in split_lines(text, " \t") if isinstance(i, KeyValue)]
    values = [i.value for i in items if i.key == key]
    return (values[-1] if values else None), [(i.key, i.value) for i in items if i.key != key]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("key", ["sort-key", "default"])
def test_replacing_the_last_key_line_is_one_rule(text: str, key: str) -> None:
    """edit.replace_key is the rule for Type #1 entries (edit.set_key) and loader.conf
    (loader.set_key): read back as systemd-boot reads it, the key has the new value and every other
    line is untouched, whoever wrote it; removing leaves no key line."""
    from bootkeeper.esp import loader

    _, others = _read(text, key)
    for write in (edit.set_key, loader.set_key):
        out = write(text, key, "new")
        assert _read(out, key) == ("new", others), (write.__module__, out)
    assert _read(loader.set_key(text, key, None), key) == (None, others)
