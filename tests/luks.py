"""LUKS2 volumes as plain files, TPM2 tokens enrolled by the real systemd-cryptenroll 257 against a
software TPM, and UKIs from the real ukify: all in the trixie tree (tests/trixie.py), for the audit
and upgrade-gate tests and for VM scenarios that unlock a node.

Everything a command touches lives under one work folder, which the trixie tree sees as /work:
``make_volume(work, ...)``, ``enroll(work, image, state, ...)``, ``build_uki(work, ...)``. The TPM's
state folder persists between calls (the same storage root key, so a VM started later on that
state with ``-tpmdev emulator`` unseals what was enrolled). swtpm is started for each call and
always stopped, by the script's trap and, should the script die first, from Python by its pid."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path

import trixie

PASSPHRASE = "bootkeeper-test"
TOOLS = (
    "usr/sbin/cryptsetup",
    "usr/bin/systemd-cryptenroll",
    "usr/bin/swtpm",
    "usr/bin/ukify",
    "usr/lib/x86_64-linux-gnu/libtss2-tcti-swtpm.so.0",
)


def missing() -> list[str]:
    return [str(trixie.ROOT / t) for t in TOOLS if not (trixie.ROOT / t).exists()]


def _inside(work: Path, p: Path) -> str:
    """``p``'s path as the trixie tree sees it (/work/...)."""
    return "/work/" + p.resolve().relative_to(work.resolve()).as_posix()


def _run(work: Path, script: str, what: str) -> subprocess.CompletedProcess[str]:
    p = trixie.run(script, work)
    if p.returncode != 0:
        raise RuntimeError(f"{what} failed ({p.returncode}): {p.stderr[-2000:]}")
    return p


def passphrase_file(work: Path) -> Path:
    f = work / "passphrase"
    if not f.exists():
        f.write_text(PASSPHRASE)
        f.chmod(0o600)  # systemd-cryptenroll refuses a key file others can read
    return f


def make_volume(work: Path, name: str = "volume.luks", size_mb: int = 32) -> Path:
    """A LUKS2 volume in a sparse file, keyslot 0 the test passphrase (cheap PBKDF2: tests, not secrets).
    luksFormat writes the header only: no device-mapper needed."""
    image = work / name
    with image.open("wb") as f:
        f.truncate(size_mb << 20)
    key = _inside(work, passphrase_file(work))
    _run(
        work,
        f"cryptsetup luksFormat --type luks2 --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 "
        f"--key-file {key} {shlex.quote(_inside(work, image))}",
        "cryptsetup luksFormat",
    )
    return image


def enroll(work: Path, image: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``systemd-cryptenroll --tpm2-device=swtpm:... ARGS IMAGE`` against swtpm on ``state``, unlocked
    with the test passphrase. ``args``: e.g. ``--tpm2-public-key=/work/pub.pem``,
    ``--tpm2-public-key-pcrs=11``, ``--tpm2-pcrs=7+11``."""
    state.mkdir(parents=True, exist_ok=True)
    sock = state / "swtpm.sock"  # the swtpm TCTI finds the control socket at <path>.ctrl
    pid = state / "swtpm.pid"
    s, p = _inside(work, sock), _inside(work, pid)
    script = f"""
swtpm socket --tpm2 --tpmstate dir={_inside(work, state)} --server type=unixio,path={s} \
  --ctrl type=unixio,path={s}.ctrl --flags startup-clear --daemon --pid file={p}
trap 'kill $(cat {p}) 2>/dev/null' EXIT
for i in $(seq 50); do [ -S {s} ] && break; sleep 0.1; done
systemd-cryptenroll --unlock-key-file={_inside(work, passphrase_file(work))} \
  --tpm2-device=swtpm:path={s} {" ".join(shlex.quote(a) for a in args)} {shlex.quote(_inside(work, image))}
"""
    try:
        return _run(work, script, "systemd-cryptenroll")
    finally:
        stop(pid)


def stop(pid_file: Path) -> None:
    """swtpm, should it still run (the script's trap stops it first)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        if Path(f"/proc/{pid}/comm").read_text().strip() != "swtpm":
            return  # gone already, and the number is someone else's now
        os.kill(pid, signal.SIGTERM)
    except (OSError, ProcessLookupError):
        pass
    finally:
        pid_file.unlink(missing_ok=True)


def rsa_key(work: Path, name: str) -> tuple[Path, Path]:
    """A fresh 2048-bit RSA key pair as PEM files (openssl, not the code under test)."""
    priv, pub = work / f"{name}.key.pem", work / f"{name}.pub.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(priv), "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(priv), "-pubout", "-out", str(pub)], check=True, capture_output=True)
    return priv, pub


def pkfp(pub: Path) -> str:
    """The key's fingerprint as systemd computes it (SHA-256 of the PKCS#1 RSAPublicKey DER), by openssl."""
    der = subprocess.run(
        ["openssl", "rsa", "-pubin", "-in", str(pub), "-RSAPublicKey_out", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    import hashlib

    return hashlib.sha256(der).hexdigest()


def build_uki(
    work: Path,
    out: Path,
    osrel: str,
    key: tuple[Path, Path] | None = None,
    banks: str = "sha256",
    phases: str | None = None,
) -> Path:
    """A UKI from trixie's ukify and systemd-stub 257; with ``key`` (private, public), signed PCR 11
    policy (.pcrsig) and .pcrpkey, as ukify's --pcr-private-key/--pcr-public-key make them. The kernel
    is a stand-in (random bytes): PCR 11 covers it all the same."""
    kernel = work / "vmlinuz"
    if not kernel.exists():
        kernel.write_bytes(os.urandom(8192))
    rel = out.with_suffix(".osrel")
    rel.write_text(osrel)
    sign = ""
    if key is not None:
        sign = f"--pcr-private-key={_inside(work, key[0])} --pcr-public-key={_inside(work, key[1])} --pcr-banks={banks}"
        if phases is not None:  # ukify's own default: systemd-measure's four paths
            sign += f" --phases={shlex.quote(phases)}"
    _run(
        work,
        f"ukify build --linux={_inside(work, kernel)} --uname=6.12.0-test --os-release=@{_inside(work, rel)} "
        f"--cmdline='quiet bktest' {sign} --output={_inside(work, out)}",
        "ukify build",
    )
    return out


# systemd-cryptenroll's options for Kairos kcrypt's binding: PCR 11 under the signing key tok, nothing by value
SIGNED_PCR11 = ("--tpm2-public-key=/work/tok.pub.pem", "--tpm2-public-key-pcrs=11", "--tpm2-pcrs=")


class Lab:
    """One test module's LUKS work folder: the software TPM's state and the key ``tok`` its UKIs are
    signed with; the module's own ``Lab`` subclass enrolls its volumes and builds its UKIs. The ``lab``
    fixture (tests/conftest.py) makes it once per module."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.state = work / "tpm"
        self.tok = rsa_key(work, "tok")

    def volume(self, name: str, *tokens: tuple[str, ...]) -> Path:
        """A LUKS volume ``name`` with one TPM2 token enrolled per item of ``tokens`` (cryptenroll options)."""
        v = make_volume(self.work, name)
        for args in tokens:
            enroll(self.work, v, self.state, *args)
        return v
