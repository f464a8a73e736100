"""bootkeeper's man pages (man/*.8, man/*.5): hand-written roff around sections generated from the code's
own tables, so that a verb, an option, an exit code, a setting or a lint rule cannot be added without its
doc. A generated section sits between ``.\\" BEGIN GENERATED name`` and ``.\\" END GENERATED name``;
everything else is written by hand and kept as it is.

    python scripts/manpages.py          # rewrite the generated sections in place
    python scripts/manpages.py --check  # exit 1 when a committed page differs from the code

tests/project/test_manpages.py runs the check. Not part of the package: it imports the whole CLI (every verb).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
PAGES = ("bootkeeper.8", "bootkeeper.yaml.5")
MARK = re.compile(r'^\.\\" BEGIN GENERATED (\S+)\n.*?^\.\\" END GENERATED \1\n', re.M | re.S)


def esc(text: str) -> str:
    """Text as roff reads it literally: backslashes, hyphens and non-ASCII escaped, no line starting a request."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    out = "".join(c if c.isascii() else f"\\[u{ord(c):04X}]" for c in out)  # groff reads ASCII without preconv
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in out.split("\n"))


def _paragraphs(text: str) -> str:
    """click's help text (``\\b`` blocks kept as lines, other paragraphs joined) as roff paragraphs."""
    out = []
    for para in re.split(r"\n\s*\n", text.strip()):
        if para.lstrip().startswith("\b"):
            lines = [line.strip() for line in para.split("\n")[1:] if line.strip()]
            out.append("\n.br\n".join(esc(line) for line in lines))
        else:
            out.append(esc(" ".join(line.strip() for line in para.split("\n"))))
    return "\n.IP\n".join(out)


def _commands(
    group: click.Group, ctx: click.Context, prefix: str
) -> Iterator[tuple[str, click.Command, click.Context]]:
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        sub = click.Context(cmd, info_name=name, parent=ctx)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, sub, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}", cmd, sub


def _option(param: click.Parameter, ctx: click.Context) -> str:
    names = ", ".join(f"\\fB{esc(o)}\\fR" for o in [*param.opts, *param.secondary_opts])
    if isinstance(param, click.Option) and not param.is_flag and not param.count:
        names += " \\fI" + esc(param.make_metavar(ctx)) + "\\fR"
    helptext = getattr(param, "help", None) or ""
    return f".TP\n{names}\n{esc(' '.join(helptext.split()))}\n" if helptext else f".TP\n{names}\n"


def verbs() -> str:
    """Every verb of the CLI, as click builds it: synopsis, help and options."""
    from bootkeeper.cli.main import cli

    root = click.Context(cli, info_name="bootkeeper")
    out = []
    for path, cmd, ctx in _commands(cli, root, "bootkeeper"):
        args = " ".join(p.make_metavar(ctx) for p in cmd.params if isinstance(p, click.Argument))
        out.append(f".SS {esc(path.removeprefix('bootkeeper '))}\n")
        out.append(f".B {esc(path)}\n[\\fIOPTIONS\\fR]" + (f" \\fI{esc(args)}\\fR" if args else "") + "\n.PP\n")
        out.append(_paragraphs(cmd.help or cmd.short_help or "") + "\n")
        opts = [p for p in cmd.params if isinstance(p, click.Option) and not p.hidden]
        out += [_option(p, ctx) for p in opts]
    return "".join(out)


def exit_codes() -> str:
    """``bootkeeper.errors.EXIT_CODES``: code, the exception class raised for it, and its meaning."""
    from bootkeeper.errors import EXIT_CODES

    return "".join(
        f".TP\n\\fB{code}\\fR{f' ({cls})' if cls else ''}\n{esc(meaning)}\n"
        for code, (cls, meaning) in EXIT_CODES.items()
    )


def lint_rules() -> str:
    """``bootkeeper.assess.lint.RULES``: code, severities and the one-line summary."""
    from bootkeeper.assess.lint import RULES

    return "".join(
        f".TP\n\\fB{r.code}\\fR ({'/'.join(s.value for s in r.severities)})\n{esc(r.summary)}\n" for r in RULES
    )


def _yaml(value: object) -> str:
    """A setting's default as it would be written in a config file."""
    import enum

    import yaml

    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 16)
    return text.removesuffix("\n").removesuffix("\n...")


def _reads_as(setting: Any, text: str) -> bool:
    """Whether ``text``, read as YAML by the setting's own parser, is its default."""
    import yaml

    from bootkeeper.errors import ConfigError

    try:
        return bool(setting.parse(yaml.safe_load(text), setting.path) == setting.default)
    except ConfigError:
        return False


def settings() -> str:
    """``bootkeeper.config.SETTINGS``: every key, its default (read back as YAML by its own parser, so
    the page cannot show another default) and its help."""
    from bootkeeper import config

    out = []
    for s in config.SETTINGS:
        default = next(d for d in (_yaml(s.default), "{}") if _reads_as(s, d))  # {}: a mapping kept as pairs
        out.append(f".TP\n\\fB{esc(s.path)}\\fR (default: \\fB{esc(default)}\\fR)\n{esc(s.help)}\n")
    return "".join(out)


SECTIONS: dict[str, Callable[[], str]] = {
    "verbs": verbs,
    "exit-codes": exit_codes,
    "lint-rules": lint_rules,
    "settings": settings,
}


def render(page: str) -> str:
    """The page with each generated section rewritten from the code."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        return f'.\\" BEGIN GENERATED {name}\n{SECTIONS[name]()}.\\" END GENERATED {name}\n'

    return MARK.sub(one, page)


def main(argv: list[str]) -> int:
    stale = []
    for name in PAGES:
        path = MAN / name
        text = path.read_text()
        new = render(text)
        if new != text:
            stale.append(name)
            if "--check" not in argv:
                path.write_text(new)
    if stale and "--check" in argv:
        print(
            f"manpages: out of date with the code: {', '.join(stale)} (run python scripts/manpages.py)", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
