"""What a given systemd-boot does: its behaviours by version, from the full version string it carries.

systemd-boot embeds ``#### LoaderInfo: systemd-boot 262.1-1 ####`` in its ``.sdmagic`` section and
exports the same text as the ``LoaderInfo`` EFI variable. Stable releases take fixes from later
major versions (257.13 drops the counter from entry ids like 259 does), so behaviours are decided
from the full version, not from the major number alone.

Each behaviour says where it is known from: *booted* (a real boot under QEMU+OVMF in
tests/vm/test_vm_bootcount.py, on 252.39-1~deb12u2, 257.13-1~deb13u1 and 262.1-1) or *source* (a
commit of systemd, src/boot/boot.c unless said otherwise); docs/design.md, "The boot loader model,
per systemd version", lists them.
Two 258 features change nothing the model predicts, so they have no property here: the
``LoaderEntrySysFail`` variable (004e3e4082) is checked before the one-shot, but
``sysfail_process()`` runs after the entry is chosen (258 to 262); ``reboot-on-error`` (0bdf94e588,
default ``auto``) only decides what happens when an entry fails to start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache, total_ordering

from bootkeeper.errors import UsageError

DEFAULT = "257.13"  # what is assumed when the ESP carries no systemd-boot binary (Debian 13)


@total_ordering
@dataclass(frozen=True)
class SdBoot:
    """One systemd-boot release: ``major.minor`` and the string it was read from."""

    major: int
    minor: int = 0
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> SdBoot:
        """``262``, ``257.13``, ``v257.13``, ``252.39-1~deb12u2``, ``systemd-boot 262.1-1``."""
        m = re.match(r"\s*(?:systemd-boot\s+)?v?(\d{3})(?!\d)(?:\.(\d{1,6}))?", text)
        if not m:
            raise UsageError(f"not a systemd-boot version: {text[:60]!r} (want e.g. 252, 257.13 or 262.1)")
        major = int(m.group(1))
        if not 200 <= major <= 999:
            raise UsageError(f"not a systemd-boot version: {text[:60]!r}")
        shown = text.strip()
        if shown.startswith("systemd-boot "):
            shown = shown[len("systemd-boot ") :].lstrip()
        return cls(major, int(m.group(2) or 0), shown[:80])

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, SdBoot):
            return NotImplemented
        return (self.major, self.minor) < (other.major, other.minor)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SdBoot):
            return NotImplemented
        return (self.major, self.minor) == (other.major, other.minor)

    def __hash__(self) -> int:
        return hash((self.major, self.minor))

    def __str__(self) -> str:
        return self.text or (f"{self.major}.{self.minor}" if self.minor else str(self.major))

    def at_least(self, since: str) -> bool:
        return (self.major, self.minor) >= _since(since)

    # -- behaviours ----------------------------------------------------------------------------

    @property
    def counts_efi_key(self) -> bool:
        """Type #1 entries with the ``efi`` key are renamed at boot. 729f3c21c5 (PR #36510, 258:
        ``LOADER_TYPE_BUMP_COUNTERS`` in boot_entry_bump_counters()) limits boot counting to
        ``linux``, ``uki`` and Type #2 (booted: counted on 252.39 and 257.13, not on 262.1)."""
        return not self.at_least(EFI_UNCOUNTED_SINCE)

    @property
    def knows_uki_key(self) -> bool:
        """The Type #1 ``uki`` key (e2a3d56218, PR #36314, 258; not in any 257.x). An entry with
        only ``uki`` is dropped by older ones (booted: dropped by 252.39 and 257.13, booted and
        counted by 262.1)."""
        return self.at_least(UKI_KEY_SINCE)

    @property
    def ids_drop_counter(self) -> bool:
        """The entry id is the file name without ``+LEFT-DONE``, so ``default active.conf`` and the
        EFI variables match ``active+0-3.conf``. 4301ad00ef (PR #38897, 259), backported as
        a059f9b2ab (257.10) and e67e514567 (258.1); 252 to 257.9 and 258.0 keep the counter
        (booted: 252.39 keeps it, 257.13 and 262.1 drop it)."""
        return (
            self.at_least("259") or (self.major == 258 and self.minor >= 1) or (self.major == 257 and self.minor >= 10)
        )

    def id_keeps_case(self, type2: bool) -> bool:
        """Whether a counted entry's id keeps the file name's case (patterns are lower-cased, and
        efi_fnmatch is case-sensitive, so ``Active+3.conf`` is matched by nothing). The backports
        lower-case before stripping the counter, so their stripped ids keep the case; 259 lower-cases
        Type #1 ids after stripping; Type #2 ids keep the case whenever the counter is stripped."""
        return self.ids_drop_counter and (type2 or not self.at_least("259"))

    @property
    def has_preferred(self) -> bool:
        """loader.conf ``preferred`` and the ``LoaderEntryPreferred`` variable (450e0dce02, PR
        #40324, 260): after the one-shot and before ``default``, and they skip entries with no tries
        left (booted on 262.1: ``preferred active*`` with active bad boots passive)."""
        return self.at_least(PREFERRED_SINCE)

    @property
    def has_profile_ids(self) -> bool:
        """A UKI with ``.profile`` sections is one entry per profile, ids ``file.efi@N`` (or
        ``@ID``) for N ≥ 1 (382e4da4a5, 257)."""
        return self.at_least(PROFILE_IDS_SINCE)

    @property
    def profile_suffix_after_id(self) -> bool:
        """``@N`` is appended to the finished file id (941b91600c, v259; a91fdd399f, v258.3); in
        257.10–258.2 the backported counter strip overwrites it for counted files."""
        return self.at_least("259") or (self.major == 258 and self.minor >= 3)

    @property
    def profile_id_lowered(self) -> bool:
        """The ``@ID`` suffix is lower-cased (booted on 262.1: ``active.efi@debug`` for
        ``ID=Debug``; 261.2's source keeps the case, the commit is not in the sources read here)."""
        return self.at_least("262")

    @property
    def profile_sorts_after_version(self) -> bool:
        """``boot_entry_compare()`` compares the profile right after the version, inside the sort-key
        branch (6a4a4f0302, v261; in 258.8, 259.6, 260.2): with equal sort keys and versions every
        profile 0 comes before every profile 1, across UKIs."""
        return self._backported("261", {258: 8, 259: 6, 260: 2})

    @property
    def fallback_skips_profiles(self) -> bool:
        """``config_select_default_entry()`` falls back to the first entry with profile 0, never a
        profile > 0 (a93fa2c6b4, v261; in 258.8, 259.6, 260.2). It reads ``BootEntry.profile``,
        which the Type #1 ``profile`` key sets too (259+)."""
        return self._backported("261", {258: 8, 259: 6, 260: 2})

    def _backported(self, since: str, backports: dict[int, int]) -> bool:
        return self.at_least(since) or (self.major in backports and self.minor >= backports[self.major])

    @property
    def has_extra_key(self) -> bool:
        """The Type #1 ``extra`` key (feba5dcc5f, 261): extra files (extensions, credentials) for a UKI."""
        return self.at_least(EXTRA_KEY_SINCE)

    def counts(self, key: str) -> bool:
        """Whether an entry of this loader kind (``linux``, ``uki``, ``efi``, ``type2``) is renamed
        when it boots a counted file name."""
        if key == "efi":
            return self.counts_efi_key
        if key == "uki":
            return self.knows_uki_key
        return key in ("linux", "type2")

    def counted_key(self) -> str | None:
        """The key a Type #1 entry booting a UKI should use to be counted here: ``efi`` where it
        is counted, else ``uki`` where it exists; None when neither is counted."""
        if self.counts_efi_key:
            return "efi"
        if self.knows_uki_key:
            return "uki"
        return None


EFI_UNCOUNTED_SINCE = "258"
UKI_KEY_SINCE = "258"
PREFERRED_SINCE = "260"
PROFILE_IDS_SINCE = "257"
EXTRA_KEY_SINCE = "261"


@lru_cache(maxsize=64)
def _since(version: str) -> tuple[int, int]:
    v = SdBoot.parse(version)  # the model asks this in every comparison of a menu sort
    return v.major, v.minor


def default() -> SdBoot:
    return SdBoot.parse(DEFAULT)


def of(version: SdBoot | int | str | None) -> SdBoot:
    """Accept what callers have: an :class:`SdBoot`, a version string, a major number (taken as
    that release's latest point release known here), or None (the default)."""
    if version is None:
        return default()
    if isinstance(version, SdBoot):
        return version
    if isinstance(version, str) and version.strip().isdigit():
        version = int(version)
    if isinstance(version, int):
        return SdBoot(version, LATEST_POINT.get(version, 0), str(version))
    return SdBoot.parse(version)


# A bare major number means the point release bootkeeper was checked against (a Debian stable
# release ships these): "257" is 257.13, whose ids drop the counter like 259's.
LATEST_POINT: dict[int, int] = {252: 39, 257: 13, 262: 1}
