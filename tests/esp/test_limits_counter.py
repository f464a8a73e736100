"""Over-long boot counters: "not counted", as for any value above INT_MAX, never an exception."""

from __future__ import annotations

from bootkeeper.esp import counter


def test_a_5000_digit_counter_is_not_counted() -> None:
    # int() of more than 4300 digits raises ValueError; systemd-boot's parse_number16() just overflows.
    for name in ("active+" + "9" * 5000 + ".conf", "active+1-" + "9" * 5000 + ".conf"):
        c = counter.parse(name, ".conf")
        assert not c.counted and c.base == name


def test_leading_zeros_do_not_overflow() -> None:
    c = counter.parse("active+" + "0" * 5000 + "3-" + "0" * 4400 + "1.conf", ".conf")
    assert (c.tries_left, c.tries_done) == (3, 1)
    assert c.next_name() == "active+2-2.conf"
