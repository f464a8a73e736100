"""``bootkeeper metrics``: the status (node/status.py's two halves) as Prometheus text for
node_exporter's textfile collector, written crash-safe (a temporary file in the same folder, then a
rename: the collector never reads half a file); or the alert rules the package ships (``--rules``).
The families are node/metrics.py's; the text format is rendered here."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bootkeeper.cli.common import (
    config_option,
    efivars_dir,
    efivars_option,
    esp_option,
    find_esp,
    json_option,
    print_json,
    root_option,
    version_option,
)

if TYPE_CHECKING:
    from bootkeeper.node.metrics import Family

TEXTFILE = "bootkeeper.prom"  # the name in the textfile collector's folder (it reads *.prom)
RULES = "alerts.yml"  # in bootkeeper/data/: the alert rules `metrics --rules` prints


@click.command()
@esp_option
@efivars_option
@version_option
@root_option
@config_option
@click.option(
    "--textfile-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write bootkeeper.prom into this folder (node_exporter's --collector.textfile.directory).",
)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Write to this file.")
@click.option("--rules", is_flag=True, help="Print the shipped Prometheus alert rules and exit.")
@json_option
def metrics(
    esp: Path | None,
    efivars: Path | None,
    sdboot_version: str | None,
    root: Path,
    config_files: tuple[Path, ...],
    textfile_dir: Path | None,
    output: Path | None,
    rules: bool,
    as_json: bool,
) -> None:
    """The boot and extension status as Prometheus metrics: to stdout, into the textfile collector's
    folder (--textfile-dir) or a file (-o). Every label is a closed vocabulary or a stable name."""
    import time

    from bootkeeper.errors import UsageError
    from bootkeeper.node import metrics as m

    if rules:
        if textfile_dir or output or as_json:
            raise UsageError("--rules prints the alert rules: it takes no --textfile-dir, -o or --json")
        click.echo(rules_text(), nl=False)
        return
    if textfile_dir is not None and output is not None:
        raise UsageError("--textfile-dir and -o both name where to write: give one")
    from bootkeeper.cli.status_cmd import handback_budget, store_dir
    from bootkeeper.errors import InputError
    from bootkeeper.node.status import gather

    now = time.time()
    tpm = m.tpm_state(root, now)
    if tpm is not None and tpm.problem:
        click.echo(f"bootkeeper: warning: {tpm.problem}: exported as a failed verification", err=True)
    failure: InputError | None = None
    try:
        shown = gather(
            root,
            find_esp(esp),
            efivars_dir(efivars, root),
            sdboot_version,
            store_dir=store_dir(config_files, root),
            read_services=None,  # no metric needs the services' states: no systemctl call
            handbacks=handback_budget(config_files, root),
        )
        families = m.build(shown, tpm, now, m.activation_unread(root, shown))
    except InputError as exc:
        # the status cannot be gathered (an ESP or config at fault): the failure is written as series
        # (source_unreadable{source="status"}), then the error's exit code; never the last file left
        # in place looking current
        failure = exc
        families = m.build_unread(tpm, now)
    dest = textfile_dir / TEXTFILE if textfile_dir is not None else output
    if as_json:
        print_json(as_dict(families))
    elif dest is None:
        click.echo(exposition(families).decode(), nl=False)
    else:
        _write(dest, exposition(families))
        click.echo(f"wrote {dest}")
    if failure is not None:
        raise failure


def _write(dest: Path, data: bytes) -> None:
    from bootkeeper import fsutil
    from bootkeeper.errors import WriteError

    if not dest.parent.is_dir():
        raise WriteError(f"{dest.parent}: no such folder (the textfile collector's folder must exist)")
    try:
        fsutil.write_atomic(dest, data)
    except OSError as exc:
        raise WriteError(f"{dest}: cannot write ({exc.strerror or exc})") from exc


def exposition(families: Iterable[Family]) -> bytes:
    """The text format, written by ``prometheus_client`` (imported here only: ``metrics`` pays
    for it, no boot-path verb does)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily, Metric

    fams = list(families)

    class _Collector:
        def collect(self) -> Iterable[Metric]:
            for f in fams:
                g = GaugeMetricFamily(f.name, f.help, labels=list(f.labels))
                for labels, value in f.samples:
                    g.add_metric(list(labels), value)
                yield g

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return bytes(generate_latest(registry))


def rules_text() -> str:
    """The alert rules the package ships (bootkeeper/data/alerts.yml)."""
    from importlib.resources import files

    return files("bootkeeper").joinpath("data", RULES).read_text(encoding="utf-8")


def as_dict(families: Iterable[Family]) -> dict[str, list[dict[str, object]]]:
    """``--json``: name → list of {labels, value}."""
    return {
        f.name: [{"labels": dict(zip(f.labels, ls, strict=True)), "value": v} for ls, v in f.samples] for f in families
    }
