"""``bootkeeper metrics``: the status (node/status.py's two halves) as Prometheus text for
node_exporter's textfile collector, written crash-safe (a temporary file in the same folder, then a
rename: the collector never reads half a file); or the alert rules the package ships (``--rules``).
The families and their text format are node/metrics.py's."""

from __future__ import annotations

from functools import partial
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
    options,
    print_json,
    root_option,
    version_option,
)


@click.command()
@options(esp_option, efivars_option, version_option, root_option, config_option)
@click.option(
    "--textfile-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write bootkeeper.prom into this folder (node_exporter's --collector.textfile.directory).",
)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Write to this file.")
@click.option("--rules", is_flag=True, help="Print the shipped Prometheus alert rules and exit.")
@json_option
def metrics(
    esp: Path | None, efivars: Path | None, sdboot_version: str | None, root: Path, config_files: tuple[Path, ...],
    textfile_dir: Path | None, output: Path | None, rules: bool, as_json: bool,
) -> None:  # fmt: skip
    """The boot and extension status as Prometheus metrics: to stdout, into the textfile collector's
    folder (--textfile-dir) or a file (-o). Every label is a closed vocabulary or a stable name."""
    import time

    from bootkeeper.errors import UsageError
    from bootkeeper.node import metrics as m

    if rules:
        if textfile_dir or output or as_json:
            raise UsageError("--rules prints the alert rules: it takes no --textfile-dir, -o or --json")
        click.echo(m.rules_text(), nl=False)
        return
    if textfile_dir is not None and output is not None:
        raise UsageError("--textfile-dir and -o both name where to write: give one")
    from bootkeeper.node import status

    now = time.time()
    tpm = m.tpm_state(root, now)
    if tpm is not None and tpm.problem:
        click.echo(f"bootkeeper: warning: {tpm.problem}: exported as a failed verification", err=True)
    config = partial(load_config, config_files, root)
    families, failure = m.collect(
        root, tpm, now, lambda: status.gather(
            root, find_esp(esp), efivars_dir(efivars, root), sdboot_version,
            store_dir=status.store_dir(root, config_files, config),
            read_services=None,  # no metric needs the services' states: no systemctl call
            handbacks=status.handback_budget(root, config_files, config),
        ),
    )  # fmt: skip
    dest = textfile_dir / m.TEXTFILE if textfile_dir is not None else output
    if as_json:
        print_json(m.as_dict(families))
    elif dest is None:
        click.echo(m.exposition(families).decode(), nl=False)
    else:
        m.write_textfile(dest, m.exposition(families))
        click.echo(f"wrote {dest}")
    if failure is not None:
        raise failure
