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
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bootkeeper import fsutil, submounts
from bootkeeper.config import Sysext, SysextMode
from bootkeeper.errors import BootkeeperError, WriteError
from bootkeeper.shown import shown
from bootkeeper.sysext import required
from bootkeeper.sysext.report import REPORT as REPORT  # its home; sysext_cmd names it here

if TYPE_CHECKING:
    from bootkeeper.systemd_version import NodeSystemd

EXTRA_DIR = ".extra/sysext"
# Newer systemd-stub also hands the ESP's loader/extensions/*.raw (extensions for every UKI) to the
# initrd here; they are judged exactly like the UKI's own, which win on a name clash.
GLOBAL_DIR = ".extra/global_sysext"
CONFEXT_SKIPPED = "a configuration extension: systemd-confext's, not placed in /run/extensions"
DEST_DIR = "run/extensions"


@dataclass
class Outcome:
    name: str
    source: str
    placed: bool
    verdict: str  # passed | refused | failed-but-placed | unchecked | skipped
    reasons: list[str] = field(default_factory=list)
    signer: str | None = None
    root_hash: str | None = None
    qualified_as: str | None = None
    seconds: float = 0.0
    # where it was found, from the root (/.extra/sysext/a.raw, a store folder's link): one per entry of
    # the source folders, where ``name`` is not (one name can be in .extra/sysext and .extra/global_sysext,
    # and ``source`` is empty for a skip) — metrics' series identity (issue 27)
    file: str = ""

    def line(self) -> str:
        """One journal line; every part escaped (names and subjects come from the ESP)."""
        where = "placed" if self.placed else "not placed"
        who = f", signed by {self.signer}" if self.signer else ""
        why = f": {'; '.join(self.reasons)}" if self.reasons else ""
        return printable(f"{self.name}: {self.verdict}, {where}{who}{why}")


def printable(text: str) -> str:
    """``text`` escaped by bootkeeper's one rule for what is shown (:func:`bootkeeper.shown.shown`):
    control characters, bytes that are not UTF-8 and bidi controls written as ``\\xNN`` /
    ``\\uNNNN``, ``\\`` as ``\\\\``, so a file name can neither split a journal line nor forge one."""
    return shown(text)


@dataclass
class Report:
    mode: str
    policy: str
    root: str
    sources: list[str]
    images: list[Outcome] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    trust: dict[str, Any] = field(default_factory=dict)
    store: dict[str, Any] | None = None  # sysext.store: persistent: the folders read, the role and why
    refresh: dict[str, Any] | None = None
    seconds: float = 0.0
    # /etc/extensions and /var/lib/extensions, judged in place (sysext/extdirs.py): extdirs.Resident
    residents: list[Any] = field(default_factory=list)
    required: dict[str, Any] | None = None  # sysext.required's verdict (sysext/required.py)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def host_os_release(root: Path) -> dict[str, str] | None:
    from bootkeeper.sysext.release import parse_release

    for rel in ("etc/os-release", "usr/lib/os-release"):
        p = root / rel
        with contextlib.suppress(OSError, UnicodeDecodeError):
            return parse_release(p.read_text(encoding="utf-8"))
    return None


def _previous(root: Path) -> list[str]:
    from bootkeeper.sysext import report

    try:
        last = report.read(root)
    except BootkeeperError:
        return []
    return list(last.placed) if last else []


def _candidates(
    sources: list[Path | tuple[Any, str]],
) -> list[tuple[str, Path | None, str | None, Path]]:
    """(name, path, why-skipped, where found) for every entry of the source folders, first folder wins
    (where found: the entry in its folder, a link for the store; the folder itself when it cannot be
    listed). A source
    is a folder of images, or (LinkStore, folder) for a folder of links into the persistent store:
    a link that is not exactly ``../<image>`` of a regular file there is skipped with its reason."""
    from bootkeeper.errors import UsageError
    from bootkeeper.sysext.deploy import check_name

    out: list[tuple[str, Path | None, str | None, Path]] = []
    seen: set[str] = set()
    for source in sources:
        found: list[tuple[str, Path, str | None]] = []
        if isinstance(source, tuple):
            store, folder = source
            for lk in store.links(folder):
                found.append((lk.name, store.root / (lk.image or f"{folder}/{lk.name}"), lk.problem))
            label = store.root / folder
        else:
            d = label = source
            try:
                if d.is_symlink():
                    out.append((d.name, None, f"{d}: source folder is a symbolic link; not followed", d))
                    continue
                names = sorted(os.listdir(d))
            except FileNotFoundError:
                continue
            except OSError as exc:
                out.append((d.name, None, f"{d}: cannot list ({exc.strerror})", d))
                continue
            found = [(n, d / n, None) for n in names if not fsutil.is_temporary(n) and n.endswith(".raw")]
        for n, p, problem in found:  # systemd-stub only passes *.raw; nothing else is an image
            at = label / n
            if problem is not None:
                out.append((n, None, problem, at))
                continue
            if n.endswith(".confext.raw"):  # systemd-stub hands these to /.extra/confext
                out.append((n, None, f"{at}: {CONFEXT_SKIPPED}", at))
                continue
            if n in seen:
                out.append((n, None, f"{at}: an image of this name came from an earlier folder", at))
                continue
            seen.add(n)
            try:
                check_name(n)
            except UsageError as exc:
                out.append((n, None, str(exc), at))
                continue
            out.append((n, p, None, at))
    return out


def _store_sources(root: Path, cfg: Sysext, efivars: Path | None, report: Report) -> list[tuple[Any, str]]:
    """``sysext.store: persistent``: the booted role's folder of links and ``common/``. A role that
    cannot be told loads ``common/`` alone (fewer images, never more)."""
    from bootkeeper.esp import efivars as efivars_mod
    from bootkeeper.esp import linkstore

    store = linkstore.LinkStore(fsutil.under(root, cfg.store_dir))
    role, why = linkstore.booted_role(root, efivars or efivars_mod.under(root))
    folders = [role.value] if role is not None else []
    folders.append(linkstore.COMMON)
    report.store = {"dir": str(store.root), "role": role.value if role else None, "why": why, "folders": folders}
    if role is None:
        report.store["problem"] = f"the booted role is unknown ({why}): only {linkstore.COMMON}/ is loaded"
    return [(store, f) for f in folders]


@dataclass(frozen=True)
class _Job:
    """An image to copy and judge: its name in the destination, where it is, its size when listed."""

    name: str
    src: Path
    size: int


@dataclass(frozen=True)
class _Staged:
    """A copy of ``src`` (open as ``sfd``, ``size`` bytes) to be made at ``tmp`` in the
    destination (open as ``fd``), judged, then placed; ``areas``: its verity data areas, hashed
    while it is copied (:mod:`bootkeeper.sysext.stage`)."""

    name: str
    src: Path
    fd: int
    tmp: Path
    sfd: int
    size: int
    areas: tuple[tuple[int, Any], ...]


@dataclass(frozen=True)
class _Rules:
    """What judging an image needs: the mode, the image policy, the trust anchors, the host's
    os-release and whether the whole hash tree is checked."""

    mode: SysextMode
    pol: Any
    anchors: list[Any]
    host: dict[str, str] | None
    full: bool


@dataclass(frozen=True)
class _Plan:
    """One round: the jobs that fit together in ``free`` bytes (plus ``reclaimed``, the room of
    earlier copies removed for them, named in ``freed``), and the rest for later rounds."""

    batch: list[_Job]
    rest: list[_Job]
    free: int
    reclaimed: int
    freed: list[str]


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
    jobs = _candidates(sources)
    skips, outcomes, pending = _take_stock(jobs)
    judged, freed = _rounds(pending, dest, rules)
    outcomes.update(judged)
    report.images = [skips[i] if i in skips else outcomes[name] for i, (name, _, _, _) in enumerate(jobs)]
    for o, (_, _, _, at) in zip(report.images, jobs, strict=True):
        o.file = _from_root(root, at)
    report.removed = [n for n in freed if not outcomes[n].placed]
    if log is not None:
        for o in report.images:
            log(o.line())
        for n in report.removed:
            log(printable(f"{n}: removed from {dest} (an earlier copy; not placed now)"))
    report.removed += _prune(dest, report.images, _previous(root), log)
    report.residents = _residents(root, rules, log)
    report.seconds = round(time.monotonic() - started, 4)
    verdict = _required(cfg, mode, report)
    write_report(root, report)
    required.settle(root, verdict)
    return report


def _required(cfg: Sysext, mode: SysextMode, report: Report) -> required.Required:
    """sysext.required judged on this activation's images, recorded in the report."""
    reasons = {o.name: printable("; ".join(o.reasons) or o.verdict) for o in report.images}
    verdict = required.judge(cfg.required, mode is SysextMode.ENFORCED, report.images, reasons)
    report.required = verdict.as_json()
    return verdict


def _begin(
    root: Path, cfg: Sysext, mode: SysextMode, efivars: Path | None
) -> tuple[Report, list[Path | tuple[Any, str]]]:
    """The report to fill and the sources in the order they are read: the UKI's, the ESP's global
    ones, the persistent store's folders of links (``sysext.store: persistent``), the configured."""
    from bootkeeper.config import SysextStore

    folders = [root / EXTRA_DIR, root / GLOBAL_DIR, *(fsutil.under(root, s) for s in cfg.sources)]
    report = Report(mode.value, cfg.policy, str(root), [str(s) for s in folders])
    sources: list[Path | tuple[Any, str]] = [*folders[:2]]
    if cfg.store is SysextStore.PERSISTENT:
        links = _store_sources(root, cfg, efivars, report)
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


def _rules(root: Path, cfg: Sysext, mode: SysextMode, efivars: Path | None, report: Report) -> _Rules:
    from bootkeeper.sysext import policy

    host = host_os_release(root)
    pol = policy.parse(cfg.policy, "sysext.policy")
    anchors = _trust(root, cfg, efivars, report) if mode is not SysextMode.DISABLED else []
    return _Rules(mode, pol, anchors, host, cfg.full_check)


def _residents(root: Path, rules: _Rules, log: Callable[[str], None] | None) -> list[Any]:
    """The other extension folders, judged as the images placed here and the refused moved aside."""
    from bootkeeper.sysext import extdirs

    judge = extdirs.Judge(rules.mode, rules.pol, rules.anchors, rules.host, rules.full)
    return extdirs.sweep(root, judge, move=True, log=log)


def _from_root(root: Path, p: Path) -> str:
    """``p`` as the node sees it (``/.extra/sysext/a.raw``), the same under any ``--root``."""
    try:
        return "/" + str(p.relative_to(root))
    except ValueError:
        return str(p)


def _take_stock(
    jobs: list[tuple[str, Path | None, str | None, Path]],
) -> tuple[dict[int, Outcome], dict[str, Outcome], list[_Job]]:
    """The skipped (by job: one name may be skipped in one folder, judged from another), the refused
    unopened (by name: the names judged are unique, see _candidates), and the jobs to copy and judge,
    smallest first (see the module's docstring)."""
    skips: dict[int, Outcome] = {}
    outcomes: dict[str, Outcome] = {}
    pending: list[_Job] = []
    for i, (name, src, skipped, _) in enumerate(jobs):
        if src is None:
            skips[i] = Outcome(name, "", False, "skipped", [skipped or "skipped"])
            continue
        try:
            st = os.lstat(src)
        except OSError as exc:
            outcomes[name] = Outcome(name, str(src), False, "refused", [f"{src}: cannot open ({exc.strerror})"])
            continue
        pending.append(_Job(name, src, st.st_size))
    pending.sort(key=lambda j: (j.size, j.name))
    return skips, outcomes, pending


def _rounds(pending: list[_Job], dest: Path, rules: _Rules) -> tuple[dict[str, Outcome], list[str]]:
    """Every job's outcome, in rounds of what fits together; and the earlier copies removed to make
    room (each is replaced by its new copy if that passes)."""
    outcomes: dict[str, Outcome] = {}
    freed: list[str] = []
    while pending:
        plan = _plan(pending, dest)
        freed += plan.freed
        if not plan.batch:  # not even the smallest left fits on its own: none of the rest does
            for job in plan.rest:
                why = f"{job.src}: {_does_not_fit(job.name, job.size, dest, plan.free)}"
                outcomes[job.name] = Outcome(job.name, str(job.src), False, "refused", [why])
            break
        outcomes.update(_round(plan.batch, dest, plan.free + plan.reclaimed, rules))
        pending = plan.rest
    return outcomes, freed


def _plan(pending: list[_Job], dest: Path) -> _Plan:
    """Which of ``pending`` (smallest first) fit together in ``dest`` now. An earlier run's copy of
    an image that does not fit otherwise is replaced by it: its room counts, and it is removed here
    (the new copy is placed if it passes; if not, the old must go anyway)."""
    free, block = _free(dest)
    room = free
    batch: list[_Job] = []
    rest: list[_Job] = []
    reclaimed = 0
    freed: list[str] = []
    for job in pending:
        if len(batch) >= MAX_BATCH:  # the next round's
            rest.append(job)
            continue
        need = _rounded(job.size, block)
        if need > room:
            held = _earlier_copy(dest / job.name)
            if held and need <= room + held and _remove(dest / job.name):
                freed.append(job.name)
                room += held
                reclaimed += held
        if need <= room:
            batch.append(job)
            room -= need
        else:
            rest.append(job)
    return _Plan(batch, rest, free, reclaimed, freed)


def _prune(dest: Path, images: list[Outcome], previous: list[str], log: Callable[[str], None] | None) -> list[str]:
    """Remove from ``dest`` the copies of images not placed now (refused now, or placed by an earlier
    run per its report): they must not stay. The names removed."""
    placed = {o.name for o in images if o.placed}
    refused = {o.name for o in images if not o.placed and o.verdict == "refused"}
    removed: list[str] = []
    for old in sorted(refused | set(previous)):
        p = dest / old
        if old in placed or not (p.is_file() or p.is_symlink()):
            continue
        try:
            p.unlink()
        except OSError as exc:
            line = f"{old}: an earlier copy in {dest} not placed now cannot be removed ({exc.strerror})"
        else:
            removed.append(old)
            line = f"{old}: removed from {dest} (an earlier copy; not placed now)"
        if log is not None:
            log(printable(line))
    return removed


def _trust(root: Path, cfg: Sysext, efivars: Path | None, report: Report) -> list[Any]:
    """The anchors (recorded in the report) and their export to /run/verity.d. Anything unexpected
    here trusts nothing: the images then fail, and are still judged and reported one by one."""
    from bootkeeper.sysext import trust

    try:
        store = trust.load(cfg, root, efivars, strict=False)
    except Exception as exc:  # boot-time boundary: fail closed, never stop the run
        store = trust.TrustStore(problems=[f"trust anchors cannot be loaded ({_fault(exc)}); none is trusted"])
    report.trust = {
        "trusted": [a.as_json() for a in store.anchors],
        "revoked": [a.as_json(why) for a, why in store.revoked],
        "problems": store.problems,
    }
    # systemd-sysext checks the signatures again, against the verity.d folders: what bootkeeper
    # trusts (config, firmware db) must be there too, or it refuses the images placed below.
    export_dir = root / trust.EXPORT_DIR
    try:
        written, removed = trust.export(store, export_dir)
    except Exception as exc:  # an export that fails is reported, the images still judged
        why = str(exc) if isinstance(exc, BootkeeperError) else _fault(exc)
        report.trust["problems"] = [*store.problems, f"export to {export_dir}: {why}"]
    else:
        report.trust["exported"] = {"dir": str(export_dir), "written": written, "removed": removed}
    return store.certificates


def _fault(exc: BaseException) -> str:
    """An unexpected exception as one line: its class and message."""
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return printable(text if len(text) <= 300 else text[:299] + "…")


def _free(dest: Path) -> tuple[int, int]:
    """Bytes free for us in ``dest`` and its block size."""
    try:
        v = os.statvfs(dest)
    except OSError:
        return 1 << 62, 4096  # not measurable: try, and let a failing copy say so
    return v.f_bavail * v.f_frsize, v.f_frsize or 4096


def _earlier_copy(p: Path) -> int:
    """Bytes held by a regular file at ``p`` (a copy an earlier run placed), else 0."""
    try:
        st = os.lstat(p)
    except OSError:
        return 0
    return st.st_blocks * 512 if stat.S_ISREG(st.st_mode) else 0


def _remove(p: Path) -> bool:
    try:
        p.unlink()
    except OSError:
        return False
    return True


def _rounded(size: int, block: int) -> int:
    return -(-size // block) * block


def _does_not_fit(name: str, size: int, dest: Path, free: int) -> str:
    return f"does not fit: {name} is {size} bytes, {dest} has {free} bytes free"


def _round(batch: list[_Job], dest: Path, free: int, rules: _Rules) -> dict[str, Outcome]:
    """Copy, judge and place one round of images that fit together; the refused copies are gone
    when it returns."""
    with contextlib.ExitStack() as temps:
        staged, out = _open_all(batch, dest, temps, free, rules)
        # one set of worker processes for the round, forked once every descriptor is open: copying
        # and judging both use it when there is enough work (PARALLEL_FROM)
        total = sum(s.size for s in staged)
        n = min(len(staged) * 2, os.cpu_count() or 1)
        pool = temps.enter_context(_Workers(n)) if n > 1 and total >= PARALLEL_FROM else None
        leaves, failed = _copy_all(staged, dest, free, pool)
        out.update(failed)
        staged = [s for s in staged if s.name not in failed]
        verdicts = _judge({s.name: s.tmp for s in staged}, rules, leaves, pool)
        # the rest of the temporaries go with the ExitStack
        out.update(_place_all(staged, dest, rules.mode, verdicts))
    return out


def _open_all(
    batch: list[_Job], dest: Path, temps: contextlib.ExitStack, free: int, rules: _Rules
) -> tuple[list[_Staged], dict[str, Outcome]]:
    """Open each image and a temporary file for its copy in the destination (both live as long
    as ``temps``), and find the data areas to hash while copying; the opened and the refused."""
    staged: list[_Staged] = []
    refused: dict[str, Outcome] = {}
    hashing = rules.full and rules.mode is not SysextMode.DISABLED
    for job in batch:
        try:
            c = _open(job.name, job.src, dest, temps, free, hashing)
        except Exception as exc:  # one image's fault, never the run's
            why = f"{job.src}: cannot stage a copy ({_fault(exc)})"
            c = Outcome(job.name, str(job.src), False, "refused", [why])
        if isinstance(c, Outcome):
            refused[job.name] = c
        else:
            staged.append(c)
    return staged, refused


def _open(name: str, src: Path, dest: Path, temps: contextlib.ExitStack, free: int, hashing: bool) -> _Staged | Outcome:
    """``src`` opened (never through a symbolic link, regular files only) with a temporary file in
    ``dest`` for its copy; or the reason it was refused."""
    try:
        sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        why = "a symbolic link; not followed" if os.path.islink(src) else f"cannot open ({exc.strerror})"
        return Outcome(name, str(src), False, "refused", [f"{src}: {why}"])
    temps.callback(os.close, sfd)
    st = os.fstat(sfd)
    if not stat.S_ISREG(st.st_mode):
        return Outcome(name, str(src), False, "refused", [f"{src}: not a regular file"])
    if st.st_size > free:  # grew since it was measured
        return Outcome(name, str(src), False, "refused", [f"{src}: {_does_not_fit(name, st.st_size, dest, free)}"])
    fd, tmp = temps.enter_context(fsutil.temp_file(dest / name))
    areas: list[tuple[int, Any]] = []
    if hashing:
        from bootkeeper.sysext.image import data_areas

        try:
            areas = data_areas(sfd, st.st_size)
        except Exception:  # nothing to hash while copying: the copy's validation reads it all
            areas = []
    return _Staged(name, src, fd, tmp, sfd, st.st_size, tuple(areas))


MAX_BATCH = 256  # images staged together at most: two descriptors each, under the usual limit of 1024


def _copy_all(
    staged: list[_Staged], dest: Path, free: int, pool: _Workers | None
) -> tuple[dict[str, Any], dict[str, Outcome]]:
    """Copy every staged image in one pass, hashing its data areas as it goes (see
    :mod:`bootkeeper.sysext.stage`), in ``pool`` if there is one: the pieces of every image,
    batched up to a piece's size, spread over its workers. The data blocks' hashes by image (for
    :func:`_judge`), and the images whose copy failed."""
    from bootkeeper.sysext import stage

    pieces = {s.name: stage.pieces(s.size, list(s.areas)) for s in staged}
    work: list[tuple[str, int, tuple[int, int, stage.Piece]]] = [
        (s.name, i, (s.sfd, s.fd, piece)) for s in staged for i, piece in enumerate(pieces[s.name])
    ]
    results: dict[tuple[str, int], Any] = {}
    if pool is not None:
        batches: dict[int, list[tuple[str, int, tuple[int, int, stage.Piece]]]] = {}
        size = 0
        for w in work:  # in order: many small images' pieces to a task, a large image's one each
            if not batches or size + w[2][2].length > stage.PIECE:
                batches[len(batches)] = []
                size = 0
            batches[len(batches) - 1].append(w)
            size += w[2][2].length
        done: dict[int, Any] = {}
        broken = pool.run(stage.copy_pieces, {k: ([w[2] for w in b],) for k, b in batches.items()}, done)
        for k, got in done.items():
            for w, r in zip(batches[k], got if isinstance(got, list) else [got] * len(batches[k]), strict=True):
                results[(w[0], w[1])] = r
        # as in _judge: a pool that broke (a worker killed) is tried again image by image, alone
        for name in dict.fromkeys(w[0] for k in broken for w in batches[k]):
            again = {(n, i): (args,) for n, i, args in work if n == name}
            redo: dict[Any, Any] = {}
            with _Workers(1) as alone:
                lost = alone.run(_copy_one, again, redo)
            results.update(redo)
            for k in lost:
                results[k] = _WorkerDied()
    for name, i, args in work:
        if (name, i) not in results:
            results[(name, i)] = _copy_one(args)
    leaves: dict[str, Any] = {}
    failed: dict[str, Outcome] = {}
    for s in staged:
        parts: dict[int, list[bytes]] = {}
        for i, piece in enumerate(pieces[s.name]):
            got = results[(s.name, i)]
            if isinstance(got, BaseException):
                failed[s.name] = Outcome(s.name, str(s.src), False, "refused", [_copy_failed(s, got, dest, free)])
                break
            parts.setdefault(piece.area, []).append(got)
        else:
            leaves[s.name] = stage.leaves(list(s.areas), parts)
    return leaves, failed


def _copy_one(args: tuple[int, int, Any]) -> bytes | BaseException:
    """One piece copied (:func:`stage.copy_piece`); what it raised is its result, as in a batch."""
    from bootkeeper.sysext import stage

    return stage.copy_pieces([args])[0]


class _WorkerDied(Exception):
    """The worker process copying a piece died (alone in its pool: the piece's own fault)."""


def _copy_failed(s: _Staged, exc: BaseException, dest: Path, free: int) -> str:
    if isinstance(exc, _WorkerDied):
        return f"{s.src}: copy stopped (its worker process died)"
    if isinstance(exc, OSError):
        return f"copy to {dest} failed ({exc.strerror or exc}; {s.name} is {s.size} bytes, {free} bytes were free)"
    return f"{s.src}: cannot stage a copy ({_fault(exc)})"


class _Workers:
    """Forked worker processes, started on first use (they inherit the descriptors open then) and
    again after one died; each dies with this process (:func:`verity.worker_init`)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._pool: Any = None

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run(self, fn: Callable[..., Any], calls: dict[Any, tuple[Any, ...]], results: dict[Any, Any]) -> list[Any]:
        """``fn(*args)`` of each call into ``results`` (an exception raised is the result); the keys
        whose pool broke. No pool at all: nothing done, nothing broken (the caller runs what is
        left in this process)."""
        from concurrent.futures.process import BrokenProcessPool

        broken = []
        try:
            if self._pool is None:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                from bootkeeper.sysext.verity import worker_init

                ctx = multiprocessing.get_context("fork")
                self._pool = ProcessPoolExecutor(
                    self.n, mp_context=ctx, initializer=worker_init, initargs=(os.getpid(),)
                )
            futures = {k: self._pool.submit(fn, *args) for k, args in calls.items()}
            for k, f in futures.items():
                try:
                    results[k] = f.result()
                except BrokenProcessPool:
                    broken.append(k)
                except Exception as exc:
                    results[k] = exc
        except Exception:  # no pool at all: the caller does the rest in this process
            pass
        if broken:
            self.close()  # a broken pool takes no more work: the next run starts a new one
        return broken


PARALLEL_FROM = 64 << 20  # below this in total, worker processes cost more than they save


@dataclass(frozen=True)
class _Verdict:
    ok: bool
    reasons: list[str]
    signer: str | None
    root_hash: str | None
    qualified_as: str | None
    seconds: float
    blockers: tuple[str, ...] = ()  # why the node's systemd-sysext would not merge it (see image.validate)


def _judge(
    staged: dict[str, Path], rules: _Rules, leaves: dict[str, Any] | None = None, pool: _Workers | None = None
) -> dict[str, _Verdict]:
    """Judge the staged copies (by name): those bytes are what systemd-sysext will use; ``leaves``:
    by name, the hashes of the data blocks taken as each copy was written. Nothing in disabled mode."""
    if rules.mode is SysextMode.DISABLED or not staged:
        return {}
    pol, anchors, host, full = rules.pol, rules.anchors, rules.host, rules.full
    from cryptography.hazmat.primitives.serialization import Encoding

    der = [bytes(c.public_bytes(Encoding.DER)) for c in anchors]
    out: dict[str, _Verdict] = {}
    if pool is not None:
        # one image per task in the round's worker processes: the levels, the signature and the
        # extension-release are Python work, which threads would not spread
        broken = _in_workers(staged, pool.n, out, pol, der, host, full, leaves, pool)
        # a worker that died (a crash in a library, the OOM killer) takes its pool with it: each
        # image of that pool is judged again alone, in a pool of its own, so only the culprit fails
        for n in broken:
            _in_workers({n: staged[n]}, 1, out, pol, der, host, full, leaves)
            if n not in out:
                out[n] = _failed("validation stopped (its worker process died)")
    for n, p in staged.items():
        if n not in out:
            out[n] = _judge_one(n, p, pol, der, host, full, (leaves or {}).get(n))
    return out


def _judge_one(
    name: str,
    path: Path,
    pol: Any,
    anchors: list[bytes],
    host: dict[str, str] | None,
    full: bool,
    leaves: dict[int, Any] | None = None,
) -> _Verdict:
    """Validate one staged copy (in a worker process when there are several large images). Never
    raises: whatever validation raises refuses this image only."""
    t0 = time.monotonic()
    try:
        from bootkeeper.sysext.image import validate
        from bootkeeper.sysext.trust import load_certificates

        # the anchors cross into the worker as DER: the one loader of certificates reads them back
        certs = [c for i, d in enumerate(anchors) for c in load_certificates(d, f"trust anchor {i}")]
        v = validate(path, pol, certs, full=full, os_release=host, name=name, leaves=leaves)
    except Exception as exc:  # the per-image boundary
        return _failed(f"validation stopped ({_fault(exc)})", round(time.monotonic() - t0, 4))
    took = round(time.monotonic() - t0, 4)
    return _Verdict(v.ok, list(v.reasons), v.signer, v.root_hash, v.qualified_as, took, tuple(v.blockers))


def _failed(why: str, seconds: float = 0.0) -> _Verdict:
    return _Verdict(False, [why], None, None, None, seconds, (why,))


def _in_workers(
    staged: dict[str, Path],
    workers: int,
    out: dict[str, _Verdict],
    pol: Any,
    der: list[bytes],
    host: dict[str, str] | None,
    full: bool,
    leaves: dict[str, Any] | None = None,
    pool: _Workers | None = None,
) -> list[str]:
    """Judge ``staged`` in worker processes (``pool``, or ``workers`` of their own) into ``out``;
    the names whose pool broke."""
    calls = {n: (n, p, pol, der, host, full, (leaves or {}).get(n)) for n, p in staged.items()}
    results: dict[Any, Any] = {}
    # worker_init: a worker dies with activate (kill -9 of the unit, a timeout), never left hashing
    with contextlib.ExitStack() as own:
        use = pool if pool is not None else own.enter_context(_Workers(workers))
        broken: list[str] = use.run(_judge_one, calls, results)
    for n, got in results.items():  # an exception here: e.g. a result that does not pickle
        why = f"validation stopped in a worker process ({_fault(got)})"
        out[n] = got if isinstance(got, _Verdict) else _failed(why)
    return broken


def _place_all(
    staged: list[_Staged], dest: Path, mode: SysextMode, verdicts: dict[str, _Verdict]
) -> dict[str, Outcome]:
    """Rename into place the copies the mode allows (their bytes are the bytes judged)."""
    out: dict[str, Outcome] = {}
    for s in staged:
        o = _outcome(s.name, s.src, mode, verdicts.get(s.name))
        if o.placed:
            why = _place(s.fd, s.tmp, dest / s.name)
            if why is not None:
                o.placed, o.verdict = False, "refused"
                o.reasons.append(why)
        out[s.name] = o
    return out


def _outcome(name: str, src: Path, mode: SysextMode, v: _Verdict | None) -> Outcome:
    if v is None:  # disabled: not checked
        return Outcome(name, str(src), True, "unchecked")
    reasons = list(v.reasons)
    if v.ok:
        verdict, placed = "passed", True
    elif mode is SysextMode.PERMISSIVE and not v.blockers:
        verdict, placed = "failed-but-placed", True
    else:
        verdict, placed = "refused", False
        if mode is SysextMode.PERMISSIVE:
            reasons.append(permissive_refusal(list(v.blockers)))
    return Outcome(name, str(src), placed, verdict, reasons, v.signer, v.root_hash, v.qualified_as, v.seconds)


def permissive_refusal(blockers: list[str]) -> str:
    """The reason a permissive run does not place an image: what stops systemd-sysext from merging it."""
    return (
        f"permissive: not placed, systemd-sysext would not merge it ({blockers[0]}); "
        "one it cannot open makes it merge none (systemd#32762)"
    )


def _place(fd: int, tmp: Path, target: Path) -> str | None:
    """Rename the validated copy over ``target``; or why not. Only a regular file (an earlier copy)
    or a symbolic link is replaced: a directory or anything else there is left alone."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return f"{target}: cannot be checked ({exc.strerror}); not placed"
    else:
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            return f"{target}: not a regular file in the way (a directory?); left alone, not placed"
    try:
        fsutil.commit(fd, tmp, target)
    except OSError as exc:
        return f"{target}: cannot place ({exc.strerror or exc})"
    return None


def write_report(root: Path, report: Report) -> None:
    p = root / REPORT
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_atomic(p, (json.dumps(report.as_json(), indent=2) + "\n").encode())
    except OSError as exc:
        raise WriteError(f"{p}: cannot write the report ({exc.strerror})") from exc


def refresh(root: Path, cfg: Sysext, mode: SysextMode, systemd: NodeSystemd | None = None) -> dict[str, Any]:
    """``systemd-sysext refresh``: with the configured policy in enforced mode (in the other modes a
    failing image was placed on purpose, and a policy would make systemd-sysext refuse them all), and
    only when the node's systemd-sysext takes ``--image-policy`` (v254+; 252/253 exit 1 on it and merge
    nothing). ``systemd`` is the node's systemd (default: :func:`systemd_version.resolve` under ``root``
    and ``sysext.systemd_version``).

    The result says ``ok: false`` with the tool's one-line error when it exits nonzero or is missing;
    the caller makes that an error. systemd-sysext 252–255 exit 0 even when the merge itself failed
    (252–254 ``return r != 123``; 256 exits 1, commit baaa1679268a), so ``ok`` can only mean "it ran"."""
    from bootkeeper.run import run
    from bootkeeper.systemd_version import resolve

    node = systemd or resolve(root, cfg.systemd_version)
    argv = ["systemd-sysext", "refresh"]
    if str(root) != "/":
        argv.append(f"--root={root}")
    if mode is SysextMode.ENFORCED and node.takes_image_policy:
        argv.append(f"--image-policy={cfg.policy}")
    env = {"SYSTEMD_SYSEXT_HIERARCHIES": ":".join(cfg.hierarchies)} if cfg.hierarchies else None
    out: dict[str, Any] = {"argv": argv, "env": env, "systemd": node.describe(), "ok": True, "error": None}
    step = not submounts.preserves_submounts(node.major)
    if step:
        out["submounts"] = _submounts("keep", root, env)
    try:
        run(argv, env=env)
    except BootkeeperError as exc:
        out.update(ok=False, error=str(exc))
    if step:
        out["submounts"] += _submounts("restore", root, env)
    return out


def _submounts(verb: str, root: Path, env: dict[str, str] | None) -> list[str]:
    """The drop-in's step (:mod:`bootkeeper.submounts`, the same script text) around a refresh by
    systemd-sysext older than v257, which mounts its overlay on top of the mounts below a hierarchy.
    Its messages, or its failure as one line: a failure never stops the refresh."""
    from bootkeeper.run import run

    # the text travels in the environment: an error line then names the verb, not the whole script
    argv = ["/bin/sh", "-c", 'eval "$BOOTKEEPER_SUBMOUNTS"', "sysext-submounts", verb]
    more = {"BOOTKEEPER_ROOT": str(root), "BOOTKEEPER_SUBMOUNTS": submounts.SCRIPT_TEXT}
    try:
        r = run(argv, env={**(env or {}), **more})
    except BootkeeperError as exc:
        return [str(exc).splitlines()[0]]
    return [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
