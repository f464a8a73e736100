"""Inspect and validate a system extension disk image (a DDI), like ``systemd-dissect --validate``
— and more: it also checks the hash tree, the root hash and the signature, which
``systemd-dissect --validate`` does not (it checks structure and policy only).

An image is a GPT disk with, per data designator (root or usr) and architecture: the data
partition (erofs or squashfs), its ``-verity`` partition (dm-verity superblock + hash tree) and
its ``-verity-sig`` partition (JSON with a PKCS#7 signature of the root hash). The data and
verity partition UUIDs are the two halves of the root hash, as systemd-repart names them.
"""

from __future__ import annotations

import os
import platform
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from bootkeeper import fsutil
from bootkeeper.errors import InputError, MalformedError, RefusedError, UnreadableError, WriteError
from bootkeeper.sysext import gpt, policy, release, signature, verity

if TYPE_CHECKING:
    import io

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

EROFS_MAGIC = 0xE0F5E1E2


# uname -m names -> systemd's (src/basic/architecture.c, arch_map[] of v257: the kernel's names per
# architecture); systemd's own names map to themselves (gpt.TYPES has one per architecture)
UNAME_ARCH = {
    "x86_64": "x86-64", "amd64": "x86-64", "i386": "x86", "i486": "x86", "i586": "x86", "i686": "x86",
    "aarch64": "arm64", "aarch64_be": "arm64-be", "armv8l": "arm", "armv7l": "arm", "armv7hl": "arm",
    "armv6l": "arm", "armv5tel": "arm", "ppc64le": "ppc64-le", "mips64el": "mips64-le", "mipsel": "mips-le",
    "parisc": "parisc", "parisc64": "parisc64", "sh4": "sh",
}  # fmt: skip


def architecture(name: str, where: str = "--arch") -> str:
    """systemd's name for an architecture given by it or by ``uname -m``; a MalformedError otherwise."""
    known = set(gpt.TYPES["root"])
    arch = name if name in known else UNAME_ARCH.get(name, "")
    if arch not in known:
        raise MalformedError(
            f"{where} {name!r}: not an architecture systemd knows ({', '.join(sorted(known))}; "
            "uname -m names such as x86_64 or aarch64 are accepted)"
        )
    return arch


def host_architecture() -> str:
    m = platform.machine()
    return UNAME_ARCH.get(m, m)


def detect_fs(head: bytes) -> str | None:
    if len(head) >= 1028 and int.from_bytes(head[1024:1028], "little") == EROFS_MAGIC:
        return "erofs"
    if head[:4] == b"hsqs":
        return "squashfs"
    return None


@dataclass
class Designated:
    designator: str  # root or usr
    architecture: str
    data: gpt.Partition
    verity: gpt.Partition | None = None
    sig: gpt.Partition | None = None


@dataclass
class ImageInfo:
    path: str
    size: int
    table: gpt.Table
    found: dict[str, Designated]
    others: list[str]  # other discoverable designators present
    fstype: dict[str, str | None] = field(default_factory=dict)
    superblock: dict[str, verity.Superblock] = field(default_factory=dict)
    sig: dict[str, signature.SigJson] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # partitions systemd-dissect would not use, and why
    release: dict[str, release.Release | str] = field(default_factory=dict)  # str: why it is unreadable

    def root_hash(self, d: str) -> bytes | None:
        """From the signature JSON if there is one, else from the partition UUIDs (repart's naming)."""
        if d in self.sig:
            return self.sig[d].root_hash
        des = self.found.get(d)
        if des is None or des.verity is None:
            return None
        return uuid.UUID(des.data.part_uuid).bytes + uuid.UUID(des.verity.part_uuid).bytes

    def as_json(self) -> dict[str, Any]:
        parts = [
            {
                "number": p.number,
                "designator": p.designator,
                "architecture": p.architecture,
                "type": p.type_uuid,
                "uuid": p.part_uuid,
                "name": p.name,
                "offset": p.offset,
                "size": p.size,
                "read_only": bool(p.attributes & gpt.ATTR_READ_ONLY),
            }
            for p in self.table.partitions
        ]
        out: dict[str, Any] = {
            "image": self.path,
            "size": self.size,
            "disk_uuid": self.table.disk_uuid,
            "partitions": parts,
            "problems": self.problems,
            "ignored": self.ignored,
        }
        for d, des in self.found.items():
            rh = self.root_hash(d)
            sb = self.superblock.get(d)
            out[d] = {
                "architecture": des.architecture,
                "fstype": self.fstype.get(d),
                "root_hash": rh.hex() if rh else None,
                "verity": None
                if sb is None
                else {
                    "data_blocks": sb.data_blocks,
                    "data_block_size": sb.data_block_size,
                    "hash_block_size": sb.hash_block_size,
                    "algorithm": sb.algorithm,
                    "salt": sb.salt.hex(),
                },
                "signature": None
                if d not in self.sig
                else {
                    "certificate_fingerprint": self.sig[d].fingerprint.hex(),
                    "claimed_signer": signature.embedded_subjects(self.sig[d].signature),
                },
                "extension_release": _release_json(self.release.get(d)),
            }
        return out


def _release_json(rel: release.Release | str | None) -> dict[str, object] | None:
    if rel is None:
        return None
    if isinstance(rel, str):
        return {"error": rel}
    return {"file": rel.file, "fields": rel.fields}


def _read(f: IO[bytes], p: gpt.Partition, n: int | None = None) -> bytes:
    f.seek(p.offset)
    return bytes(f.read(p.size if n is None else min(n, p.size)))


def _rank(arch: str | None, native: str) -> int:
    """systemd's compare_arch() (src/shared/dissect-image.c, v257): native first, then the
    secondary architecture, then any other."""
    if arch == native:
        return 2
    return 1 if arch == gpt.SECONDARY_ARCH.get(native) else 0


def _select(table: gpt.Table, native: str, problems: list[str]) -> tuple[dict[str, Designated], list[str], list[str]]:
    """Which partitions count, as systemd-dissect 257 picks them: a partition with the no-auto flag
    is skipped as if absent; of one designator's partitions the best architecture wins and the
    others are not looked at (a root-x86 beside a root-x86-64). Two of the same rank are refused
    here, where systemd would take the newer label: the second one is data nobody verified."""
    ranked: dict[str, list[gpt.Partition]] = {}
    ignored: list[str] = []
    for p in table.partitions:
        d = p.designator
        if d is None:
            continue
        if p.attributes & gpt.ATTR_NO_AUTO:
            ignored.append(f"partition {p.number} ({d}, {p.architecture}): no-auto flag, not used")
            continue
        ranked.setdefault(d, []).append(p)
    chosen: dict[str, gpt.Partition] = {}
    for d, ps in ranked.items():
        best = max(_rank(p.architecture, native) for p in ps)
        top = [p for p in ps if _rank(p.architecture, native) == best]
        if len(top) > 1:
            problems.append(f"two {d} partitions (numbers {top[0].number} and {top[1].number})")
        chosen[d] = top[0]
        ignored.extend(
            f"partition {p.number} ({d}, {p.architecture}): a {d} partition for {top[0].architecture} wins"
            for p in ps
            if _rank(p.architecture, native) < best
        )
    found = {d: Designated(d, p.architecture or "?", p) for d, p in chosen.items() if d in ("root", "usr")}
    others: list[str] = []
    for d, p in chosen.items():
        base = policy.DATA_OF_VERITY.get(d) or policy.DATA_OF_SIG.get(d)
        if base is None:
            continue
        des = found.get(base)
        if des is None:
            others.append(d)
            continue
        if p.architecture != des.architecture:
            problems.append(
                f"{d} partition {p.number} is for {p.architecture}, its data partition for {des.architecture}"
            )
        if d in policy.DATA_OF_VERITY:
            des.verity = p
        else:
            des.sig = p
    return found, others, ignored


def inspect(
    path: Path, name: str | None = None, *, architecture: str | None = None, shown_as: str | None = None
) -> ImageInfo:
    """``name``: the file name the image is used under, when ``path`` is a temporary copy;
    ``architecture``: the native one, which wins over others (by default this machine's);
    ``shown_as``: what messages call ``path`` (the user's file, when ``path`` is a private copy of it)."""
    at = shown_as if shown_as is not None else str(path)
    what = at if name is None else f"{name} (at {at})"
    try:
        size = path.stat().st_size
        f = path.open("rb")
    except OSError as exc:
        raise UnreadableError(f"{what}: cannot open ({exc.strerror})") from exc
    with f:
        table = gpt.read(f, size, what)
        problems: list[str] = [f"GPT: {w}" for w in table.warnings]
        found, others, ignored = _select(table, architecture or host_architecture(), problems)
        info = ImageInfo(str(path), size, table, found, others, problems=problems, ignored=ignored)
        for d, des in found.items():
            info.fstype[d] = detect_fs(_read(f, des.data, 4096))
            if des.verity is not None:
                try:
                    info.superblock[d] = verity.Superblock.unpack(_read(f, des.verity, 512), f"{d}-verity superblock")
                except InputError as exc:
                    problems.append(str(exc))
            if des.sig is not None:
                try:
                    info.sig[d] = signature.parse_sig_json(_read(f, des.sig, 65536), f"{d}-verity-sig")
                except InputError as exc:
                    problems.append(str(exc))
            try:
                rel = release.read_from_partition(
                    path, des.data.offset, des.data.size, info.fstype[d], release.image_stem(name or path.name)
                )
                info.release[d] = rel
            except InputError as exc:
                info.release[d] = str(exc)
    return info


def data_areas(fd: int, size: int, architecture: str | None = None) -> list[tuple[int, verity.Superblock]]:
    """Where the verity-protected data of an image of ``size`` bytes at ``fd`` lies, as
    :func:`inspect` finds it (the GPT, the partitions systemd-dissect would use, their verity
    superblocks): (byte offset, superblock) of each, in order, none overlapping. For hashing the
    data while it is copied (:mod:`bootkeeper.sysext.stage`); anything wrong here gives fewer areas
    or none, and the copy's own validation says what is wrong."""
    # the caller's descriptor, not closed here; its offset moves (the copy reads and writes at
    # explicit offsets only)
    f = open(fd, "rb", closefd=False)  # noqa: SIM115 - closed below, the descriptor stays open
    try:
        table = gpt.read(f, size)
        found, _, _ = _select(table, architecture or host_architecture(), [])
        areas = []
        for des in found.values():
            if des.verity is None:
                continue
            sb = verity.Superblock.unpack(_read(f, des.verity, verity.SB_SIZE))
            if des.data.offset + sb.data_blocks * sb.data_block_size <= min(des.data.offset + des.data.size, size):
                areas.append((des.data.offset, sb))
    except (InputError, OSError, ValueError):
        return []
    finally:
        f.close()
    areas.sort(key=lambda a: a[0])
    out: list[tuple[int, verity.Superblock]] = []
    for start, sb in areas:
        if not out or start >= out[-1][0] + out[-1][1].data_blocks * out[-1][1].data_block_size:
            out.append((start, sb))
    return out


@dataclass
class Validation:
    image: str
    ok: bool
    reasons: list[str]
    decisions: list[policy.Decision]
    signer: str | None = None
    root_hash: str | None = None
    qualified_as: str | None = None
    # why the node's systemd-sysext, left to its own policy, would not merge it (empty: it would)
    blockers: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "image": self.image,
            "ok": self.ok,
            "reasons": self.reasons,
            "blockers": self.blockers,
            "signer": self.signer,
            "root_hash": self.root_hash,
            "qualified_as": self.qualified_as,
            "partitions": [
                {"designator": d.designator, "ok": d.ok, "used_as": d.used_as, "reason": d.reason}
                for d in self.decisions
            ],
        }


def validate(
    path: Path,
    pol: policy.ImagePolicy,
    trusted: list[x509.Certificate],
    *,
    full: bool = False,
    architecture: str | None = None,
    os_release: dict[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    name: str | None = None,
    leaves: dict[int, verity.Leaves] | None = None,
    shown_as: str | None = None,
) -> Validation:
    """Check one image: structure, verity tree and root hash, signature, the policy, and its
    extension-release (against ``os_release``, the host's, when given). ``leaves``: by the byte
    offset of each data area, the data blocks' hashes taken as ``path`` was written (see
    :func:`verity.verify_at`); ``shown_as``: what messages call ``path`` (see :func:`inspect`).

    ``blockers`` says why the node's systemd-sysext would not merge the image under its own policy
    (:data:`policy.NODE_SYSEXT_POLICY`): everything but the configured policy's verdicts, that
    policy's verdicts, and a signature that is there but does not verify. Found with the real tools
    (tests/sysext/test_permissive_merge.py): 252 and 257 refuse every image when one has no
    extension-release of its own name or is no disk image ("Failed to read metadata for image"), 252
    also for one carrying os-release; a wrong ID or VERSION_ID is skipped alone; a signature that
    does not verify stops all (reference/vm/NOTES.md scenario 3, systemd#32762). What bootkeeper
    cannot read is a blocker too: placing it could lose every image."""
    checking = _Validating(path, pol, trusted, full, progress, leaves or {}, architecture or host_architecture())
    try:
        info = inspect(path, name, architecture=checking.arch, shown_as=shown_as)
    except InputError as exc:
        return Validation(name or shown_as or str(path), False, [str(exc)], [], blockers=[str(exc)])
    checking.reasons = [p for p in info.problems if not p.startswith("GPT: backup")]
    checking.reasons.extend(_structure(info, pol))
    for d, des in info.found.items():
        _observe(checking, info, d, des)
    if not info.found:
        checking.reasons.append("no root or usr partition")
    for rel in info.release.values():  # read once, by inspect()
        why = rel if isinstance(rel, str) else release.check(rel, os_release, checking.arch)
        if why:
            checking.reasons.append(f"extension-release: {why}")
    return _verdict(checking, info, name or shown_as or str(path))


@dataclass
class _Validating:
    """One validation: what it checks against, and what it found so far, partition by partition."""

    path: Path
    pol: policy.ImagePolicy
    trusted: list[x509.Certificate]
    full: bool
    progress: Callable[[int, int], None] | None
    leaves: dict[int, verity.Leaves]
    arch: str
    reasons: list[str] = field(default_factory=list)
    observed: dict[str, policy.Observed] = field(default_factory=dict)
    signer: str | None = None
    root_hex: str | None = None
    bad_signature: list[str] = field(default_factory=list)  # why systemd-sysext cannot open it


def _observe(v: _Validating, info: ImageInfo, d: str, des: Designated) -> None:
    """Designator ``d``'s partitions: their protection as observed for the policies, or a reason."""
    if v.pol.ignores(d):  # dropped by systemd-dissect before it looks: "unused" in the decisions
        v.observed[d] = policy.Observed(d, policy.Protection.UNPROTECTED, read_only=True, growfs=False)
        return
    if des.architecture != v.arch:
        v.reasons.append(f"{d} partition is for {des.architecture}, this machine is {v.arch}")
    best, why_not = policy.Protection.UNPROTECTED, None
    if des.verity is not None:
        verified = _verified(v, info, d, des)
        if verified is None:
            return
        best, why_not = _signed(v, info, d, des, verified)
    v.observed[d] = policy.Observed(
        d,
        best,
        read_only=bool(des.data.attributes & gpt.ATTR_READ_ONLY),
        growfs=bool(des.data.attributes & gpt.ATTR_GROWFS),
        fstype=info.fstype.get(d),
        why_not_better=why_not,
    )


def _verified(v: _Validating, info: ImageInfo, d: str, des: Designated) -> bytes | None:
    """The root hash of ``d``'s verity partition when its hash tree verifies; else None, with why."""
    sb = info.superblock.get(d)
    rh = info.root_hash(d)
    if sb is None or rh is None:
        v.reasons.append(f"{d}-verity: no usable superblock or root hash")
        return None
    v.root_hex = rh.hex()
    ver = _verify_with_offset(v.path, des, sb, rh, v.full, v.progress, v.leaves.get(des.data.offset))
    if not ver.ok:
        v.reasons.append(f"{d}-verity: {ver.reason}")
        return None
    return rh


def _signed(
    v: _Validating, info: ImageInfo, d: str, des: Designated, rh: bytes
) -> tuple[policy.Protection, str | None]:
    """The protection of verified partitions: signed when the signature of ``rh`` verifies against
    the trusted certificates; else verity, and why not better."""
    if des.sig is None:
        return policy.Protection.VERITY, "no signature partition"
    if d not in info.sig:
        why_not = "signature partition does not parse"
    else:
        check = signature.verify(info.sig[d], rh, v.trusted)
        if check.ok:
            v.signer = check.signer
            return policy.Protection.SIGNED, None
        why_not = check.reason
    # systemd v257 src/shared/dissect-image.c: verity_partition() activates a volume with a signature
    # only by that signature (kernel keyring, then userspace verity.d): it never falls back to plain
    # verity, and the error stops the whole merge
    v.bad_signature.append(f"{d}-verity-sig: {why_not}: systemd-sysext cannot open the image")
    return policy.Protection.VERITY, why_not


def _verdict(v: _Validating, info: ImageInfo, name: str) -> Validation:
    """The policies' verdicts on what was observed: the configured one's, and the node's
    systemd-sysext's own for the blockers."""
    node = policy.evaluate(policy.parse(policy.NODE_SYSEXT_POLICY), v.observed, info.others)
    blockers = [*v.reasons, *v.bad_signature, *(f"systemd-sysext's own policy: {d.reason}" for d in node if not d.ok)]
    decisions = policy.evaluate(v.pol, v.observed, info.others)
    reasons = [*v.reasons, *(d.reason for d in decisions if not d.ok)]
    used = [d.used_as for d in decisions if d.ok and d.used_as not in (None, "absent")]
    return Validation(name, not reasons, reasons, decisions, v.signer, v.root_hex, used[0] if used else None, blockers)


def _structure(info: ImageInfo, pol: policy.ImagePolicy) -> list[str]:
    """The partition table rules systemd-dissect 257 refuses an image on whatever the policy allows
    (its -EADDRNOTAVAIL/-ENOTUNIQ in dissect_image(), src/shared/dissect-image.c), after it has
    dropped the partitions the policy ignores. Each found with crafted images against
    systemd-dissect --validate (tests/sysext/test_interop.py)."""
    out = []
    for d in info.others:
        if not pol.ignores(d):
            base = policy.DATA_OF_VERITY.get(d) or policy.DATA_OF_SIG[d]
            out.append(f"a {d} partition without a {base} partition (systemd-dissect refuses the image)")
    for d, des in info.found.items():
        if des.sig is not None and des.verity is None and not pol.ignores(policy.SIG_OF[d]):
            out.append(f"a {d}-verity-sig partition without a {d}-verity partition (systemd-dissect refuses the image)")
    root, usr = info.found.get("root"), info.found.get("usr")
    if (
        root is not None
        and root.verity is not None
        and not pol.ignores("root-verity")
        and usr is not None
        and not pol.ignores("usr")
    ):
        # a usr partition (of any architecture, with or without its own verity) beside a verity root
        out.append(
            f"a usr partition ({usr.architecture}, number {usr.data.number}) beside the verity-protected root "
            "(systemd-dissect refuses the image)"
        )
    return out


def _verify_with_offset(
    path: Path,
    des: Designated,
    sb: verity.Superblock,
    root_hash: bytes,
    full: bool,
    progress: Callable[[int, int], None] | None = None,
    leaves: verity.Leaves | None = None,
) -> verity.VerifyResult:
    assert des.verity is not None
    fd = os.open(path, os.O_RDONLY)
    try:
        hash_area = verity.HashArea(fd, des.verity.offset, des.verity.size)  # read as needed, not whole
        total = sb.data_blocks * sb.data_block_size
        step = None
        if progress is not None:
            report = progress

            def step(n: int) -> None:
                report(n, total)

        return verity.verify_at(
            fd, des.data.offset, des.data.size, hash_area, root_hash, full=full, progress=step, leaves=leaves
        )
    finally:
        os.close(fd)


def partition_label(designator: str, arch: str) -> str:
    base, _, rest = designator.partition("-")
    return f"{base}-{arch}" + (f"-{rest}" if rest else "")


def assemble(
    data: bytes,
    key: PrivateKeyTypes | None,
    cert: x509.Certificate | None,
    *,
    arch: str = "x86-64",
    designator: str = "root",
    salt: bytes | None = None,
    verity_uuid: bytes | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> bytes:
    """A signed DDI around a ready file system image ``data``: data, verity and (with ``key`` and
    ``cert``) verity-sig partitions, named and UUID'd the way systemd-repart does it."""
    import hashlib
    import io

    if len(data) % 4096:
        data += b"\0" * (4096 - len(data) % 4096)
    src = io.BytesIO(data)
    tree = _build_tree(src, salt, verity_uuid, progress)
    data_uuid, hash_uuid = gpt.split_root_hash(tree.root_hash)
    parts = [
        gpt.NewPartition(gpt.TYPES[designator][arch], data_uuid, partition_label(designator, arch), data),
        gpt.NewPartition(
            gpt.TYPES[f"{designator}-verity"][arch],
            hash_uuid,
            partition_label(f"{designator}-verity", arch),
            tree.hash_area(),
        ),
    ]
    if key is not None and cert is not None:
        sig = signature.sign(tree.root_hash, key, cert)
        sig_uuid = str(uuid.UUID(bytes=hashlib.sha256(tree.root_hash + b"verity-sig").digest()[:16]))
        parts.append(
            gpt.NewPartition(
                gpt.TYPES[f"{designator}-verity-sig"][arch],
                sig_uuid,
                partition_label(f"{designator}-verity-sig", arch),
                sig.dump(),
            )
        )
    disk_uuid = str(uuid.UUID(bytes=hashlib.sha256(tree.root_hash + b"disk").digest()[:16]))
    out = io.BytesIO()
    gpt.write(out, parts, disk_uuid)
    return out.getvalue()


def _build_tree(
    src: io.BytesIO, salt: bytes | None, verity_uuid: bytes | None, progress: Callable[[int, int], None] | None = None
) -> verity.Tree:
    """verity.build wants a real file descriptor: spool the bytes through a temporary file."""
    import tempfile

    with tempfile.TemporaryFile() as tmp:
        tmp.write(src.getvalue())
        tmp.flush()
        total = len(src.getvalue())
        step = None
        if progress is not None:
            report = progress

            def step(n: int) -> None:
                report(n, total)

        return verity.build(tmp, salt=salt, uuid=verity_uuid, progress=step)


def build(
    tree: Path,
    out: Path,
    key: PrivateKeyTypes | None,
    cert: x509.Certificate,
    *,
    fs: str = "erofs",
    arch: str | None = None,
    os_release: dict[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    step: fsutil.Step = fsutil.no_step,
) -> Path:
    """Make a signed sysext from the directory ``tree`` (which is not changed): the file system
    (mkfs.erofs, or mksquashfs), then verity, signature and GPT; written atomically to ``out``
    (:func:`fsutil.write_atomic`; ``step`` is its crash point hook, for tests)."""
    import shutil
    import tempfile

    from bootkeeper.run import check_tool, run

    arch = architecture(arch) if arch else host_architecture()
    if fs not in ("erofs", "squashfs"):
        raise MalformedError(f"--fs {fs!r}: expected erofs or squashfs")
    tool = "mkfs.erofs" if fs == "erofs" else "mksquashfs"
    check_tool(tool, f"to make the {fs} file system of the extension")
    if not tree.is_dir():
        raise UnreadableError(f"{tree}: not a directory")
    name = release.image_stem(out.name)
    present = sorted(p.name for p in (tree / release.RELEASE_DIR).glob("extension-release.*"))
    if present and f"extension-release.{name}" not in present:
        raise MalformedError(
            f"{tree}: has {', '.join(present)} but the image is named {out.name}; systemd looks for "
            f"extension-release.{name}: rename one of them"
        )
    if present:
        own = release.parse_release(
            (tree / release.RELEASE_DIR / f"extension-release.{name}").read_text(encoding="utf-8", errors="replace")
        ).get("ARCHITECTURE")
        if own and own != "_any" and own != arch:
            raise RefusedError(
                f"{tree / release.RELEASE_DIR}/extension-release.{name}: ARCHITECTURE={own}, but the image is "
                f"built for {arch} (--arch): systemd-sysext would refuse it"
            )
    with tempfile.TemporaryDirectory(prefix="bootkeeper-build-") as tmp:
        work = Path(tmp) / "tree"
        shutil.copytree(tree, work, symlinks=True)
        rel_dir = work / release.RELEASE_DIR
        if not present:
            rel_dir.mkdir(parents=True, exist_ok=True)
            lines = ["ID=_any"]
            if os_release:
                lines = [f"ID={os_release.get('ID', '_any')}"]
                for k in ("VERSION_ID", "SYSEXT_LEVEL"):
                    if os_release.get(k):
                        lines.append(f"{k}={os_release[k]}")
            lines.append(f"ARCHITECTURE={arch}")
            (rel_dir / f"extension-release.{name}").write_text("\n".join(lines) + "\n")
        img = Path(tmp) / "fs.img"
        if fs == "erofs":
            run(["mkfs.erofs", "-T0", "--all-root", "--quiet", str(img), str(work)], timeout=3600)
        else:
            run(
                [
                    "mksquashfs",
                    str(work),
                    str(img),
                    "-quiet",
                    "-noappend",
                    "-all-root",
                    "-mkfs-time",
                    "0",
                    "-all-time",
                    "0",
                ],
                timeout=3600,
            )
        disk = assemble(img.read_bytes(), key, cert, arch=arch, progress=progress)
        # crash-safe as every write of ours: the folder is fsynced after the rename, and an error
        # leaves no temporary behind
        try:
            fsutil.write_atomic(out, disk, step)
        except OSError as exc:
            raise WriteError(f"{out}: cannot write ({exc.strerror})") from exc
    return out
