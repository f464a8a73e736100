"""Service enrolment as yip cloud-config (Kairos ``stages:``), and the reading of such files for lint.

Rendering gives what ``bootkeeper service enroll`` + bootkeeper-generator do, for nodes managed by
cloud-config alone:

* ``stages: initramfs:`` a step per service writing the assessment drop-in to
  ``/etc/systemd/system/<unit>.d/`` (on every entry: a boot is good only when the service starts);
* for ``reboot_on_failure: active``, a step guarded by ``if: '[ -f "/run/cos/active_mode" ] && [ -e
  LoaderBootCountPath ] && <a try was left>'`` (:func:`active_if`) writing ``FailureAction=reboot`` to
  **/run**/systemd/system: the condition the
  right way round (the seeds test ``! -f``, which runs everywhere *except* active: BK101 in
  docs/services.md's lint table), and a file that
  is gone at the next boot, so a passive boot never inherits it from a persistent /etc;
* one ``systemctl: enabled:`` step, which creates the ``boot-complete.target.requires`` links.

Reading (:func:`load`) keeps line numbers, so lint can point at the step, the ``if:`` and the line in
a file's ``content`` at fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bootkeeper import unittext
from bootkeeper.assess import generator, services
from bootkeeper.config import RebootOnFailure, ServiceSpec
from bootkeeper.errors import MalformedError

if TYPE_CHECKING:
    from yaml import Node

COUNT_PATH = f"/{generator.EFIVARS}/LoaderBootCountPath-{generator.LOADER_GUID}"


def active_if(tries: int = generator.DEFAULT_TRIES) -> str:
    """The shell condition of the FailureAction step: active, counting, and a try left when
    systemd-boot picked it — generator.failure_reboots()'s rule without the 252-only refinement:
    ``+L-D`` with L > 0, or ``+0-D`` with D ≤ ``tries`` (the last try; above it the entry was booted
    with none left, and a reboot would boot it again forever). The efivarfs file is 4 attribute
    bytes and UTF-16LE text: dropping the NULs leaves the name. No ``||``, so lint's evaluation of
    the mode test stays exact."""
    done = f'D=$(tr -d "\\000" < "{COUNT_PATH}" | sed -n "s/.*+0-\\([0-9]*\\)\\.[A-Za-z]*$/\\1/p")'
    return f'[ -f "/run/cos/active_mode" ] && [ -e "{COUNT_PATH}" ] && {done} && [ "${{D:-0}}" -le {int(tries)} ]'


def _literal(text: str, indent: int) -> str:
    pad = " " * indent
    return "|\n" + "".join(f"{pad}{line}\n" if line else "\n" for line in text.rstrip("\n").split("\n"))


def _file(path: str, content: str) -> str:
    return (
        f"        - path: {unittext.yaml_scalar(path)}\n"
        "          permissions: 0644\n"
        "          owner: 0\n"
        "          group: 0\n"
        f"          content: {_literal(content, 12)}"
    )


def render(specs: list[ServiceSpec], tries: int = generator.DEFAULT_TRIES) -> str:
    """The cloud-config text (validated unit names, and each scalar quoted for YAML where it needs it);
    ``tries`` is ``boot_assessment.tries``, for the reboot rule of :func:`active_if`."""
    names = [services.unit_name(s.name, "service") for s in specs]
    out = [
        "#cloud-config",
        f"name: {unittext.yaml_scalar('bootkeeper boot assessment for ' + ', '.join(names))}",
        "stages:",
        "  initramfs:",
    ]
    for spec, name in zip(specs, names, strict=True):
        spec = ServiceSpec(name, spec.reboot_on_failure)
        out.append(f"    - name: {unittext.yaml_scalar(f'{name} decides whether a boot is good')}")
        out.append("      files:")
        out.append(_file(f"/{services.UNIT_DIR}/{name}.d/{services.DROPIN}", services.render_dropin(spec)).rstrip("\n"))
        if spec.reboot_on_failure is RebootOnFailure.ACTIVE:
            what = f"{name} reboots on failure on the active entry only, while it is assessed"
            out.append(f"    - name: {unittext.yaml_scalar(what)}")
            out.append(f"      if: '{active_if(tries)}'")
            out.append("      files:")
            path = f"/run/systemd/system/{name}.d/{generator.DROPIN}"
            out.append(_file(path, generator.DROPIN_TEXT).rstrip("\n"))
    out.append("    - name: Enable the services that decide a boot")
    out.append("      systemctl:")
    out.append("        enabled:")
    out.extend(f"          - {unittext.yaml_scalar(n)}" for n in names)
    return "\n".join(out) + "\n"


# --- reading, for lint ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FileWrite:
    path: str
    content: str
    line: int  # of the "- path:" item
    content_line: int  # first line of the content


@dataclass(frozen=True)
class Step:
    stage: str
    index: int
    name: str
    line: int
    condition: str | None
    condition_line: int
    files: tuple[FileWrite, ...] = ()
    enabled: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()


@dataclass(frozen=True)
class CloudConfig:
    source: str
    steps: tuple[Step, ...] = ()
    problems: tuple[tuple[int, str], ...] = field(default_factory=tuple)  # (line, message)


def _scalar(node: Node | None) -> str | None:
    import yaml

    if isinstance(node, yaml.ScalarNode):
        return str(node.value)
    return None


def _map(node: Node | None) -> dict[str, Node]:
    import yaml

    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): v for k, v in node.value if isinstance(k, yaml.ScalarNode)}


def _line(node: Node) -> int:
    """The node's first line, 1-based."""
    line: int = node.start_mark.line + 1
    return line


def _content_start(node: Node) -> int:
    """Line (1-based) of the first content line: the line after ``|`` for block scalars."""
    line = _line(node)
    return line + 1 if getattr(node, "style", None) in ("|", ">") else line


def _compose(text: str, source: str) -> Node | None:
    """The YAML document's node tree; a YAML error raises :class:`MalformedError` naming file and line."""
    import yaml

    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise MalformedError(f"{where}: not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:  # e.g. ReaderError, whose text spans two lines
        raise MalformedError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:  # yaml.compose() recurses once per nesting level
        raise MalformedError(f"{source}: not valid YAML: nested too deeply") from None


def _scalars(node: Node | None) -> list[str]:
    """The non-empty scalars of a sequence node (nothing when it is not one)."""
    import yaml

    if not isinstance(node, yaml.SequenceNode):
        return []
    return [v for v in (_scalar(x) for x in node.value) if v]


def _files(fnode: Node | None, where: str, problems: list[tuple[int, str]]) -> list[FileWrite]:
    """A step's ``files`` list; an item without a path is a problem at ``where``."""
    import yaml

    files = []
    for f in fnode.value if isinstance(fnode, yaml.SequenceNode) else []:
        fm = _map(f)
        path, content = _scalar(fm.get("path")), _scalar(fm.get("content"))
        if path is None:
            problems.append((_line(f), f"{where}.files: an item without 'path'"))
            continue
        c_line = _content_start(fm["content"]) if "content" in fm else _line(f)
        files.append(FileWrite(path, content or "", _line(f), c_line))
    return files


def _step(stage: str, i: int, node: Node, problems: list[tuple[int, str]]) -> Step:
    m = _map(node)
    cond = m.get("if")
    files = _files(m.get("files"), f"stages.{stage}[{i}]", problems)
    enabled = _scalars(_map(m.get("systemctl")).get("enabled"))
    return Step(
        stage,
        i,
        _scalar(m.get("name")) or f"stages.{stage}[{i}]",
        _line(node),
        _scalar(cond) if cond is not None else None,
        _line(cond) if cond is not None else _line(node),
        tuple(files),
        tuple(enabled),
        tuple(_scalars(m.get("commands"))),
    )


def load(text: str, source: str) -> CloudConfig:
    """A cloud-config document; a YAML error raises :class:`MalformedError` naming file and line."""
    import yaml

    root = _compose(text, source)
    problems: list[tuple[int, str]] = []
    steps: list[Step] = []
    stages = _map(root).get("stages")
    if stages is None:
        return CloudConfig(source)
    if not isinstance(stages, yaml.MappingNode):
        return CloudConfig(source, problems=((_line(stages), "'stages' is not a mapping"),))
    for stage, step_list in _map(stages).items():
        if not isinstance(step_list, yaml.SequenceNode):
            problems.append((_line(step_list), f"stages.{stage} is not a list of steps"))
            continue
        steps.extend(_step(stage, i, node, problems) for i, node in enumerate(step_list.value))
    return CloudConfig(source, tuple(steps), tuple(problems))


_ENABLE = re.compile(r"\bsystemctl\s+(?:--[\w-]+\s+)*enable\s+(?:--[\w-]+\s+)*([^;&|]+)")


def enabled_units(cfg: CloudConfig) -> set[str]:
    """Units a cloud-config enables: ``systemctl: enabled:`` and ``systemctl enable X`` commands."""
    out: set[str] = set()
    for s in cfg.steps:
        out.update(generator.with_unit_suffix(u) for u in s.enabled)
        for c in s.commands:
            for m in _ENABLE.finditer(c):
                out.update(generator.with_unit_suffix(u) for u in m.group(1).split() if not u.startswith("-"))
    return out
