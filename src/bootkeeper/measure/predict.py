"""``bootkeeper tpm predict``: for each boot entry that runs a UKI, every event systemd-boot and
systemd-stub 257 log into PCRs 11, 12 and 13, and the values those PCRs hold when the stub hands
over to the kernel (and PCR 11 after each boot phase). Offline, from the ESP alone.

What goes where (src/boot/stub.c and src/boot/boot.c, v257.9):

* PCR 11, the UKI: :mod:`bootkeeper.measure.uki`.
* PCR 12, the parameters, in this order: the command line systemd-boot passes (a Type #1 entry's
  ``options``, ``@N`` for a UKI profile N ≥ 1), which systemd-boot measures itself
  (``image_start()``); the stub's profile number N ≥ 1 (EV_EVENT_TAG ``UKI_PROFILE_EVENT_TAG_ID``);
  the passed command line again, by the stub, unless Secure Boot is on and the UKI has ``.cmdline``
  (``settle_command_line()``: then it is dropped, not measured); the command line of the addons
  (``loader/addons/*.addon.efi``, then the UKI's ``.extra.d/*.addon.efi``, each sorted), joined;
  ``.extra.d/*.cred`` ("Credentials initrd"); ``loader/credentials/*.cred`` ("Global credentials
  initrd"); ``.extra.d/*.confext.raw`` ("Configuration extension initrd"); then the addons' ``.ucode``
  (in reverse) and ``.initrd`` sections (EV_EVENT_TAG).
* PCR 13, the system extensions: one cpio of ``.extra.d/*.raw`` minus ``*.confext.raw``.

Not predicted, because they are the machine's and not the ESP's: the SMBIOS
``io.systemd.stub.kernel-cmdline-extra`` string, device-tree addons (measured only once the
firmware's device tree takes them), ``.dtbauto``. Addons are assumed to load (under Secure Boot the
firmware must accept their signatures)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from bootkeeper import fsutil
from bootkeeper.errors import InputError, MalformedError
from bootkeeper.esp import extra
from bootkeeper.esp.pe import Section, read_section, read_sections
from bootkeeper.esp.store import EspStore
from bootkeeper.measure import cpio, uki
from bootkeeper.measure.banks import Bank, extend, zero
from bootkeeper.measure.events import EV_EVENT_TAG, EV_IPL, Event, Hasher, digests_of

__all__ = ["Prediction", "predict", "predict_target"]

# src/fundamental/tpm2-pcr.h (v257.9)
INITRD_ADDON_EVENT_TAG_ID = 0x49DFFE0F
UCODE_ADDON_EVENT_TAG_ID = 0xDAC08E1A
UKI_PROFILE_EVENT_TAG_ID = 0x13AED6DB
PCRS = (11, 12, 13)
ADDONS_DIR = "loader/addons"
CREDENTIALS_DIR = "loader/credentials"


@dataclass(frozen=True)
class Prediction:
    role: str | None
    entry: str
    uki: str
    extra_dir: str
    banks: tuple[Bank, ...]
    events: tuple[Event, ...]  # in the order the firmware logs them
    notes: tuple[str, ...] = field(default=())

    def pcrs(self) -> dict[str, dict[int, bytes]]:
        out: dict[str, dict[int, bytes]] = {}
        for b in self.banks:
            out[b.name] = {}
            for n in PCRS:
                v = zero(b)
                for e in self.events:
                    if e.pcr == n:
                        v = extend(b, v, e.digests[b.name])
                out[b.name][n] = v
        return out

    def phases(self) -> dict[str, dict[str, bytes]]:
        return uki.phase_values({b: v[11] for b, v in self.pcrs().items()}, self.banks)

    def to_json(self) -> dict[str, object]:
        return {
            "role": self.role,
            "entry": self.entry,
            "uki": self.uki,
            "extra_dir": self.extra_dir,
            "pcrs": {b: {str(n): v.hex() for n, v in pcrs.items()} for b, pcrs in self.pcrs().items()},
            "pcr11_phases": {b: {p: v.hex() for p, v in vals.items()} for b, vals in self.phases().items()},
            "events": [e.to_json() for e in self.events],
            "notes": list(self.notes),
        }


def _utf16_event(pcr: int, text: str, what: str, banks: tuple[Bank, ...], source: str) -> Event:
    """A load-options measurement (``tpm_log_load_options()``): the UTF-16 string with its NUL is both
    what is hashed and the log's description."""
    return Event(pcr, EV_IPL, text, what, digests_of(banks, (text + "\0").encode("utf-16-le")), source=source)


def mangle_cmdline(s: str) -> str:
    """``mangle_stub_cmdline()`` (src/boot/util.c): leading and trailing whitespace dropped, control
    characters inside turned into spaces."""
    return "".join(" " if ord(c) < 0x20 or c == " " else c for c in s).strip(" ")


def _cpio_event(
    pcr: int,
    description: str,
    folder: Path | None,
    where: str,
    suffix: str,
    exclude: str | None,
    prefix: str,
    dir_mode: int,
    access_mode: int,
    banks: tuple[Bank, ...],
) -> Event | None:
    found = cpio.members(folder, suffix, exclude, where)
    if not found:
        return None
    h = Hasher(banks)
    refs = cpio.write(prefix, dir_mode, access_mode, found, h.update, where)
    names = ", ".join(r.name for r in refs)
    return Event(pcr, EV_IPL, description, f"a cpio of {where}/ ({names})", h.digests(), files=tuple(refs))


def _strneq8(ours: bytes, theirs: bytes) -> bool:
    """``strneq8(uname, addon's .uname, its size)`` (src/fundamental/efi-string.c): equal up to the
    addon section's size, or up to a NUL they share."""
    for i, cb in enumerate(theirs):
        ca = ours[i] if i < len(ours) else 0
        if ca != cb:
            return False
        if ca == 0:
            return True
    return True


_ADDON_KINDS = (".cmdline", ".dtb", ".dtbauto", ".initrd", ".ucode")


def _addon_sections(table: list[Section]) -> dict[str, Section] | None:
    """The addon's non-empty sections by name, or None when the stub ignores the file."""
    found: dict[str, Section] = {}
    for name in (*_ADDON_KINDS, ".linux", ".uname"):
        s = next((s for s in table if s.name == name), None)
        if s is not None and s.virtual_size:
            found[name] = s
    if not any(n in found for n in _ADDON_KINDS):
        return None  # "Unable to locate embedded .cmdline/... sections, ignoring"
    if ".linux" in found:
        return None  # "is a UKI, not an addon, ignoring"
    return found


@dataclass
class _Addons:
    """What the addons add, in the order the stub loads them."""

    cmdline: str = ""
    ucode: list[Event] = field(default_factory=list)
    initrd: list[Event] = field(default_factory=list)


def _read_addon(
    f: BinaryIO, m: cpio.Member, what: str, uname: bytes | None, banks: tuple[Bank, ...], acc: _Addons
) -> None:
    """One addon file into ``acc``: its command line and its .ucode and .initrd events."""
    table = read_sections(f, what)
    found = _addon_sections(table)
    if found is None:
        return
    uki.bound(found.values(), what)  # the stub measures .ucode/.initrd as loaded, as a UKI's
    theirs = read_section(f, table, ".uname", what) if ".uname" in found else None
    if uname is not None and theirs is not None and not _strneq8(uname, theirs):
        return  # ".uname mismatch between addon and UKI, ignoring"
    if ".cmdline" in found:
        data = uki.UkiSections(m.path, what, 0, {".cmdline": found[".cmdline"]}).read(".cmdline")
        extra16 = mangle_cmdline(data.split(b"\0")[0].decode("utf-8", "replace"))
        acc.cmdline = f"{acc.cmdline}{' ' if acc.cmdline else ''}{extra16}"
    for name, tag, into in (
        (".ucode", UCODE_ADDON_EVENT_TAG_ID, acc.ucode),
        (".initrd", INITRD_ADDON_EVENT_TAG_ID, acc.initrd),
    ):
        if name in found:
            h = Hasher(banks)
            uki.feed(f, found[name], what, h.update)
            into.append(Event(12, EV_EVENT_TAG, m.name, f"section {name} of addon {what}", h.digests(), tag=tag))


def _addon_events(
    store: EspStore, folders: list[tuple[str, Path | None]], uname: bytes | None, banks: tuple[Bank, ...]
) -> tuple[str, list[Event], list[Event]]:
    """The addons' combined command line, their .ucode events (reversed) and .initrd events, as
    ``load_addons()``/``measure_and_append_*_addons()`` (src/boot/stub.c, v257.9) take them."""
    acc = _Addons()
    for where, folder in folders:
        for m in cpio.members(folder, ".addon.efi", None, where):
            what = f"{where}/{m.name}"
            try:
                with fsutil.open_regular(m.path, what) as f:  # a FIFO there must not hang the prediction
                    _read_addon(f, m, what, uname, banks, acc)
            except OSError as exc:
                from bootkeeper.errors import UnreadableError

                raise UnreadableError(f"{what}: {exc.strerror or exc}") from exc
    return acc.cmdline, list(reversed(acc.ucode)), acc.initrd


def predict_target(store: EspStore, t: extra.Target, banks: tuple[Bank, ...], secure_boot: bool) -> Prediction:
    path = store.find_ci(t.uki)
    if path is None or not path.is_file():
        raise MalformedError(f"{t.uki}: the UKI of entry {t.entry} is not on the ESP")
    sections = uki.sections_of(path, t.uki, t.profile)
    notes = [
        f"{t.uki}: section {n} depends on the machine's device tree and is not predicted"
        for n in uki.has_unpredicted(sections)
    ]
    events: list[Event] = []
    # systemd-boot: the options it passes (boot.c image_start(): "@N" prefix for a profile)
    options = t.options
    if t.profile > 0:
        options = f"@{t.profile}" if not options else f"@{t.profile} {options}"
    if options:
        events.append(
            _utf16_event(12, options, f"the command line systemd-boot passes to {t.uki}", banks, "systemd-boot")
        )
    # systemd-stub
    events += uki.section_events(sections, banks)
    if t.profile > 0:
        s = str(t.profile)
        events.append(
            Event(
                12,
                EV_EVENT_TAG,
                s,
                f"profile {s} of {t.uki}",
                digests_of(banks, (s + "\0").encode("utf-16-le")),
                tag=UKI_PROFILE_EVENT_TAG_ID,
            )
        )
    passed = t.options  # process_arguments(): the "@N " prefix is parsed off
    if passed:
        passed = mangle_cmdline(passed)
        if secure_boot and sections.has(".cmdline"):
            notes.append(f"{t.via}: Secure Boot is on and {t.uki} has .cmdline: the stub drops the passed command line")
        elif passed:
            events.append(_utf16_event(12, passed, f"the command line {t.uki} was passed", banks, "systemd-stub"))
    extra_dir = store.find_ci(t.extra_dir)
    uname = sections.read(".uname").split(b"\0")[0] if sections.has(".uname") else None
    addon_cmdline, ucode_addons, initrd_addons = _addon_events(
        store, [(ADDONS_DIR, store.find_ci(ADDONS_DIR)), (t.extra_dir, extra_dir)], uname, banks
    )
    addon_cmdline = mangle_cmdline(addon_cmdline)
    if addon_cmdline:
        events.append(_utf16_event(12, addon_cmdline, "the command line of the addons", banks, "systemd-stub"))
    for ev in (
        _cpio_event(
            12, "Credentials initrd", extra_dir, t.extra_dir, ".cred", None, ".extra/credentials", 0o500, 0o400, banks
        ),
        _cpio_event(
            12,
            "Global credentials initrd",
            store.find_ci(CREDENTIALS_DIR),
            CREDENTIALS_DIR,
            ".cred",
            None,
            ".extra/global_credentials",
            0o500,
            0o400,
            banks,
        ),
        _cpio_event(
            13,
            "System extension initrd",
            extra_dir,
            t.extra_dir,
            ".raw",
            ".confext.raw",
            ".extra/sysext",
            0o555,
            0o444,
            banks,
        ),
        _cpio_event(
            12,
            "Configuration extension initrd",
            extra_dir,
            t.extra_dir,
            ".confext.raw",
            None,
            ".extra/confext",
            0o555,
            0o444,
            banks,
        ),
    ):
        if ev is not None:
            events.append(ev)
    events += ucode_addons + initrd_addons
    role = t.role.value if t.role is not None else None
    return Prediction(role, t.entry, t.uki, t.extra_dir, banks, tuple(events), tuple(notes))


def predict(
    store: EspStore, banks: tuple[Bank, ...], secure_boot: bool, roles: tuple[str, ...] = (), vendor: str | None = None
) -> list[Prediction]:
    """Every entry that runs a UKI (``roles``: only entries of those roles, or those names)."""
    found, failed = _predict_targets(store, _targets(store, roles, vendor), banks, secure_boot)
    for f in failed:
        raise type(f.error)(f"entry {f.entry}: {f.error}") from f.error
    return found


def _targets(store: EspStore, roles: tuple[str, ...], vendor: str | None) -> list[extra.Target]:
    snap = store.snapshot()
    targets = extra.targets(snap, store, vendor)
    # a UKI's profiles >= 1 (systemd-boot 257+) are menu entries of their own: same file, same .extra.d
    by_file = {t.via: t for t in targets}
    for p in snap.profiles:
        t = by_file.get(p.path)
        if t is not None:
            targets.append(dataclasses.replace(t, entry=f"{t.entry}@{p.profile_id or p.profile}", profile=p.profile))
    if roles:
        wanted = {r.lower() for r in roles}
        targets = [t for t in targets if t.entry.lower() in wanted or (t.role is not None and t.role.value in wanted)]
    targets.sort(key=lambda t: (t.role.rank if t.role else 99, t.entry, t.profile))
    return targets


@dataclass(frozen=True)
class Unpredictable:
    """An entry whose measurements cannot be predicted: its UKI (or an addon, an ``.extra.d`` file)
    is unreadable or malformed. ``reason`` is the one line the error said."""

    role: str | None
    entry: str
    uki: str
    error: InputError

    @property
    def reason(self) -> str:
        return str(self.error)


def predict_each(
    store: EspStore, banks: tuple[Bank, ...], secure_boot: bool
) -> tuple[list[Prediction], list[Unpredictable]]:
    """Every entry that runs a UKI, as :func:`predict`, except that an entry that cannot be predicted
    is returned beside the others instead of stopping them (``tpm verify``: one broken entry must
    not take the verdict on the booted one with it)."""
    return _predict_targets(store, _targets(store, (), None), banks, secure_boot)


def _predict_targets(
    store: EspStore, targets: list[extra.Target], banks: tuple[Bank, ...], secure_boot: bool
) -> tuple[list[Prediction], list[Unpredictable]]:
    out: list[Prediction] = []
    failed: list[Unpredictable] = []
    for t in targets:
        try:
            out.append(predict_target(store, t, banks, secure_boot))
        except InputError as exc:
            failed.append(Unpredictable(t.role.value if t.role is not None else None, t.entry, t.uki, exc))
    return out, failed
