"""Test harness: boot a scratch ESP written by bootkeeper with the real systemd-boot in QEMU/OVMF.

The ESP folder is packed into a FAT image with mtools (no mounting), booted once under TCG (KVM
fails on these machines), and read back: the serial console gives the ``@@@`` lines of the test
initramfs (command line, LoaderEntrySelected, LoaderBootCountPath, LoaderInfo) and ``mdir`` the
file names systemd-boot left. The folder is then brought in line with the image, so bootkeeper's
own commands can run on it between boots.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("VM_CACHE", ROOT / ".cache" / "vm"))
OVMF = Path("/usr/share/ovmf/OVMF.fd")
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
BOOT_TIMEOUT = 180


def missing_pieces() -> list[str]:
    need = [
        CACHE / "kernel" / "vmlinuz",
        CACHE / "initrd.img",
        OVMF,
        CACHE / "sdboot-252" / "systemd-bootx64.efi",
        CACHE / "sdboot-257" / "systemd-bootx64.efi",
        CACHE / "sdboot-257" / "linuxx64.efi.stub",
        CACHE / "sdboot-262" / "systemd-bootx64.efi",
    ]
    out = [str(p) for p in need if not p.exists()]
    out += [t for t in ("qemu-system-x86_64", "mcopy", "mattrib", "mkfs.vfat", "cpio") if shutil.which(t) is None]
    return out


def sdboot(version: int) -> Path:
    return CACHE / f"sdboot-{version}" / "systemd-bootx64.efi"


@dataclass(frozen=True)
class BootResult:
    role: str | None  # entry=ROLE from the kernel command line
    selected: str
    count_path: str
    loader_info: str
    seconds: float
    names_after: tuple[str, ...]  # loader/entries after the boot
    oneshot: str = ""  # LoaderEntryOneShot as the OS saw it (systemd-boot removes it when it reads it)
    set_vars: tuple[str, ...] = ()  # variables the guest wrote for the next boot (SETVAR lines)


def _mt(*args: str) -> str:
    p = subprocess.run(list(args), env=MTOOLS_ENV, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def pack(esp: Path, img: Path, size_mib: int = 64) -> None:
    """Write the folder ``esp`` into a new FAT32 image ``img`` with mtools (no mounting)."""
    img.unlink(missing_ok=True)
    subprocess.run(
        ["mkfs.vfat", "-F", "32", "-n", "ESP", "-C", str(img), str(size_mib * 1024)], check=True, capture_output=True
    )
    for d in sorted(p for p in esp.rglob("*") if p.is_dir()):
        _mt("mmd", "-i", str(img), "::/" + str(d.relative_to(esp)))
    for f in sorted(p for p in esp.rglob("*") if p.is_file()):
        _mt("mcopy", "-i", str(img), str(f), "::/" + str(f.relative_to(esp)))
        if not f.stat().st_mode & 0o222:  # vfat shows the FAT read-only attribute as a file without write bits
            _mt("mattrib", "-i", str(img), "+r", "::/" + str(f.relative_to(esp)))


def entry_names(img: Path) -> tuple[str, ...]:
    out = _mt("mdir", "-b", "-i", str(img), "::/loader/entries")
    return tuple(sorted(line.rsplit("/", 1)[-1] for line in out.splitlines() if line.strip()))


# CSI sequences, keypad/reset escapes and charset selection (OVMF and the Linux console use them)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>c()][0-9A-B]?")


def boot(img: Path, log: Path, rel: str = "loader/entries", nvram: Path | None = None) -> BootResult:
    """One boot to power-off. With ``nvram`` (a copy of OVMF.fd) the firmware is a writable pflash,
    so EFI variables persist from one boot to the next; without it they start empty every boot."""
    firmware = ["-drive", f"if=pflash,format=raw,file={nvram}"] if nvram else ["-bios", str(OVMF)]
    cmd = [
        "qemu-system-x86_64",
        "-machine",
        "q35,accel=tcg",
        "-m",
        "512",
        "-smp",
        "1",
        "-nographic",
        "-no-reboot",
        *firmware,
        "-drive",
        f"format=raw,file={img}",
        "-net",
        "none",
    ]
    t0 = time.monotonic()
    with log.open("wb") as out:
        p = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=BOOT_TIMEOUT, check=False
        )
    secs = time.monotonic() - t0
    text = ANSI.sub("", log.read_bytes().decode("utf-8", "replace")).replace("\r", "")
    if "@@@ DONE" not in text:
        raise RuntimeError(f"guest did not finish (qemu exit {p.returncode}); serial log in {log}")
    vals: dict[str, str] = {}
    role = None
    set_vars: list[str] = []
    for line in text.splitlines():
        if line.startswith("@@@ SETVAR-FAILED "):
            raise RuntimeError(f"guest could not set {line.split()[-1]}; serial log in {log}")
        if line.startswith("@@@ SETVAR "):
            set_vars.append(line.split()[-1])
        elif line.startswith("@@@ EFIVAR "):
            k, _, v = line[len("@@@ EFIVAR ") :].partition("=")
            vals[k] = v.strip()
        elif line.startswith("@@@ CMDLINE "):
            m = re.search(r"\bentry=(\S+)", line)
            role = m.group(1) if m else None
    return BootResult(
        role,
        vals.get("LoaderEntrySelected", ""),
        vals.get("LoaderBootCountPath", ""),
        vals.get("LoaderInfo", ""),
        secs,
        entry_names(img) if rel == "loader/entries" else uki_names(img),
        vals.get("LoaderEntryOneShot", ""),
        tuple(set_vars),
    )


def new_nvram(path: Path) -> Path:
    """A writable firmware image (OVMF.fd holds code and variable store in one file)."""
    shutil.copyfile(OVMF, path)
    return path


def initrd_with_vars(base: Path, varsdir: Path | None, out: Path) -> None:
    """``out`` = the test initramfs, followed (when ``varsdir`` has files) by a cpio with them
    under /efivars-set/: the guest writes each into efivarfs for the next boot."""
    data = base.read_bytes()
    files = sorted(p for p in varsdir.iterdir() if p.is_file()) if varsdir and varsdir.is_dir() else []
    if files:
        stage = out.parent / f".{out.name}.vars"
        shutil.rmtree(stage, ignore_errors=True)
        (stage / "efivars-set").mkdir(parents=True)
        for f in files:
            shutil.copyfile(f, stage / "efivars-set" / f.name)
        names = "\n".join(["efivars-set", *(f"efivars-set/{f.name}" for f in files)]) + "\n"
        p = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], input=names.encode(), cwd=stage, capture_output=True, check=True
        )
        shutil.rmtree(stage)
        pad = (-len(data)) % 4  # a cpio that follows another starts on a 4-byte boundary
        data += b"\0" * pad + p.stdout
    out.write_bytes(data)


def sync_back(esp: Path, names_after: tuple[str, ...], rel: str = "loader/entries") -> None:
    """Apply the boot loader's rename (at most one file) to the ESP folder."""
    d = esp / rel
    before = {p.name for p in d.iterdir()}
    gone = [n for n in before if n not in names_after]
    new = [n for n in names_after if n not in before]
    if len(gone) != len(new) or len(gone) > 1:
        raise RuntimeError(f"unexpected change: {sorted(before)} -> {list(names_after)}")
    if gone:
        (d / gone[0]).rename(d / new[0])


def build_uki(out: Path, cmdline: str, osrel: str) -> Path:
    """A Type #2 UKI made with objcopy and bookworm's systemd-stub (no ukify needed)."""
    stub = CACHE / "sdboot-252" / "linuxx64.efi.stub"
    tmp = out.parent / f".{out.name}.parts"
    tmp.mkdir(exist_ok=True)
    (tmp / "cmdline").write_text(cmdline)
    (tmp / "osrel").write_text(osrel)
    subprocess.run(
        [
            "objcopy",
            "--add-section",
            f".osrel={tmp / 'osrel'}",
            "--change-section-vma",
            ".osrel=0x20000",
            "--add-section",
            f".cmdline={tmp / 'cmdline'}",
            "--change-section-vma",
            ".cmdline=0x30000",
            "--add-section",
            f".linux={CACHE / 'kernel' / 'vmlinuz'}",
            "--change-section-vma",
            ".linux=0x2000000",
            "--add-section",
            f".initrd={CACHE / 'initrd.img'}",
            "--change-section-vma",
            ".initrd=0x3000000",
            str(stub),
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(tmp)
    return out


def _pe_layout(stub: Path) -> tuple[int, int]:
    """ImageBase and SizeOfImage of a PE, from ``objdump -p``."""
    out = subprocess.run(["objdump", "-p", str(stub)], capture_output=True, text=True, check=True).stdout
    vals = dict(re.findall(r"^(ImageBase|SizeOfImage)\s+([0-9a-fA-F]+)$", out, re.M))
    return int(vals["ImageBase"], 16), int(vals["SizeOfImage"], 16)


def build_uki_profiles(out: Path, osrel: str, profiles: tuple[tuple[str, str], ...]) -> Path:
    """A multi-profile UKI (systemd 257+ layout, as ``ukify --join-profile`` makes it): the base
    (.osrel, .linux, .initrd), then per profile a ``.profile`` section (its text) and a
    ``.cmdline``. Made with objcopy and trixie's systemd-stub 257, which picks the profile from the
    ``@N`` systemd-boot passes. GNU objcopy (2.40) refuses to add a second section of the same
    name, so each is added under a unique name and renamed (``--rename-section`` allows duplicates);
    sections are placed one after the other above the stub's image, as ukify does."""
    stub = CACHE / "sdboot-257" / "linuxx64.efi.stub"
    base, size = _pe_layout(stub)
    tmp = out.parent / f".{out.name}.parts"
    tmp.mkdir(exist_ok=True)
    (tmp / "osrel").write_text(osrel)
    parts: list[tuple[str, str, Path]] = [
        (".osrel", ".osrel", tmp / "osrel"),
        (".linux", ".linux", CACHE / "kernel" / "vmlinuz"),
        (".initrd", ".initrd", CACHE / "initrd.img"),
    ]
    for i, (text, cmdline) in enumerate(profiles):
        (tmp / f"profile{i}").write_text(text)
        (tmp / f"cmdline{i}").write_text(cmdline)
        parts += [(f".prof{i}", ".profile", tmp / f"profile{i}"), (f".cmdl{i}", ".cmdline", tmp / f"cmdline{i}")]
    args: list[str] = []
    renames: list[str] = []
    vma = base + ((size + 0xFFFF) & ~0xFFFF)
    for tmpname, name, path in parts:
        args += ["--add-section", f"{tmpname}={path}", "--change-section-vma", f"{tmpname}={vma:#x}"]
        vma += (path.stat().st_size + 0xFFFF) & ~0xFFFF
        if tmpname != name:
            renames += ["--rename-section", f"{tmpname}={name}"]
    staged = tmp / "staged.efi"
    subprocess.run(["objcopy", *args, str(stub), str(staged)], check=True, capture_output=True)
    subprocess.run(["objcopy", *renames, str(staged), str(out)], check=True, capture_output=True)
    shutil.rmtree(tmp)
    return out


def uki_names(img: Path) -> tuple[str, ...]:
    out = _mt("mdir", "-b", "-i", str(img), "::/EFI/Linux")
    return tuple(sorted(line.rsplit("/", 1)[-1] for line in out.splitlines() if line.strip()))
