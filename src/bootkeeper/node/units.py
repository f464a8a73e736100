"""``install-units``: the systemd units, the generator and the enrolled services written for the node
under ROOT, with the command and the Python they run found on that node (never this machine's venv)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bootkeeper.config import Config, ServiceSpec
    from bootkeeper.systemd_version import NodeSystemd

Say = Callable[[str], None]


@dataclass(frozen=True)
class UnitsInstalled:
    """What ``install-units`` wrote, the command the units run, the services enrolled, the node's systemd."""

    written: list[str]
    command: list[str]
    services: list[str]
    node: NodeSystemd

    def as_json(self) -> dict[str, object]:
        node = self.node
        return {
            "written": self.written,
            "command": self.command,
            "services": self.services,
            "systemd": {"version": node.major, "source": node.source, "found": node.found},
        }


def install(
    cfg: Config,
    root: Path,
    exe: str | None,
    python: str | None,
    enable: bool,
    systemd_version: int | None,
    metrics_watch: tuple[str, ...],
    say: Say,
) -> UnitsInstalled:
    """Write the units, the systemd-sysext drop-in and bootkeeper-generator under ROOT/etc and enrol
    boot_assessment.services; ``metrics_watch``: the files whose change re-runs ``bootkeeper metrics``."""
    from bootkeeper import fsutil
    from bootkeeper import systemd_version as sv
    from bootkeeper.assess import services, units

    node = sv.resolve(root, cfg.sysext.systemd_version, systemd_version)
    _warn_policy(cfg, root, node, say)
    argv, python = _programs(root, exe, python)
    no_failures = fsutil.under(root, units.NO_FAILURES).exists()
    files = units.render(cfg, argv, python, node.major, metrics_watch=metrics_watch, no_failures=no_failures)
    written = units.install(root, files, enable)
    specs = list(cfg.boot_assessment.services)
    for w in services.loop_warnings(specs):
        say(f"bootkeeper: warning: {w}")
    enrolled = services.enroll(root, specs, cfg.boot_assessment.tries) if specs else []
    return UnitsInstalled(written, argv, enrolled, node)


def _warn_policy(cfg: Config, root: Path, node: NodeSystemd, say: Say) -> None:
    """Only the policy in the drop-in depends on the version: warn when it cannot be enforced."""
    from bootkeeper import systemd_version as sv
    from bootkeeper.config import SysextMode

    if cfg.sysext.mode is not SysextMode.ENFORCED:
        return
    if (w := node.warning(root)) is not None:
        say(f"bootkeeper: warning: {w}")
    if not node.takes_image_policy:
        say(
            f"bootkeeper: warning: {node.describe()}: the node's systemd-sysext cannot enforce the image policy "
            f"itself (--image-policy exists from {sv.IMAGE_POLICY_SINCE}); only bootkeeper-sysext.service does, "
            "for the images it places and those in /etc/extensions or /var/lib/extensions when it runs; one put "
            "there later merges unchecked at the next refresh"
        )


def _programs(root: Path, exe: str | None, python: str | None) -> tuple[list[str], str]:
    """The command the units run and the Python of the generator, as the node has them."""
    on_node = root.resolve() == Path("/")
    if exe is not None:
        argv = exe.split()
    elif not on_node:  # the units run on the node: never this machine's virtualenv
        argv = [_on_node(root, ("/usr/bin/bootkeeper", "/usr/local/bin/bootkeeper"), "--exe")]
    elif (found := shutil.which("bootkeeper")) is not None:
        argv = [str(Path(found).resolve())]
    else:
        argv = [sys.executable, "-m", "bootkeeper"]
    if python is None:
        python = sys.executable if on_node else _on_node(root, ("/usr/bin/python3",), "--python")
    return argv, python


def _on_node(root: Path, candidates: tuple[str, ...], option: str) -> str:
    """The first of ``candidates`` that the node under ``root`` has; refused when it has none."""
    from bootkeeper import fsutil
    from bootkeeper.errors import NotApplicableError

    for c in candidates:
        if fsutil.under(root, c).exists():
            return c
    raise NotApplicableError(
        f"{root}: has none of {', '.join(candidates)}: the units would name a program the node does not have",
        hint=f"install bootkeeper into {root} first, or pass {option} with the path it has on the node",
    )


@dataclass(frozen=True)
class Enrolment:
    """The services ``service enroll`` and ``cloud-config render`` enrol, the tries the arm gives active
    (recorded for the generator's reboot rule), and the boot-loop warnings their drop-ins earn."""

    specs: list[ServiceSpec]
    tries: int
    warnings: list[str]


def enrolment(names: tuple[str, ...], reboot_on_failure: str, config: Callable[[], Config]) -> Enrolment:
    """NAMES with one policy, or boot_assessment.services from the config when no name is given."""
    from bootkeeper.assess import services
    from bootkeeper.config import RebootOnFailure, ServiceSpec
    from bootkeeper.errors import UsageError

    tries = config().boot_assessment.tries
    if names:
        specs = [ServiceSpec(n, RebootOnFailure(reboot_on_failure)) for n in names]
    else:
        specs = list(config().boot_assessment.services)
        if not specs:
            raise UsageError("no service named and none in boot_assessment.services")
    return Enrolment(specs, tries, services.loop_warnings(specs))
