"""Text shared by the read-only verbs: the status lines (``status``, ``motd``, ``demo``), the menu
(``entries``, ``status``, ``demo``), the next boot and the pins (``select`` too), a simulated timeline
(``simulate``, ``demo``). Each status line is escaped as the one line it is (bootkeeper.shown)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bootkeeper.cli.common import table
from bootkeeper.shown import echo

if TYPE_CHECKING:
    from bootkeeper.assess.bootloader import BootChoice
    from bootkeeper.assess.menu import Menu
    from bootkeeper.assess.simulate import BootRecord
    from bootkeeper.assess.status import Booted, NodeStatus
    from bootkeeper.node.status import Status
    from bootkeeper.sysext.status import Extensions


def status_lines(shown: Status) -> list[str]:
    """``status`` as text: the boot half, the extensions, the warnings, and the next boot when the
    menu is there. An extension's file name, an .osrel field, an efivar cannot add a line to status
    or the MOTD, nor move the cursor."""
    from bootkeeper.shown import shown_line

    node = shown.node
    lines = [*_boot_lines(node), *_extension_lines(shown.extensions)]
    # the booted entry's own problem is on its line already
    lines.extend(f"warning: {w}" for w in (*node.warnings, *shown.problems))
    if shown.menu is not None:
        lines.append(next_line(shown.menu.next))
    return [shown_line(line) for line in lines]


def _boot_lines(node: NodeStatus) -> Iterable[str]:
    from bootkeeper.assess import history

    yield booted_line(node.booted)
    if node.booted.why:
        yield f"why: {node.booted.why.text}"
    if node.failed_upgrade:
        yield node.failed_upgrade.text
    if node.handback:
        yield f"hand-back: {node.handback.text}"
    if node.repairs:
        yield f"last repair: {node.repairs[-1].text}"
    yield "entries:"
    for e in node.entries:
        tries = "not counted" if e.tries_left is None else f"{e.tries_left} tries left, {e.tries_done} used"
        yield f"  {e.path:<40} {e.state:<13} {tries}"
    yield from pin_lines(node.pin)
    if node.roles:
        yield "OS per entry (its UKI's .osrel):"
        yield from (f"  {r.entry:<12} {history.os_text(r.os)}" for r in node.roles)
    if node.services:
        yield "services that decide a boot:"
        for s in node.services:
            yield f"  {s.name:<30} {s.result:<20} reboot_on_failure: {s.reboot_on_failure}"


def _extension_lines(ext: Extensions) -> Iterable[str]:
    for entry, names in ext.installed.items():
        yield f"extensions installed for {entry}: {', '.join(names)}"
    act = ext.activation
    if act is not None and act.images:
        yield f"extensions active ({act.mode}): {', '.join(str(n) for n in act.placed) or 'none'}"
        refused = [f"{i.name} ({i.verdict})" for i in act.images if not i.placed]
        if refused:
            yield f"extensions refused: {', '.join(refused)}"
    if act is not None and act.required is not None and act.required.names:
        req = act.required
        yield f"extensions required: {req.text()}{'' if req.ok else ': this boot is NOT good'}"


def pin_lines(pin: Mapping[str, Any] | None) -> list[str]:
    """The ``pin`` view (assess/pin.py) as text: the pin consulted first, then the others."""
    if not pin:
        return []
    return [f"pin: {pin['text']}"] + [f"  also: {o['text']}" for o in pin.get("others", [])]


def next_line(nxt: BootChoice | None) -> str:
    """The next boot (assess/bootloader.py's choice) as text."""
    if nxt is None:
        return "next boot: nothing — systemd-boot finds no entry"
    after = f" (renamed to {nxt.path_after})" if nxt.path_after != nxt.entry.path else ""
    return f"next boot: {nxt.entry.path}{after}: {nxt.reason}"


def booted_line(b: Booted) -> str:
    from bootkeeper.assess.status import Unavailable

    if isinstance(b.blessed, Unavailable):
        what = f"{b.entry} (role {b.role.value if b.role else 'none'})" if b.entry else "unknown"
        return f"booted: {what}; its state is unknown: {b.blessed.reason}"
    if b.entry:
        return f"booted: {b.entry} (role {b.role.value if b.role else 'none'}); {blessed_text(b.blessed)}"
    return "booted: unknown (no systemd-boot variables)"


def blessed_text(state: str | None) -> str:
    return {
        "good": "blessed: this boot is good",
        "indeterminate": "NOT blessed yet: boot-complete.target not reached (or bless did not run)",
        "bad": "marked BAD",
        "not counted": "not counted (entry has no boot counter)",
    }.get(str(state), f"blessed: {state}")


def print_menu(view: Menu) -> None:
    """The ``entries`` view: the ESP, the menu as a table, the pins and the next boot."""
    echo(f"ESP {view.esp}  (systemd-boot {view.sdboot_value}, {view.sdboot_source})")
    table(
        ["#", "entry", "role", "state", "left", "done", "sort-key", "id"],
        [
            [i + 1, r.path, r.role, r.state, r.tries_left, r.tries_done, r.sort_key, r.id]
            for i, r in enumerate(view.entries)
        ],
    )
    for u in view.unlisted:
        echo(f"not listed by systemd-boot: {u.path}: {u.why}")
    for line in pin_lines(view.pin):
        echo(line)
    echo(next_line(view.next))
    for p in view.problems:
        echo(f"warning: {p}", err=True)


def print_timeline(records: Sequence[BootRecord]) -> None:
    """Simulated boots, one row each."""
    table(
        ["boot", "entry chosen", "renamed to", "outcome", "verdict", "then", "bless actions"],
        [
            [r.n, r.entry, r.renamed_to or "-", r.outcome.value, r.verdict, r.after, "; ".join(r.actions) or "-"]
            for r in records
        ],
    )
