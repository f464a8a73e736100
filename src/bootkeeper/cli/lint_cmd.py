"""``bootkeeper lint``: boot-loop hazards in cloud-config, unit files and on the ESP, and the node's
systemd-sysext setup (:mod:`bootkeeper.sysext.conf`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bootkeeper.cli.common import (
    config_option,
    efivars_dir,
    efivars_option,
    esp_option,
    find_esp,
    json_option,
    load_config,
    print_json,
    version_option,
)
from bootkeeper.esp.efivars import loader_info as efivars_loader_info
from bootkeeper.shown import echo


@click.command()
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@esp_option
@efivars_option
@version_option
@config_option
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Also check the node tree at DIR: its sysext.conf and systemd-sysext-sysroot.service (default: / "
    "when neither FILES nor --esp are given).",
)
@json_option
def lint(
    files: tuple[Path, ...],
    esp: Path | None,
    efivars: Path | None,
    sdboot_version: str | None,
    config_files: tuple[Path, ...],
    root: Path | None,
    as_json: bool,
) -> None:
    """Check FILES (cloud-config YAML, unit files, drop-ins), with --esp the ESP, and with --root the
    node's systemd-sysext setup and extension folders (BK301 to BK304).

    With none of them, the ESP found at /efi, /boot/efi or /boot, /oem/*.yaml and the node at / are
    checked; with --root alone, ROOT/oem/*.yaml and the node.
    Exit status 1 when there is an error finding, 0 with warnings only.
    """
    efivars = efivars_dir(efivars, root or Path("/"))
    from bootkeeper.assess import lint as lint_mod
    from bootkeeper.errors import UnreadableError
    from bootkeeper.findings import Finding, Severity

    findings: list[Finding] = []
    if not files and esp is None:
        if root is None:
            root = Path("/")
            esp = find_esp(None)
        files = tuple(sorted((root / "oem").glob("*.yaml")))
    for path in files:
        name = "<stdin>" if str(path) == "-" else str(path)  # '-': a cloud-config on standard input
        try:
            raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
            text = raw.decode("utf-8")
        except OSError as exc:
            raise UnreadableError(f"{name}: cannot read ({exc.strerror})") from exc
        except UnicodeDecodeError as exc:
            findings.append(Finding("BK100", Severity.ERROR, name, None, f"not UTF-8 ({exc.reason})", "save as UTF-8"))
            continue
        findings += lint_mod.lint_text(text, name)
    cfg = load_config(config_files, root or Path("/")) if esp is not None or root is not None else None
    if esp is not None and cfg is not None:
        from bootkeeper.assess.status import stale_temporaries
        from bootkeeper.esp.efivars import LoaderVars
        from bootkeeper.esp.store import EspStore

        snap = EspStore(esp).snapshot(sdboot_version, loader_info=efivars_loader_info(efivars))
        entry_default = LoaderVars.read(efivars).entry_default
        findings += lint_mod.lint_esp(snap, str(esp), cfg.boot_assessment, entry_default, stale_temporaries(esp))
    if root is not None and cfg is not None:
        from bootkeeper.sysext import conf as sysextconf
        from bootkeeper.systemd_version import resolve

        findings += sysextconf.lint_node(root, cfg.sysext, resolve(root, cfg.sysext.systemd_version))
    errors = sum(f.severity is Severity.ERROR for f in findings)
    if as_json:
        print_json({"findings": [f.as_json() for f in findings], "errors": errors})
    else:
        for f in findings:
            click.echo(str(f))  # two lines, each escaped (findings.Finding.__str__)
        echo(f"{len(findings)} finding(s), {errors} error(s)")
    if errors:
        raise SystemExit(1)
