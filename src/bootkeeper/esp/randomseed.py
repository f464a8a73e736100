"""The boot loader's random seed (``loader/random-seed``), refreshed by the real ``bootctl random-seed``
inside bootkeeper's ESP lock and read-write remount: ``systemd-boot-random-seed.service``'s job, on an
ESP mounted read-only at /efi, where that unit fails and nobody notices (docs/upgrades.md, "random-seed:
the boot loader's seed on a read-only ESP").

bootkeeper does not write the seed itself: bootctl does (systemd's ``src/bootctl/bootctl-random-seed.c``,
``install_random_seed()``, read at systemd/systemd 052d4514): the old seed is hashed together with 32
new random bytes (``RANDOM_EFI_SEED_SIZE``), written to a temporary in ``loader/``, fsynced with the
folder, renamed over ``loader/random-seed`` and the file system synced; on a machine booted through EFI
it also sets the ``LoaderSystemToken`` variable once (``set_system_token()``). On a read-only ESP
Debian's bootctl 257.13 (the node's) and 252 fail with "Failed to open random seed file for writing",
``--graceful`` or not (tried on a read-only tmpfs).

What bootkeeper adds is only what that unit lacks: the ESP lock (no rename of an entry or upgrade runs
at the same time), a read-only mount made writable and always read-only again (:meth:`EspStore.writable`),
and bootctl's command run through the one :func:`bootkeeper.run.run`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from bootkeeper.errors import CommandError, UnreadableError
from bootkeeper.esp.store import EspStore

SEED = "loader/random-seed"
# Variables bootctl reads that an operator (or a test on a folder that is not a FAT partition) may set:
# systemd's docs/ENVIRONMENT.md. run() starts every tool with a fixed environment; these pass through.
PASSED_ENV = ("SYSTEMD_RELAX_ESP_CHECKS", "SYSTEMD_WRITE_SYSTEM_TOKEN")
REASON = "it writes the boot loader's random seed, as systemd-boot-random-seed.service does"


class SeedAction(StrEnum):
    """bootctl's own words: "refreshed" when an old seed with bytes in it was hashed in, else "written"."""

    WRITTEN = "written"
    REFRESHED = "refreshed"


@dataclass(frozen=True)
class SeedResult:
    esp: str
    action: SeedAction
    size: int  # of loader/random-seed after bootctl
    remounted: bool  # the ESP was read-only: made writable for bootctl
    read_only_after: bool
    bootctl: tuple[str, ...]  # what bootctl logged

    @property
    def path(self) -> str:
        return f"{self.esp.rstrip('/')}/{SEED}"

    def line(self) -> str:
        """The one line the verb prints (what bootkeeper-random-seed.service leaves in the journal)."""
        where = f"; {self.esp} read-only again" if self.remounted and self.read_only_after else ""
        return f"{self.path}: {self.action.value} ({self.size} bytes){where}"

    def as_json(self) -> dict[str, object]:
        return {
            "esp": self.esp,
            "seed": self.path,
            "action": self.action.value,
            "size": self.size,
            "remounted": self.remounted,
            "read_only_after": self.read_only_after,
            "bootctl": list(self.bootctl),
        }


def command(bootctl: str, esp: Path, *, variables: bool = True) -> list[str]:
    """bootctl's command line: the real unit's ``bootctl --graceful random-seed`` (systemd v257
    ``units/systemd-boot-random-seed.service``; ``--graceful`` only forgives a missing ESP and a
    ``LoaderSystemToken`` the firmware refuses, never a seed that cannot be written), with the ESP
    bootkeeper locked and remounted named explicitly. ``variables=False`` (a ``--root`` that is not the
    running system's) keeps bootctl away from this machine's EFI variables."""
    return [bootctl, "--graceful", *([] if variables else ["--no-variables"]), f"--esp-path={esp}", "random-seed"]


def _read_only(store: EspStore) -> bool:
    with store.naming(store.root, "cannot read the mount's flags"):
        return bool(os.statvfs(store.root).f_flag & os.ST_RDONLY)


def _seed_size(store: EspStore) -> int | None:
    try:
        return store.path(SEED).stat().st_size
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UnreadableError(f"{store.path(SEED)}: cannot read ({exc.strerror or exc})") from exc


def refresh(
    store: EspStore, bootctl: str, *, variables: bool = True, environ: Mapping[str, str] = os.environ
) -> SeedResult:
    """Run bootctl under the ESP lock on a writable ESP; the ESP is read-only again afterwards, also
    when bootctl fails (its :class:`~bootkeeper.errors.CommandError` is raised after the remount)."""
    from bootkeeper.run import run

    env = {k: environ[k] for k in PASSED_ENV if k in environ}
    was_read_only = _read_only(store)
    with store.transaction():
        before = _seed_size(store)
        proc = run(command(bootctl, store.root.absolute(), variables=variables), env=env)
        after = _seed_size(store)
    logged = tuple(line for line in (proc.stderr + proc.stdout).splitlines() if line.strip())
    if after is None:
        raise CommandError(f"{store.path(SEED)}: bootctl exited 0 but wrote no random seed", hint="; ".join(logged))
    return SeedResult(
        esp=str(store.root),
        action=SeedAction.REFRESHED if before else SeedAction.WRITTEN,
        size=after,
        remounted=was_read_only,
        read_only_after=_read_only(store),
        bootctl=logged,
    )
