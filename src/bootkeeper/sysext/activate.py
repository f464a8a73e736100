"""Boot time: ``/.extra/sysext/*.raw`` (and configured folders) → validate each → ``/run/extensions``.

systemd-sysext refuses every image when one of them fails its checks, so each image is judged on its
own here and only what the mode allows is placed:

* ``enforced``: only images that pass the policy, the hash tree, the signature against the trust
  anchors and the extension-release check;
* ``permissive``: every image the node's systemd-sysext would merge under its own policy, and
  those that fail bootkeeper's checks are reported ``failed-but-placed``; one it would not merge is
  refused with the reason (``image.Validation.blockers``): systemd-sysext refuses every image when one
  of them cannot be opened (systemd#32762), and then permissive would lose them all;
* ``disabled``: every image, unchecked.

In enforced and permissive mode the trust anchors are also exported to ``/run/verity.d``, where
systemd-sysext looks when it checks a signature in userspace.

Symbolic links and anything but regular files are never followed or placed, in any mode. The bytes
checked are the bytes used: each image is copied to a temporary name in the destination
(``.bootkeeper-*.tmp``, which systemd-sysext ignores), the copy is validated, then renamed. The copy
is made in one pass (:mod:`bootkeeper.sysext.stage`): the data blocks are hashed from the bytes as
they are written to it, so the full check reads the image once; the copy's hash levels, GPT,
signature and extension-release are then read from the copy. Images placed by an earlier run that
are not placed now are removed (the report lists what we placed).

Space: the images are taken smallest first, in rounds. A round stages as many as fit together in the
destination's free space (statvfs), judges them (in parallel when large), places what passes and
frees the refused copies before the next round measures again. So an image larger than what is free
is refused by its size without being read, and a large junk image can never take the room of a
smaller good one: it is staged only after every smaller image was placed or dropped.

The other folders systemd-sysext merges, ``/etc/extensions`` and ``/var/lib/extensions``, are judged
the same way in place, and what the mode refuses is moved into a quarantine folder
(:mod:`bootkeeper.sysext.extdirs`; the report's ``residents``).

Boundary: whatever judging one image raises (in this process or a worker), that image is refused
with a one-line reason and the others are judged as usual; the report is always written.

The steps live in :mod:`bootkeeper.sysext.activation`; this module runs them in order.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bootkeeper import fsutil
from bootkeeper.config import Sysext, SysextMode
from bootkeeper.errors import WriteError
from bootkeeper.sysext import required
from bootkeeper.sysext.activation import copying, found, judging, place, space
from bootkeeper.sysext.activation.found import EXTRA_DIR, GLOBAL_DIR, Job, Source
from bootkeeper.sysext.activation.judging import Rules
from bootkeeper.sysext.activation.outcome import Outcome, Report, printable, refused, write_report
from bootkeeper.sysext.activation.place import permissive_refusal
from bootkeeper.sysext.activation.refresh import refresh
from bootkeeper.sysext.report import REPORT

if TYPE_CHECKING:
    from cryptography import x509

    from bootkeeper.sysext.activation.pool import Workers
    from bootkeeper.sysext.extdirs import Resident

# what cli/, extdirs and the tests name here (the report's file has its home in sysext/report.py)
__all__ = [
    "DEST_DIR",
    "EXTRA_DIR",
    "GLOBAL_DIR",
    "MAX_BATCH",
    "PARALLEL_FROM",
    "REPORT",
    "Outcome",
    "Report",
    "activate",
    "host_os_release",
    "permissive_refusal",
    "printable",
    "refresh",
    "write_report",
]

DEST_DIR = "run/extensions"
MAX_BATCH = 256  # images staged together at most: two descriptors each, under the usual limit of 1024
PARALLEL_FROM = 64 << 20  # below this in total, worker processes cost more than they save


def activate(
    root: Path,
    cfg: Sysext,
    mode: SysextMode | None = None,
    *,
    efivars: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Copy, judge and place every image of the source folders, prune the earlier copies not placed
    now, and write the report (see the module's docstring)."""
    started = time.monotonic()
    mode = mode or cfg.mode
    report, sources = _begin(root, cfg, mode, efivars)
    required.pending(root, cfg.required if mode is SysextMode.ENFORCED else ())
    dest = _destination(root)
    rules = _rules(root, cfg, mode, efivars, report)
    jobs = found.candidates(sources)
    skips, outcomes, pending = found.take_stock(jobs)
    judged, freed = _rounds(pending, dest, rules)
    outcomes.update(judged)
    report.images = [skips[i] if i in skips else outcomes[name] for i, (name, _, _, _) in enumerate(jobs)]
    for o, job in zip(report.images, jobs, strict=True):
        o.file = found.from_root(root, job.at)
    report.removed = [n for n in freed if not outcomes[n].placed]
    if log is not None:
        for o in report.images:
            log(o.line())
        for n in report.removed:
            log(printable(f"{n}: removed from {dest} (an earlier copy; not placed now)"))
    report.removed += place.prune(dest, report.images, found.previous(root), log)
    report.residents = _residents(root, rules, log)
    report.seconds = round(time.monotonic() - started, 4)
    verdict = _required(cfg, mode, report)
    write_report(root, report)
    required.settle(root, verdict)
    return report


def host_os_release(root: Path) -> dict[str, str] | None:
    from bootkeeper.sysext.release import parse_release

    for rel in ("etc/os-release", "usr/lib/os-release"):
        p = root / rel
        with contextlib.suppress(OSError, UnicodeDecodeError):
            return parse_release(p.read_text(encoding="utf-8"))
    return None


def _begin(root: Path, cfg: Sysext, mode: SysextMode, efivars: Path | None) -> tuple[Report, list[Source]]:
    """The report to fill and the sources in the order they are read: the UKI's, the ESP's global
    ones, the persistent store's folders of links (``sysext.store: persistent``), the configured."""
    from bootkeeper.config import SysextStore

    folders = [root / EXTRA_DIR, root / GLOBAL_DIR, *(fsutil.under(root, s) for s in cfg.sources)]
    report = Report(mode.value, cfg.policy, str(root), [str(s) for s in folders])
    sources: list[Source] = [*folders[:2]]
    if cfg.store is SysextStore.PERSISTENT:
        links, report.store = found.store_sources(root, cfg, efivars)
        sources += links
        report.sources[2:2] = [str(s.root / f) for s, f in links]
    sources += folders[2:]
    return report, sources


def _destination(root: Path) -> Path:
    """``/run/extensions``, made if missing; a symbolic link or a file in its place stops the run."""
    dest = root / DEST_DIR
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"{dest}: cannot create ({exc.strerror})") from exc
    if dest.is_symlink() or not dest.is_dir():
        raise WriteError(f"{dest}: not a folder (a symbolic link or a file is in the way)")
    return dest


def _rules(root: Path, cfg: Sysext, mode: SysextMode, efivars: Path | None, report: Report) -> Rules:
    """The rules every image is judged by; the trust anchors' load and export go in the report."""
    from bootkeeper.sysext import policy
    from bootkeeper.sysext.activation import anchors

    host = host_os_release(root)
    pol = policy.parse(cfg.policy, "sysext.policy")
    certs: list[x509.Certificate] = []
    if mode is not SysextMode.DISABLED:
        certs, report.trust = anchors.load(root, cfg, efivars)
    return Rules(mode, pol, certs, host, cfg.full_check)


def _rounds(pending: list[Job], dest: Path, rules: Rules) -> tuple[dict[str, Outcome], list[str]]:
    """Every job's outcome, in rounds of what fits together; and the earlier copies removed to make
    room (each is replaced by its new copy if that passes)."""
    outcomes: dict[str, Outcome] = {}
    freed: list[str] = []
    while pending:
        fit = space.fitting(pending, dest, MAX_BATCH)
        freed += fit.freed
        if not fit.batch:  # not even the smallest left fits on its own: none of the rest does
            for job in fit.rest:
                why = f"{job.src}: {space.does_not_fit(job.name, job.size, dest, fit.free)}"
                outcomes[job.name] = refused(job.name, job.src, why)
            break
        outcomes.update(_round(fit.batch, dest, fit.free + fit.reclaimed, rules))
        pending = fit.rest
    return outcomes, freed


def _round(batch: list[Job], dest: Path, free: int, rules: Rules) -> dict[str, Outcome]:
    """Copy, judge and place one round of images that fit together; the refused copies are gone
    when it returns."""
    with contextlib.ExitStack() as temps:
        hashing = rules.full and rules.mode is not SysextMode.DISABLED
        opened, out = copying.open_all(batch, dest, temps, free, hashing)
        # one set of worker processes for the round, forked once every descriptor is open: copying
        # and judging both use it when there is enough work (PARALLEL_FROM)
        pool = _pool(opened, temps)
        leaves, failed = copying.copy_all(opened, dest, free, pool)
        out.update(failed)
        opened = [c for c in opened if c.name not in failed]
        verdicts = judging.judge({c.name: c.tmp for c in opened}, rules, leaves, pool)
        # the rest of the temporaries go with the ExitStack
        out.update(place.place_all(opened, dest, rules.mode, verdicts))
    return out


def _pool(opened: list[copying.OpenCopy], temps: contextlib.ExitStack) -> Workers | None:
    """The round's worker processes (closed with ``temps``), or None when there is too little work."""
    from bootkeeper.sysext.activation.pool import Workers

    total = sum(c.size for c in opened)
    n = min(len(opened) * 2, os.cpu_count() or 1)
    return temps.enter_context(Workers(n)) if n > 1 and total >= PARALLEL_FROM else None


def _residents(root: Path, rules: Rules, log: Callable[[str], None] | None) -> list[Resident]:
    """The other extension folders, judged as the images placed here and the refused moved aside."""
    from bootkeeper.sysext import extdirs

    judge = extdirs.Judge(rules.mode, rules.policy, rules.anchors, rules.host, rules.full)
    return extdirs.sweep(root, judge, move=True, log=log)


def _required(cfg: Sysext, mode: SysextMode, report: Report) -> required.Required:
    """sysext.required judged on this activation's images, recorded in the report."""
    reasons = {o.name: printable("; ".join(o.reasons) or o.verdict) for o in report.images}
    verdict = required.judge(cfg.required, mode is SysextMode.ENFORCED, report.images, reasons)
    report.required = verdict.as_json()
    return verdict
