"""Copy, check, commit (esp/checked.py): one ``put_checked`` lands what was judged on the ESP and in the
persistent store, and a copy that is not what was judged is one fault with one exit code on every path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bootkeeper.assess import upgrade as up
from bootkeeper.errors import ExitCode, WriteError
from bootkeeper.esp.linkstore import LinkStore
from bootkeeper.esp.store import EspStore, FolderStore


@pytest.mark.parametrize("where", ["esp", "store"])
def test_an_upgrade_copy_that_is_not_what_the_gate_judged_is_a_failed_write_on_the_esp_as_in_the_store(
    tmp_path: Path, where: str
) -> None:
    """The upgrade's ESP copy said exit 1 (refused) for this and the store's exit 6; it is exit 6 on both
    now (WriteError, EXIT_CODES: an I/O failure changing the disk), and nothing lands either way."""
    src = tmp_path / "tools.raw"
    src.write_bytes(b"the bytes now")
    judged = hashlib.sha256(b"the bytes the gate judged").hexdigest()
    (tmp_path / "esp/EFI/kairos").mkdir(parents=True)
    folder: FolderStore = EspStore(tmp_path / "esp") if where == "esp" else LinkStore(tmp_path / "store")
    rel = "EFI/kairos/tools.raw" if where == "esp" else "tools.raw"
    op = up.Op(up.OpKind.COPY, rel, str(src), store=str(folder.root) if where == "store" else "")
    assert isinstance(folder, (EspStore, LinkStore))
    with folder.transaction(), pytest.raises(WriteError) as e:
        up._run(folder, op, {str(src): judged})
    assert e.value.exit_code == ExitCode.IO and int(e.value.exit_code) == 6
    assert f"{src}: changed after" in str(e.value) and "not copied to" in str(e.value)
    assert not folder.path(rel).exists()
    assert not [p for p in folder.path(rel).parent.iterdir() if p.name.startswith(".bootkeeper-")]


def test_a_copy_that_is_what_was_judged_lands_whole(tmp_path: Path) -> None:
    src = tmp_path / "tools.raw"
    src.write_bytes(b"judged")
    (tmp_path / "esp/EFI/kairos").mkdir(parents=True)
    store = EspStore(tmp_path / "esp")
    op = up.Op(up.OpKind.COPY, "EFI/kairos/tools.raw", str(src))
    with store.transaction():
        up._run(store, op, {str(src): hashlib.sha256(b"judged").hexdigest()})
    assert (tmp_path / "esp/EFI/kairos/tools.raw").read_bytes() == b"judged"
