"""esp/scratch.py's ``signable_stand_in``: a stand-in UKI that is a valid PE32+ image, judged by the real tools
(binutils' ``objdump``/``objcopy`` read its headers and sections, sbsigntool's ``sbsign`` signs it and
``sbverify`` verifies it) and then by bootkeeper's own readers: the Secure Boot verdict
(measure/secureboot.py ``verify_uki``), the upgrade's UKI check and the section reader. The expected header
values are the PE/COFF specification's ("PE Format", Microsoft Learn), not the function's."""

from __future__ import annotations

import itertools
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from bootkeeper.assess import upgrade
from bootkeeper.esp import pe, scratch
from bootkeeper.measure.secureboot import verify_uki

pytestmark = [pytest.mark.integration]

OSREL = b"ID=kairos\nVERSION_ID=1\nIMAGE_VERSION=3\n"
CASES = {
    "small": ((b".osrel", OSREL), (b".linux", b"v3")),
    # .linux over several pages and a section of exactly one FileAlignment: addresses and sizes round up
    "pages": ((b".osrel", OSREL), (b".cmdline", b"c" * 0x200), (b".linux", bytes(range(256)) * 40)),
    "empty": ((b".osrel", OSREL), (b".sbat", b""), (b".linux", b"k")),
}


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    for tool in ("sbsign", "sbverify", "openssl", "objdump", "objcopy"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing; scripts/setup-test-deps.sh installs it")
    w = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("db", "other"):
        key, crt = w / f"{name}.key", w / f"{name}.crt"
        r = _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                 "-subj", f"/CN=stand-in {name}", "-keyout", key, "-out", crt)  # fmt: skip
        assert r.returncode == 0, r.stderr
        out[name] = (key, crt)
    return out


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.mark.parametrize("case", CASES)
def test_the_headers_are_those_of_a_pe32_plus_efi_application(tmp_path: Path, case: str) -> None:
    sections = CASES[case]
    data = scratch.signable_stand_in(sections)
    (tmp_path / "u.efi").write_bytes(data)
    r = _run("objdump", "-p", tmp_path / "u.efi")
    assert r.returncode == 0, r.stderr
    fields = dict(re.findall(r"^(\w+)\s+(\S+)", r.stdout, re.M))
    assert "file format pei-x86-64" in r.stdout
    assert fields["Magic"] == "020b"  # PE32+
    assert fields["SectionAlignment"] == "00001000" and fields["FileAlignment"] == "00000200"
    assert fields["Subsystem"] == "0000000a"  # EFI application
    assert fields["NumberOfRvaAndSizes"] == "00000010"
    pe_off = struct.unpack_from("<I", data, 0x3C)[0]
    machine, n, _, _, _, opt_size = struct.unpack_from("<HHIIIH", data, pe_off + 4)
    assert (machine, n, opt_size) == (0x8664, len(sections), 240)
    size_of_image, size_of_headers = struct.unpack_from("<II", data, pe_off + 24 + 56)
    table = pe_off + 24 + opt_size
    assert size_of_headers % 0x200 == 0 and table + 40 * n <= size_of_headers
    vas = []
    for i, (name, body) in enumerate(sections):
        raw_name, vsize, va, raw_size, raw_at = struct.unpack_from("<8sIIII", data, table + 40 * i)
        assert (raw_name.rstrip(b"\0"), vsize) == (name, len(body))
        assert va % 0x1000 == 0 and raw_size % 0x200 == 0 and raw_size >= len(body)
        assert raw_at % 0x200 == 0 and (raw_at >= size_of_headers or raw_size == 0)
        assert data[raw_at : raw_at + len(body)] == body
        vas.append((va, vsize))
    assert vas[0][0] >= size_of_headers
    assert all(a + max(s, 1) <= b for (a, s), (b, _) in itertools.pairwise(vas))  # ascending, no overlap
    assert size_of_image % 0x1000 == 0 and size_of_image >= vas[-1][0] + vas[-1][1]
    assert len(data) % 0x200 == 0
    # binutils reads the sections back byte for byte
    r = _run("objcopy", "--dump-section", f".osrel={tmp_path / 'osrel'}", tmp_path / "u.efi", tmp_path / "copy.efi")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "osrel").read_bytes() == OSREL


@pytest.mark.parametrize("case", CASES)
def test_sbsign_signs_it_and_sbverify_and_verify_uki_admit_it(
    tmp_path: Path, keys: dict[str, tuple[Path, Path]], case: str
) -> None:
    (tmp_path / "u.efi").write_bytes(scratch.signable_stand_in(CASES[case]))
    key, crt = keys["db"]
    r = _run("sbsign", "--key", key, "--cert", crt, "--output", tmp_path / "s.efi", tmp_path / "u.efi")
    assert r.returncode == 0, r.stderr
    signed = tmp_path / "s.efi"
    r = _run("sbverify", "--cert", crt, signed)
    assert r.returncode == 0 and "Signature verification OK" in r.stdout, r.stdout + r.stderr
    assert _run("sbverify", "--cert", keys["other"][1], signed).returncode != 0  # the control

    verdict = verify_uki(signed, [_cert(crt)])
    assert verdict.ok, verdict.reason
    assert verdict.signer == "CN=stand-in db"
    refused = verify_uki(signed, [_cert(keys["other"][1])])
    assert not refused.ok and "CN=stand-in db" in refused.reason
    unsigned = verify_uki(tmp_path / "u.efi", [_cert(crt)])
    assert (unsigned.ok, unsigned.reason) == (False, "not signed (no certificate table, or no PKCS#7 signature in it)")

    check = upgrade.check_uki(signed)
    assert check.ok, check.reason
    assert check.osrel["IMAGE_VERSION"] == "3" and check.text == OSREL.decode()
    assert pe.read_osrel(signed) == OSREL


def test_a_byte_changed_after_signing_is_refused(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    """The control for the verdicts above: the signature covers the sections' bytes."""
    (tmp_path / "u.efi").write_bytes(scratch.signable_stand_in(CASES["small"]))
    key, crt = keys["db"]
    r = _run("sbsign", "--key", key, "--cert", crt, "--output", tmp_path / "s.efi", tmp_path / "u.efi")
    assert r.returncode == 0, r.stderr
    data = bytearray((tmp_path / "s.efi").read_bytes())
    at = data.index(b"IMAGE_VERSION=3")
    data[at + 14] = ord("4")
    (tmp_path / "t.efi").write_bytes(data)
    assert _run("sbverify", "--cert", crt, tmp_path / "t.efi").returncode != 0
    verdict = verify_uki(tmp_path / "t.efi", [_cert(crt)])
    assert not verdict.ok and "is not the image's Authenticode hash" in verdict.reason


def test_the_old_stand_in_is_not_one_sbsign_signs(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    """Why ``signable_stand_in`` exists: ``stand_in_uki`` has no optional header (its bytes stay as other
    tests pin them), and sbsign refuses it."""
    (tmp_path / "u.efi").write_bytes(scratch.stand_in_uki(CASES["small"]))
    key, crt = keys["db"]
    r = _run("sbsign", "--key", key, "--cert", crt, "--output", tmp_path / "s.efi", tmp_path / "u.efi")
    assert r.returncode != 0 and "Invalid a.out machine type" in r.stderr
