"""``bootkeeper install-units``: the systemd units, the generator, and the services enrolled by config."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from bootkeeper.cli.common import config_option, json_option, load_config, print_json, root_option
from bootkeeper.shown import echo
from bootkeeper.systemd_version import HIGHEST, LOWEST


@click.command(name="install-units")
@root_option
@config_option
@click.option(
    "--exe",
    default=None,
    help="The bootkeeper command the units run (default: bootkeeper on PATH, else this Python with -m bootkeeper; "
    "under --root: the node's /usr/bin/bootkeeper or /usr/local/bin/bootkeeper).",
)
@click.option(
    "--python",
    "python",
    default=None,
    help="The Python that runs the generator (default: this one; under --root: the node's /usr/bin/python3).",
)
@click.option(
    "--enable/--no-enable", default=True, show_default=True, help="Link the services into their targets' .wants."
)
@click.option(
    "--systemd-version",
    "systemd_version",
    type=click.IntRange(LOWEST, HIGHEST),
    default=None,
    help="The node's systemd major version (default: sysext.systemd_version, else read under ROOT).",
)
@json_option
def install_units(
    root: Path,
    config_files: tuple[Path, ...],
    exe: str | None,
    python: str | None,
    enable: bool,
    systemd_version: int | None,
    as_json: bool,
) -> None:
    """Write bootkeeper's units, the systemd-sysext drop-in and bootkeeper-generator under ROOT/etc,
    mask systemd-bless-boot.service and systemd-boot-random-seed.service, and enrol the services in
    boot_assessment.services."""
    from bootkeeper import systemd_version as sv
    from bootkeeper.assess import services, units
    from bootkeeper.config import SysextMode

    cfg = load_config(config_files, root)
    node = sv.resolve(root, cfg.sysext.systemd_version, systemd_version)
    enforced = cfg.sysext.mode is SysextMode.ENFORCED  # only the policy in the drop-in depends on the version
    if enforced and (w := node.warning(root)) is not None:
        echo(f"bootkeeper: warning: {w}", err=True)
    if enforced and not node.takes_image_policy:
        echo(
            f"bootkeeper: warning: {node.describe()}: the node's systemd-sysext cannot enforce the image policy "
            f"itself (--image-policy exists from {sv.IMAGE_POLICY_SINCE}); only bootkeeper-sysext.service does, "
            "for the images it places and those in /etc/extensions or /var/lib/extensions when it runs; one put "
            "there later merges unchecked at the next refresh",
            err=True,
        )
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
    from bootkeeper import fsutil
    from bootkeeper.cli.metrics import TPM_VERIFY
    from bootkeeper.sysext.report import REPORT

    no_failures = fsutil.under(root, units.NO_FAILURES).exists()
    files = units.render(
        cfg, argv, python, node.major, metrics_watch=(f"/{REPORT}", f"/{TPM_VERIFY}"), no_failures=no_failures
    )
    written = units.install(root, files, enable)
    for w in services.loop_warnings(list(cfg.boot_assessment.services)):
        echo(f"bootkeeper: warning: {w}", err=True)
    enrolled = (
        services.enroll(root, list(cfg.boot_assessment.services), cfg.boot_assessment.tries)
        if cfg.boot_assessment.services
        else []
    )
    if as_json:
        print_json(
            {
                "written": written,
                "command": argv,
                "services": enrolled,
                "systemd": {"version": node.major, "source": node.source, "found": node.found},
            }
        )
        return
    for w in written:
        echo(f"wrote {w}")
    for a in enrolled:
        echo(a)
    echo("run 'systemctl daemon-reload' (on a running system) for systemd to see them")


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
