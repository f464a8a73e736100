"""Image policy grammar (systemd.image-policy(7)) and evaluation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootkeeper.errors import MalformedError
from bootkeeper.sysext import policy
from bootkeeper.sysext.policy import Flag, Observed, Protection


def test_man_page_examples_parse() -> None:
    for s in (
        "usr=verity+read-only-on:root=encrypted:swap=encrypted",
        "root=encrypted+read-only-off:srv=encrypted+absent:swap=absent",
        "root=unprotected+encrypted:swap=absent+unused:=unused+absent",
        policy.SEED_POLICY,
        policy.ENFORCED_DEFAULT,
        "*",
        "-",
        "~",
        "",
        "root=open:=ignore",
    ):
        policy.parse(s)


def test_symbolic_policies() -> None:
    assert policy.parse("*").flags("root") & policy.USE == policy.OPEN
    assert policy.parse("-").flags("usr") & policy.USE == policy.IGNORE
    assert policy.parse("~").flags("root") & policy.USE == {Flag.ABSENT}


def test_unlisted_default_is_ignore_and_empty_flags_mean_open() -> None:
    p = policy.parse("root=signed")
    assert p.flags("home") & policy.USE == policy.IGNORE
    assert policy.parse("root=").flags("root") & policy.USE == policy.OPEN - {Flag.ENCRYPTED} | {Flag.ENCRYPTED}


def test_verity_partitions_derive_from_data() -> None:
    p = policy.parse("root=signed+absent")
    assert p.get("root-verity-sig") is not None and Flag.UNPROTECTED in p.flags("root-verity-sig")
    assert Flag.ABSENT in p.flags("root-verity")
    q = policy.parse("root=verity")
    assert q.get("root-verity") is not None
    assert q.get("root-verity-sig") is None  # no signature wanted: the sig partition falls to the default
    assert q.flags("root-verity-sig") & policy.USE == policy.IGNORE


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("root=verity:root=signed", "more than once"),
        ("=verity:=signed", "more than once"),
        ("root=verity+bogus", "unknown policy flag 'bogus'"),
        ("rootfs=verity", "unknown partition designator 'rootfs'"),
        ("root", "missing '='"),
        ("root=verity::usr=signed", "missing '='"),
        ("root=verity++signed", "unknown policy flag ''"),
    ],
)
def test_errors(text: str, words: str) -> None:
    with pytest.raises(MalformedError) as ei:
        policy.parse(text)
    assert words in str(ei.value)


flag_words = st.sampled_from([f.value for f in Flag] + ["open", "ignore"])
rules = st.dictionaries(st.sampled_from(policy.DESIGNATORS), st.lists(flag_words, min_size=1, max_size=4), max_size=5)


@given(rules, st.one_of(st.none(), st.lists(flag_words, min_size=1, max_size=3)))
def test_round_trip(r: dict[str, list[str]], default: list[str] | None) -> None:
    text = ":".join([f"{d}={'+'.join(f)}" for d, f in r.items()] + ([f"={'+'.join(default)}"] if default else []))
    p = policy.parse(text)
    assert policy.parse(str(p)) == p
    for d in policy.DESIGNATORS:
        assert policy.parse(str(p)).flags(d) == p.flags(d)


@settings(max_examples=3000)
@given(st.text(alphabet="root=usr:+verity-signed~*absent ", max_size=40))
def test_fuzz(text: str) -> None:
    try:
        policy.parse(text)
    except MalformedError as exc:
        assert str(exc)


def _obs(best: Protection, why: str | None = None) -> dict[str, Observed]:
    return {"root": Observed("root", best, read_only=True, growfs=False, fstype="erofs", why_not_better=why)}


def test_seed_policy_admits_failed_signature_as_verity_enforced_does_not() -> None:
    failed = _obs(Protection.VERITY, "signature does not verify with this certificate")
    seed = policy.evaluate(policy.parse(policy.SEED_POLICY), failed)
    root = next(d for d in seed if d.designator == "root")
    assert root.ok and root.used_as == "verity" and "not signed" in root.reason
    enforced = policy.evaluate(policy.parse(policy.ENFORCED_DEFAULT), failed)
    root = next(d for d in enforced if d.designator == "root")
    assert not root.ok and "signature does not verify" in root.reason
    good = policy.evaluate(policy.parse(policy.ENFORCED_DEFAULT), _obs(Protection.SIGNED))
    assert all(d.ok for d in good) and good[0].used_as == "signed"


def test_absent_missing_and_extra_partitions() -> None:
    p = policy.parse("root=signed:usr=absent")
    out = policy.evaluate(p, {})
    assert [(d.designator, d.ok) for d in out] == [("root", False), ("usr", True)]
    out = policy.evaluate(policy.parse(policy.ENFORCED_DEFAULT), _obs(Protection.SIGNED), other=["home"])
    assert all(d.ok for d in out)  # unlisted designators default to ignore: may exist
    out = policy.evaluate(policy.parse("root=signed:=absent"), _obs(Protection.SIGNED), other=["home"])
    assert not out[-1].ok


def test_read_only_and_fstype_flags() -> None:
    p = policy.parse("root=signed+read-only-off")
    assert not policy.evaluate(p, _obs(Protection.SIGNED))[0].ok
    p = policy.parse("root=signed+squashfs")
    assert "erofs" in policy.evaluate(p, _obs(Protection.SIGNED))[0].reason
