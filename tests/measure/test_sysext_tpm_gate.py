"""``sysext install`` and ``sysext remove`` under the TPM (issue 26, item 8): systemd-stub measures an
entry's ``.extra.d/*.raw`` into PCR 13, so a change of them breaks a LUKS2 token bound to PCR 13 by value
or to a systemd-pcrlock policy covering it. Both verbs refuse then (nothing written: the ESP compared byte
for byte) unless ``--force``; a token bound to the signed PCR 11 policy lets them through; and when ``tpm
pcrlock`` was set up, the changed entries' PCR 13 components are made again and equal what systemd-pcrlock
257's own ``lock-raw --pcr=13`` locks for the new folder. The persistent store is measured by nothing: no
gate there, and PCR 13 (``tpm predict``) stays as it was.

LUKS2 volumes from the real cryptsetup, tokens from the real systemd-cryptenroll 257 against swtpm (the
pcrlock token is the signed one's JSON with the pcrlock binding, imported by cryptsetup), UKIs from the
real ukify (tests/luks.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import luks
import trixie
from bootkeeper.measure import cpio
from bootkeeper.sysext import signature
from helpers import signed_extension, tree

pytestmark = pytest.mark.integration
KEY, CERT = signature.self_signed("ec", "tpm gate test")
ROLES = ("active", "passive", "recovery")
PCRLOCK = "/usr/lib/systemd/systemd-pcrlock"
SYSEXT_D = "660-bootkeeper-sysext.pcrlock.d"
UKI_D = "650-bootkeeper-uki.pcrlock.d"


def osrel(role: str) -> str:
    return f"ID=kairos\nIMAGE_ID={'kairos' if role != 'recovery' else 'kairos-recovery'}\nVERSION_ID=1\n"


class Lab(luks.Lab):
    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.pcr13 = self.volume("pcr13.luks", ("--tpm2-pcrs=13",))
        self.signed = self.volume("signed.luks", luks.SIGNED_PCR11)
        # both: the PCR 13 token stops working, the signed one still opens the volume
        self.both = self.volume("both.luks", ("--tpm2-pcrs=13",), luks.SIGNED_PCR11)
        self.pcrlock = self._pcrlock_volume()
        ukis = work / "ukis"
        ukis.mkdir()
        self.ukis = {r: luks.build_uki(work, ukis / f"{r}.efi", osrel(r)) for r in ROLES}
        self.image = signed_extension(work / "img" / "tools.sysext.raw", KEY, CERT)
        self.image2 = signed_extension(work / "img2" / "k3s.sysext.raw", KEY, CERT)

    def _pcrlock_volume(self) -> Path:
        """A volume whose token is bound to a systemd-pcrlock policy (``tpm2_pcrlock``, no PCR by value,
        no key), as systemd-cryptenroll --tpm2-pcrlock= writes it: the signed token's JSON so changed,
        imported by cryptsetup."""
        v = luks.make_volume(self.work, "pcrlock.luks")
        dump = ["cryptsetup", "luksDump", "--dump-json-metadata", str(self.signed)]
        meta = json.loads(subprocess.run(dump, capture_output=True, text=True, check=True).stdout)
        tok = dict(meta["tokens"]["0"])
        for k in ("tpm2_pubkey", "tpm2_pubkey_pcrs"):
            tok.pop(k, None)
        tok.update({"keyslots": ["0"], "tpm2-pcrs": [], "tpm2_pcrlock": True})  # its passphrase slot stands in
        f = self.work / "pcrlock-token.json"
        f.write_text(json.dumps(tok))
        imp = ["cryptsetup", "token", "import", "--json-file", str(f), str(v)]
        subprocess.run(imp, check=True, capture_output=True)
        return v


def node(lab: Lab, root: Path, store: str = "esp") -> Path:
    """A root with an ESP (Type #2 UKIs per role), the config trusting the test key, and /etc."""
    esp = root / "efi"
    (esp / "EFI" / "Linux").mkdir(parents=True)
    (esp / "loader").mkdir()
    (esp / "loader" / "loader.conf").write_text("timeout 0\n")
    for r in ROLES:
        shutil.copy(lab.ukis[r], esp / "EFI" / "Linux" / f"{r}+3.efi")
    from cryptography.hazmat.primitives.serialization import Encoding

    (root / "etc").mkdir()
    (root / "etc" / "db.pem").write_bytes(CERT.public_bytes(Encoding.PEM))
    (root / "c.yaml").write_text(
        f"sysext:\n  certificates: [/etc/db.pem]\n  firmware: []\n  verity_dirs: []\n  store: {store}\n"
        "  store_dir: /var/lib/bootkeeper/extensions\n"
    )
    return esp


def bk(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    where = ["--esp", str(root / "efi"), "--config", str(root / "c.yaml"), "--root", str(root)]
    return subprocess.run(
        [sys.executable, "-m", "bootkeeper", "sysext", *args, *where],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


def extra(root: Path, role: str) -> list[str]:
    d = root / "efi" / "EFI" / "Linux" / f"{role}.efi.extra.d"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def refused(p: subprocess.CompletedProcess[str], *words: str) -> None:
    assert p.returncode == 1, p.stdout + p.stderr
    err = [x for x in p.stderr.splitlines() if x.startswith("bootkeeper: error: ")]
    assert len(err) == 1 and "Traceback" not in p.stderr, p.stderr
    for w in ("would not unlock from the TPM after the change", "nothing was changed", *words):
        assert w in err[0], (w, err[0])


# --- refused: PCR 13 by value, a pcrlock policy covering it -------------------------------------------


@pytest.mark.root
def test_install_refused_with_pcr13_by_value_and_the_esp_untouched(lab: Lab, tmp_path: Path) -> None:
    node(lab, tmp_path)
    before = tree(tmp_path / "efi")
    p = bk(tmp_path, "install", str(lab.image), "--luks", str(lab.pcr13))
    refused(p, f"installing tools.sysext.raw refused: {lab.pcr13}", "token 0 binds PCR 13 by value")
    assert "hint: bind the volume to the signed PCR 11 policy" in p.stderr
    assert tree(tmp_path / "efi") == before


@pytest.mark.root
def test_remove_refused_with_pcr13_by_value_and_the_esp_untouched(lab: Lab, tmp_path: Path) -> None:
    node(lab, tmp_path)
    assert bk(tmp_path, "install", str(lab.image)).returncode == 0  # no volume: no gate
    before = tree(tmp_path / "efi")
    # the volume found through the node's /etc/crypttab (under --root), as at boot
    shutil.copy(lab.pcr13, tmp_path / "data.luks")
    (tmp_path / "etc" / "crypttab").write_text("data /data.luks none tpm2-device=auto\n")
    p = bk(tmp_path, "remove", "tools")
    refused(p, f"removing tools refused: {tmp_path / 'data.luks'}", "token 0 binds PCR 13 by value")
    assert tree(tmp_path / "efi") == before
    assert extra(tmp_path, "active") == ["tools.sysext.raw"]


@pytest.mark.root
def test_a_pcrlock_policy_covering_pcr13_refuses_one_leaving_it_out_does_not(lab: Lab, tmp_path: Path) -> None:
    node(lab, tmp_path)
    before = tree(tmp_path / "efi")
    # no policy file: systemd-pcrlock's default PCRs (0-5, 7, 11-15) are assumed
    p = bk(tmp_path, "install", str(lab.image), "--luks", str(lab.pcrlock))
    refused(p, "token 0 is bound to a systemd-pcrlock policy that covers PCR 13", "is not there")
    assert tree(tmp_path / "efi") == before
    policy = tmp_path / "var" / "lib" / "systemd" / "pcrlock.json"
    policy.parent.mkdir(parents=True)
    policy.write_text("{not json")  # unreadable: gates as much as the default
    refused(bk(tmp_path, "install", str(lab.image), "--luks", str(lab.pcrlock)), "is not a pcrlock policy")
    assert tree(tmp_path / "efi") == before
    # make-policy's file, as tests/measure/test_pcrlock.py reads it: its pcrValues name the PCRs it covers
    values = [{"pcr": n, "values": ["00" * 32]} for n in (4, 11, 13)]
    policy.write_text(json.dumps({"pcrBank": "sha256", "pcrValues": values}))
    refused(bk(tmp_path, "install", str(lab.image), "--luks", str(lab.pcrlock)), f"({policy})")
    policy.write_text(json.dumps({"pcrBank": "sha256", "pcrValues": [v for v in values if v["pcr"] != 13]}))
    p = bk(tmp_path, "install", str(lab.image), "--luks", str(lab.pcrlock), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["tpm"] == [{"device": str(lab.pcrlock), "broken": [], "working": ["0"], "ok": True}]


# --- allowed: --force, a signed PCR 11 policy, a volume that still opens ------------------------------


@pytest.mark.root
def test_force_installs_and_removes_and_says_so(lab: Lab, tmp_path: Path) -> None:
    node(lab, tmp_path)
    p = bk(tmp_path, "install", str(lab.image), "--luks", str(lab.pcr13), "--force", "--json")
    assert p.returncode == 0, p.stderr
    assert "installing tools.sysext.raw with --force although" in p.stderr and "PCR 13 by value" in p.stderr
    out = json.loads(p.stdout)
    assert out["forced"] is True and out["tpm"][0]["broken"][0]["token"] == "0" and not out["tpm"][0]["ok"]
    assert extra(tmp_path, "active") == extra(tmp_path, "passive") == ["tools.sysext.raw"]
    p = bk(tmp_path, "remove", "tools", "--luks", str(lab.pcr13), "--force")
    assert p.returncode == 0, p.stderr
    assert "removing tools with --force although" in p.stderr
    assert extra(tmp_path, "active") == extra(tmp_path, "passive") == []


@pytest.mark.root
def test_a_signed_pcr11_policy_lets_both_through(lab: Lab, tmp_path: Path) -> None:
    node(lab, tmp_path)
    p = bk(tmp_path, "install", str(lab.image), "--luks", str(lab.signed), "--json")
    assert p.returncode == 0, p.stderr
    assert "warning" not in p.stderr
    out = json.loads(p.stdout)
    assert out["forced"] is False
    assert out["tpm"] == [{"device": str(lab.signed), "broken": [], "working": ["0"], "ok": True}]
    p = bk(tmp_path, "remove", "tools", "--luks", str(lab.signed), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["tpm"][0]["ok"] and extra(tmp_path, "active") == []


@pytest.mark.root
def test_a_volume_that_still_opens_with_another_token_is_a_warning(lab: Lab, tmp_path: Path) -> None:
    node(lab, tmp_path)
    p = bk(tmp_path, "install", str(lab.image), "--luks", str(lab.both))
    assert p.returncode == 0, p.stderr
    assert f"warning: {lab.both} still unlocks with token 1 after the change, but token 0 binds PCR 13" in p.stderr


@pytest.mark.root
def test_an_identical_copy_changes_no_pcr_and_is_not_gated(lab: Lab, tmp_path: Path) -> None:
    node(lab, tmp_path)
    assert bk(tmp_path, "install", str(lab.image)).returncode == 0
    p = bk(tmp_path, "install", str(lab.image), "--luks", str(lab.pcr13), "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["tpm"] == [] and out["written"] == [] and len(out["unchanged"]) == 2


# --- tpm pcrlock, made again for the changed entries ---------------------------------------------------


def records(path: Path) -> list[dict[str, Any]]:
    out = json.loads(path.read_text())["records"]
    assert isinstance(out, list)
    return out


def lock_raw(root: Path, role: str) -> list[dict[str, Any]]:
    """systemd-pcrlock 257's own component for the folder as it is now: ``lock-raw --pcr=13`` of the cpio
    systemd-stub builds of it (measure/cpio.py, checked against real boots by tests/test_vm_*)."""
    d = root / "efi" / "EFI" / "Linux" / f"{role}.efi.extra.d"
    work = root / "lock"
    work.mkdir(exist_ok=True)
    with (work / f"{role}.cpio").open("wb") as f:
        cpio.write(".extra/sysext", 0o555, 0o444, cpio.members(d, ".raw", ".confext.raw", role), f.write, role)
    p = trixie.run(f"{PCRLOCK} lock-raw --pcr=13 {role}.cpio --pcrlock={role}.pcrlock", work)
    assert p.returncode == 0, p.stderr
    return records(work / f"{role}.pcrlock")


@pytest.mark.root
def test_pcrlock_components_are_made_again_for_the_changed_entries(lab: Lab, tmp_path: Path) -> None:
    if not (trixie.ROOT / PCRLOCK.lstrip("/")).exists():
        pytest.fail(f"no systemd-pcrlock in {trixie.ROOT}: scripts/setup-trixie.sh makes it (make test runs it)")
    node(lab, tmp_path)
    assert bk(tmp_path, "install", str(lab.image2), "--entry", "passive").returncode == 0
    dest = tmp_path / "var" / "lib" / "pcrlock.d"
    p = subprocess.run(
        [sys.executable, "-m", "bootkeeper", "tpm", "pcrlock", "--esp", str(tmp_path / "efi"), "--dest", str(dest),
         "--secure-boot", "on"], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert records(dest / SYSEXT_D / "active.pcrlock") == []  # nothing measured yet
    untouched = {f: (dest / f).read_bytes() for f in [f"{UKI_D}/{r}.pcrlock" for r in ROLES]}
    untouched |= {f"{SYSEXT_D}/{r}.pcrlock": (dest / SYSEXT_D / f"{r}.pcrlock").read_bytes() for r in ROLES[1:]}

    p = bk(tmp_path, "install", str(lab.image), "--entry", "active", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["pcrlock"] == {
        "dirs": [str(dest)], "written": [str(dest / SYSEXT_D / "active.pcrlock")], "error": None
    }  # fmt: skip
    assert "run systemd-pcrlock make-policy before the next boot" in p.stderr
    mine = records(dest / SYSEXT_D / "active.pcrlock")
    assert mine and mine == lock_raw(tmp_path, "active")
    assert {f: (dest / f).read_bytes() for f in untouched} == untouched

    # remove from every entry: active and passive change (back to nothing measured), recovery does not
    p = bk(tmp_path, "remove", "tools")
    assert p.returncode == 0, p.stderr
    assert records(dest / SYSEXT_D / "active.pcrlock") == []
    assert records(dest / SYSEXT_D / "passive.pcrlock") == lock_raw(tmp_path, "passive") != []  # k3s stays
    p = bk(tmp_path, "remove", "k3s", "--json")
    assert json.loads(p.stdout)["pcrlock"]["written"] == [str(dest / SYSEXT_D / "passive.pcrlock")]
    assert records(dest / SYSEXT_D / "passive.pcrlock") == []


@pytest.mark.root
def test_no_pcrlock_set_up_nothing_written(lab: Lab, tmp_path: Path) -> None:
    node(lab, tmp_path)
    p = bk(tmp_path, "install", str(lab.image), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["pcrlock"] is None
    assert not (tmp_path / "var" / "lib" / "pcrlock.d").exists() and not (tmp_path / "etc" / "pcrlock.d").exists()


# --- the persistent store: measured by nothing --------------------------------------------------------


def pcr13(root: Path) -> dict[str, str]:
    p = subprocess.run(
        [sys.executable, "-m", "bootkeeper", "tpm", "predict", "--esp", str(root / "efi"), "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return {e["entry"]: e["pcrs"]["sha256"]["13"] for e in json.loads(p.stdout)["entries"]}


@pytest.mark.root
def test_the_persistent_store_is_not_gated_and_pcr13_stays(lab: Lab, tmp_path: Path) -> None:
    """With sysext.store: persistent an extension never passes through systemd-stub (esp/linkstore.py), so
    PCR 13 is the same before and after, and a volume bound to it by value keeps unlocking: no refusal."""
    node(lab, tmp_path, store="persistent")
    before, esp = pcr13(tmp_path), tree(tmp_path / "efi")
    p = bk(tmp_path, "install", str(lab.image), "--luks", str(lab.pcr13), "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["tpm"] == [] and out["pcrlock"] is None
    assert out["written"] == ["active/tools.sysext.raw", "passive/tools.sysext.raw"]
    assert (tmp_path / "var/lib/bootkeeper/extensions/active/tools.sysext.raw").is_symlink()
    assert pcr13(tmp_path) == before and tree(tmp_path / "efi") == esp
    p = bk(tmp_path, "remove", "tools", "--luks", str(lab.pcr13))
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "var/lib/bootkeeper/extensions/active/tools.sysext.raw").exists()
    assert pcr13(tmp_path) == before and tree(tmp_path / "efi") == esp


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[]",
        b'{"pcrValues": 13}',
        b'{"pcrValues": {"13": []}}',
        b'{"pcrValues": [{"pcr": "13"}]}',
        b'{"pcrValues": [{"pcr": 99}]}',
        b'{"pcrValues": [{"pcr": true}]}',
        b'{"pcrValues": [{"pcr": [13]}]}',
        b'{"pcrValues": [13]}',
        b"[" * 100_000,
        b"\xff\xfe",
    ],
)
def test_a_hostile_pcrlock_policy_file_gates_as_much_as_the_default(tmp_path: Path, raw: bytes) -> None:
    from bootkeeper.measure import luks as luks_mod

    p = tmp_path / luks_mod.PCRLOCK_POLICY
    p.parent.mkdir(parents=True)
    p.write_bytes(raw)
    got = luks_mod.pcrlock_policy(tmp_path)
    assert got.pcrs == luks_mod.PCRLOCK_DEFAULT_PCRS and got.covers(13)
    assert str(p) in got.source and "is not a pcrlock policy" in got.source and "\n" not in got.source
