"""The node tests' machine: a Debian 13 guest booted by systemd-boot 257 under QEMU/TCG.

Pieces, each cached under ``.cache/node`` and rebuilt only when its inputs change:

* the guest tree (``scripts/setup-node-guest.sh``): Debian packages only;
* bootkeeper's Debian package (:func:`deb`, ``scripts/build-deb.sh``: dpkg-buildpackage in the trixie
  tree), cached by the digest of what it is built from;
* the root file system image: a copy of the tree with that package installed by ``dpkg -i`` (which
  checks its Depends against the tree: Debian's python3-* packages), the test rig from
  ``tests/node/guest``, ``/oem/90-node.yaml``, and what ``bootkeeper install-units`` still writes on a
  node that has the package (the config's drop-ins, the mask, the links, the enrolled services), run
  inside the copy; packed with ``mkfs.ext4 -d`` (no mounting);
* one UKI per role, made with trixie's ukify: the same kernel and initrd, a command line and
  ``.osrel`` that name the role (``IMAGE_ID`` is also the entry's sort key);
* two versions of the OS for the upgrade scenarios, "v1" and "v2" (:func:`os_ukis`): the same kernel
  and initrd again, but each its own OS: ``.osrel`` is :func:`os_release` N (``VERSION_ID=N``,
  ``IMAGE_ID=active``, ``IMAGE_VERSION=N``: systemd-boot puts v2 before v1) and the command line says
  ``bktest.osversion=N``, for which the rig (bktest-osrel.service) puts that same os-release over
  ``/usr/lib/os-release`` before any extension is judged: on a Kairos node the OS lives in the UKI and
  its ``.osrel`` is the running OS's os-release; here the root file system is shared by all UKIs;
* extensions built for each (:func:`os_sysexts`): ``tools.sysext.raw`` for v1 and for v2, both
  shipping ``/usr/bin/bk-hello-tools``, which prints the OS version it was built for;
* for the update scenarios (tests/node/test_node_update.py): OS v1 to v4, each UKI signed by ``sbsign``
  with the good key, and each OS's versioned extension ``tools-vN.sysext.raw`` (``SYSEXT_ID=tools``,
  :func:`update_sysexts`); a NIC on QEMU's user network with ``restrict=on`` whose one ``guestfwd``
  reaches a registry on the host's loopback (:class:`NetSpec`; the registry: tests/node/noderegistry.py;
  systemd-networkd does DHCP on it, and wait-online is skipped on a machine without a NIC); a second
  disk, removable, as the USB stick (:func:`stick_args`, :func:`make_stick`).

Each scenario gets its own disk: a GPT with an ESP (FAT32, written with mtools) and that root.
After every boot the ESP is read back with mtools from the disk image itself.

A measured-boot scenario (tests/node/test_node_tpm.py) also gets its own TPM (:func:`make_tpm`): a software
TPM 2.0 (swtpm, manufactured by swtpm_setup with an EK and the sha1 and sha256 banks) and a copy of
OVMF's variable store, both kept across the scenario's boots as a machine keeps them; every boot starts
swtpm for that state and stops it when QEMU ends (:func:`swtpm_running`), and boots Debian's 4 MiB OVMF
build (``OVMF_CODE_4M.fd``, with the TCG2 driver) as pflash with that variable store. The other
scenarios boot ``OVMF.fd`` as before, with no TPM.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trixie
import vmboot

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("NODE_CACHE", ROOT / ".cache" / "node"))
GUEST = CACHE / "guest"
RIG = Path(__file__).resolve().parent / "node" / "guest"
OVMF = Path("/usr/share/ovmf/OVMF.fd")
OVMF_CODE_4M = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS_4M = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
TPM_BANKS = ("sha1", "sha256")
MT_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
ROLES = ("active", "passive", "recovery", "statereset")
ESP_MIB = 192
ROOT_START_MIB = 1 + ESP_MIB
CMDLINE = "root=/dev/vda2 rw console=ttyS0 systemd.firstboot=no fsck.mode=skip panic=-1 quiet"
# Debian 12's QEMU 7.2 TCG corrupts the guest kernel with cmpxchg16b (shared/reference/vm/NOTES.md)
QEMU_CPU = os.environ.get("QEMU_CPU", "qemu64,-cx16")
# One vCPU: with two, a guest kernel died once in about ten boots here ("Oops: int3" in code the
# kernel was patching: multi-threaded TCG ran the old bytes on the other vCPU); one is ~30 % slower.
QEMU_SMP = os.environ.get("QEMU_SMP", "1")
BOOT_TIMEOUT = 420.0

NODE_CONFIG = """\
# /oem/90-node.yaml of the test guest
boot_assessment:
  tries: 2
  recovery_tries: 2
  services:
    - name: bk-health.service
      reboot_on_failure: active
sysext:
  mode: enforced
  certificates: [/etc/bootkeeper/node-good.crt]
  sources: [/run/initrd-extra/sysext]
"""


def missing_pieces(*, tpm: bool = False) -> list[str]:
    """What a node scenario needs and this machine lacks; ``tpm``: also what a measured boot needs."""
    tools = ["qemu-system-x86_64", "mcopy", "mkfs.vfat", "mkfs.ext4", "sfdisk"]
    firmware = [OVMF]
    if tpm:
        tools += ["swtpm", "swtpm_setup"]
        firmware += [OVMF_CODE_4M, OVMF_VARS_4M]
    out = [t for t in tools if not shutil.which(t)]
    out += [str(f) for f in firmware if not f.exists()]
    if tpm and not list((GUEST / "usr/lib/x86_64-linux-gnu").glob("libtss2-esys.so.*")):
        out.append(f"{GUEST}: tpm2-tss (scripts/setup-node-guest.sh)")
    if not (GUEST / "usr/lib/systemd/systemd").exists():
        out.append(f"{GUEST} (scripts/setup-node-guest.sh)")
    if not (trixie.ROOT / "usr/bin/ukify").exists():
        out.append(f"{trixie.ROOT}/usr/bin/ukify (scripts/setup-trixie.sh)")
    if not (trixie.ROOT / "usr/bin/dh_python3").exists():
        out.append(f"{trixie.ROOT}/usr/bin/dh_python3 (scripts/setup-trixie.sh)")
    return out


def _run(cmd: list[str], **kw: object) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-2000:]}")
    return str(p.stdout)


def _digest(paths: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for base in paths:
        files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
        for f in files:
            if "__pycache__" in f.parts:
                continue
            h.update(str(f.relative_to(base.parent)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def kernel_version() -> str:
    names = sorted(p.name[len("vmlinuz-") :] for p in (GUEST / "boot").glob("vmlinuz-*"))
    if not names:
        raise RuntimeError(f"{GUEST}/boot: no kernel")
    return names[-1]


def chroot(tree: Path, script: str) -> str:
    """Run ``script`` in ``tree`` with proc, sys, dev and a tmpfs /run, in a private mount namespace."""
    wrapper = f"""
set -e
R={tree}
mount --bind "$R" "$R"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs tmpfs "$R/run"
exec chroot "$R" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \\
  /bin/sh -ec "$1"
"""
    return _run(["unshare", "--mount", "--propagation", "private", "/bin/bash", "-c", wrapper, "chroot", script])


# -- the pieces ------------------------------------------------------------------------------


# what scripts/build-deb.sh builds the package from (and the script itself)
DEB_SOURCES = ("src", "pyproject.toml", "README.md", "LICENSE", "debian", "man", "scripts/build-deb.sh")


def deb() -> Path:
    """bootkeeper's Debian package, built from this checkout with ``scripts/build-deb.sh`` in the
    trixie tree (cached by the digest of its sources)."""
    key = _digest([ROOT / s for s in DEB_SOURCES])
    out = CACHE / "deb" / key
    found = list(out.glob("bootkeeper_*_all.deb"))
    if found:
        return found[0]
    shutil.rmtree(CACHE / "deb", ignore_errors=True)
    out.mkdir(parents=True)
    _run(["bash", str(ROOT / "scripts/build-deb.sh"), str(out)], env={**os.environ, "TRIXIE_ROOT": str(trixie.ROOT)})
    return next(out.glob("bootkeeper_*_all.deb"))


@dataclass(frozen=True)
class Keys:
    good_key: Path
    good_crt: Path
    other_key: Path
    other_crt: Path


def keys() -> Keys:
    d = CACHE / "keys"
    k = Keys(d / "good.key", d / "good.crt", d / "other.key", d / "other.crt")
    if not k.other_crt.exists():
        d.mkdir(parents=True, exist_ok=True)
        for key, crt, cn in ((k.good_key, k.good_crt, "node good"), (k.other_key, k.other_crt, "node other")):
            bk("keys", "generate", "--key", str(key), "--cert", str(crt), "--cn", cn)
    return k


def bk(*args: str) -> str:
    """The host's bootkeeper (this checkout), for building what the node gets."""
    return _run([sys.executable, "-m", "bootkeeper", *args])


# 1 and 2: the upgrade scenarios (tests/node/test_node.py); 3 and 4 too: the update scenarios
# (tests/node/test_node_update.py), where v3 is a release that fails its health check (fault.sh: v3=...)
OS_VERSIONS = ("1", "2", "3", "4")


def os_release(version: str) -> str:
    """The os-release of OS ``version``: the guest's, with ``VERSION_ID`` replaced; it is both the
    ``.osrel`` of that OS's UKI and what the rig shows as ``/usr/lib/os-release`` when it boots."""
    lines = [
        line
        for line in (GUEST / "usr/lib/os-release").read_text().splitlines()
        if not line.startswith(("VERSION_ID=", "PRETTY_NAME=", "IMAGE_ID=", "IMAGE_VERSION="))
    ]
    lines += [
        f'VERSION_ID="{version}"',
        "IMAGE_ID=active",
        f"IMAGE_VERSION={version}",
        f'PRETTY_NAME="bk-node v{version}"',
    ]
    return "\n".join(lines) + "\n"


def root_image() -> Path:
    """The root file system: guest tree + bootkeeper (its Debian package) + test rig + install-units."""
    pkg = deb()
    k = keys()
    stamp = (CACHE / "guest.stamp").read_text().strip()
    osrels = "".join(os_release(v) for v in OS_VERSIONS)
    key = _digest([pkg, RIG, k.good_crt], extra=stamp + NODE_CONFIG + osrels)
    img = CACHE / f"root-{key}.img"
    if img.exists():
        return img
    for old in CACHE.glob("root-*.img"):
        old.unlink()
    stage = CACHE / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    _run(["cp", "-a", str(GUEST), str(stage)])
    shutil.copy(pkg, stage / "tmp" / pkg.name)
    (stage / "oem").mkdir(exist_ok=True)
    (stage / "oem" / "90-node.yaml").write_text(NODE_CONFIG)
    (stage / "etc/bootkeeper").mkdir(parents=True, exist_ok=True)
    shutil.copy(k.good_crt, stage / "etc/bootkeeper/node-good.crt")
    lib = stage / "usr/local/lib/bktest"
    lib.mkdir(parents=True)
    for f in RIG.glob("*.sh"):
        shutil.copy(f, lib / f.name)
        (lib / f.name).chmod(0o755)
    for v in OS_VERSIONS:
        (lib / f"os-release.v{v}").write_text(os_release(v))
    units = stage / "etc/systemd/system"
    for f in RIG.glob("*.service"):
        shutil.copy(f, units / f.name)
    (units / "bootkeeper-bless.service.d").mkdir(parents=True, exist_ok=True)
    shutil.copy(RIG / "bootkeeper-bless-bktest.conf", units / "bootkeeper-bless.service.d" / "90-bktest.conf")
    shutil.copy(RIG / "crypttab", stage / "etc/crypttab")  # noauto: for tests/node/test_node_unlock.py
    # tests/node/test_node_update.py: DHCP on the NIC QEMU's user network gives a scenario with a registry
    # (boot(net=...)); wait-online skipped where the machine has no NIC (-net none), so nothing stalls
    (stage / "etc/systemd/network").mkdir(parents=True, exist_ok=True)
    shutil.copy(RIG / "50-bktest.network", stage / "etc/systemd/network/50-bktest.network")
    for unit, dropin in (
        ("systemd-networkd-wait-online.service", "bktest-wait-online.conf"),
        ("bootkeeper-update.service", "bktest-update.conf"),
        ("bootkeeper-repair.service", "bktest-update.conf"),
    ):
        (units / f"{unit}.d").mkdir(parents=True, exist_ok=True)
        shutil.copy(RIG / dropin, units / f"{unit}.d" / "90-bktest.conf")
    out = chroot(
        stage,
        f"dpkg -i /tmp/{pkg.name}; rm /tmp/{pkg.name}; "
        "systemctl enable bktest-osrel.service bktest-fault.service bktest-report.service; "
        "systemctl enable bktest-usrlocal.service bktest-usrlocal-check.service; "  # test_node_usrlocal.py
        # tests/node/test_node_goodboot.py: idle unless its files are on the ESP (bktest/oem.yaml, fail-multiuser)
        "systemctl enable bktest-goodboot-oem.service bktest-goodboot-required.service "
        "bktest-goodboot-multiuser.service; "
        # tests/node/test_node_update.py: the registry's NIC; the update units from the scenario's config
        "systemctl enable systemd-networkd.service bktest-update-units.service; "
        "bootkeeper install-units; "
        "bootkeeper --version; "
        "python3 -c 'import bootkeeper, cryptography; print(bootkeeper.__file__, cryptography.__version__)'",
    )
    (CACHE / "install-units.log").write_text(out)
    size = int(_run(["du", "-sm", str(stage)]).split()[0]) * 13 // 10 + 96
    tmp = img.with_suffix(".tmp")
    _run(["mkfs.ext4", "-q", "-F", "-L", "bkroot", "-d", str(stage), str(tmp), f"{size}M"])
    tmp.rename(img)
    shutil.rmtree(stage)
    return img


def ukis() -> dict[str, Path]:
    """One UKI per role (trixie's ukify, systemd-stub 257), cached by kernel, initrd and command line."""
    kver = kernel_version()
    initrd = GUEST / "boot" / f"initrd.img-{kver}"
    key = _digest([initrd], extra=kver + CMDLINE)
    d = CACHE / f"uki-{key}"
    out = {r: d / f"{r}.efi" for r in ROLES}
    if all(p.exists() for p in out.values()):
        return out
    for old in CACHE.glob("uki-*"):
        shutil.rmtree(old)
    work = CACHE / "uki-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copy(GUEST / "boot" / f"vmlinuz-{kver}", work / "vmlinuz")
    shutil.copy(initrd, work / "initrd")
    osrel = (GUEST / "usr/lib/os-release").read_text()
    cmds = []
    for r in ROLES:
        (work / f"os-release.{r}").write_text(f'{osrel}IMAGE_ID={r}\nIMAGE_VERSION=1\nPRETTY_NAME="bk-node {r}"\n')
        cmds.append(
            f"ukify build --linux=vmlinuz --initrd=initrd --cmdline='{CMDLINE} bktest.role={r}' "
            f"--os-release=@os-release.{r} --uname={kver} --output={r}.efi >/dev/null"
        )
    p = trixie.run(" && ".join(cmds), work)
    if p.returncode != 0:
        raise RuntimeError(f"ukify failed: {p.stderr[-2000:]}")
    d.mkdir()
    for r in ROLES:
        (work / f"{r}.efi").rename(out[r])
    shutil.rmtree(work)
    return out


def os_ukis() -> dict[str, Path]:
    """The UKIs of OS v1 to v4 (keys "v1" ... "v4"), cached by kernel, initrd, command line, os-release
    and the good key; each signed by the real ``sbsign`` with the good key (node-good.crt, which the
    node's ``sysext.certificates`` trusts: ``bootkeeper update`` verifies a release's Authenticode
    signature against them). Their own folder (``osuki-*``), so that :func:`ukis` never removes them nor
    they it."""
    kver = kernel_version()
    initrd = GUEST / "boot" / f"initrd.img-{kver}"
    k = keys()
    key = _digest([initrd, k.good_crt], extra=kver + CMDLINE + "".join(os_release(v) for v in OS_VERSIONS) + "sbsign")
    d = CACHE / f"osuki-{key}"
    out = {f"v{v}": d / f"v{v}.efi" for v in OS_VERSIONS}
    if all(p.exists() for p in out.values()):
        return out
    for old in CACHE.glob("osuki-*"):
        shutil.rmtree(old)
    work = CACHE / "osuki-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copy(GUEST / "boot" / f"vmlinuz-{kver}", work / "vmlinuz")
    shutil.copy(initrd, work / "initrd")
    cmds = []
    for v in OS_VERSIONS:
        (work / f"os-release.v{v}").write_text(os_release(v))
        cmdline = f"{CMDLINE} bktest.role=active bktest.osversion={v}"
        cmds.append(
            f"ukify build --linux=vmlinuz --initrd=initrd --cmdline='{cmdline}' "
            f"--os-release=@os-release.v{v} --uname={kver} --output=v{v}.efi >/dev/null"
        )
    p = trixie.run(" && ".join(cmds), work)
    if p.returncode != 0:
        raise RuntimeError(f"ukify failed: {p.stderr[-2000:]}")
    d.mkdir()
    for path in out.values():
        _run(
            [
                "sbsign",
                "--key",
                str(k.good_key),
                "--cert",
                str(k.good_crt),
                "--output",
                str(path),
                str(work / path.name),
            ]
        )
    shutil.rmtree(work)
    return out


def os_sysexts() -> dict[str, Path]:
    """``tools.sysext.raw`` built for OS v1 and for v2 (keys "v1", "v2"; extension-release ``ID=debian``,
    ``VERSION_ID=N``), signed by the trusted key; both ship /usr/bin/bk-hello-tools printing "tools vN"."""
    k = keys()
    d = CACHE / "ossysext"
    want = {f"v{v}": d / f"v{v}" / "tools.sysext.raw" for v in OS_VERSIONS}
    stamp = d / "stamp"
    key = _digest([k.good_crt], extra="".join(os_release(v) for v in OS_VERSIONS))
    if stamp.exists() and stamp.read_text() == key and all(p.exists() for p in want.values()):
        return want
    shutil.rmtree(d, ignore_errors=True)
    for v in OS_VERSIONS:
        out = want[f"v{v}"]
        tree = d / f"tree-v{v}"
        (tree / "usr/bin").mkdir(parents=True)
        hello = tree / "usr/bin/bk-hello-tools"
        hello.write_text(f"#!/bin/sh\necho 'tools v{v}'\n")
        hello.chmod(0o755)
        osrel = d / f"os-release.v{v}"
        osrel.write_text(os_release(v))
        out.parent.mkdir(parents=True)
        bk("sysext", "build", str(tree), "-o", str(out), "--key", str(k.good_key), "--cert", str(k.good_crt),
           "--os-release", str(osrel))  # fmt: skip
        shutil.rmtree(tree)
    stamp.write_text(key)
    return want


def update_sysexts() -> dict[str, Path]:
    """The versioned extension of each OS (keys "v1" ... "v4"): ``tools-vN.sysext.raw``, whose
    extension-release (``extension-release.tools-vN``, written here: ``sysext build`` writes none with a
    SYSEXT_ID) says ``ID=debian``, ``VERSION_ID=N``, ``SYSEXT_ID=tools``, ``SYSEXT_VERSION_ID=N``; signed
    by the trusted key; ships /usr/bin/bk-hello-tools printing "tools vN" (as :func:`os_sysexts`)."""
    k = keys()
    d = CACHE / "updsysext"
    want = {f"v{v}": d / f"v{v}" / f"tools-v{v}.sysext.raw" for v in OS_VERSIONS}
    stamp = d / "stamp"
    key = _digest([k.good_crt], extra="".join(os_release(v) for v in OS_VERSIONS) + "SYSEXT_ID=tools")
    if stamp.exists() and stamp.read_text() == key and all(p.exists() for p in want.values()):
        return want
    shutil.rmtree(d, ignore_errors=True)
    for v in OS_VERSIONS:
        out = want[f"v{v}"]
        tree = d / f"tree-v{v}"
        (tree / "usr/bin").mkdir(parents=True)
        hello = tree / "usr/bin/bk-hello-tools"
        hello.write_text(f"#!/bin/sh\necho 'tools v{v}'\n")
        hello.chmod(0o755)
        rel = tree / "usr/lib/extension-release.d"
        rel.mkdir(parents=True)
        (rel / f"extension-release.tools-v{v}").write_text(
            f"ID=debian\nVERSION_ID={v}\nSYSEXT_ID=tools\nSYSEXT_VERSION_ID={v}\nARCHITECTURE=x86-64\n"
        )
        out.parent.mkdir(parents=True)
        bk("sysext", "build", str(tree), "-o", str(out), "--key", str(k.good_key), "--cert", str(k.good_crt))
        shutil.rmtree(tree)
    stamp.write_text(key)
    return want


def sysext_images() -> dict[str, Path]:
    """tools-a and tools-b signed by the trusted key, rogue by another key, plain unsigned (verity, no
    signature); each ships /usr/bin/bk-hello-NAME."""
    k = keys()
    d = CACHE / "sysext"
    want = {n: d / f"{n}.sysext.raw" for n in ("tools-a", "tools-b", "rogue", "plain")}
    stamp = d / "stamp"
    key = _digest([k.good_crt, k.other_crt, GUEST / "usr/lib/os-release"], extra="v1")
    if stamp.exists() and stamp.read_text() == key and all(p.exists() for p in want.values()):
        return want
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for name, path in want.items():
        tree = d / f"tree-{name}"
        (tree / "usr/bin").mkdir(parents=True)
        hello = tree / "usr/bin" / f"bk-hello-{name}"
        hello.write_text(f"#!/bin/sh\necho 'hello from {name}'\n")
        hello.chmod(0o755)
        signer = (k.other_key, k.other_crt) if name == "rogue" else (k.good_key, k.good_crt)
        bk("sysext", "build", str(tree), "-o", str(path), "--key", str(signer[0]), "--cert", str(signer[1]),
           "--os-release", str(GUEST / "usr/lib/os-release"))  # fmt: skip
        if name == "plain":
            from bootkeeper.sysext import image

            data = image.inspect(path).found["root"].data
            fs = path.read_bytes()[data.offset : data.offset + data.size]
            path.write_bytes(image.assemble(fs, None, None))
        shutil.rmtree(tree)
    stamp.write_text(key)
    return want


# -- ESP and disk ----------------------------------------------------------------------------


def make_esp(folder: Path, config: Path, active: Path | None = None) -> Path:
    """systemd-boot 257, loader.conf, the four UKIs in EFI/Linux (``active``: another UKI as the
    active one, e.g. OS v1); counters from ``bootkeeper arm``."""
    (folder / "EFI/BOOT").mkdir(parents=True)
    (folder / "EFI/Linux").mkdir()
    (folder / "loader").mkdir()
    (folder / "bktest").mkdir()
    shutil.copy(trixie.ROOT / "usr/lib/systemd/boot/efi/systemd-bootx64.efi", folder / "EFI/BOOT/BOOTX64.EFI")
    (folder / "loader/loader.conf").write_text("timeout 0\neditor no\n")
    for role, uki in ukis().items():
        shutil.copy(active if role == "active" and active is not None else uki, folder / "EFI/Linux" / f"{role}.efi")
    bk("arm", "--esp", str(folder), "--config", str(config))
    return folder


def make_disk(esp_folder: Path, out: Path) -> Path:
    root = root_image()
    esp_img = out.with_name(out.name + ".esp")
    vmboot.pack(esp_folder, esp_img, ESP_MIB)
    root_mib = root.stat().st_size // (1024 * 1024)
    out.unlink(missing_ok=True)
    _run(["truncate", "-s", f"{ROOT_START_MIB + root_mib + 1}M", str(out)])
    table = (
        "label: gpt\n"
        f"start=2048, size={ESP_MIB * 2048}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\n"
        f"start={ROOT_START_MIB * 2048}, size={root_mib * 2048}, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root\n"
    )
    _run(["sfdisk", "-q", str(out)], input=table)
    for src, seek in ((esp_img, 1), (root, ROOT_START_MIB)):
        _run(["dd", f"if={src}", f"of={out}", "bs=1M", f"seek={seek}", "conv=notrunc,sparse", "status=none"])
    esp_img.unlink()
    return out


def esp_names(disk: Path, rel: str = "EFI/Linux") -> list[str]:
    out = _run(["mdir", "-b", "-i", f"{disk}@@1M", f"::/{rel}"], env=MT_ENV)
    return sorted(line.rstrip("/").rsplit("/", 1)[-1] for line in out.splitlines() if line.strip())


def esp_read(disk: Path, rel: str) -> str:
    return _run(["mtype", "-i", f"{disk}@@1M", f"::/{rel}"], env=MT_ENV)


def esp_write(disk: Path, rel: str, text: str) -> None:
    tmp = disk.with_name(disk.name + ".put")
    tmp.write_text(text)
    _run(["mcopy", "-o", "-i", f"{disk}@@1M", str(tmp), f"::/{rel}"], env=MT_ENV)
    tmp.unlink()


def esp_tree(disk: Path) -> list[str]:
    """Every file and folder on the ESP, as paths (``mdir -/ -b``), sorted."""
    out = _run(["mdir", "-/", "-b", "-i", f"{disk}@@1M", "::/"], env=MT_ENV)
    return sorted(line.strip().removeprefix("::/") for line in out.splitlines() if line.strip())


def esp_extract(disk: Path, dest: Path) -> Path:
    """The whole ESP as a folder (for ``bootkeeper simulate --esp``)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for top in ("EFI", "loader"):
        _run(["mcopy", "-s", "-n", "-i", f"{disk}@@1M", f"::/{top}", str(dest)], env=MT_ENV)
    return dest


# What fsck.fat -n says about a FAT file system that was mounted rw when the power went: the dirty
# flag, which Linux keeps in byte 65 of the FAT32 boot sector (so the backup sector differs there),
# and a stale free cluster count.
_DIRTY_ONLY = (
    re.compile(r"^fsck\.fat \S+ \(.*\)$"),
    re.compile(r"^There are differences between boot sector and its backup\.$"),
    re.compile(r"^This is mostly harmless\. Differences: \(offset:original/backup\)$"),
    re.compile(r"^65:01/00$"),
    re.compile(r"^Not automatically fixing this\.$"),
    re.compile(r"^Dirty bit is set\. Fs was not properly unmounted and some data may be corrupt\.$"),
    re.compile(r"^Automatically removing dirty bit\.$"),
    re.compile(r"^Leaving filesystem unchanged\.$"),
    re.compile(r"^/\S+: \d+ files, \d+/\d+ clusters$"),
    # FSInfo's free cluster count is a hint (the FAT spec: "not necessarily correct"), which Linux
    # writes when it syncs the whole file system: clusters allocated since (the upgrade's staged
    # copies) are not in it after a cut
    re.compile(r"^Free cluster summary wrong \(\d+ vs\. really \d+\)$"),
    re.compile(r"^Auto-correcting\.$"),
)


def fsck_problems(report: str) -> list[str]:
    """The lines of an :func:`esp_fsck` report that are more than an unclean unmount."""
    lines = [line.strip() for line in report.splitlines()[1:] if line.strip()]
    return [line for line in lines if not any(p.match(line) for p in _DIRTY_ONLY)]


def esp_fsck(disk: Path) -> str:
    """fsck.fat -n on the ESP, read-only; returns its report."""
    part = disk.with_name(disk.name + ".espcheck")
    _run(["dd", f"if={disk}", f"of={part}", "bs=1M", "skip=1", f"count={ESP_MIB}", "status=none"])
    p = subprocess.run(["fsck.fat", "-n", str(part)], capture_output=True, text=True, check=False)
    part.unlink()
    return f"rc={p.returncode}\n{p.stdout}{p.stderr}"


# -- the TPM ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tpm:
    """One machine's software TPM and firmware variables (``folder``), kept across its boots."""

    folder: Path
    banks: tuple[str, ...]

    @property
    def state(self) -> Path:
        return self.folder / "state"

    @property
    def vars(self) -> Path:
        return self.folder / "OVMF_VARS_4M.fd"

    @property
    def log(self) -> Path:
        return self.folder / "swtpm.log"


def make_tpm(folder: Path, banks: tuple[str, ...] = TPM_BANKS) -> Tpm:
    """A new TPM 2.0 as a machine leaves the factory: manufactured by swtpm_setup (RSA and ECC EK, the
    PCR banks ``banks`` active and no other), and a fresh copy of OVMF's variable store. The system's
    swtpm_setup.conf is not read (``--config /dev/null``): no EK certificate, no CA to set up."""
    tpm = Tpm(folder, banks)
    tpm.state.mkdir(parents=True)
    _run(
        ["swtpm_setup", "--tpm2", "--tpmstate", str(tpm.state), "--createek", "--pcr-banks", ",".join(banks),
         "--overwrite", "--config", "/dev/null", "--logfile", str(folder / "swtpm_setup.log")]
    )  # fmt: skip
    shutil.copy(OVMF_VARS_4M, tpm.vars)
    return tpm


@contextlib.contextmanager
def swtpm_running(tpm: Tpm) -> Iterator[list[str]]:
    """swtpm serving ``tpm`` on a control socket; yields QEMU's arguments for it (and the firmware with
    its variables). swtpm is stopped when the block ends, however it ends; ``--terminate`` also ends it
    when QEMU closes the connection."""
    sockdir = Path(tempfile.mkdtemp(prefix="bktpm-", dir="/tmp"))  # a socket path has at most 107 bytes
    sock = sockdir / "ctrl"
    cmd = [
        "swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tpm.state}", "--ctrl", f"type=unixio,path={sock}",
        "--log", f"file={tpm.log},level=1", "--terminate",
    ]  # fmt: skip
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if p.poll() is not None or time.monotonic() > deadline:
                err = p.stderr.read().decode(errors="replace") if p.stderr and p.poll() is not None else ""
                raise RuntimeError(f"swtpm did not open {sock} (rc {p.poll()}): {err.strip()[-500:]}; log {tpm.log}")
            time.sleep(0.02)
        yield [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE_4M}",
            "-drive", f"if=pflash,format=raw,unit=1,file={tpm.vars}",
            "-chardev", f"socket,id=chrtpm,path={sock}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
            "-device", "tpm-tis,tpmdev=tpm0",
        ]  # fmt: skip
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        p.wait()
        if p.stderr is not None:
            p.stderr.close()
        shutil.rmtree(sockdir, ignore_errors=True)


# -- booting ---------------------------------------------------------------------------------


@dataclass
class Boot:
    seconds: float
    lines: list[tuple[float, str]]
    killed_at: str | None = None
    qemu_rc: int | None = None
    marks: dict[str, list[str]] = field(default_factory=dict)

    def mark(self, key: str) -> list[str]:
        return self.marks.get(key, [])

    def first(self, key: str) -> str | None:
        v = self.marks.get(key)
        return v[0] if v else None

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def status(self) -> dict[str, Any] | None:
        raw = self.first("STATUS_JSON")
        return json.loads(raw) if raw else None

    def crash_line(self) -> str | None:
        """The first line of a kernel crash the test did not cause (no ``@@@ FAULT panic`` before it)."""
        if "panic" in self.mark("FAULT"):
            return None
        for _, line in self.lines:
            if any(k in line for k in ("Oops:", "BUG:", "Kernel panic", "general protection fault")):
                return line.strip()
        return None

    @property
    def ending(self) -> str:
        """How the machine went down: poweroff, reboot, panic or killed."""
        t = self.text()
        if self.killed_at is not None:
            return "killed"
        if "Kernel panic" in t:
            return "panic"
        if "reboot: Restarting system" in t:
            return "reboot"
        if "reboot: Power down" in t:
            return "poweroff"
        return "unknown"


# The SMBIOS Type 11 OEM string systemd-stub appends to the UKI's command line (systemd v257
# src/boot/stub.c: cmdline_append_and_measure_smbios(), after the .cmdline and any addon's, refused only
# in a confidential VM; Secure Boot or not does not matter), read by smbios_find_oem_string()
STUB_CMDLINE_EXTRA = "io.systemd.stub.kernel-cmdline-extra"


# -- the network and the USB stick (tests/node/test_node_update.py) ---------------------------------

# Where the guest finds the registry: QEMU's user network forwards this address and port (guestfwd) to
# the host's loopback registry; restrict=on lets the guest reach nothing else (QEMU docs, -netdev user).
GUEST_REGISTRY = "10.0.2.100:5000"
RELAY = Path(__file__).resolve().parent / "node" / "guestfwd_relay.py"


@dataclass(frozen=True)
class NetSpec:
    """The guest's one NIC: QEMU user networking, restricted, with ``10.0.2.100:5000`` forwarded to
    ``127.0.0.1:registry_port`` on the host (a registry the test started: tests/node/noderegistry.py)."""

    registry_port: int

    def qemu_args(self) -> list[str]:
        """Each guest connection runs tests/node/guestfwd_relay.py (``-cmd:``), which joins it to a new
        connection to the registry: ``-tcp:`` would be one stream for all of them."""
        host, port = GUEST_REGISTRY.split(":")
        fwd = f"guestfwd=tcp:{host}:{port}-cmd:{sys.executable} {RELAY} {self.registry_port}"
        if "," in fwd:  # QEMU's option syntax would need it doubled
            raise ValueError(f"{fwd!r}: a comma in the relay's path")
        return ["-netdev", f"user,id=n0,restrict=on,{fwd}", "-device", "virtio-net-pci,netdev=n0"]


def stick_args(stick: Path) -> list[str]:
    """QEMU's arguments for ``stick`` as a removable disk: the guest sees /dev/sdX with
    /sys/block/sdX/removable 1, as a USB stick is. Not USB mass storage: the guest's kernel
    (linux-image-cloud-amd64) is built without USB (``# CONFIG_USB_SUPPORT is not set``), so the stick is a
    SCSI disk on virtio-scsi whose INQUIRY says removable (QEMU's scsi-hd ``removable=on``: the RMB bit,
    which Linux's sd driver shows as ``removable``)."""
    return [
        "-device", "virtio-scsi-pci,id=stickbus",
        "-drive", f"if=none,id=stick,format=raw,file={stick}",
        "-device", "scsi-hd,bus=stickbus.0,drive=stick,removable=on",
    ]  # fmt: skip


def make_stick(folder: Path, out: Path, *, fs: str = "vfat", label: str = "BKSTICK") -> Path:
    """A whole-disk file system image (no partition table, as many sticks are formatted) holding the
    tree ``folder`` at its root: FAT32 written with mtools (no mount), or ext4 by ``mkfs.ext4 -d``.
    E.g. an OCI layout made by ``bootkeeper release push ... --to ocifile:DIR`` (``ocifile:``), or a
    folder ``bootkeeper-release/`` (``dir:``)."""
    files = [f for f in folder.rglob("*") if f.is_file()]
    mib = sum(f.stat().st_size for f in files) * 12 // 10 // (1024 * 1024) + 64
    out.unlink(missing_ok=True)
    if fs == "ext4":
        _run(["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(folder), str(out), f"{mib}M"])
        return out
    if fs != "vfat":
        raise ValueError(f"{fs}: vfat or ext4")
    _run(["truncate", "-s", f"{mib}M", str(out)])
    _run(["mkfs.vfat", "-F", "32", "-n", label, str(out)])
    for top in sorted(folder.iterdir()):
        _run(["mcopy", "-s", "-i", str(out), str(top), "::/"], env=MT_ENV)
    return out


def stick_tree(stick: Path) -> list[str]:
    """Every file and folder on a FAT stick made by :func:`make_stick`, as paths (no trailing slash), sorted."""
    out = _run(["mdir", "-/", "-b", "-i", str(stick), "::/"], env=MT_ENV)
    return sorted(line.strip().removeprefix("::/").rstrip("/") for line in out.splitlines() if line.strip())


def boot(
    disk: Path,
    log: Path,
    *,
    kill_on: str | None = None,
    timeout: float = BOOT_TIMEOUT,
    tpm: Tpm | None = None,
    cmdline_extra: str | None = None,
    net: NetSpec | None = None,
    stick: Path | None = None,
) -> Boot:
    """Power on; return when the guest powers off, reboots or panics (-no-reboot), or once a serial
    line contains ``kill_on`` (then QEMU is killed at once: a power cut). ``tpm``: with that TPM (and
    its firmware variables); swtpm runs only while QEMU does. ``cmdline_extra``: words systemd-stub
    adds to this boot's kernel command line (:data:`STUB_CMDLINE_EXTRA`), the disk left as it is.
    ``net``: a NIC on QEMU's restricted user network that reaches the registry alone (else no NIC,
    ``-net none``); ``stick``: a raw image attached as a removable disk, the USB stick (:func:`stick_args`)."""
    extra = [*(net.qemu_args() if net is not None else ["-net", "none"]), *(stick_args(stick) if stick else [])]
    with contextlib.ExitStack() as stack:
        firmware = stack.enter_context(swtpm_running(tpm)) if tpm is not None else ["-bios", str(OVMF)]
        smbios = []
        if cmdline_extra is not None:
            if "," in cmdline_extra:  # QEMU's option syntax would need it doubled; nothing here needs one
                raise ValueError(f"{cmdline_extra!r}: no commas in an SMBIOS string here")
            smbios = ["-smbios", f"type=11,value={STUB_CMDLINE_EXTRA}={cmdline_extra}"]
        return _boot(disk, log, [*firmware, *smbios], kill_on=kill_on, timeout=timeout, devices=extra)


def _boot(
    disk: Path,
    log: Path,
    firmware: list[str],
    *,
    kill_on: str | None,
    timeout: float,
    devices: tuple[str, ...] | list[str] = ("-net", "none"),
) -> Boot:
    cmd = [
        "qemu-system-x86_64",
        "-machine", "q35,accel=tcg", "-cpu", QEMU_CPU, "-m", "1024", "-smp", QEMU_SMP,
        "-nographic", "-no-reboot", *firmware,
        "-drive", f"if=virtio,format=raw,file={disk}", *devices,
    ]  # fmt: skip
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    res = Boot(0.0, [])
    assert p.stdout is not None
    try:
        with log.open("w") as f:
            for raw in iter(p.stdout.readline, b""):
                line = vmboot.ANSI.sub("", raw.decode("utf-8", "replace")).replace("\r", "").rstrip("\n")
                t = time.monotonic() - t0
                f.write(f"{t:7.2f} {line}\n")
                res.lines.append((t, line))
                m = line.find("@@@ ")
                if m >= 0:
                    key, _, val = line[m + 4 :].partition(" ")
                    res.marks.setdefault(key, []).append(val)
                if kill_on is not None and kill_on in line:
                    p.kill()
                    res.killed_at = line
                    f.write(f"{t:7.2f} [test: power cut here]\n")
                    break
    finally:
        timer.cancel()
        if p.poll() is None:
            p.kill()
        res.qemu_rc = p.wait()
        p.stdout.close()
    res.seconds = time.monotonic() - t0
    if res.killed_at is None and res.seconds >= timeout - 1:
        raise RuntimeError(f"guest did not finish within {timeout:.0f} s; serial log in {log}")
    return res
