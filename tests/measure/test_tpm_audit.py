"""``bootkeeper tpm audit DEVICE``: LUKS2 volumes made by the real cryptsetup, TPM2 tokens enrolled by the
real systemd-cryptenroll 257 against swtpm, UKIs signed by the real ukify; every verdict checked against
values computed without bootkeeper (openssl's key fingerprint, which token systemd wrote)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import luks
from bootkeeper.errors import MalformedError
from bootkeeper.measure import luks as luks_mod
from helpers import one_line_error, type2_esp

pytestmark = pytest.mark.integration
OSREL = "ID=kairos\nIMAGE_ID=kairos\nVERSION_ID={v}\nIMAGE_VERSION={v}\n"


class Lab(luks.Lab):
    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.other = luks.rsa_key(work, "other")
        self.fp = luks.pkfp(self.tok[1])
        self.other_fp = luks.pkfp(self.other[1])
        pub, other = "--tpm2-public-key=/work/tok.pub.pem", "--tpm2-public-key=/work/other.pub.pem"
        self.volumes: dict[str, Path] = {}
        for name, args in {
            # Kairos kcrypt's binding: signed PCR 11 and nothing by value
            "signed": luks.SIGNED_PCR11,
            # systemd-cryptenroll 257's default adds PCR 7 by value
            "signed+7": (pub, "--tpm2-public-key-pcrs=11"),
            "literal-7+11": ("--tpm2-pcrs=7+11",),
            "literal-11+13": ("--tpm2-pcrs=11+13",),
            "none": ("--tpm2-pcrs=",),
            "other-key": (other, "--tpm2-public-key-pcrs=11", "--tpm2-pcrs="),
            "signed-11+12": (pub, "--tpm2-public-key-pcrs=11+12", "--tpm2-pcrs="),
            "plain": (),
        }.items():
            v = luks.make_volume(work, f"{name}.luks")
            if args:
                luks.enroll(work, v, self.state, *args)
            self.volumes[name] = v
        ukis = work / "ukis"
        ukis.mkdir()
        self.signed = luks.build_uki(work, ukis / "signed.efi", OSREL.format(v=2), self.tok)
        self.unsigned = luks.build_uki(work, ukis / "unsigned.efi", OSREL.format(v=1))
        self.esp = self.make_esp("esp", active=self.signed, passive=self.unsigned)

    def make_esp(self, name: str, **ukis: Path) -> Path:
        return type2_esp(self.work / name, {f"{role}+3.efi": src.read_bytes() for role, src in ukis.items()})


def audit(device: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bootkeeper", "tpm", "audit", str(device), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


def report(lab: Lab, name: str, esp: Path | None = None) -> tuple[int, dict[str, Any]]:
    p = audit(lab.volumes[name], "--esp", str(esp or lab.esp), "--json")
    assert p.stderr == "", p.stderr
    return p.returncode, json.loads(p.stdout)


def codes(rep: dict[str, Any], level: str) -> list[str]:
    return sorted(f["code"] for f in rep["findings"] if f["level"] == level)


@pytest.mark.root
def test_signed_pcr11_is_fine(lab: Lab) -> None:
    rc, rep = report(lab, "signed")
    assert rc == 0, rep
    (tok,) = rep["tokens"]
    assert tok["pcrs"] == [] and tok["pubkey_pcrs"] == [11]
    assert tok["pubkey_fingerprint"] == lab.fp  # openssl's SHA-256 of the PKCS#1 DER
    assert codes(rep, "finding") == []
    assert codes(rep, "fine") == ["signed-pcr11"]
    by_uki = {u["uki"]: u for u in tok["ukis"]}
    assert by_uki["EFI/Linux/active+3.efi"]["ok"] and by_uki["EFI/Linux/active+3.efi"]["pcrpkey_matches"]
    # passive has no .pcrsig: booting it will not unlock, a note (the active one does)
    assert not by_uki["EFI/Linux/passive+3.efi"]["has_pcrsig"]
    assert codes(rep, "note") == ["unsigned-entry"]
    assert rep["verdict"] == "ok"


@pytest.mark.root
def test_cryptenroll_default_pcr7_is_only_a_note(lab: Lab) -> None:
    rc, rep = report(lab, "signed+7")
    assert rc == 0, rep
    assert rep["tokens"][0]["pcrs"] == [7]
    assert "literal-pcr" in codes(rep, "note") and codes(rep, "finding") == []


@pytest.mark.root
@pytest.mark.parametrize(("name", "pcrs"), [("literal-7+11", [11]), ("literal-11+13", [11, 13])])
def test_pcr11_or_13_by_value_is_a_finding(lab: Lab, name: str, pcrs: list[int]) -> None:
    rc, rep = report(lab, name)
    assert rc == 1
    literal = [f["message"] for f in rep["findings"] if f["level"] == "finding" and f["code"] == "literal-pcr"]
    assert [int(m.split()[1]) for m in literal] == pcrs
    assert all("every upgrade" in m for m in literal)
    assert rep["tokens"][0]["pubkey_fingerprint"] is None


@pytest.mark.root
def test_no_pcr_and_no_key_is_a_finding(lab: Lab) -> None:
    rc, rep = report(lab, "none")
    assert rc == 1
    assert codes(rep, "finding") == ["no-signed-policy"]
    assert rep["tokens"][0]["pcr_bank"] is None  # systemd-cryptenroll writes no bank without PCRs


@pytest.mark.root
def test_a_key_no_uki_is_signed_for(lab: Lab) -> None:
    rc, rep = report(lab, "other-key")
    assert rc == 1
    assert "unknown-key" in codes(rep, "finding")
    msg = next(f["message"] for f in rep["findings"] if f["code"] == "unknown-key")
    assert lab.other_fp in msg
    active = next(u for u in rep["tokens"][0]["ukis"] if u["uki"] == "EFI/Linux/active+3.efi")
    assert active["has_pcrsig"] and not active["signed_for_key"] and not active["pcrpkey_matches"]


@pytest.mark.root
def test_the_active_entry_unsigned_is_a_finding(lab: Lab) -> None:
    esp = lab.make_esp("esp-passive-signed", active=lab.unsigned, passive=lab.signed)
    rc, rep = report(lab, "signed", esp)
    assert rc == 1
    assert codes(rep, "finding") == ["unsigned-entry"]
    assert "entry active" in next(f["message"] for f in rep["findings"] if f["level"] == "finding")


@pytest.mark.root
def test_a_signed_policy_over_more_than_pcr11(lab: Lab) -> None:
    rc, rep = report(lab, "signed-11+12")
    assert rc == 1
    assert codes(rep, "finding") == ["signed-pcrs"]


@pytest.mark.root
def test_no_token_at_all(lab: Lab) -> None:
    p = audit(lab.volumes["plain"], "--esp", str(lab.esp))
    assert p.returncode == 0, p.stderr
    assert "no systemd-tpm2 token" in p.stdout


@pytest.mark.root
def test_text_output_names_each_token(lab: Lab) -> None:
    p = audit(lab.volumes["literal-7+11"], "--esp", str(lab.esp))
    assert p.returncode == 1
    assert "token 0 (keyslot 1, sha256): PCR 7+11 by value" in p.stdout
    assert "finding: token 0: PCR 11 is bound by value" in p.stdout


@pytest.mark.root
def test_not_a_luks_volume(lab: Lab, tmp_path: Path) -> None:
    f = tmp_path / "junk"
    f.write_bytes(b"\0" * 4096)
    one_line_error(audit(f), 4, str(f), "not a LUKS volume")
    one_line_error(audit(tmp_path / "absent"), 7, "absent")


def _metadata(lab: Lab, name: str) -> dict[str, Any]:
    out = subprocess.run(
        ["cryptsetup", "luksDump", "--dump-json-metadata", str(lab.volumes[name])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    obj = json.loads(out)
    assert isinstance(obj, dict)
    return obj


def _hostile(obj: dict[str, Any], field: str, value: Any) -> str:
    tok = obj["tokens"]["0"]
    if value is None:
        del tok[field]
    else:
        tok[field] = value
    return json.dumps(obj)


@pytest.mark.root
@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("tpm2-pcrs", [7, 99], "tpm2-pcrs: not a list of PCR numbers"),
        ("tpm2-pcrs", "7", "tpm2-pcrs: not a list"),
        ("tpm2-pcrs", None, "tpm2-pcrs: missing"),
        ("tpm2-pcr-bank", "md5", "tpm2-pcr-bank: 'md5'"),
        ("tpm2_pubkey", "!!!", "tpm2_pubkey: not base64"),
        ("tpm2_pubkey", base64.b64encode(b"not a key").decode(), "tpm2_pubkey: not a PEM or DER public key"),
        ("tpm2_pubkey", None, "tpm2_pubkey_pcrs is set but tpm2_pubkey is missing"),
        ("tpm2_pubkey_pcrs", [True], "tpm2_pubkey_pcrs: not a list"),
        ("tpm2-blob", [], "tpm2-blob: missing, or not"),
        ("tpm2-policy-hash", 5, "tpm2-policy-hash: missing, or not"),
        ("tpm2_pcrlock", "yes", "tpm2_pcrlock: not a boolean"),
        ("keyslots", [1], "keyslots: not a list of strings"),
    ],
)
def test_hostile_token_fields(lab: Lab, field: str, value: Any, words: str) -> None:
    text = _hostile(_metadata(lab, "signed"), field, value)
    with pytest.raises(MalformedError) as e:
        luks_mod.parse_metadata(text, "vol")
    assert str(e.value).startswith("vol: token 0: ") and words in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"tokens": []}', "tokens: not an object"),
        ('{"tokens": {"0": 1}}', "token 0: not an object"),
    ],
)
def test_hostile_metadata(text: str, words: str) -> None:
    with pytest.raises(MalformedError, match=words):
        luks_mod.parse_metadata(text, "vol")


@pytest.mark.root
def test_other_token_types_are_not_the_tpms(lab: Lab) -> None:
    obj = _metadata(lab, "signed")
    obj["tokens"]["1"] = {"type": "systemd-fido2", "keyslots": ["1"], "fido2-credential": "x"}
    assert [t.id for t in luks_mod.parse_metadata(json.dumps(obj), "vol")] == ["0"]


@pytest.mark.root
def test_a_hostile_token_in_a_real_header(lab: Lab, tmp_path: Path) -> None:
    """Without systemd's token plugin, cryptsetup checks a token's type and keyslots only: a systemd-tpm2 token
    with a broken field gets into a real LUKS2 header, and audit names the field in one line."""
    vol = tmp_path / "hostile.luks"
    shutil.copy(lab.volumes["plain"], vol)
    tok = tmp_path / "token.json"
    tok.write_text(
        json.dumps(
            {
                "type": "systemd-tpm2",
                "keyslots": [],
                "tpm2-blob": "AA==",
                "tpm2-pcrs": [11, 42],
                "tpm2-policy-hash": "00",
            }
        )
    )
    subprocess.run(
        ["cryptsetup", "token", "import", "--disable-external-tokens", "--json-file", str(tok), str(vol)], check=True
    )
    one_line_error(audit(vol, "--esp", str(lab.esp)), 4, str(vol), "token 0", "tpm2-pcrs")
