"""The steps of ``bootkeeper demo`` on scratch folders: each does what an operator or a boot would
and returns what happened, for the verb to tell the story. No hardware is touched."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bootkeeper.assess.simulate import BootRecord
    from bootkeeper.config import BootAssessment
    from bootkeeper.findings import Finding
    from bootkeeper.node.status import Status

SEED_EXAMPLE = """#cloud-config
stages:
  initramfs:
    - name: Configure service to trigger boot-complete.target on active
      if: '[ ! -f "/run/cos/active_mode" ]'
      files:
        - path: /etc/systemd/system/k3s.service.d/override.conf
          content: |
            [Unit]
            Before=boot-complete.target
            FailureAction=reboot
            [Install]
            RequiredBy=boot-complete.target
    - name: Enable service
      systemctl:
        enabled: [k3s]
"""
FIXED_ACTIVE = (
    "title Kairos active (fixed)\nversion 2\nlinux /EFI/kairos/vmlinuz\n"
    "initrd /EFI/kairos/initrd.img\noptions console=ttyS0 entry=active\n"
)


def failed_upgrade(esp: Path, cfg: BootAssessment) -> list[BootRecord]:
    """Active panics on every boot (systemd-boot 257 model): its tries are used, passive takes over."""
    from bootkeeper.assess.simulate import BootOutcome, Fault, simulate
    from bootkeeper.config import RebootOnFailure
    from bootkeeper.esp.entries import Role
    from bootkeeper.esp.store import EspStore

    return simulate(
        EspStore(esp),
        cfg,
        [Fault(Role.ACTIVE, None, BootOutcome.PANIC)],
        5,
        reboot_on_failure=RebootOnFailure.ACTIVE,
        sdboot_version=257,
    )


@dataclass(frozen=True)
class FixedBoot:
    """The fixed active installed with rotate, booted by systemd-boot (renamed) and blessed good."""

    rotated: tuple[str, ...]
    booted: str
    renamed_to: str
    blessed: tuple[str, ...]


def install_fixed(tmp: Path, esp: Path, cfg: BootAssessment) -> FixedBoot:
    from bootkeeper.assess import bless, bootloader, chain
    from bootkeeper.esp.store import EspStore

    new = tmp / "new-active.conf"
    new.write_text(FIXED_ACTIVE)
    rotated = chain.rotate(EspStore(esp), cfg, new).actions
    store = EspStore(esp)
    choice = bootloader.choose(store.snapshot(257))
    assert choice is not None
    if choice.rename_to:
        store.rename(choice.entry.path, choice.path_after)
    assert choice.boot_count_path is not None
    booted = bless.parse_entry_path(choice.boot_count_path, "LoaderBootCountPath")
    result = bless.bless(store, booted, bless.Verdict.GOOD, cfg)
    return FixedBoot(tuple(rotated), choice.entry.path, choice.path_after, tuple(result.actions))


def enroll_k3s(node: Path) -> list[str]:
    """The units installed under ``node`` and k3s.service enrolled (reboot_on_failure: active)."""
    from bootkeeper.assess import services, units
    from bootkeeper.config import Config, RebootOnFailure, ServiceSpec

    units.install(node, units.render(Config(), ["/usr/bin/bootkeeper"], "/usr/bin/python3"))
    return services.enroll(node, [ServiceSpec("k3s.service", RebootOnFailure.ACTIVE)])


def generator_runs(node: Path, efivars: Path) -> list[tuple[str, str, dict[str, str]]]:
    """Booted from active's counted entry, the generator on active and on passive: (role, why, files)."""
    from bootkeeper.assess import generator
    from bootkeeper.esp.efivars import encode_string, var_path

    efivars.mkdir(parents=True)
    var_path(efivars, "LoaderBootCountPath").write_bytes(encode_string("\\loader\\entries\\active+2-1.conf"))
    out = []
    for role in ("active", "passive"):
        (node / "run/cos").mkdir(parents=True, exist_ok=True)
        for f in (node / "run/cos").iterdir():
            f.unlink()
        (node / f"run/cos/{role}_mode").touch()
        os.environ["BOOTKEEPER_GENERATOR_ROOT"] = str(node)
        try:
            files, why = generator.plan(str(node))
        finally:
            del os.environ["BOOTKEEPER_GENERATOR_ROOT"]
        out.append((role, why, files))
    return out


def seed_findings() -> list[Finding]:
    from bootkeeper.assess import lint

    return lint.lint_text(SEED_EXAMPLE, "seed-example.yaml")


def services_fail(tmp: Path, node: Path, efivars: Path, cfg: BootAssessment) -> tuple[list[BootRecord], Status]:
    """k3s fails on every entry, the boots recorded in ``node``'s history; then the status there."""
    from bootkeeper.assess.simulate import BootOutcome, Fault, simulate
    from bootkeeper.config import RebootOnFailure
    from bootkeeper.esp import scratch
    from bootkeeper.esp.efivars import encode_string, var_path
    from bootkeeper.esp.entries import Role
    from bootkeeper.esp.store import EspStore
    from bootkeeper.node.status import gather

    esp = scratch.make(tmp / "esp2")
    recs = simulate(
        EspStore(esp),
        cfg,
        [Fault(r, None, BootOutcome.SERVICE) for r in Role],
        10,
        reboot_on_failure=RebootOnFailure.ACTIVE,
        history_root=node,
        start_time=1795000000.0,
    )
    last = recs[-1].boot_count_path or ""
    var_path(efivars, "LoaderBootCountPath").write_bytes(encode_string(last))
    return recs, gather(node, esp, efivars, 257, read_services=None)
