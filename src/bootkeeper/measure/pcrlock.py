"""``.pcrlock`` components for systemd-pcrlock 257: each boot entry's UKI and its PCR 13 extensions,
one variant per entry, so that one pcrlock policy admits every role.

A ``.pcrlock`` file (man/systemd.pcrlock.xml, src/pcrlock/pcrlock.c, v257.9) is a JSON object whose
``records`` list the measurements of one component, in the order they are logged, each
``{"pcr": N, "digests": [{"hashAlg": name, "digest": hex}, ...]}`` in every bank pcrlock knows (sha1,
sha256, sha384, sha512: ``tpm2_hash_algorithms[]``). Files ``NNN-name.pcrlock.d/*.pcrlock`` are the
variants of component ``NNN-name``: alternatives, any one of which may be in the log. Components are
taken in name order, and the default policy range ``760-:940-`` starts after them; so the UKI goes at
650 (after ``600-gpt`` and a boot loader's ``lock-pe`` file, before ``700-action-efi-exit-boot-services``),
its extensions at 660.

The UKI variant holds what the firmware and systemd-stub log for the entry, in log order:

* PCR 4, the UKI's Authenticode hash: the firmware measures it when systemd-boot calls
  ``LoadImage()`` (what ``systemd-pcrlock lock-uki`` writes first);
* PCR 11, the stub's two records per section (:mod:`bootkeeper.measure.uki`: the entry's profile,
  sections of VirtualSize 0 left out; ``lock-uki`` hashes every section there is, and gives up on a
  multi-profile UKI, whose sections come twice). A UKI with ``.dtbauto`` is refused: the stub measures
  it only if it matches the machine's device tree;
* PCR 4 again, the kernel: stub 257 starts the ``.linux`` section with ``LoadImage()`` from memory
  (src/boot/linux.c ``load_image()``), and the firmware measures that buffer (VirtualSize bytes) as an
  EFI application. ``lock-uki`` 257 leaves this record out (systemd issue #36076), so its policy fails
  on PCR 4. Under Secure Boot the stub installs a security override for the call
  (src/boot/secure-boot.c ``install_security_override()``) that answers the firmware's security
  hook itself, and the firmware's measurement, which runs from that hook, does not happen: no record.

The extensions variant holds the one PCR 13 record, "System extension initrd" (no record when the
entry has none: an empty variant, which pcrlock takes as "nothing measured").

pcrlock predicts each PCR on its own: variants of different components, and the PCRs of one variant,
combine freely (the active UKI with the passive entry's extensions passes too). A policy per role
needs a pcrlock policy per role, which one NV index cannot hold."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from bootkeeper import fsutil
from bootkeeper.errors import MalformedError, RefusedError, UnreadableError, WriteError
from bootkeeper.esp.pe import Section, read_sections
from bootkeeper.esp.store import EspStore
from bootkeeper.measure import authenticode, uki
from bootkeeper.measure.banks import BANKS, Bank
from bootkeeper.measure.predict import Prediction, predict

__all__ = [
    "COMPONENT_SYSEXT",
    "COMPONENT_UKI",
    "Record",
    "Variant",
    "components",
    "setup_dirs",
    "sysext_variants",
    "update",
    "write",
]

# tpm2_hash_algorithms[] (src/shared/tpm2-util.c, v257.9): the banks and their order in every record
PCRLOCK_BANKS: tuple[Bank, ...] = tuple(BANKS[n] for n in ("sha1", "sha256", "sha384", "sha512"))
COMPONENT_UKI = "650-bootkeeper-uki"
COMPONENT_SYSEXT = "660-bootkeeper-sysext"
SUFFIX = ".pcrlock"
PCR_BOOT_LOADER_CODE = 4
# systemd-pcrlock's search path without /usr (read-only on an immutable node): systemd.pcrlock(5), v257
PCRLOCK_DIRS = ("etc/pcrlock.d", "run/pcrlock.d", "var/lib/pcrlock.d")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True)
class Record:
    pcr: int
    digests: dict[str, bytes]
    what: str  # for the summary; pcrlock's records have no such field

    def to_json(self) -> dict[str, object]:
        return {
            "pcr": self.pcr,
            "digests": [{"hashAlg": b.name, "digest": self.digests[b.name].hex()} for b in PCRLOCK_BANKS],
        }


@dataclass(frozen=True)
class Variant:
    component: str
    name: str  # the file's name without .pcrlock
    entry: str
    role: str | None
    uki: str
    records: tuple[Record, ...]

    @property
    def relpath(self) -> str:
        return f"{self.component}{SUFFIX}.d/{self.name}{SUFFIX}"

    def document(self) -> bytes:
        return (json.dumps({"records": [r.to_json() for r in self.records]}) + "\n").encode()

    def summary(self) -> dict[str, object]:
        return {
            "component": self.component,
            "variant": self.name,
            "path": self.relpath,
            "entry": self.entry,
            "role": self.role,
            "uki": self.uki,
            "records": [{"pcr": r.pcr, "what": r.what, "sha256": r.digests["sha256"].hex()} for r in self.records],
        }


def _kernel_record(path: Path, what: str, s: Section) -> Record:
    try:
        with fsutil.open_regular(path, what) as f:
            f.seek(0, os.SEEK_END)
            if s.file_offset + min(s.virtual_size, s.file_size) > f.tell():
                raise MalformedError(f"{what}: section .linux extends past the end of the file")
            img = authenticode.Image(
                f, f"{what}: section .linux", s.virtual_size, s.file_offset, min(s.virtual_size, s.file_size)
            )
            # once per file and run: every profile that starts this .linux has the same record
            key = ("authenticode", s.file_offset, s.file_size, s.virtual_size)
            d = uki.memo(f, key, lambda: authenticode.digests(img, PCRLOCK_BANKS))
    except OSError as exc:
        raise UnreadableError(f"{what}: {exc.strerror or exc}") from exc
    return Record(PCR_BOOT_LOADER_CODE, d, f"the kernel PE in .linux of {what} ({s.virtual_size} bytes), by LoadImage")


def _linux_section(path: Path, what: str, table: list[Section], p: Prediction) -> Section:
    """The .linux section the stub starts for this entry: the only one, or (a profile with its own
    kernel) the one whose bytes are the .linux data the stub measured into PCR 11."""
    found = [s for s in table if s.name == ".linux" and s.virtual_size]
    if len(found) == 1:
        return found[0]
    data = [e for e in p.events if e.pcr == 11 and e.description == ".linux"]
    if len(data) != 2:
        raise MalformedError(f"{what}: no .linux section measured for entry {p.entry}")
    want = data[1].digests["sha256"]
    h = BANKS["sha256"]
    for s in found:  # all bounded together by sections_of() (per file); each hashed once per run
        try:
            with fsutil.open_regular(path, what) as f:
                got = uki.section_digests(f, s, what, (h,))["sha256"]
        except OSError as exc:
            raise UnreadableError(f"{what}: {exc.strerror or exc}") from exc
        if got == want:
            return s
    raise MalformedError(f"{what}: none of its .linux sections is the one measured for entry {p.entry}")


def _uki_record(path: Path, what: str) -> Record:
    try:
        with fsutil.open_regular(path, what) as f:
            size = os.fstat(f.fileno()).st_size
            d = authenticode.digests(authenticode.Image(f, what, size), PCRLOCK_BANKS)
    except OSError as exc:
        raise UnreadableError(f"{what}: {exc.strerror or exc}") from exc
    return Record(PCR_BOOT_LOADER_CODE, d, f"the UKI {what}, by LoadImage")


def uki_records(store: EspStore, p: Prediction, secure_boot: bool) -> list[Record]:
    path = store.root / p.uki
    try:
        with fsutil.open_regular(path, p.uki) as f:
            table = read_sections(f, p.uki)
    except OSError as exc:
        raise UnreadableError(f"{p.uki}: {exc.strerror or exc}") from exc
    if any(s.name in uki.NOT_PREDICTED and s.virtual_size for s in table):
        raise RefusedError(
            f"{p.uki}: has {', '.join(uki.NOT_PREDICTED)}, which the stub measures only when it matches the "
            "machine's device tree; no component can say whether it will"
        )
    out = [_uki_record(path, p.uki)]
    out += [Record(e.pcr, e.digests, e.what) for e in p.events if e.pcr == 11 and e.source == "systemd-stub"]
    if not secure_boot:
        out.append(_kernel_record(path, p.uki, _linux_section(path, p.uki, table, p)))
    return out


def _names(found: list[Prediction]) -> list[str]:
    """One file name per entry: its role, or its entry name when the role is taken or there is none."""
    names: list[str] = []
    for p in found:
        base = p.role if p.role is not None and sum(q.role == p.role for q in found) == 1 else p.entry
        name = _UNSAFE.sub("_", base).lstrip(".") or "entry"  # no hidden file, nothing outside the folder
        while name in names:
            name = f"{name}_"
        names.append(name)
    return names


def components(store: EspStore, secure_boot: bool, roles: tuple[str, ...] = ()) -> list[Variant]:
    """The variants of both components, one of each per entry that runs a UKI."""
    found = predict(store, PCRLOCK_BANKS, secure_boot, roles)
    out: list[Variant] = []
    for p, name in zip(found, _names(found), strict=True):
        try:
            recs = uki_records(store, p, secure_boot)
        except (MalformedError, UnreadableError, RefusedError) as exc:
            raise type(exc)(f"entry {p.entry}: {exc}") from exc
        out.append(Variant(COMPONENT_UKI, name, p.entry, p.role, p.uki, tuple(recs)))
        out.append(_sysext_variant(p, name))
    return sorted(out, key=lambda v: (v.component, v.name))


def _sysext_variant(p: Prediction, name: str) -> Variant:
    records = tuple(Record(e.pcr, e.digests, e.what) for e in p.events if e.pcr == 13)
    return Variant(COMPONENT_SYSEXT, name, p.entry, p.role, p.uki, records)


def sysext_variants(store: EspStore, extra_dirs: set[str]) -> list[Variant]:
    """The 660-bootkeeper-sysext variants of the entries whose ``.extra.d`` is one of ``extra_dirs``
    (each profile of a UKI is an entry of its own, with the same folder), named as :func:`components`
    names them over every entry: what ``sysext install|remove`` re-runs for the entries it changed.
    An extension change moves PCR 13 alone, so the UKI component stays as it is."""
    found = predict(store, PCRLOCK_BANKS, False)  # Secure Boot changes PCR 4 and 12 only
    wanted = {d.lower() for d in extra_dirs}  # the ESP is FAT: its names match whatever their case
    return [_sysext_variant(p, n) for p, n in zip(found, _names(found), strict=True) if p.extra_dir.lower() in wanted]


def setup_dirs(root: Path) -> list[Path]:
    """The pcrlock.d folders under ``root`` where ``tpm pcrlock`` was set up: those of systemd-pcrlock's
    writable search path (systemd.pcrlock(5), v257) that hold the 660-bootkeeper-sysext component."""
    out = []
    for d in PCRLOCK_DIRS:
        p = fsutil.under(root, d)
        if (p / f"{COMPONENT_SYSEXT}{SUFFIX}.d").is_dir():
            out.append(p)
    return out


def update(dest: Path, variants: list[Variant]) -> list[str]:
    """Write these variants under ``dest``, each atomically, and leave every other file as it is (the
    other entries' variants stay valid). Returns the paths written, relative to ``dest``."""
    written: list[str] = []
    try:
        for v in variants:
            folder = dest / f"{v.component}{SUFFIX}.d"
            folder.mkdir(parents=True, exist_ok=True)
            fsutil.write_atomic(dest / v.relpath, v.document())
            written.append(v.relpath)
    except OSError as exc:
        raise WriteError(f"{dest}: {exc.strerror or exc}") from exc
    return written


def write(dest: Path, variants: list[Variant]) -> list[str]:
    """Write every variant under ``dest`` (each file atomically), then remove the other ``.pcrlock``
    files of these components (entries gone since the last run): a crash leaves old and new variants
    side by side, each whole. Returns the names removed."""
    removed: list[str] = []
    try:
        for comp in sorted({v.component for v in variants} | {COMPONENT_UKI, COMPONENT_SYSEXT}):
            folder = dest / f"{comp}{SUFFIX}.d"
            folder.mkdir(parents=True, exist_ok=True)
            fsutil.clear_temporaries(folder)
            mine = [v for v in variants if v.component == comp]
            for v in mine:
                fsutil.write_atomic(dest / v.relpath, v.document())
            keep = {f"{v.name}{SUFFIX}" for v in mine}
            for n in sorted(os.listdir(folder)):
                p = folder / n
                if n.endswith(SUFFIX) and n not in keep and p.is_file() and not p.is_symlink():
                    p.unlink()
                    removed.append(f"{comp}{SUFFIX}.d/{n}")
            if removed:
                fsutil.fsync_dir(folder)
    except OSError as exc:
        raise WriteError(f"{dest}: {exc.strerror or exc}") from exc
    return removed
