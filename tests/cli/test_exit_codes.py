"""Exit codes: one table in errors.py, mirrored by bootkeeper(8), and every verb's error paths driven
through the real CLI boundary (issue 15, item 2).

Each case runs ``bootkeeper.cli.main.main`` in this process (as ``python -m bootkeeper`` would)
and checks the exit code, that stderr is one ``bootkeeper: error:`` line (``hint:`` lines aside)
naming what is at fault, and that no traceback leaks. The expected codes come from the taxonomy
(what failed: unreadable, malformed, refused, busy, I/O, usage, nothing to do), not from a run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from bootkeeper import errors
from bootkeeper.cli.main import VERBS, cli, main
from bootkeeper.errors import EXIT_CODES, ExitCode
from helpers import entry_body, esp_with, fake_efivars


def test_the_man_page_mirrors_the_table_in_errors_py() -> None:
    from manpage import BOOTKEEPER_8, items, section

    rows = []
    for tag, meaning in items(section(BOOTKEEPER_8, "EXIT STATUS")):
        m = re.fullmatch(r"(\d+)(?: \((\w+)\))?", tag)
        assert m is not None, tag
        rows.append((int(m.group(1)), m.group(2) or "", meaning))
    assert rows, "bootkeeper(8)'s exit-code list has no items"
    assert rows == [(int(c), cls, m) for c, (cls, m) in EXIT_CODES.items()]


def test_each_error_class_has_its_own_code() -> None:
    classes = {
        n: c
        for n, c in vars(errors).items()
        if isinstance(c, type) and issubclass(c, errors.BootkeeperError) and n == c.__name__
    }
    named = {cls for cls, _ in EXIT_CODES.values() if cls}
    for name, cls in classes.items():
        if name in named:
            assert EXIT_CODES[cls.exit_code][0] == name, name
        else:  # a subclass shares its parent's code; the base and InputError are never raised as such
            assert name in {"BootkeeperError", "InputError"} or any(issubclass(cls, classes[p]) for p in named), name
    assert len(named) == len({c for c, (cls, _) in EXIT_CODES.items() if cls})


# -- the world each case runs in ----------------------------------------------------------------


@dataclass(frozen=True)
class World:
    tmp: Path
    esp: Path  # a scratch ESP: active+2-1, passive+3, recovery+3
    notesp: Path  # an empty folder
    ev: Path  # efivars saying active+2-1.conf was booted with counting
    root: Path  # an empty --root
    badcfg: Path  # YAML that is not a mapping
    junk: Path  # bytes that are no image, UKI or entry
    key: Path
    cert: Path
    key2: Path
    cert2: Path
    afile: Path  # a file where a folder is expected
    tree: Path  # a tree for sysext build
    blocked: Path  # a --root whose etc/, run/ and var/ are files: nothing can be written under them
    missing: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    t = tmp_path_factory.mktemp("codes")
    esp = esp_with(
        t / "esp",
        {
            "active+2-1.conf": entry_body("active"),
            "passive+3.conf": entry_body("passive"),
            "recovery+3.conf": entry_body("recovery"),
        },
    )
    (t / "empty").mkdir()
    ev = fake_efivars(
        t / "efivars", LoaderBootCountPath="\\loader\\entries\\active+2-1.conf", LoaderEntrySelected="active.conf"
    )
    (t / "root").mkdir()
    (t / "bad.yaml").write_text("- just\n- a list\n")
    (t / "junk").write_bytes(b"\x00junk" * 100)
    for n in ("a", "b"):
        assert _run(["keys", "generate", "--key", str(t / f"{n}.key"), "--cert", str(t / f"{n}.crt")])[0] == 0
    (t / "a-file").write_text("")
    (t / "not-a-uki.efi").write_text("not a PE file")
    (t / "tree/usr/bin").mkdir(parents=True)
    (t / "tree/usr/bin/x").write_text("x")
    (t / "blocked").mkdir()
    for d in ("etc", "var", "run"):
        (t / "blocked" / d).write_text("")
    for f in ("usr/bin/bootkeeper", "usr/bin/python3"):  # what install-units wants on the node
        (t / "blocked" / f).parent.mkdir(parents=True, exist_ok=True)
        (t / "blocked" / f).write_text("")
    return World(
        tmp=t,
        esp=esp,
        notesp=t / "empty",
        ev=ev,
        root=t / "root",
        badcfg=t / "bad.yaml",
        junk=t / "junk",
        key=t / "a.key",
        cert=t / "a.crt",
        key2=t / "b.key",
        cert2=t / "b.crt",
        afile=t / "a-file",
        tree=t / "tree",
        blocked=t / "blocked",
        missing=t / "missing",
    )


def _run(argv: list[str]) -> tuple[int, str]:
    """``bootkeeper ARGV`` through the CLI's one boundary: (exit code, stderr)."""
    import io

    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return code, err.getvalue()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Another run holding the lock of ``folder`` (an flock on the folder, as EspStore takes it)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Case:
    verb: str  # the leaf command, e.g. "sysext install"
    code: ExitCode
    argv: Callable[[World], list[str]]
    words: Callable[[World], list[str]]  # each must be in the error line
    locked: Callable[[World], Path] | None = None

    def __str__(self) -> str:
        return f"{self.verb.replace(' ', '-')}-{self.code.name.lower()}"


E, U, M, R, B, IO, N, C = (
    ExitCode.REFUSED,
    ExitCode.USAGE,
    ExitCode.MALFORMED,
    ExitCode.UNREADABLE,
    ExitCode.BUSY,
    ExitCode.IO,
    ExitCode.NOTHING_TO_DO,
    ExitCode.COMMAND,
)
BLESS = "loader/entries/active+2-1.conf"

CASES = [
    Case("repair", U, lambda w: ["repair", "--bogus"], lambda w: ["bootkeeper repair", "--bogus"]),
    Case(
        "repair",
        N,
        lambda w: ["repair", "--root", str(w.root), "--esp", str(w.esp), "--no-reboot"],
        lambda w: ["booted an unknown role", "repair runs on recovery and statereset boots only"],
    ),
    Case(
        "repair",
        M,
        lambda w: ["repair", "--root", str(w.root), "--esp", str(w.esp), "--config", str(w.badcfg)],
        lambda w: [str(w.badcfg)],
    ),
    Case("update", U, lambda w: ["update", "--bogus"], lambda w: ["bootkeeper update", "--bogus"]),
    Case(
        "update",
        U,
        lambda w: ["update", "--check", "--root", str(w.root)],
        lambda w: ["no release source: give --source, or set update.source in the config"],
    ),
    Case(
        "update",
        R,
        lambda w: ["update", "--check", "--root", str(w.root), "--source", f"ocifile:{w.missing}"],
        lambda w: [f"ocifile:{w.missing}: cannot read"],
    ),
    Case(
        "update",
        N,
        lambda w: ["update", "--apply-downloaded", "--root", str(w.root)],
        lambda w: ["var/lib/bootkeeper/update: no downloaded release"],
    ),
    Case(
        "update",
        M,
        lambda w: ["update", "--check", "--root", str(w.root), "--config", str(w.badcfg)],
        lambda w: [str(w.badcfg)],
    ),
    Case("release push", U, lambda w: ["release", "push", "--bogus"], lambda w: ["bootkeeper release push", "--bogus"]),
    Case(
        "release push",
        R,
        lambda w: ["release", "push", str(w.missing / "a.efi"), "--to", f"ocifile:{w.missing}"],
        lambda w: [f"{w.missing / 'a.efi'}: cannot read"],
    ),
    Case(
        "release push",
        M,
        lambda w: ["release", "push", str(w.tmp / "not-a-uki.efi"), "--to", f"ocifile:{w.missing}"],
        lambda w: ["is not a UKI"],
    ),
    Case("entries", R, lambda w: ["entries", "--esp", str(w.missing)], lambda w: [f"{w.missing}: does not exist"]),
    Case("entries", M, lambda w: ["entries", "--esp", str(w.notesp)], lambda w: [str(w.notesp), "not an ESP"]),
    Case("entries", U, lambda w: ["entries", "--bogus"], lambda w: ["bootkeeper entries", "--bogus"]),
    Case("status", R, lambda w: ["status", "--esp", str(w.afile)], lambda w: [f"{w.afile}: not a directory"]),
    Case(
        "status",
        M,
        lambda w: ["status", "--esp", str(w.esp), "--root", str(w.root), "--config", str(w.badcfg)],
        lambda w: [str(w.badcfg)],
    ),
    Case(
        "bless",
        N,
        lambda w: ["bless", "good", "--esp", str(w.esp), "--efivars", str(w.root), "--root", str(w.root)],
        lambda w: ["LoaderBootCountPath is not set"],
    ),
    Case(
        "bless",
        R,
        lambda w: ["bless", "good", "--esp", str(w.missing), "--entry", BLESS, "--root", str(w.root)],
        lambda w: [str(w.missing)],
    ),
    Case(
        "bless",
        M,
        lambda w: ["bless", "good", "--esp", str(w.esp), "--entry", BLESS, "--config", str(w.badcfg)],
        lambda w: [str(w.badcfg)],
    ),
    Case(
        "bless",
        B,
        lambda w: ["bless", "good", "--esp", str(w.esp), "--entry", BLESS, "--root", str(w.root)],
        lambda w: ["holds the ESP lock"],
        locked=lambda w: w.esp,
    ),
    Case("bless", U, lambda w: ["bless", "great"], lambda w: ["bootkeeper bless", "great"]),
    Case(
        "random-seed", R, lambda w: ["random-seed", "--esp", str(w.missing)], lambda w: [f"{w.missing}: does not exist"]
    ),
    Case("random-seed", M, lambda w: ["random-seed", "--esp", str(w.notesp)], lambda w: [str(w.notesp), "not an ESP"]),
    Case("random-seed", U, lambda w: ["random-seed", "--bogus"], lambda w: ["bootkeeper random-seed", "--bogus"]),
    Case("arm", R, lambda w: ["arm", "--esp", str(w.esp), "--config", str(w.missing)], lambda w: [str(w.missing)]),
    Case("arm", M, lambda w: ["arm", "--esp", str(w.esp), "--config", str(w.badcfg)], lambda w: [str(w.badcfg)]),
    Case("rotate", R, lambda w: ["rotate", f"{w.missing}.conf", "--esp", str(w.esp)], lambda w: [f"{w.missing}.conf"]),
    Case("rotate", M, lambda w: ["rotate", str(w.junk), "--esp", str(w.esp)], lambda w: [str(w.junk)]),
    Case(
        "upgrade",
        R,
        lambda w: ["upgrade", str(w.missing), "--esp", str(w.esp), "--root", str(w.root)],
        lambda w: [str(w.missing)],
    ),
    Case(
        "upgrade",
        E,
        lambda w: ["upgrade", str(w.junk), "--esp", str(w.esp), "--root", str(w.root)],
        lambda w: [str(w.junk)],
    ),
    Case(
        "select",
        N,
        lambda w: ["select", "nosuch", "--once", "--esp", str(w.esp), "--efivars", str(w.ev)],
        lambda w: ["nosuch"],
    ),
    Case(
        "select",
        IO,
        lambda w: ["select", "passive", "--once", "--esp", str(w.esp), "--efivars", str(w.afile)],
        lambda w: ["cannot write (Not a directory)"],
    ),
    Case("select", U, lambda w: ["select", "passive", "--once", "--persistent"], lambda w: ["--once"]),
    Case("simulate", U, lambda w: ["simulate", "--boots", "many"], lambda w: ["many"]),
    Case("simulate", M, lambda w: ["simulate", "--config", str(w.badcfg)], lambda w: [str(w.badcfg)]),
    Case("demo", U, lambda w: ["demo", "--bogus"], lambda w: ["bootkeeper demo", "--bogus"]),
    Case(
        "sysext activate",
        M,
        lambda w: ["sysext", "activate", "--root", str(w.root), "--config", str(w.badcfg)],
        lambda w: [str(w.badcfg)],
    ),
    Case("sysext activate", U, lambda w: ["sysext", "activate", "--mode", "strict"], lambda w: ["strict"]),
    Case(
        "sysext required",
        U,
        lambda w: ["sysext", "required", "--root", str(w.root), "--reboot-on-failure", "always"],
        lambda w: ["always"],
    ),
    Case(
        "sysext build",
        R,
        lambda w: [
            "sysext",
            "build",
            str(w.tree),
            "-o",
            str(w.tmp / "o.raw"),
            "--key",
            str(w.missing),
            "--cert",
            str(w.cert),
        ],
        lambda w: [f"{w.missing}: cannot read the key"],
    ),
    Case(
        "sysext build",
        M,
        lambda w: [
            "sysext",
            "build",
            str(w.tree),
            "-o",
            str(w.tmp / "o.raw"),
            "--key",
            str(w.junk),
            "--cert",
            str(w.cert),
        ],
        lambda w: [str(w.junk)],
    ),
    Case(
        "sysext build",
        E,
        lambda w: [
            "sysext",
            "build",
            str(w.tree),
            "-o",
            str(w.tmp / "o.raw"),
            "--key",
            str(w.key2),
            "--cert",
            str(w.cert),
        ],
        lambda w: [f"{w.key2}: not the key of {w.cert}"],
    ),
    Case(
        "sysext build",
        U,
        lambda w: [
            "sysext",
            "build",
            str(w.tree),
            "-o",
            str(w.tmp / "o.raw"),
            "--key",
            str(w.key),
            "--cert",
            str(w.cert),
            "--arch",
            "vax",
        ],
        lambda w: ["vax"],
    ),
    Case("sysext inspect", R, lambda w: ["sysext", "inspect", str(w.missing)], lambda w: [str(w.missing)]),
    Case("sysext inspect", M, lambda w: ["sysext", "inspect", str(w.junk)], lambda w: [str(w.junk)]),
    Case(
        "sysext install",
        R,
        lambda w: ["sysext", "install", f"{w.missing}.raw", "--esp", str(w.esp), "--root", str(w.root)],
        lambda w: [f"{w.missing}.raw"],
    ),
    Case(
        "sysext install",
        N,
        lambda w: ["sysext", "install", str(w.junk), "--name", "junk.raw", "--esp", str(w.esp), "--root", str(w.root)],
        lambda w: ["no boot entry runs a UKI"],
    ),
    Case(
        "sysext list",
        R,
        lambda w: ["sysext", "list", "--esp", str(w.missing), "--root", str(w.root)],
        lambda w: [str(w.missing)],
    ),
    Case(
        "sysext remove",
        R,
        lambda w: ["sysext", "remove", "nosuch.raw", "--esp", str(w.missing), "--root", str(w.root)],
        lambda w: [str(w.missing)],
    ),
    Case(
        "sysext remove",
        B,
        lambda w: ["sysext", "remove", "nosuch.raw", "--esp", str(w.esp), "--root", str(w.root)],
        lambda w: ["holds the ESP lock"],
        locked=lambda w: w.esp,
    ),
    Case(
        "sysext validate",
        R,
        lambda w: ["sysext", "validate", str(w.missing)],
        lambda w: [f"{w.missing}: does not exist"],
    ),
    Case(
        "sysext validate",
        M,
        lambda w: ["sysext", "validate", str(w.junk), "--policy", "root=bogus"],
        lambda w: ["bogus"],
    ),
    Case("sysext validate", E, lambda w: ["sysext", "validate", str(w.junk)], lambda w: []),
    Case(
        "install-units",
        M,
        lambda w: ["install-units", "--root", str(w.root), "--config", str(w.badcfg)],
        lambda w: [str(w.badcfg)],
    ),
    Case(
        "install-units",
        IO,
        lambda w: ["install-units", "--root", str(w.blocked)],
        lambda w: [str(w.blocked)],
    ),
    Case(
        "service enroll",
        M,
        lambda w: ["service", "enroll", "x.service", "--root", str(w.root), "--config", str(w.badcfg)],
        lambda w: [str(w.badcfg)],
    ),
    Case(
        "service enroll",
        U,
        lambda w: ["service", "enroll", "x.service", "--reboot-on-failure", "sometimes"],
        lambda w: ["sometimes"],
    ),
    Case("service list", U, lambda w: ["service", "list", "--root", str(w.afile)], lambda w: [str(w.afile)]),
    Case(
        "service enroll",
        R,
        lambda w: ["service", "enroll", "x.service", "--root", str(w.blocked)],
        lambda w: [str(w.blocked)],
    ),
    Case("service remove", U, lambda w: ["service", "remove"], lambda w: ["NAMES"]),
    Case(
        "cloud-config render",
        R,
        lambda w: ["cloud-config", "render", "x.service", "--root", str(w.root), "--config", str(w.missing)],
        lambda w: [str(w.missing)],
    ),
    Case(
        "cloud-config render",
        IO,
        lambda w: ["cloud-config", "render", "x.service", "--root", str(w.root), "-o", str(w.afile / "x.yaml")],
        lambda w: [str(w.afile)],
    ),
    Case("lint", R, lambda w: ["lint", str(w.missing), "--root", str(w.root)], lambda w: [f"{w.missing}: cannot read"]),
    Case("lint", M, lambda w: ["lint", "--esp", str(w.notesp), "--root", str(w.root)], lambda w: ["not an ESP"]),
    Case(
        "history record",
        IO,
        lambda w: ["history", "record", "--esp", str(w.esp), "--root", str(w.blocked), "--boot-id", "x" * 32],
        lambda w: [str(w.blocked)],
    ),
    Case("history show", U, lambda w: ["history", "show", "--bogus"], lambda w: ["--bogus"]),
    Case("motd", R, lambda w: ["motd", "--esp", str(w.missing), "--root", str(w.root)], lambda w: [str(w.missing)]),
    Case(
        "keys export",
        M,
        lambda w: ["keys", "export", "--root", str(w.root), "--config", str(w.badcfg)],
        lambda w: [str(w.badcfg)],
    ),
    Case(
        "keys export",
        IO,
        lambda w: ["keys", "export", "--root", str(w.root), "--efivars", str(w.root), "--dest", str(w.afile / "d")],
        lambda w: [str(w.afile)],
    ),
    Case(
        "keys generate",
        IO,
        lambda w: ["keys", "generate", "--key", str(w.afile / "k"), "--cert", str(w.tmp / "c")],
        lambda w: [str(w.afile)],
    ),
    Case("keys generate", U, lambda w: ["keys", "generate", "--days", "soon"], lambda w: ["soon"]),
    Case(
        "keys list",
        M,
        lambda w: ["keys", "list", "--root", str(w.root), "--config", str(w.badcfg)],
        lambda w: [str(w.badcfg)],
    ),
    Case("tpm predict", N, lambda w: ["tpm", "predict", "--esp", str(w.esp)], lambda w: ["no boot entry runs a UKI"]),
    Case("tpm predict", U, lambda w: ["tpm", "predict", "--bank", "md5"], lambda w: ["md5"]),
    Case(
        "tpm sign-policy",
        M,
        lambda w: ["tpm", "sign-policy", "--uki", str(w.junk), "--print-digests"],
        lambda w: [str(w.junk), "not a PE"],
    ),
    Case(
        "tpm sign-policy",
        R,
        lambda w: ["tpm", "sign-policy", "--uki", str(w.missing), "--print-digests"],
        lambda w: [str(w.missing)],
    ),
    Case("tpm sign-policy", U, lambda w: ["tpm", "sign-policy", "--uki", str(w.junk)], lambda w: ["--key"]),
    Case("tpm verify", N, lambda w: ["tpm", "verify", "--root", str(w.root)], lambda w: ["no TPM event log"]),
    Case("tpm verify", U, lambda w: ["tpm", "verify", "--bogus"], lambda w: ["--bogus"]),
    Case("tpm audit", M, lambda w: ["tpm", "audit", str(w.junk)], lambda w: [str(w.junk), "not a LUKS volume"]),
    Case("tpm audit", R, lambda w: ["tpm", "audit", str(w.missing)], lambda w: [str(w.missing), "cannot read"]),
    Case(
        "metrics", R, lambda w: ["metrics", "--esp", str(w.missing), "--root", str(w.root)], lambda w: [str(w.missing)]
    ),
    Case(
        "metrics",
        M,
        lambda w: ["metrics", "--esp", str(w.esp), "--root", str(w.root), "--config", str(w.badcfg)],
        lambda w: [str(w.badcfg)],
    ),
    Case(
        "metrics",
        IO,
        lambda w: [
            "metrics",
            "--esp",
            str(w.esp),
            "--efivars",
            str(w.ev),
            "--root",
            str(w.root),
            "-o",
            str(w.afile / "m"),
        ],
        lambda w: [str(w.afile), "no such folder"],
    ),
    Case(
        "metrics",
        U,
        lambda w: ["metrics", "--textfile-dir", str(w.tmp), "-o", str(w.tmp / "m.prom")],
        lambda w: ["--textfile-dir and -o"],
    ),
    Case(
        "tpm pcrlock",
        N,
        lambda w: ["tpm", "pcrlock", "--esp", str(w.esp), "--dest", str(w.root / "pcrlock.d")],
        lambda w: ["no boot entry runs a UKI"],
    ),
    Case("tpm pcrlock", U, lambda w: ["tpm", "pcrlock", "--esp", str(w.esp)], lambda w: ["--dest"]),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_error_path(world: World, case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers import tree

    monkeypatch.setenv("BOOTKEEPER_LOCK_TIMEOUT", "0.2")  # a busy case need not wait the 10 s default

    before = tree(world.esp)
    argv = case.argv(world)
    if case.locked is not None:
        with _locked(case.locked(world)):
            code, err = _run(argv)
    else:
        code, err = _run(argv)
    assert code == case.code, (argv, code, err)
    lines = [x for x in err.splitlines() if not x.startswith(("hint:", "bootkeeper: warning:", "warning:"))]
    assert "Traceback" not in err
    if case.code is not ExitCode.REFUSED or case.verb != "sysext validate":
        assert len(lines) == 1 and lines[0].startswith("bootkeeper: error: "), err
        for w in case.words(world):
            assert w in lines[0], (w, lines[0])
    assert tree(world.esp) == before, "a failing verb changed the ESP"


def _leaves() -> list[str]:
    ctx = click.Context(cli)
    out: list[str] = []

    def walk(cmd: click.Command, path: list[str]) -> None:
        if isinstance(cmd, click.Group):
            for n in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, n)
                assert sub is not None
                walk(sub, [*path, n])
        else:
            out.append(" ".join(path))

    walk(cli, [])
    return out


def test_every_verb_has_its_error_paths_driven() -> None:
    leaves = _leaves()
    assert set(VERBS) <= {v.split()[0] for v in leaves}
    missing = [v for v in leaves if not any(c.verb == v for c in CASES)]
    assert missing == [], f"verbs without an error-path case: {missing}"
    assert {c.verb for c in CASES} <= set(leaves)


def test_every_code_is_reached() -> None:
    reached = {c.code for c in CASES}
    # OK and INTERNAL are not error paths of the input; COMMAND is driven where the tool runs
    # (tests/sysext/test_node_systemd.py: a failing systemd-sysext refresh exits 8)
    assert set(ExitCode) - reached == {ExitCode.OK, ExitCode.COMMAND, ExitCode.INTERNAL}


def test_a_bug_is_one_line_and_exit_70(monkeypatch: pytest.MonkeyPatch, world: World) -> None:
    """An exception no check expected still leaves as one line (and the class name), exit 70."""
    from bootkeeper.esp.store import EspStore

    def boom(*_: object, **__: object) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr(EspStore, "snapshot", boom)
    code, err = _run(["entries", "--esp", str(world.esp)])
    assert code == 70 and err.count("\n") == 1 and "internal error: KeyError" in err, err
