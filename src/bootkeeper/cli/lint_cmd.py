"""``bootkeeper lint``: boot-loop hazards in cloud-config, unit files and on the ESP."""

from __future__ import annotations

from pathlib import Path

import click

from bootkeeper.cli.common import (
    config_option,
    efivars_option,
    esp_option,
    find_esp,
    json_option,
    load_config,
    print_json,
    version_option,
)


@click.command()
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@esp_option
@efivars_option
@version_option
@config_option
@json_option
def lint(
    files: tuple[Path, ...],
    esp: Path | None,
    efivars: Path,
    sdboot_version: int | None,
    config_files: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Check FILES (cloud-config YAML, unit files, drop-ins) and, with --esp, the ESP.

    With neither, the ESP found at /efi, /boot/efi or /boot and /oem/*.yaml are checked.
    Exit status 1 when there is an error finding, 0 with warnings only.
    """
    from bootkeeper.assess import lint as lint_mod
    from bootkeeper.errors import StoreIOError

    findings: list[lint_mod.Finding] = []
    if not files and esp is None:
        esp = find_esp(None)
        files = tuple(sorted(Path("/oem").glob("*.yaml")))
    for path in files:
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise StoreIOError(f"{path}: cannot read ({exc.strerror})") from exc
        except UnicodeDecodeError as exc:
            findings.append(
                lint_mod.Finding(
                    "BK100", lint_mod.Severity.ERROR, str(path), None, f"not UTF-8 ({exc.reason})", "save as UTF-8"
                )
            )
            continue
        findings += lint_mod.lint_text(text, str(path))
    if esp is not None:
        from bootkeeper.assess.nodestatus import stale_temporaries
        from bootkeeper.esp.efivars import LoaderVars
        from bootkeeper.esp.store import EspStore

        cfg = load_config(config_files).boot_assessment
        snap = EspStore(esp).snapshot(sdboot_version)
        entry_default = LoaderVars.read(efivars).entry_default
        findings += lint_mod.lint_esp(snap, str(esp), cfg, entry_default, stale_temporaries(esp))
    errors = sum(f.severity is lint_mod.Severity.ERROR for f in findings)
    if as_json:
        print_json({"findings": [f.as_json() for f in findings], "errors": errors})
    else:
        for f in findings:
            click.echo(str(f))
        click.echo(f"{len(findings)} finding(s), {errors} error(s)")
    if errors:
        raise SystemExit(1)
