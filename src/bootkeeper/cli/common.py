"""Options and helpers shared by the verbs (kept light: boot-path verbs import this)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

import click

from bootkeeper.node.store import find_esp as find_esp
from bootkeeper.shown import echo

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from bootkeeper.config import Config

F = TypeVar("F", bound=Callable[..., object])


def say(line: str) -> None:
    """A line for the operator on stderr: what the node layer hands back as it goes (warnings, notes)."""
    echo(line, err=True)


def refused_exit() -> NoReturn:
    """Exit 1 after a verdict that was shown in full (an image failed validation, findings): the one
    way a verb says "refused" when the reasons are its output, not an error line."""
    from bootkeeper.errors import ExitCode

    raise SystemExit(int(ExitCode.REFUSED))


def options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several option decorators as one, in the order given (the order ``--help`` lists them)."""

    def deco(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return deco


def esp_option(f: F) -> F:
    return click.option(
        "--esp",
        "esp",
        type=click.Path(path_type=Path),
        default=None,
        help="The ESP (default: the first of /efi, /boot/efi, /boot that holds loader/ or EFI/).",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")(f)


def efivars_opt(help: str, readable: bool = False) -> Callable[[F], F]:
    """``--efivars DIR``: the one declaration of the option; ``help`` says what the verb reads there."""
    # readable=False: an unreadable folder is the verb's one-line error
    return click.option("--efivars", type=click.Path(path_type=Path, readable=readable), default=None, help=help)


efivars_option = efivars_opt(
    "Where the EFI variables are (efivarfs, or a folder laid out like it; default: "
    "ROOT/sys/firmware/efi/efivars, ROOT being --root where the verb has it, else /)."
)


def efivars_dir(efivars: Path | None, root: Path = Path("/")) -> Path:
    """``--efivars``, else the efivarfs under ``--root`` (every verb: a test root never reads the host's)."""
    from bootkeeper.esp.efivars import under

    return efivars if efivars is not None else under(root)


def version_option(f: F) -> F:
    return click.option(
        "--systemd-boot-version",
        "sdboot_version",
        default=None,
        callback=_check_version,
        help="Model this systemd-boot version (252, 257.13, 262.1) instead of the one read from the ESP's "
        "BOOTX64.EFI. A bare major number means the point release bootkeeper was checked against.",
    )(f)


def _check_version(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from bootkeeper.errors import UsageError
    from bootkeeper.esp.sdboot import SdBoot

    try:
        SdBoot.parse(value)
    except UsageError as exc:
        raise click.BadParameter(str(exc)) from exc
    return value


def config_option(f: F) -> F:
    return click.option(
        "--config",
        "config_files",
        type=click.Path(path_type=Path),
        multiple=True,
        help="Config file(s) instead of /oem/*.yaml.",
    )(f)


def _output() -> dict[str, object]:
    """What ``main`` read of systemd's output conventions (``--json=MODE``, ``--no-legend``)."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return obj if isinstance(obj, dict) else {}


def print_json(obj: object) -> None:
    """``--json`` / ``--json=pretty``: indented; ``--json=short``: one line, as systemd's tools print it."""
    from bootkeeper.shown import json_safe

    obj = json_safe(obj)  # a name that is not UTF-8: its escaped form (bootkeeper.shown), never a crash
    if _output().get("json") == "short":
        click.echo(json.dumps(obj, separators=(",", ":")))
    else:
        click.echo(json.dumps(obj, indent=2, sort_keys=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None) -> None:
    """A table: rich on a terminal, plain aligned text otherwise (pipes, logs, tests). Every cell and
    the title are escaped (bootkeeper.shown): a name from the ESP stays in its cell, on its row."""
    from bootkeeper.shown import raw_stream, shown_line

    cells = [[("" if c is None else shown_line(c)) for c in r] for r in rows]
    title = shown_line(title) if title is not None else None
    legend = _output().get("legend", True) is not False  # --no-legend: the rows alone, as systemctl prints them
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        t = Table(title=title if legend else None, show_header=legend)
        cells = [[escape(c) for c in r] for r in cells]  # a name is text, not rich markup
        for h in headers:
            t.add_column(h)
        for r in cells:
            t.add_row(*r)
        Console(file=raw_stream(sys.stdout)).print(t)  # its styling, not the guard's escapes
        return
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if legend:
        if title:
            click.echo(title)
        click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
        click.echo("  ".join("-" * w for w in widths))
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def root_option(f: F) -> F:
    return click.option(
        "--root",
        type=click.Path(path_type=Path, file_okay=False),
        default=Path("/"),
        show_default=True,
        help="Treat this folder as / (its oem/, run/, etc/, .extra/, sys/firmware/efi/efivars): for tests.",
    )(f)


root_efivars_option = efivars_opt("efivarfs with db/dbx (default: ROOT/sys/firmware/efi/efivars).")


def load_config(files: tuple[Path, ...], root: Path) -> Config:
    """The merged config (``--config`` files, else ROOT/oem/*.yaml); its warnings go to stderr.
    ``root`` has no default: every verb that reads the config takes ``--root``, so a test root never
    reads the host's /oem."""
    from bootkeeper import config
    from bootkeeper.sysext import policy

    cfg = config.load(list(files) if files else None, oem_dir=root / "oem")
    _, policy_warnings = policy.check_config(cfg.sysext.policy, cfg.sysext.policy_where)
    for w in [*cfg.warnings, *policy_warnings]:
        echo(f"bootkeeper: warning: {w}", err=True)
    return cfg


def say_error(message: str, *hints: str | None) -> None:
    """The error's lines as :func:`main` writes them, flushed: for a verb that must have said them
    before something that may end it (``sysext required --reboot-on-failure active`` queues a reboot,
    whose SIGTERM may arrive before the verb returns)."""
    echo(f"bootkeeper: error: {message}", err=True)
    for h in hints:
        if h:
            echo(f"hint: {h}", err=True)
    sys.stderr.flush()


class ProgressBar:
    """A rich progress bar on a terminal for work over 8 MiB; nothing otherwise (logs, pipes)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def __call__(self, n: int, total: int) -> None:
        import sys

        if self.bar is None:
            if total < (8 << 20) or not sys.stderr.isatty():
                return
            from rich.console import Console
            from rich.markup import escape
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

            from bootkeeper.shown import raw_stream, shown_line

            self.bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=Console(file=raw_stream(sys.stderr)),  # rich's own drawing; the label escaped below
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(escape(shown_line(self.label)), total=total)  # an image's name: text
        assert self.task is not None
        self.bar.advance(self.task, n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None  # a later call starts a new bar (rich allows one live display at a time)
