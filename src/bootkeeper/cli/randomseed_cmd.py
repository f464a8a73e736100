"""``bootkeeper random-seed``: the boot loader's random seed, refreshed by bootctl on a read-only ESP
(bootkeeper-random-seed.service runs it early in every boot, in systemd-boot-random-seed.service's place)."""

from __future__ import annotations

from pathlib import Path

import click

from bootkeeper.cli.common import esp_option, find_esp, json_option, options, print_json, root_option
from bootkeeper.shown import echo


@click.command(name="random-seed")
@options(esp_option, root_option, json_option)
def random_seed(esp: Path | None, root: Path, as_json: bool) -> None:
    """Refresh loader/random-seed with the real 'bootctl random-seed', under the ESP lock, remounting a
    read-only ESP rw and always back to ro.

    Under a --root other than /, bootctl is told --no-variables: the EFI variables it would set
    (LoaderSystemToken) are this machine's, not ROOT's. Needs root.
    """
    from bootkeeper.esp import randomseed
    from bootkeeper.esp.store import EspStore
    from bootkeeper.run import check_tool

    store = EspStore(find_esp(esp))  # a wrong --esp is named first, bootctl or not
    bootctl = check_tool("bootctl", randomseed.REASON)
    result = randomseed.refresh(store, bootctl, variables=root.resolve() == Path("/"))
    if as_json:
        print_json(result.as_json())
        return
    for line in result.bootctl:
        echo(f"bootctl: {line}", err=True)
    echo(result.line())
