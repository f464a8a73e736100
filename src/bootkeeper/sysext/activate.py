"""Boot time: ``/.extra/sysext/*.raw`` (and configured folders) → validate each → ``/run/extensions``.

systemd-sysext refuses every image when one of them fails its checks, so each image is judged on its
own here and only what the mode allows is placed:

* ``enforced``: only images that pass the policy, the hash tree, the signature against the trust
  anchors and the extension-release check;
* ``permissive``: every image, and those that fail are reported;
* ``disabled``: every image, unchecked.

In enforced and permissive mode the trust anchors are also exported to ``/run/verity.d``, where
systemd-sysext looks when it checks a signature in userspace.

Symbolic links and anything but regular files are never followed or placed, in any mode. The bytes
checked are the bytes used: each image is copied to a temporary name in the destination
(``.bootkeeper-*.tmp``, which systemd-sysext ignores), the copy is validated, then renamed. Images
placed by an earlier run that are not placed now are removed (the report lists what we placed).
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
from typing import Any

from bootkeeper import fsutil
from bootkeeper.config import Sysext, SysextMode
from bootkeeper.errors import BootkeeperError, StoreIOError

EXTRA_DIR = ".extra/sysext"
DEST_DIR = "run/extensions"
REPORT = "run/bootkeeper/sysext.json"


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

    def line(self) -> str:
        where = "placed" if self.placed else "not placed"
        who = f", signed by {self.signer}" if self.signer else ""
        why = f": {'; '.join(self.reasons)}" if self.reasons else ""
        return f"{self.name}: {self.verdict}, {where}{who}{why}"


@dataclass
class Report:
    mode: str
    policy: str
    root: str
    sources: list[str]
    images: list[Outcome] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    trust: dict[str, Any] = field(default_factory=dict)
    refresh: dict[str, Any] | None = None
    seconds: float = 0.0

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
    try:
        old = json.loads((root / REPORT).read_text())
        return [i["name"] for i in old.get("images", []) if i.get("placed")]
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return []


def _candidates(sources: list[Path]) -> list[tuple[str, Path | None, str | None]]:
    """(name, path, why-skipped) for every entry of the source folders, first folder wins."""
    from bootkeeper.errors import UsageError
    from bootkeeper.sysext.deploy import check_name

    out: list[tuple[str, Path | None, str | None]] = []
    seen: set[str] = set()
    for d in sources:
        try:
            if d.is_symlink():
                out.append((d.name, None, f"{d}: source folder is a symbolic link; not followed"))
                continue
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            continue
        except OSError as exc:
            out.append((d.name, None, f"{d}: cannot list ({exc.strerror})"))
            continue
        for n in names:
            if fsutil.is_temporary(n) or not n.endswith(".raw"):
                continue  # systemd-stub only passes *.raw; nothing else is an image
            p = d / n
            if n in seen:
                out.append((n, None, f"{p}: an image of this name came from an earlier folder"))
                continue
            seen.add(n)
            try:
                check_name(n)
            except UsageError as exc:
                out.append((n, None, str(exc)))
                continue
            out.append((n, p, None))
    return out


def activate(
    root: Path,
    cfg: Sysext,
    mode: SysextMode | None = None,
    *,
    efivars: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    from bootkeeper.sysext import policy, trust

    started = time.monotonic()
    mode = mode or cfg.mode
    sources = [root / EXTRA_DIR, *(fsutil.under(root, s) for s in cfg.sources)]
    dest = root / DEST_DIR
    report = Report(mode.value, cfg.policy, str(root), [str(s) for s in sources])
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreIOError(f"{dest}: cannot create ({exc.strerror})") from exc
    if dest.is_symlink() or not dest.is_dir():
        raise StoreIOError(f"{dest}: not a folder (a symbolic link or a file is in the way)")
    host = host_os_release(root)
    anchors: list[Any] = []
    pol = policy.parse(cfg.policy, "sysext.policy")
    if mode is not SysextMode.DISABLED:
        store = trust.load(cfg, root, efivars, strict=False)
        anchors = store.certificates
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
        except BootkeeperError as exc:
            report.trust["problems"] = [*store.problems, f"export to {export_dir}: {exc}"]
        else:
            report.trust["exported"] = {"dir": str(export_dir), "written": written, "removed": removed}
    jobs = _candidates(sources)
    with contextlib.ExitStack() as temps:
        # 1. copy each image to a temporary name in the destination (one at a time: copies in
        #    parallel only fight over memory bandwidth)
        copies: dict[str, tuple[int, Path] | Outcome] = {}
        for name, src, _ in jobs:
            if src is not None:
                copies[name] = _copy(name, src, dest, temps)
        # 2. judge the copies: those bytes are what systemd-sysext will use
        staged = {n: c for n, c in copies.items() if not isinstance(c, Outcome)}
        verdicts = _judge({n: c[1] for n, c in staged.items()}, mode, pol, anchors, host, cfg.full_check)
        # 3. rename what the mode allows into place; the rest of the temporaries go with the ExitStack
        for name, src, skipped in jobs:
            c = copies.get(name)
            if src is None or c is None:
                o = Outcome(name, "", False, "skipped", [skipped or "skipped"])
            elif isinstance(c, Outcome):
                o = c
            else:
                o = _outcome(name, src, mode, verdicts.get(name))
                if o.placed:
                    fsutil.commit(c[0], c[1], dest / name)
            report.images.append(o)
            if log is not None:
                log(o.line())
    placed = {o.name for o in report.images if o.placed}
    refused = {o.name for o in report.images if not o.placed and o.verdict == "refused"}
    for old in sorted(refused | set(_previous(root))):
        p = dest / old
        if old not in placed and (p.is_file() or p.is_symlink()):
            p.unlink()  # a copy from an earlier run of an image not placed now must not stay
            report.removed.append(old)
            if log is not None:
                log(f"{old}: removed from {dest} (an earlier copy; not placed now)")
    report.seconds = round(time.monotonic() - started, 4)
    write_report(root, report)
    return report


PARALLEL_FROM = 64 << 20  # below this in total, worker processes cost more than they save


@dataclass(frozen=True)
class _Verdict:
    ok: bool
    reasons: list[str]
    signer: str | None
    root_hash: str | None
    qualified_as: str | None
    seconds: float


def _copy(name: str, src: Path, dest: Path, temps: contextlib.ExitStack) -> tuple[int, Path] | Outcome:
    """Copy ``src`` (never through a symbolic link, regular files only) to a temporary file in
    ``dest`` that lives as long as ``temps``; or the reason it was refused."""
    try:
        sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        why = "a symbolic link; not followed" if os.path.islink(src) else f"cannot open ({exc.strerror})"
        return Outcome(name, str(src), False, "refused", [f"{src}: {why}"])
    try:
        st = os.fstat(sfd)
        if not stat.S_ISREG(st.st_mode):
            return Outcome(name, str(src), False, "refused", [f"{src}: not a regular file"])
        fd, tmp = temps.enter_context(fsutil.temp_file(dest / name))
        try:
            fsutil.copy_into(sfd, fd, st.st_size)
        except OSError as exc:
            return Outcome(name, str(src), False, "refused", [f"copy to {dest} failed ({exc.strerror or exc})"])
        return fd, tmp
    finally:
        os.close(sfd)


def _judge_one(
    name: str, path: Path, pol: Any, anchors: list[bytes], host: dict[str, str] | None, full: bool
) -> _Verdict:
    """Validate one staged copy (in a worker process when there are several large images)."""
    from cryptography import x509

    from bootkeeper.sysext.image import validate

    t0 = time.monotonic()
    certs = [x509.load_der_x509_certificate(d) for d in anchors]
    v = validate(path, pol, certs, full=full, os_release=host, name=name)
    return _Verdict(v.ok, list(v.reasons), v.signer, v.root_hash, v.qualified_as, round(time.monotonic() - t0, 4))


def _judge(
    staged: dict[str, Path],
    mode: SysextMode,
    pol: Any,
    anchors: list[Any],
    host: dict[str, str] | None,
    full: bool,
) -> dict[str, _Verdict]:
    if mode is SysextMode.DISABLED or not staged:
        return {}
    from cryptography.hazmat.primitives.serialization import Encoding

    der = [bytes(c.public_bytes(Encoding.DER)) for c in anchors]
    total = sum(p.stat().st_size for p in staged.values())
    workers = min(len(staged), os.cpu_count() or 1)
    if workers > 1 and full and total >= PARALLEL_FROM:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # one image per worker process: hashing 4 KiB blocks holds the GIL too often for threads
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = {n: pool.submit(_judge_one, n, p, pol, der, host, full) for n, p in staged.items()}
            return {n: f.result() for n, f in futures.items()}
    return {n: _judge_one(n, p, pol, der, host, full) for n, p in staged.items()}


def _outcome(name: str, src: Path, mode: SysextMode, v: _Verdict | None) -> Outcome:
    if v is None:  # disabled: not checked
        return Outcome(name, str(src), True, "unchecked")
    if v.ok:
        verdict, placed = "passed", True
    elif mode is SysextMode.PERMISSIVE:
        verdict, placed = "failed-but-placed", True
    else:
        verdict, placed = "refused", False
    return Outcome(name, str(src), placed, verdict, v.reasons, v.signer, v.root_hash, v.qualified_as, v.seconds)


def write_report(root: Path, report: Report) -> None:
    p = root / REPORT
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_atomic(p, (json.dumps(report.as_json(), indent=2) + "\n").encode())
    except OSError as exc:
        raise StoreIOError(f"{p}: cannot write the report ({exc.strerror})") from exc


def refresh(root: Path, cfg: Sysext, mode: SysextMode) -> dict[str, Any]:
    """``systemd-sysext refresh``: with the configured policy in enforced mode (in the other modes a
    failing image was placed on purpose, and a policy would make systemd-sysext refuse them all)."""
    from bootkeeper.run import run

    argv = ["systemd-sysext", "refresh"]
    if str(root) != "/":
        argv.append(f"--root={root}")
    if mode is SysextMode.ENFORCED:
        argv.append(f"--image-policy={cfg.policy}")
    env = {"SYSTEMD_SYSEXT_HIERARCHIES": ":".join(cfg.hierarchies)} if cfg.hierarchies else None
    try:
        run(argv, env=env)
    except BootkeeperError as exc:
        return {"argv": argv, "env": env, "ok": False, "error": str(exc)}
    return {"argv": argv, "env": env, "ok": True, "error": None}
