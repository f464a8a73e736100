"""Judging staged copies: each against the rules (the mode, the image policy, the trust anchors, the
host's os-release, the whole hash tree or not), in worker processes when there is enough work.
Whatever judging one image raises, or a worker that dies under it, refuses that image only."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bootkeeper.config import SysextMode
from bootkeeper.sysext.activation.outcome import fault
from bootkeeper.sysext.activation.pool import Workers

if TYPE_CHECKING:
    from cryptography import x509

    from bootkeeper.sysext import verity
    from bootkeeper.sysext.activation.copying import Leaves
    from bootkeeper.sysext.policy import ImagePolicy


@dataclass(frozen=True)
class Rules:
    """What judging an image needs: the mode, the image policy, the trust anchors, the host's
    os-release and whether the whole hash tree is checked."""

    mode: SysextMode
    policy: ImagePolicy
    anchors: list[x509.Certificate]
    host: dict[str, str] | None
    full: bool

    def checks(self) -> Checks:
        """The rules as they cross into a worker process."""
        from cryptography.hazmat.primitives.serialization import Encoding

        der = tuple(bytes(c.public_bytes(Encoding.DER)) for c in self.anchors)
        return Checks(self.policy, der, self.host, self.full)


@dataclass(frozen=True)
class Checks:
    """The rules a worker process judges with (they pickle): the anchors as DER, which the one
    loader of certificates reads back (:func:`bootkeeper.sysext.trust.load_certificates`)."""

    policy: ImagePolicy
    anchors: tuple[bytes, ...]
    host: dict[str, str] | None
    full: bool


@dataclass(frozen=True)
class Verdict:
    """What validating one staged copy said (:class:`bootkeeper.sysext.image.Validation`, as it
    crosses back from a worker process)."""

    ok: bool
    reasons: list[str]
    signer: str | None
    root_hash: str | None
    qualified_as: str | None
    seconds: float
    blockers: tuple[str, ...] = ()  # why the node's systemd-sysext would not merge it (see image.validate)


def judge(
    staged: dict[str, Path], rules: Rules, leaves: Leaves | None = None, pool: Workers | None = None
) -> dict[str, Verdict]:
    """Judge the staged copies (by name): those bytes are what systemd-sysext will use; ``leaves``:
    by name, the hashes of the data blocks taken as each copy was written. Nothing in disabled mode."""
    if rules.mode is SysextMode.DISABLED or not staged:
        return {}
    checks = rules.checks()
    out: dict[str, Verdict] = {}
    if pool is not None:
        # one image per task in the round's worker processes: the levels, the signature and the
        # extension-release are Python work, which threads would not spread
        broken = in_workers(staged, pool.n, out, checks, leaves, pool)
        # a worker that died (a crash in a library, the OOM killer) takes its pool with it: each
        # image of that pool is judged again alone, in a pool of its own, so only the culprit fails
        for n in broken:
            in_workers({n: staged[n]}, 1, out, checks, leaves)
            if n not in out:
                out[n] = _failed("validation stopped (its worker process died)")
    for n, p in staged.items():
        if n not in out:
            out[n] = judge_one(n, p, checks, (leaves or {}).get(n))
    return out


def judge_one(name: str, path: Path, checks: Checks, leaves: dict[int, verity.Leaves] | None = None) -> Verdict:
    """Validate one staged copy (in a worker process when there are several large images). Never
    raises: whatever validation raises refuses this image only."""
    t0 = time.monotonic()
    try:
        from bootkeeper.sysext.image import validate
        from bootkeeper.sysext.trust import load_certificates

        certs = [c for i, d in enumerate(checks.anchors) for c in load_certificates(d, f"trust anchor {i}")]
        v = validate(path, checks.policy, certs, full=checks.full, os_release=checks.host, name=name, leaves=leaves)
    except Exception as exc:  # the per-image boundary
        return _failed(f"validation stopped ({fault(exc)})", round(time.monotonic() - t0, 4))
    took = round(time.monotonic() - t0, 4)
    return Verdict(v.ok, list(v.reasons), v.signer, v.root_hash, v.qualified_as, took, tuple(v.blockers))


def _failed(why: str, seconds: float = 0.0) -> Verdict:
    return Verdict(False, [why], None, None, None, seconds, (why,))


def in_workers(
    staged: dict[str, Path],
    workers: int,
    out: dict[str, Verdict],
    checks: Checks,
    leaves: Leaves | None = None,
    pool: Workers | None = None,
) -> list[str]:
    """Judge ``staged`` in worker processes (``pool``, or ``workers`` of their own) into ``out``;
    the names whose pool broke."""
    calls = {n: (n, p, checks, (leaves or {}).get(n)) for n, p in staged.items()}
    results: dict[str, Verdict | Exception] = {}
    # worker_init: a worker dies with activate (kill -9 of the unit, a timeout), never left hashing
    with contextlib.ExitStack() as own:
        use = pool if pool is not None else own.enter_context(Workers(workers))
        broken = use.run(judge_one, calls, results)
    for n, got in results.items():  # an exception here: e.g. a result that does not pickle
        out[n] = got if isinstance(got, Verdict) else _failed(f"validation stopped in a worker process ({fault(got)})")
    return broken
