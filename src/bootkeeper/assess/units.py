"""The systemd units bootkeeper ships, rendered for this config and this installation.

* ``bootkeeper-sysext.service``: after the local (persistent) mounts, before ``systemd-sysext.service``:
  validates ``/.extra/sysext`` and places what passes in ``/run/extensions``.
* ``systemd-sysext.service.d/10-bootkeeper.conf``: systemd-sysext with the configured image policy
  (enforced mode only: in the other modes a failing image is placed on purpose, and a policy would make
  systemd-sysext refuse every image) and ``SYSTEMD_SYSEXT_HIERARCHIES`` when configured. The node's
  systemd-sysext takes ``--image-policy=`` only from v254 (:mod:`bootkeeper.systemd_version`); an older
  one rejects it and ``systemd-sysext.service`` would fail on every boot, so there the drop-in runs a
  plain ``systemd-sysext refresh`` and the policy is enforced by ``bootkeeper-sysext.service`` alone.
  Before v257 systemd-sysext mounts its overlay on top of the mounts below a hierarchy (a persistent
  ``/usr/local``): there the drop-in runs ``/etc/bootkeeper/sysext-submounts`` (:mod:`bootkeeper.submounts`)
  before and after every refresh, which puts them back over the overlay.
* ``bootkeeper-bless.service``: systemd-bless-boot's place (``Requires=``/``After=boot-complete.target``),
  running ``bootkeeper bless good``, which remounts a read-only ``/efi``, keeps loader.conf's ``default``
  valid and re-arms recovery. ``systemd-bless-boot.service`` is masked so that the two never race.
* ``bootkeeper-random-seed.service``: systemd-boot-random-seed.service's place (the same ordering and
  conditions, before ``sysinit.target``), running ``bootkeeper random-seed``: the real ``bootctl
  random-seed`` under the ESP lock, with a read-only ``/efi`` remounted rw and back. The real unit
  cannot write a read-only ESP and fails on every boot; it is masked.
* ``bootkeeper-boot-check.service`` (``boot_assessment.good_when``; none for ``services-only``): what
  a good boot needs besides the enrolled services, required by ``boot-complete.target`` and ordered as
  upstream's ``systemd-boot-check-no-failures.service`` (after the default targets). ``multi-user``:
  ``Requires=multi-user.target``, so a boot whose multi-user.target cannot be reached fails its start
  job, and boot-complete.target's and bless's with it; ``no-failed-units``: that, and the node's
  ``systemd-boot-check-no-failures`` (or, where it has none, the same check of ``NFailedUnits``).
* ``bootkeeper-sysext-required.service``: ``sysext.required`` (sysext/required.py): required by
  ``boot-complete.target``, after the activation and the merge; it runs only when the activation left
  its verdict file, and fails the boot; on a counted active boot with a try used it reboots
  (``sysext required --reboot-on-failure active``: bootkeeper-generator's rule, decided at that point,
  as what fails is known only after the activation).
* ``bootkeeper-boot.service``: early in every boot, appends the boot to the history
  (``/var/lib/bootkeeper``) and writes the motd.
* ``bootkeeper-metrics.service``: ``bootkeeper metrics`` into node_exporter's textfile folder (Debian's
  default; nothing to do on a node without that folder). Started once the boot is up (after
  activation and the history record), by ``bootkeeper-metrics.path`` whenever the boot history
  (a boot, bless's verdict, an upgrade), the activation report or tpm verify's result changes, and
  every 15 minutes by ``bootkeeper-metrics.timer`` (the stale-metrics alert's heartbeat).
* ``bootkeeper-update.timer`` / ``.service``: ``bootkeeper update --scheduled`` on ``update.schedule`` with
  ``update.randomized_delay`` of jitter (``Persistent=``: a node that was off catches up), after the
  network is online; never on a recovery or statereset boot (``/run/cos/<role>_mode``; ``update``
  itself checks the role where Kairos's files are missing), which repair instead.
* ``bootkeeper-repair.service``: ``bootkeeper repair`` on recovery and statereset boots only
  (``ExecCondition=bootkeeper repair --needed``: the role, and on statereset whether active and passive
  are still bad, so a healthy boot skips it), after the network is online and after bless (a statereset
  that hands back needs no repair), with ``update.repair_timeout``. ``DefaultDependencies=no``: its wanting
  target does not wait for it, and nothing of boot-complete.target does (recovery is never blessed;
  docs/updates.md, "Repair").
* ``/etc/systemd/system-generators/bootkeeper-generator``: :mod:`bootkeeper.assess.generator`,
  self-contained, run by the system's Python with ``-IS`` (no site-packages: fast, and nothing a
  broken Python package can break).

The Debian package (``debian/rules``) ships what :func:`render` writes that does not depend on the
config, rendered by ``install-units`` at build time, in ``/usr/lib/systemd``; on a node that has it,
:func:`install` writes no copy of those in ``/etc`` (which would shadow the package's files).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bootkeeper import fsutil, submounts, unittext
from bootkeeper.config import Config, GoodWhen, Sysext, SysextMode, Update
from bootkeeper.errors import UsageError, WriteError
from bootkeeper.esp.efivars import LOADER_GUID
from bootkeeper.systemd_version import ASSUMED, IMAGE_POLICY_SINCE, takes_image_policy

UNIT_DIR = "etc/systemd/system"
GENERATOR_DIR = "etc/systemd/system-generators"
GENERATOR = "bootkeeper-generator"
SYSEXT_UNIT = "bootkeeper-sysext.service"
SYSEXT_DROPIN = "systemd-sysext.service.d/10-bootkeeper.conf"
BLESS_UNIT = "bootkeeper-bless.service"
BOOT_UNIT = "bootkeeper-boot.service"
MASKED = "systemd-bless-boot.service"
# where the node's package ships the files of UNIT_DIR and GENERATOR_DIR (debian/rules)
PACKAGED_DIRS = {UNIT_DIR: "usr/lib/systemd/system", GENERATOR_DIR: "usr/lib/systemd/system-generators"}
RANDOM_SEED_UNIT = "bootkeeper-random-seed.service"
RANDOM_SEED_MASKED = "systemd-boot-random-seed.service"
BOOTCTL = "/usr/bin/bootctl"
METRICS_UNIT = "bootkeeper-metrics.service"
METRICS_PATH = "bootkeeper-metrics.path"
METRICS_TIMER = "bootkeeper-metrics.timer"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"  # Debian's --collector.textfile.directory default
BOOT_CHECK_UNIT = "bootkeeper-boot-check.service"
REQUIRED_UNIT = "bootkeeper-sysext-required.service"  # sysext/required.UNIT (tests check they agree)
REQUIRED_FAILED = "/run/bootkeeper/sysext-required.failed"  # sysext/required.FAILED
UPDATE_UNIT = "bootkeeper-update.service"
UPDATE_TIMER = "bootkeeper-update.timer"
REPAIR_UNIT = "bootkeeper-repair.service"
# the node's upstream check (systemd v257 src/boot/boot-check-no-failures.c: the manager's NFailedUnits)
NO_FAILURES = "/usr/lib/systemd/systemd-boot-check-no-failures"
# unit -> the target whose .requires/ enables it (its [Install] RequiredBy=)
REQUIRED_BY = {BOOT_CHECK_UNIT: "boot-complete.target", REQUIRED_UNIT: "boot-complete.target"}
# unit -> the target whose .wants/ enables it
WANTED_BY = {
    SYSEXT_UNIT: "sysinit.target",
    BLESS_UNIT: "basic.target",
    BOOT_UNIT: "basic.target",
    RANDOM_SEED_UNIT: "sysinit.target",
    METRICS_UNIT: "multi-user.target",
    METRICS_PATH: "paths.target",
    METRICS_TIMER: "timers.target",
    UPDATE_TIMER: "timers.target",
    REPAIR_UNIT: "multi-user.target",
}


@dataclass(frozen=True)
class UnitFile:
    text: str
    mode: int = 0o644


# KillMode=mixed: a stop's SIGTERM goes to bootkeeper alone, not to the mount it runs to put a read-only
# /efi back (control-group, the default, killed that too: systemd.kill(5)); SIGKILL still ends the rest.
KILL_MODE = "KillMode=mixed"


def _sysext(cfg: Sysext, exec_line: str, systemd: int) -> dict[str, UnitFile]:
    service = f"""# Installed by 'bootkeeper install-units'; re-run it after changing the sysext config.
[Unit]
Description=Validate system extensions one by one and place them in /run/extensions
Documentation=man:systemd-sysext(8)
DefaultDependencies=no
After=local-fs.target
Before=systemd-sysext.service sysinit.target systemd-tmpfiles-setup.service
# Debian ships systemd-sysext.service disabled: what is placed here must also be merged.
Wants=systemd-sysext.service
Conflicts=shutdown.target initrd-switch-root.target
Before=shutdown.target initrd-switch-root.target

[Service]
Type=oneshot
RemainAfterExit=yes
# sysext.timeout. When it runs out systemd stops activate: the images placed so far stay, the copy being
# judged stays a .bootkeeper-*.tmp that systemd-sysext does not load, and systemd-sysext.service, ordered
# after this unit without requiring it, still merges what was placed.
{unittext.setting("TimeoutSec", cfg.timeout)}
ExecStart={exec_line} sysext activate --no-refresh

[Install]
WantedBy={WANTED_BY[SYSEXT_UNIT]}
"""
    refresh = "systemd-sysext refresh"
    why = ""
    if cfg.mode is SysextMode.ENFORCED and takes_image_policy(systemd):
        refresh += " " + unittext.exec_arg(f"--image-policy={cfg.policy}")
    elif cfg.mode is SysextMode.ENFORCED:
        why = (
            f"# No --image-policy: systemd {systemd}'s systemd-sysext rejects it (it exists from\n"
            f"# v{IMAGE_POLICY_SINCE}) and would fail on every boot. The policy is enforced by\n"
            f"# {SYSEXT_UNIT} (bootkeeper sysext activate), which places in\n"
            "# /run/extensions only the images that passed it and moves the refused ones of\n"
            "# /etc/extensions and /var/lib/extensions aside; one put there after it ran\n"
            "# merges without it at the next refresh.\n"
        )
    pre = post = ""
    files: dict[str, UnitFile] = {}
    if not submounts.preserves_submounts(systemd):
        keep, restore = (unittext.exec_line(submounts.step_argv(v)) for v in ("keep", "restore"))
        why += (
            f"# systemd {systemd}'s systemd-sysext mounts its overlay on top of the mounts below a\n"
            f"# hierarchy (a persistent /usr/local); v{submounts.PRESERVED_SINCE} moves them itself. Until then\n"
            "# sysext-submounts puts them back over the overlay after every refresh ('-': a failure is\n"
            "# reported by 'bootkeeper status' and never stops the merge).\n"
        )
        pre, post = f"ExecStartPre=-{keep}\n", f"ExecStartPost=-{restore}\n"
        files[submounts.SCRIPT] = UnitFile(submounts.SCRIPT_TEXT, 0o755)
    env = ""
    if cfg.hierarchies:
        env = f"Environment={unittext.env_assignment(submounts.HIERARCHIES_ENV, ':'.join(cfg.hierarchies))}\n"
    dropin = f"""# Installed by 'bootkeeper install-units' (sysext.mode {cfg.mode.value}).
{why}[Unit]
After={SYSEXT_UNIT}

[Service]
{env}{pre}ExecStart=
ExecStart={refresh}
{post}ExecReload=
{pre.replace("ExecStartPre", "ExecReload")}ExecReload={refresh}
{post.replace("ExecStartPost", "ExecReload")}"""
    return {
        f"{UNIT_DIR}/{SYSEXT_UNIT}": UnitFile(service),
        f"{UNIT_DIR}/{SYSEXT_DROPIN}": UnitFile(dropin),
        **files,
    }


def _assessment(exec_line: str) -> dict[str, UnitFile]:
    counting = f"/sys/firmware/efi/efivars/LoaderBootCountPath-{LOADER_GUID}"
    bless = f"""# Installed by 'bootkeeper install-units': takes the place of systemd-bless-boot.service (masked).
[Unit]
Description=Mark the booted entry good (bootkeeper, read-only ESP)
Documentation=man:systemd-bless-boot.service(8)
DefaultDependencies=no
Requires=boot-complete.target
After=local-fs.target boot-complete.target {BOOT_UNIT}
Conflicts=shutdown.target
Before=shutdown.target
ConditionPathExists=!/etc/initrd-release
ConditionPathExists={counting}

[Service]
Type=oneshot
RemainAfterExit=yes
{KILL_MODE}
ExecStart={exec_line} bless good
ExecStartPost=-{exec_line} motd

[Install]
WantedBy={WANTED_BY[BLESS_UNIT]}
"""
    boot = f"""# Installed by 'bootkeeper install-units'.
[Unit]
Description=Record this boot in the bootkeeper history and write the motd
DefaultDependencies=no
After=local-fs.target
Conflicts=shutdown.target
Before=shutdown.target
ConditionPathExists=!/etc/initrd-release

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={exec_line} history record
ExecStartPost=-{exec_line} motd

[Install]
WantedBy={WANTED_BY[BOOT_UNIT]}
"""
    return {f"{UNIT_DIR}/{BLESS_UNIT}": UnitFile(bless), f"{UNIT_DIR}/{BOOT_UNIT}": UnitFile(boot)}


def _boot_check(good_when: GoodWhen, no_failures: bool) -> dict[str, UnitFile]:
    """``boot_assessment.good_when``'s unit: upstream's systemd-boot-check-no-failures.service (systemd
    v257 units/, which Debian ships disabled) line for line in its ordering, plus ``Requires=``.
    ``no_failures``: the node has :data:`NO_FAILURES`."""
    if good_when is GoodWhen.SERVICES_ONLY:
        return {}
    if good_when is GoodWhen.MULTI_USER:
        run = "/bin/true"
    elif no_failures:
        run = NO_FAILURES
    else:  # what the upstream program asks the manager ($$: a literal $ for systemd's own expansion)
        run = (
            "/bin/sh -c 'n=$$(systemctl show -P NFailedUnits); "
            """[ "$$n" = 0 ] || { echo "Detected $$n failed units."; exit 1; }'"""
        )
    what = "multi-user.target is reached" + ("" if good_when is GoodWhen.MULTI_USER else " and no unit failed")
    unit = f"""# Installed by 'bootkeeper install-units' (boot_assessment.good_when: {good_when.value}).
[Unit]
Description=A boot is good once {what} (bootkeeper)
Documentation=man:systemd-boot-check-no-failures.service(8)
# Requires=: when multi-user.target cannot be reached (a unit it requires failed), this start job
# fails with it, and boot-complete.target's and bootkeeper-bless.service's too: the entry is not
# blessed and counts down at the next boot (seed 000: "If the system successfully reaches
# multi-user.target, the boot entry is marked as good")
Requires=multi-user.target
After=default.target graphical.target multi-user.target
Before=boot-complete.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={run}

[Install]
RequiredBy={REQUIRED_BY[BOOT_CHECK_UNIT]}
"""
    return {f"{UNIT_DIR}/{BOOT_CHECK_UNIT}": UnitFile(unit)}


def _required(exec_line: str) -> dict[str, UnitFile]:
    """``sysext.required``'s unit: no process at all unless the activation left its verdict file
    (the condition); then bootkeeper says why, records it in the history, reboots by the generator's
    rule for ``reboot_on_failure: active`` (generator.on_failure) and exits 1."""
    unit = f"""# Installed by 'bootkeeper install-units': fails the boot when a required extension
# (sysext.required) was refused or missing; the activation leaves {REQUIRED_FAILED} then.
[Unit]
Description=Fail the boot assessment when a required system extension is not merged (bootkeeper)
Documentation=man:systemd-sysext(8)
DefaultDependencies=no
After=local-fs.target {SYSEXT_UNIT} systemd-sysext.service {BOOT_UNIT}
Before=boot-complete.target
Conflicts=shutdown.target
Before=shutdown.target
ConditionPathExists={REQUIRED_FAILED}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={exec_line} sysext required --record --reboot-on-failure active
# the login message says why: before the reboot (on active, by the check itself) or for the operator
ExecStopPost=-{exec_line} motd
StandardOutput=journal+console

[Install]
RequiredBy={REQUIRED_BY[REQUIRED_UNIT]}
"""
    return {f"{UNIT_DIR}/{REQUIRED_UNIT}": UnitFile(unit)}


def _random_seed(exec_line: str) -> dict[str, UnitFile]:
    """The real unit's [Unit] section, line for line (systemd v257 ``units/systemd-boot-random-seed.service``,
    Debian's systemd-boot 257.13 ships it in ``sysinit.target.wants``), so that the seed is refreshed at
    the same point of the boot: after the local mounts (the ESP) and systemd-random-seed.service, before
    sysinit.target; only where the boot loader or stub can pass a seed on. One condition more: bootctl
    (systemd installs it in /usr/bin; Debian ships it in systemd-boot-tools). A node without it has no
    real unit to replace, and this one would fail on every boot."""
    features = "/sys/firmware/efi/efivars/{}-" + LOADER_GUID
    unit = f"""# Installed by 'bootkeeper install-units': takes the place of {RANDOM_SEED_MASKED} (masked),
# which cannot write a read-only ESP.
[Unit]
Description=Update Boot Loader Random Seed (bootkeeper, read-only ESP)
Documentation=man:systemd-boot-random-seed.service(8) man:random(4)
DefaultDependencies=no
After=local-fs.target systemd-random-seed.service
Conflicts=shutdown.target
Before=sysinit.target shutdown.target
ConditionVirtualization=!container
ConditionPathExists=!/etc/initrd-release
ConditionPathExists=|{features.format("LoaderFeatures")}
ConditionPathExists=|{features.format("StubFeatures")}
ConditionFileIsExecutable={BOOTCTL}

[Service]
Type=oneshot
RemainAfterExit=yes
{KILL_MODE}
ExecStart={exec_line} random-seed

[Install]
WantedBy={WANTED_BY[RANDOM_SEED_UNIT]}
"""
    return {f"{UNIT_DIR}/{RANDOM_SEED_UNIT}": UnitFile(unit)}


def _metrics(exec_line: str, watch: Sequence[str]) -> dict[str, UnitFile]:
    """``watch``: the files besides the boot history whose change refreshes the metrics (the caller
    names them: the activation report is sysext's, tpm verify's result cli's; assess imports neither)."""
    from bootkeeper.assess.history import HISTORY

    service = f"""# Installed by 'bootkeeper install-units'.
[Unit]
Description=Write bootkeeper's status for node_exporter's textfile collector
Documentation=https://github.com/prometheus/node_exporter#textfile-collector
# not after the bless service: it waits for boot-complete.target, and an unblessed boot must report
After=local-fs.target {SYSEXT_UNIT} {BOOT_UNIT}
ConditionPathIsDirectory={TEXTFILE_DIR}

[Service]
Type=oneshot
ExecStart={exec_line} metrics --textfile-dir {TEXTFILE_DIR}

[Install]
WantedBy={WANTED_BY[METRICS_UNIT]}
"""
    paths = "".join(unittext.setting("PathChanged", p) + "\n" for p in (f"/{HISTORY}", *watch))
    path = f"""# Installed by 'bootkeeper install-units'.
[Unit]
Description=Refresh bootkeeper's metrics when a boot, a verdict, an upgrade or an activation is recorded

[Path]
{paths}Unit={METRICS_UNIT}

[Install]
WantedBy={WANTED_BY[METRICS_PATH]}
"""
    timer = f"""# Installed by 'bootkeeper install-units'.
[Unit]
Description=Refresh bootkeeper's metrics every 15 minutes

[Timer]
OnBootSec=5min
OnUnitActiveSec=15min
Unit={METRICS_UNIT}

[Install]
WantedBy={WANTED_BY[METRICS_TIMER]}
"""
    return {
        f"{UNIT_DIR}/{METRICS_UNIT}": UnitFile(service),
        f"{UNIT_DIR}/{METRICS_PATH}": UnitFile(path),
        f"{UNIT_DIR}/{METRICS_TIMER}": UnitFile(timer),
    }


def _update(cfg: Update, exec_line: str) -> dict[str, UnitFile]:
    """The scheduled update (``update.schedule``, ``update.randomized_delay``) and the repair
    (``update.repair_timeout``): docs/updates.md."""
    service = f"""# Installed by 'bootkeeper install-units'.
[Unit]
Description=Check for, download and (update.auto_apply) apply a new OS release (bootkeeper)
Documentation=man:bootkeeper(8)
Wants=network-online.target
After=network-online.target {BLESS_UNIT}
# recovery and statereset repair instead ({REPAIR_UNIT})
ConditionPathExists=!/run/cos/recovery_mode
ConditionPathExists=!/run/cos/statereset_mode

[Service]
Type=oneshot
{KILL_MODE}
ExecStart={exec_line} update --scheduled
"""
    timer = f"""# Installed by 'bootkeeper install-units'; re-run it after changing update.schedule.
[Unit]
Description=Look for a new OS release on update.schedule (bootkeeper)

[Timer]
{unittext.setting("OnCalendar", cfg.schedule)}
{unittext.setting("RandomizedDelaySec", cfg.randomized_delay)}
Persistent=true
Unit={UPDATE_UNIT}

[Install]
WantedBy={WANTED_BY[UPDATE_TIMER]}
"""
    repair = f"""# Installed by 'bootkeeper install-units'; re-run it after changing update.repair_timeout.
[Unit]
Description=Repair active and passive from a release on a recovery or statereset boot (bootkeeper)
Documentation=man:bootkeeper(8)
# no default dependencies: multi-user.target, which wants this unit, is then not ordered after it
DefaultDependencies=no
Requires=sysinit.target
Wants=network-online.target
# after bless: a good statereset boot hands back to active first, and then no repair is needed
After=sysinit.target basic.target local-fs.target network-online.target {BOOT_UNIT} {BLESS_UNIT}
Conflicts=shutdown.target
Before=shutdown.target
ConditionPathExists=!/etc/initrd-release

[Service]
Type=oneshot
{KILL_MODE}
{unittext.setting("TimeoutStartSec", cfg.repair_timeout)}
# recovery, or statereset with active and passive still bad: else the unit is skipped, not failed
ExecCondition={exec_line} repair --needed
ExecStart={exec_line} repair
ExecStopPost=-{exec_line} motd
StandardOutput=journal+console

[Install]
WantedBy={WANTED_BY[REPAIR_UNIT]}
"""
    return {
        f"{UNIT_DIR}/{UPDATE_UNIT}": UnitFile(service),
        f"{UNIT_DIR}/{UPDATE_TIMER}": UnitFile(timer),
        f"{UNIT_DIR}/{REPAIR_UNIT}": UnitFile(repair),
    }


def generator_script(python: str) -> UnitFile:
    from bootkeeper.assess import generator

    source = Path(generator.__file__).read_text()
    return UnitFile(f"#!{python} -IS\n# Installed by 'bootkeeper install-units'.\n{source}", 0o755)


def render(
    cfg: Config,
    exe: list[str],
    python: str,
    systemd: int = ASSUMED,
    metrics_watch: Sequence[str] = (),
    no_failures: bool = True,
) -> dict[str, UnitFile]:
    """``{path under ROOT: file}``; ``exe`` runs bootkeeper (``[/usr/bin/bootkeeper]`` or
    ``[/usr/bin/python3, -m, bootkeeper]``), ``python`` runs the generator; both absolute paths.
    ``systemd`` is the node's systemd major version (what its systemd-sysext understands);
    ``metrics_watch``: the node's paths, besides the boot history, that refresh the metrics;
    ``no_failures``: the node has :data:`NO_FAILURES` (for ``good_when: no-failed-units``)."""
    for what, path in (("the bootkeeper command", exe[0] if exe else ""), ("python", python)):
        if not os.path.isabs(path):
            raise WriteError(f"{path or '(empty)'}: {what} must start with an absolute path")
    if "$" in exe[0]:  # the program to run may not be a variable (unittext.exec_line)
        raise UsageError(f"{exe[0]!r}: the bootkeeper command's path cannot hold a '$' in a unit's command line")
    # the generator's "#!PYTHON -IS" line: the kernel ends the interpreter's path at the first blank
    # and reads at most 255 bytes of the line (fs/binfmt_script.c, BINPRM_BUF_SIZE 256 since 5.1)
    if not unittext.printable(python) or " " in python or len(f"#!{python} -IS".encode()) > 255:
        raise UsageError(
            f"{python!r}: the python that runs the generator must be a path of printable characters without "
            "blanks, its '#!' line at most 255 bytes"
        )
    exec_line = unittext.exec_line(exe)
    return {
        **_sysext(cfg.sysext, exec_line, systemd),
        **_assessment(exec_line),
        **_boot_check(cfg.boot_assessment.good_when, no_failures),
        **_required(exec_line),
        **_random_seed(exec_line),
        **_metrics(exec_line, metrics_watch),
        **_update(cfg.update, exec_line),
        f"{GENERATOR_DIR}/{GENERATOR}": generator_script(python),
    }


def packaged(root: Path, rel: str, f: UnitFile) -> str | None:
    """The node's path of the package's copy of ``rel`` (``/usr/lib/systemd/...``) when it is this
    very file (same text and mode), else None."""
    folder, _, name = rel.rpartition("/")
    if (base := PACKAGED_DIRS.get(folder)) is None:
        return None
    p = root / base / name
    try:
        same = p.is_file() and p.read_text() == f.text and (p.stat().st_mode & 0o777) == f.mode
    except (OSError, UnicodeDecodeError):
        return None
    return f"/{base}/{name}" if same else None


def _unlink_ours(link: Path, unit: Path) -> None:
    """Remove the link and the unit file an earlier ``install-units`` wrote (the header says so)."""
    if link.is_symlink():
        link.unlink()
        fsutil.fsync_dir(link.parent)
    try:
        ours = unit.is_file() and unit.read_text().startswith("# Installed by 'bootkeeper install-units'")
    except (OSError, UnicodeDecodeError):
        ours = False
    if ours:
        unit.unlink()
        fsutil.fsync_dir(unit.parent)


def install(root: Path, files: dict[str, UnitFile], enable: bool = True) -> list[str]:
    """Write the files under ``root`` (crash-safe), mask the units bootkeeper's take the place of and
    enable the services the way ``systemctl enable`` does (a symlink in ``<target>.wants``). Returns the
    paths. A file the node's package already ships (:func:`packaged`) is not written, and a copy an
    earlier run left in ``/etc`` is removed when it is the same file: it would shadow the package's."""
    written = []
    where = {rel: f"/{rel}" for rel in files}
    try:
        for rel, f in files.items():
            p = root / rel
            if (shipped := packaged(root, rel, f)) is not None:
                where[rel] = shipped
                if not p.is_symlink() and p.is_file() and p.read_text() == f.text:
                    p.unlink()
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            if not p.is_file() or p.read_text() != f.text or (p.stat().st_mode & 0o777) != f.mode:
                fsutil.write_atomic(p, f.text.encode(), mode=f.mode)
            written.append(str(p))
        base = root / UNIT_DIR
        for masked in (MASKED, RANDOM_SEED_MASKED):
            fsutil.symlink_atomic(base / masked, "/dev/null")
            written.append(str(base / masked))
        if enable:
            for unit, target in WANTED_BY.items():
                link = base / f"{target}.wants" / unit
                fsutil.symlink_atomic(link, where.get(f"{UNIT_DIR}/{unit}", f"/{UNIT_DIR}/{unit}"))
                written.append(str(link))
            for unit, target in REQUIRED_BY.items():
                link = base / f"{target}.requires" / unit
                if f"{UNIT_DIR}/{unit}" in files:
                    fsutil.symlink_atomic(link, where[f"{UNIT_DIR}/{unit}"])
                    written.append(str(link))
                else:  # good_when: services-only now: the link an earlier run made would still decide
                    _unlink_ours(link, base / unit)
    except OSError as exc:
        raise WriteError(f"{root}: cannot install units ({exc.strerror or exc})") from exc
    return written
