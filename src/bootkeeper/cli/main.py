"""The command line: one click group whose verbs are imported only when they run.

Errors from the library arrive as :class:`BootkeeperError` and leave here as one line on stderr
and the documented exit code; a traceback only with ``--debug``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import NoReturn

import click

from bootkeeper.errors import BootkeeperError, ExitCode, Interrupted, UsageError
from bootkeeper.node.privilege import root_hint

# verb -> "module:attribute"; the module is imported only when the verb runs (or --help lists it)
VERBS = {
    "entries": ("bootkeeper.cli.entries_cmd:entries", "List boot entries in menu order and what boots next."),
    "status": ("bootkeeper.cli.status_cmd:status", "Booted entry, its state, and what boots next and why."),
    "bless": ("bootkeeper.cli.bless_cmd:bless", "Mark the booted entry good, bad or indeterminate."),
    "random-seed": (
        "bootkeeper.cli.randomseed_cmd:random_seed",
        "Refresh the boot loader's random seed with bootctl, on a read-only ESP too.",
    ),
    "arm": ("bootkeeper.cli.chain_cmd:arm", "Give entries fresh boot counters and fallback sort keys."),
    "rotate": ("bootkeeper.cli.chain_cmd:rotate", "Install a new active entry; the old active becomes passive."),
    "upgrade": (
        "bootkeeper.cli.upgrade_cmd:upgrade",
        "A new OS: the old active's UKI and extensions become passive; gated before the first write.",
    ),
    "update": (
        "bootkeeper.cli.update_cmd:update",
        "Check a source for a newer release, download it, apply it as an upgrade.",
    ),
    "release": ("bootkeeper.cli.release_cmd:release", "Publish a UKI and its extensions as one release (OCI)."),
    "repair": (
        "bootkeeper.cli.repair_cmd:repair",
        "From recovery or statereset: rebuild active and passive from a release, then boot active.",
    ),
    "select": ("bootkeeper.cli.select_cmd:select", "Pin an entry: the next boot, or until cleared while it has tries."),
    "simulate": ("bootkeeper.cli.simulate_cmd:simulate", "Run boots with injected faults on a scratch ESP."),
    "demo": ("bootkeeper.cli.demo_cmd:demo", "Full demonstration on a scratch ESP in a temporary folder."),
    "sysext": ("bootkeeper.cli.sysext_cmd:sysext", "Signed system extension images: build, inspect, validate."),
    "install-units": (
        "bootkeeper.cli.units_cmd:install_units",
        "Install bootkeeper's systemd units, generator, and the enrolled services.",
    ),
    "service": ("bootkeeper.cli.service_cmd:service", "Enrol services that must start before a boot is good."),
    "cloud-config": ("bootkeeper.cli.cloudconfig_cmd:cloud_config", "Render the enrolment as yip cloud-config."),
    "lint": ("bootkeeper.cli.lint_cmd:lint", "Find boot-loop hazards in cloud-config, unit files and the ESP."),
    "history": ("bootkeeper.cli.history_cmd:history", "The boot history: record this boot, or show it."),
    "motd": ("bootkeeper.cli.motd_cmd:motd", "Write the boot status to /run/motd.d/bootkeeper."),
    "tpm": ("bootkeeper.cli.tpm_cmd:tpm", "Measured boot: predict and verify PCRs 11-13, sign the PCR 11 policy."),
    "metrics": ("bootkeeper.cli.metrics_cmd:metrics", "The status as Prometheus metrics; the alert rules (--rules)."),
    "keys": ("bootkeeper.cli.keys_cmd:keys", "Signing keys and the trusted certificates (config, verity.d, db)."),
}


class LazyGroup(click.Group):
    """A group whose verbs (name -> ("module:attribute", help)) are imported only when they run."""

    verbs: dict[str, tuple[str, str]] = VERBS

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.verbs)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = self.verbs.get(cmd_name)
        if spec is None:
            return None
        module, attr = spec[0].split(":")
        cmd = getattr(importlib.import_module(module), attr)
        assert isinstance(cmd, click.Command)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, spec[1]) for name, spec in self.verbs.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bootkeeper", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Log external commands and show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """bootkeeper keeps an A/B node bootable: systemd-boot boot assessment on a read-only ESP."""
    ctx.ensure_object(dict)["debug"] = debug
    if debug:  # logging costs ~10 ms to import: only when asked for
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(message)s")


# click 8.2 raises NoArgsIsHelpError for a group named without its verb; Debian 13's click 8.1.8 has no
# such class (it prints the help and exits itself), and naming a missing attribute in an ``except``
# clause would turn every other exception that reaches it into an AttributeError (seen on the node)
_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", None)
_NO_ARGS_IS_HELP: tuple[type[click.UsageError], ...] = (
    (_NO_ARGS,) if isinstance(_NO_ARGS, type) and issubclass(_NO_ARGS, click.UsageError) else ()
)


def main(argv: list[str] | None = None) -> object:
    """The one boundary: every failure leaves as one line on stderr (``bootkeeper: error: …``, perhaps
    a ``hint:`` line) and the code :data:`bootkeeper.errors.EXIT_CODES` gives its class."""
    args = list(argv if argv is not None else sys.argv[1:])
    debug = "--debug" in args
    from bootkeeper.shown import guard_streams

    guard_streams()  # the backstop: no control character or undecodable byte reaches a terminal raw
    try:
        args, output = conventions(args)
        return cli.main(args=args, prog_name="bootkeeper", standalone_mode=False, obj=output)
    except BootkeeperError as exc:
        if debug:
            raise
        _fail(str(exc), exc.exit_code, exc.hint, root_hint(exc))
    except click.exceptions.Abort:
        _fail("aborted", ExitCode.REFUSED)
    except _NO_ARGS_IS_HELP as exc:
        # a group named without its verb: click's help (its own text, many lines), then the usage code
        path = exc.ctx.command_path if exc.ctx is not None else "bootkeeper"
        click.echo(f"bootkeeper: error: {path}: {exc.format_message().rstrip('.')} (see '{path} --help')", err=True)
        sys.exit(ExitCode.USAGE)
    except click.UsageError as exc:
        # click's own three lines (Usage, Try, Error) as one, like every other error
        path = exc.ctx.command_path if exc.ctx is not None else "bootkeeper"
        _fail(f"{path}: {exc.format_message().rstrip('.')} (see '{path} --help')", ExitCode.USAGE)
    except click.ClickException as exc:
        _fail(exc.format_message(), ExitCode.USAGE)
    except Interrupted as exc:
        _stopped(exc)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        # a path no explicit check named: reading is classified where it happens, so this is a write
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{exc.strerror or exc}", ExitCode.IO, None, root_hint(exc))
    except Exception as exc:  # a bug: still one line, never a traceback unless asked for
        if debug:
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (--debug shows the traceback)", ExitCode.INTERNAL)


JSON_MODES = ("pretty", "short", "off")


def conventions(args: list[str]) -> tuple[list[str], dict[str, str | bool]]:
    """systemd's output options, accepted by every verb: ``--json=pretty|short|off`` (``--json`` alone
    is ``pretty``; a verb without ``--json`` still refuses it), ``--no-legend`` (tables without their
    header) and ``--no-pager`` (bootkeeper never pages: accepted so that scripts written for
    systemd's tools run). Read here, before click, because click cannot give ``--json`` an optional
    value without taking the next argument (an image's name) as that value."""
    out: list[str] = []
    seen: dict[str, str | bool] = {}
    for i, a in enumerate(args):
        if a == "--":
            out.extend(args[i:])
            break
        if a.startswith("--json="):
            mode = a.removeprefix("--json=")
            if mode not in JSON_MODES:
                raise UsageError(f"--json={mode}: not one of {', '.join(JSON_MODES)}")
            if mode != "off":
                seen["json"] = mode
                out.append("--json")
        elif a == "--no-legend":
            seen["legend"] = False
        elif a != "--no-pager":
            out.append(a)
    return out, seen


def _stopped(exc: Interrupted) -> NoReturn:
    """A SIGTERM, SIGINT or SIGHUP that arrived while the ESP was writable, after the way back to
    read-only ran: one line, then the same signal with its default action, so the process ends as
    it would have (systemd counts SIGTERM as a clean stop; a shell sees 128+N)."""
    import signal

    click.echo(f"bootkeeper: error: {exc}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(exc.signo, signal.SIG_DFL)
    os.kill(os.getpid(), exc.signo)
    sys.exit(128 + exc.signo)  # the signal is blocked: the code a shell would show


def _fail(message: str, code: int, hint: str | None = None, needs_root: str | None = None) -> NoReturn:
    """One line, escaped (bootkeeper.shown): the names a message quotes cannot add lines to it."""
    from bootkeeper.cli.common import say_error

    say_error(message, hint, needs_root)
    sys.exit(code)
