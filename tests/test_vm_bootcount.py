"""The model against the real systemd-boot: four multi-boot scenarios on 252 and 257.

Each boot: bootkeeper predicts (from the ESP folder it wrote) which entry systemd-boot boots and
what it renames it to; the folder is packed into a FAT image and booted in QEMU/OVMF; the entry
the real boot loader chose (kernel command line, LoaderEntrySelected, LoaderBootCountPath) and
every file name it left must equal the prediction. Between boots ``bootkeeper bless`` runs on the
folder where the scenario says the boot was good.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bootkeeper.assess import bootloader
from bootkeeper.esp import scratch
from bootkeeper.esp.store import EspStore
from vmboot import boot, build_uki, missing_pieces, pack, sdboot, sync_back

pytestmark = pytest.mark.vm

VM_RESULTS: list[str] = []


@dataclass(frozen=True)
class Scenario:
    name: str
    boots: int
    tries: int
    recovery_tries: int
    bless_roles: tuple[str, ...]  # roles whose boots reach boot-complete.target
    default: str | None = None


SCENARIOS = [
    Scenario("active fails, falls back to passive", 5, 2, 2, ()),
    Scenario("good boot blessed between boots", 3, 2, 2, ("active",)),
    Scenario("default glob pins a bad entry", 3, 1, 1, (), default="active*.conf"),
    Scenario("recovery falls through to statereset", 5, 1, 1, ("recovery", "statereset")),
    # the version difference: ids keep the counter on 252 (no match, fallback), drop it on 257 (pinned)
    Scenario("literal default active.conf", 3, 1, 1, (), default="active.conf"),
]


def _bootkeeper(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bootkeeper", *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module", autouse=True)
def _pieces() -> None:
    missing = missing_pieces()
    if missing:
        pytest.fail(f"VM pieces missing: {', '.join(missing)}; run scripts/setup-test-deps.sh (make test does)")


def _boot_and_compare(
    esp: Path, tmp_path: Path, version: int, boots: int, bless_roles: tuple[str, ...], rel: str
) -> tuple[list[str], list[str]]:
    img = tmp_path / "esp.img"
    real_seq, model_seq = [], []
    for n in range(1, boots + 1):
        snap = EspStore(esp).snapshot()  # the version comes from the ESP's own BOOTX64.EFI
        assert snap.sdboot_version == version, snap.sdboot_version_source
        choice = bootloader.choose(snap)
        assert choice is not None
        predicted = sorted(
            (choice.rename_to if e.path == choice.entry.path and choice.rename_to else e.file_name)
            for e in snap.entries
        )
        pack(esp, img)
        res = boot(img, tmp_path / f"serial-{n}.log", rel)
        assert str(version) in res.loader_info
        role = choice.entry.role.value if choice.entry.role else None
        model_seq.append(f"{role}:{choice.entry.file_name}->{choice.rename_to or '='}")
        before = {e.file_name for e in snap.entries}
        real_renamed = next((x for x in res.names_after if x not in before), None)
        real_seq.append(f"{res.role}:{choice.entry.file_name if res.role == role else '?'}->{real_renamed or '='}")
        assert res.role == role, f"boot {n}: systemd-boot {version} booted {res.role}, model said {role}"
        assert res.selected == choice.entry_id, f"boot {n}: LoaderEntrySelected"
        assert res.count_path == (choice.boot_count_path or ""), f"boot {n}: LoaderBootCountPath"
        assert list(res.names_after) == predicted, f"boot {n}: files after boot"
        sync_back(esp, res.names_after, rel)
        if role in bless_roles and res.count_path:
            p = _bootkeeper("bless", "good", "--esp", str(esp), "--entry", res.count_path, "--json")
            assert p.returncode == 0, p.stderr
    return real_seq, model_seq


def _row(name: str, version: int, real_seq: list[str], model_seq: list[str]) -> None:
    seq = " ".join(s.split(":")[0][0].upper() for s in real_seq)
    verdict = "match" if real_seq == model_seq else "MISMATCH"
    VM_RESULTS.append(f"| {name} | {version} | {seq} | {' '.join(model_seq)} | {verdict} |")


@pytest.mark.parametrize("version", [252, 257])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name.replace(" ", "-"))
def test_real_systemd_boot_matches_model(scenario: Scenario, version: int, tmp_path: Path) -> None:
    cache = sdboot(version).parent.parent
    esp = scratch.make(
        tmp_path / "esp",
        tries=scenario.tries,
        recovery_tries=scenario.recovery_tries,
        default=scenario.default,
        kernel=cache / "kernel" / "vmlinuz",
        initrd=cache / "initrd.img",
        sdboot=sdboot(version),
    )
    real_seq, model_seq = _boot_and_compare(
        esp, tmp_path, version, scenario.boots, scenario.bless_roles, "loader/entries"
    )
    _row(scenario.name, version, real_seq, model_seq)
    assert real_seq == model_seq


@pytest.mark.parametrize("version", [252, 257])
def test_type2_ukis_ordered_by_osrel(version: int, tmp_path: Path) -> None:
    """UKIs in EFI/Linux: order from .osrel (same ID, VERSION_ID 3/2/1), counted like Type #1."""
    esp = tmp_path / "esp"
    for d in ("EFI/Linux", "EFI/BOOT", "loader"):
        (esp / d).mkdir(parents=True)
    (esp / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(sdboot(version).read_bytes())
    (esp / "loader" / "loader.conf").write_text("timeout 0\n")
    for role, v in (("active", 3), ("passive", 2), ("recovery", 1)):
        build_uki(
            esp / "EFI" / "Linux" / f"{role}+1.efi",
            f"console=ttyS0 loglevel=1 entry={role}",
            f'ID=kairos\nNAME=Kairos\nPRETTY_NAME="Kairos {role}"\nVERSION_ID={v}\n',
        )
    real_seq, model_seq = _boot_and_compare(esp, tmp_path, version, 4, ("recovery",), "EFI/Linux")
    _row("Type #2 UKIs, active fails", version, real_seq, model_seq)
    assert real_seq == model_seq
