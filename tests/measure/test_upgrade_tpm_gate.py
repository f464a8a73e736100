"""``bootkeeper upgrade``'s TPM gate (issue 16, item 6): before the first write, the new UKI's ``.pcrsig`` must
authorize the PCR 11 it will produce, with the key the node's LUKS2 token trusts; else the node would not
unlock after the upgrade. LUKS2 volumes from the real cryptsetup, tokens from the real systemd-cryptenroll
257 against swtpm, UKIs from the real ukify; the ESP is compared byte for byte before and after."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import luks
from helpers import tree, type2_esp, uki

pytestmark = [pytest.mark.integration, pytest.mark.root]


def osrel(role: str, version: str) -> str:
    image_id = "kairos" if role in ("active", "passive") else f"kairos-{role}"
    return f"ID=kairos\nIMAGE_ID={image_id}\nVERSION_ID={version}\nIMAGE_VERSION={version}\n"


class Lab(luks.Lab):
    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.other = luks.rsa_key(work, "other")
        self.fp = luks.pkfp(self.tok[1])
        self.signed_vol = self.volume("signed.luks", luks.SIGNED_PCR11)
        self.literal_vol = self.volume("literal.luks", ("--tpm2-pcrs=7+11",))
        new = osrel("active", "2")
        u = work / "ukis"
        u.mkdir()
        self.good = luks.build_uki(work, u / "good.efi", new, self.tok)
        self.wrong_key = luks.build_uki(work, u / "wrong-key.efi", new, self.other)
        self.unsigned = luks.build_uki(work, u / "unsigned.efi", new)
        # signed with the right key, but only for the phases after the initrd (ukify signs exactly the paths
        # given): systemd-cryptsetup in the initrd finds no signature for PCR 11 after enter-initrd
        self.late = luks.build_uki(
            work, u / "late.efi", new, self.tok, phases="enter-initrd:leave-initrd enter-initrd:leave-initrd:sysinit"
        )
        self.sha1_only = luks.build_uki(work, u / "sha1.efi", new, self.tok, banks="sha1")


def esp(root: Path) -> Path:
    versions = (("active", "1"), ("passive", "0"), ("recovery", "1"))
    return type2_esp(root / "esp", {f"{r}+3.efi": uki(osrel(r, v), tag=f"{r} v{v}") for r, v in versions})


def upgrade(root: Path, new: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = root / "c.yaml"
    cfg.write_text("sysext:\n  firmware: []\n  verity_dirs: []\n")
    where = ["--esp", str(root / "esp"), "--config", str(cfg), "--root", str(root)]
    return subprocess.run(
        [sys.executable, "-m", "bootkeeper", "upgrade", str(new), *where, *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


def active(root: Path) -> bytes:
    return (root / "esp" / "EFI" / "Linux" / "active+3.efi").read_bytes()


def test_a_uki_signed_with_the_tokens_key_goes_through(lab: Lab, tmp_path: Path) -> None:
    esp(tmp_path)
    p = upgrade(tmp_path, lab.good, "--luks", str(lab.signed_vol))
    assert p.returncode == 0, p.stderr
    assert f"gate: {lab.signed_vol}: unlocks with the new UKI" in p.stdout
    assert active(tmp_path) == lab.good.read_bytes()


@pytest.mark.parametrize(
    ("which", "words"),
    [
        ("wrong_key", ["wrong-key.efi's .pcrsig has no sha256 signature with key"]),
        ("unsigned", ["unsigned.efi has no .pcrsig"]),
        ("late", ["late.efi's .pcrsig does not authorize its PCR 11 after enter-initrd (sha256) with key"]),
        ("sha1_only", ["sha1.efi's .pcrsig has no sha256 signature with key"]),  # the token unlocks with sha256
    ],
)
def test_refused_and_nothing_written(lab: Lab, tmp_path: Path, which: str, words: list[str]) -> None:
    esp(tmp_path)
    before = tree(tmp_path / "esp")
    new: Path = getattr(lab, which)
    p = upgrade(tmp_path, new, "--luks", str(lab.signed_vol))
    assert p.returncode == 1, p.stdout + p.stderr
    err = [x for x in p.stderr.splitlines() if x.startswith("bootkeeper: error: ")]
    assert len(err) == 1 and "Traceback" not in p.stderr, p.stderr
    for w in [str(new), lab.fp, f"{lab.signed_vol} would not unlock after the upgrade", *words]:
        assert w in err[0], (w, err[0])
    assert "nothing was changed" in err[0]
    assert "hint: sign the new UKI for the key the LUKS token trusts" in p.stderr
    assert tree(tmp_path / "esp") == before


def test_force_goes_through_and_says_so(lab: Lab, tmp_path: Path) -> None:
    esp(tmp_path)
    p = upgrade(tmp_path, lab.wrong_key, "--luks", str(lab.signed_vol), "--force")
    assert p.returncode == 0, p.stderr
    assert "upgrading with --force although" in p.stderr and lab.fp in p.stderr
    assert active(tmp_path) == lab.wrong_key.read_bytes()


def test_dry_run_json_shows_the_tpm_gate(lab: Lab, tmp_path: Path) -> None:
    esp(tmp_path)
    before = tree(tmp_path / "esp")
    p = upgrade(tmp_path, lab.late, "--luks", str(lab.signed_vol), "--dry-run", "--json")
    assert p.returncode == 1
    gate = json.loads(p.stdout)["gate"]
    assert gate["verdict"] == "refused"
    (g,) = gate["tpm"]
    assert g["device"] == str(lab.signed_vol) and g["keys"] == [lab.fp] and not g["ok"]
    (a,) = g["ukis"]
    assert a["signed_for_key"] and a["pcrpkey_matches"] and a["missing_phases"] == ["enter-initrd"]
    assert tree(tmp_path / "esp") == before


def test_a_volume_bound_by_value_only_has_no_gate(lab: Lab, tmp_path: Path) -> None:
    esp(tmp_path)
    p = upgrade(tmp_path, lab.unsigned, "--luks", str(lab.literal_vol), "--dry-run", "--json")
    assert p.returncode == 0, p.stderr
    (g,) = json.loads(p.stdout)["gate"]["tpm"]
    assert g["keys"] == [] and g["ok"]


def test_crypttab_under_root_finds_the_volume(lab: Lab, tmp_path: Path) -> None:
    esp(tmp_path)
    shutil.copy(lab.signed_vol, tmp_path / "data.luks")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "crypttab").write_text(
        "# name device key options\n"
        "data /data.luks none tpm2-device=auto\n"
        "gone UUID=0b7f4cd3-0000-4000-8000-000000000000 none tpm2-device=auto\n"
    )
    before = tree(tmp_path / "esp")
    p = upgrade(tmp_path, lab.wrong_key)
    assert p.returncode == 1
    assert f"{tmp_path / 'data.luks'} would not unlock after the upgrade" in p.stderr
    assert "/dev/disk/by-uuid/0b7f4cd3-0000-4000-8000-000000000000 (from /etc/crypttab) is not there" in p.stderr
    assert tree(tmp_path / "esp") == before
    assert upgrade(tmp_path, lab.good).returncode == 0
    assert active(tmp_path) == lab.good.read_bytes()


def test_no_crypttab_no_gate(lab: Lab, tmp_path: Path) -> None:
    esp(tmp_path)
    p = upgrade(tmp_path, lab.unsigned, "--dry-run", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["gate"]["tpm"] == []


def test_an_unreadable_luks_option_is_one_line(lab: Lab, tmp_path: Path) -> None:
    from helpers import one_line_error

    esp(tmp_path)
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0" * 1024)
    one_line_error(upgrade(tmp_path, lab.good, "--luks", str(junk)), 4, str(junk), "not a LUKS volume")
