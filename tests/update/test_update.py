"""``bootkeeper update`` end to end on a scratch node (a root folder and a Type #2 ESP): releases
published with ``release push`` into OCI layouts (``ocifile:``), folders (``dir:``) and single files
(``file:``), UKIs made from trixie's systemd-stub and signed by the real ``sbsign``, an extension
built by ``sysext build`` for the new OS. Each refusal leaves the ESP byte for byte as it was."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import registry
import ukikit
from bootkeeper.esp import scratch
from helpers import bk, fake_efivars, tree, type2_esp

pytestmark = [pytest.mark.integration]
OS = "ID=debian\nVERSION_ID=13\n"
ROLES = ("active", "passive", "recovery", "statereset")


def _stand_in(role: str) -> bytes:
    """The node's UKIs of OS 1 (stand-ins: they are read, never booted here)."""
    osrel = f"{OS}IMAGE_ID={role}\nIMAGE_VERSION=1\n".encode()
    return scratch.stand_in_uki(((b".osrel", osrel), (b".linux", role.encode())))


def _uki(w: Path, out: Path, version: str) -> Path:
    """OS ``version``'s UKI (IMAGE_ID=active: the Type #2 sort key, as the node's own UKIs have)."""
    return ukikit.make_uki(w, out, f"{OS}IMAGE_ID=active\nIMAGE_VERSION={version}\n", version.encode() * 4096)


@dataclass(frozen=True)
class Kit:
    good_crt: Path
    ukis: dict[str, Path]  # "v2" (signed by good), "v2-unsigned", "v2-other", "v0", "v3"
    tools_v2: Path  # tools-v2.sysext.raw, signed by good, built for OS (ID=debian, VERSION_ID=13)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    ukikit.need_tools()
    w = tmp_path_factory.mktemp("kit")
    pairs = {name: ukikit.key_pair(w, name, f"release {name}") for name in ("good", "other")}
    ukis: dict[str, Path] = {}
    for label, version, key in (("v2", "2", "good"), ("v2-unsigned", "2", None), ("v2-other", "2", "other"),
                                ("v0", "0", "good"), ("v3", "3", "good")):  # fmt: skip
        d = w / label
        d.mkdir()
        plain = _uki(d, d / "plain.efi", version)
        out = d / f"node-{version}.efi"
        if key is None:
            plain.rename(out)
        else:
            ukikit.sign(plain, out, *pairs[key])
        ukis[label] = out
    t = w / "tools-tree"
    (t / "usr/bin").mkdir(parents=True)
    (t / "usr/bin/bk-hello-tools").write_text("#!/bin/sh\necho tools v2\n")
    (w / "os-release").write_text(OS)
    tools = w / "tools-v2.sysext.raw"
    r = bk("sysext", "build", t, "-o", tools, "--key", w / "good.key", "--cert", w / "good.crt",
           "--os-release", w / "os-release")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return Kit(w / "good.crt", ukis, tools)


@dataclass(frozen=True)
class Node:
    root: Path
    esp: Path
    config: Path

    def bk(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return bk("update", "--root", self.root, "--esp", self.esp, "--config", self.config, *args)

    @property
    def staging(self) -> Path:
        return self.root / "var/lib/bootkeeper/update"


@pytest.fixture
def node(tmp_path: Path, kit: Kit) -> Node:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text(f"{OS}IMAGE_ID=kairos\nIMAGE_VERSION=1\n")
    esp = type2_esp(tmp_path / "efi", {f"{r}+3.efi": _stand_in(r) for r in ROLES})
    cfg = tmp_path / "bootkeeper.yaml"
    (root / "etc/bootkeeper").mkdir()
    shutil.copy(kit.good_crt, root / "etc/bootkeeper/release.crt")  # certificates are read under --root
    cfg.write_text("sysext:\n  certificates: [/etc/bootkeeper/release.crt]\n")
    return Node(root, esp, cfg)


def _push(kit: Kit, dest: str, uki: str = "v2", *more: Path) -> str:
    r = bk("release", "push", kit.ukis[uki], *more, "--to", dest)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _one_line(r: subprocess.CompletedProcess[str]) -> str:
    errors = [line for line in r.stderr.splitlines() if line.startswith("bootkeeper: error: ")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    return errors[0]


def test_check_says_what_the_source_offers_and_changes_nothing(tmp_path: Path, kit: Kit, node: Node) -> None:
    _push(kit, f"ocifile:{tmp_path / 'layout'}:2", "v2", kit.tools_v2)
    before = tree(node.esp)
    r = node.bk("--check", "--source", f"ocifile:{tmp_path / 'layout'}:2", "--json")
    assert r.returncode == 0, r.stderr
    check = json.loads(r.stdout)["check"]
    assert (check["version"], check["running"], check["newer"]) == ("2", "1", True)
    sizes = {f["name"]: f["size"] for f in check["files"]}
    assert sizes == {"node-2.efi": kit.ukis["v2"].stat().st_size, "tools-v2.sysext.raw": kit.tools_v2.stat().st_size}
    assert check["size"] == sum(sizes.values()) and check["downloaded"] is None
    assert tree(node.esp) == before and not node.staging.exists()


def test_an_update_from_a_layout_installs_the_release_as_active(tmp_path: Path, kit: Kit, node: Node) -> None:
    _push(kit, f"ocifile:{tmp_path / 'layout'}:2", "v2", kit.tools_v2)
    old_active = (node.esp / "EFI/Linux/active+3.efi").read_bytes()
    r = node.bk("--source", f"ocifile:{tmp_path / 'layout'}:2", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["applied"]["version"] == "2" and out["applied"]["signer"] == "CN=release good"
    assert out["applied"]["upgrade"]["result"] == "upgraded"
    linux = sorted(p.name for p in (node.esp / "EFI/Linux").iterdir())
    active = next(n for n in linux if n.startswith("active+") and n.endswith(".efi"))
    passive = next(n for n in linux if n.startswith("passive+") and n.endswith(".efi"))
    assert (node.esp / "EFI/Linux" / active).read_bytes() == kit.ukis["v2"].read_bytes()
    assert (node.esp / "EFI/Linux" / passive).read_bytes() == old_active
    extra = node.esp / "EFI/Linux/active.efi.extra.d/tools-v2.sysext.raw"
    assert extra.read_bytes() == kit.tools_v2.read_bytes()
    hist = json.loads(bk("history", "show", "--root", node.root, "--json").stdout)
    assert any(e.get("event") == "upgrade" for e in hist.get("events", hist.get("boots", []))) or "upgrade" in r.stdout


@pytest.mark.parametrize(
    ("uki", "announced", "why"),
    [
        ("v2-unsigned", "2", "node-2.efi: Secure Boot signature: "),
        ("v2-other", "2", "node-2.efi: Secure Boot signature: "),
        # the manifest says 5; the UKI's own .osrel, read once its signature verified, says 0
        ("v0", "5", "node-0.efi: version 0 is not newer than the running 1; nothing was changed"),
    ],
)
def test_a_release_that_fails_the_trust_checks_never_reaches_the_esp(
    tmp_path: Path, kit: Kit, node: Node, uki: str, announced: str, why: str
) -> None:
    layout = tmp_path / "layout"
    r = bk("release", "push", kit.ukis[uki], "--to", f"ocifile:{layout}:x", "--version", announced)
    assert r.returncode == 0, r.stderr
    before = tree(node.esp)
    r = node.bk("--source", f"ocifile:{layout}:x")
    assert r.returncode == 1, r.stderr
    assert why in _one_line(r)
    assert tree(node.esp) == before


def test_a_downgrade_passes_the_version_rule_only_when_allowed(tmp_path: Path, kit: Kit, node: Node) -> None:
    _push(kit, f"ocifile:{tmp_path / 'layout'}:0", "v0")
    before = tree(node.esp)
    # not newer: update does nothing
    r = node.bk("--source", f"ocifile:{tmp_path / 'layout'}:0")
    assert r.returncode == 0 and "nothing to do: 0 is not newer than the running 1" in r.stdout, r.stderr
    # --allow-downgrade: past the version rule, to the upgrade's gate, which on Type #2 refuses it: the
    # old OS (1), passive after the upgrade, would sort before the new active (0) in systemd-boot's menu
    r = node.bk("--source", f"ocifile:{tmp_path / 'layout'}:0", "--allow-downgrade")
    assert r.returncode == 1, r.stderr
    line = _one_line(r)
    assert "would boot before EFI/Linux/active+3.efi" in line and "IMAGE_VERSION=0" in line
    assert "not newer" not in line
    assert tree(node.esp) == before


def test_a_blob_that_does_not_match_its_digest_stops_before_the_esp(tmp_path: Path, kit: Kit, node: Node) -> None:
    layout = tmp_path / "layout"
    _push(kit, f"ocifile:{layout}:2", "v2")
    blob = next(p for p in (layout / "blobs/sha256").iterdir() if p.stat().st_size == kit.ukis["v2"].stat().st_size)
    data = bytearray(blob.read_bytes())
    data[4096] ^= 1
    blob.write_bytes(bytes(data))
    before = tree(node.esp)
    r = node.bk("--source", f"ocifile:{layout}:2")
    assert r.returncode == 4, r.stderr
    assert blob.name in _one_line(r)
    assert tree(node.esp) == before
    assert bk("update", "--root", node.root, "--config", node.config, "--apply-downloaded").returncode == 3


def test_download_then_apply_in_two_steps(tmp_path: Path, kit: Kit, node: Node) -> None:
    _push(kit, f"ocifile:{tmp_path / 'layout'}:2", "v2", kit.tools_v2)
    before = tree(node.esp)
    r = node.bk("--download-only", "--source", f"ocifile:{tmp_path / 'layout'}:2", "--json")
    assert r.returncode == 0, r.stderr
    folder = Path(json.loads(r.stdout)["downloaded"]["folder"])
    assert folder.is_relative_to(node.staging) and (folder / "node-2.efi").read_bytes() == kit.ukis["v2"].read_bytes()
    assert tree(node.esp) == before
    shutil.rmtree(tmp_path / "layout")  # the source is gone: apply needs only what was downloaded
    r = node.bk("--apply-downloaded")
    assert r.returncode == 0, r.stderr
    assert "result: upgraded (2, signed by CN=release good)" in r.stdout


def test_scheduled_downloads_and_applies_only_when_told(tmp_path: Path, kit: Kit, node: Node) -> None:
    _push(kit, f"ocifile:{tmp_path / 'layout'}:stable", "v2")
    before = tree(node.esp)
    src = f"ocifile:{tmp_path / 'layout'}:stable"
    r = node.bk("--scheduled", "--source", src)
    assert r.returncode == 0, r.stderr
    assert "downloaded: 2 into" in r.stdout and tree(node.esp) == before
    node.config.write_text(node.config.read_text() + "update:\n  auto_apply: true\n")
    r = node.bk("--scheduled", "--source", src)
    assert r.returncode == 0, r.stderr
    assert "result: upgraded" in r.stdout
    assert "applied 2 (not rebooting: --root is not /)" in r.stderr


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_a_folder_or_a_file_is_a_source_too(tmp_path: Path, kit: Kit, node: Node, kind: str) -> None:
    d = tmp_path / "release"
    d.mkdir()
    shutil.copy(kit.ukis["v2"], d / "node-2.efi")
    src = f"dir:{d}" if kind == "dir" else f"file:{d / 'node-2.efi'}"
    r = node.bk("--source", src)
    assert r.returncode == 0, r.stderr
    assert "result: upgraded (2, signed by CN=release good)" in r.stdout


def test_update_without_a_source_is_a_usage_error(node: Node) -> None:
    r = node.bk("--check")
    assert r.returncode == 2
    assert "no release source: give --source, or set update.source" in _one_line(r)


def test_a_release_skopeo_copied_updates_the_node(tmp_path: Path, kit: Kit, node: Node) -> None:
    """Interoperability: pushed by bootkeeper, copied by the real skopeo, applied from the copy."""
    _push(kit, f"ocifile:{tmp_path / 'ours'}:2", "v2", kit.tools_v2)
    p = subprocess.run(
        ["skopeo", "copy", f"oci:{tmp_path / 'ours'}:2", f"oci:{tmp_path / 'theirs'}:2"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = node.bk("--source", f"ocifile:{tmp_path / 'theirs'}:2")
    assert r.returncode == 0, r.stderr
    assert "result: upgraded (2, signed by CN=release good)" in r.stdout


# -- from a registry: Debian's docker-registry on 127.0.0.1, and skopeo both ways ------------------------


def test_an_update_from_a_registry_pushed_by_release_push(tmp_path: Path, kit: Kit, node: Node) -> None:
    with registry.serve(tmp_path / "registry") as reg:
        out = _push(kit, f"oci:{reg.host}/bk/node:2", "v2", kit.tools_v2)
        assert f"at oci:{reg.host}/bk/node:2" in out
        r = bk("release", "push", kit.ukis["v2"], kit.tools_v2, "--to", f"oci:{reg.host}/bk/node:2", "--tag", "stable")
        assert r.returncode == 0, r.stderr
        # the channel names the tag: update.source without one
        node.config.write_text(node.config.read_text() + f"update:\n  source: oci:{reg.host}/bk/node\n")
        r = node.bk("--json")
        assert r.returncode == 0, r.stderr
        out_j = json.loads(r.stdout)
        assert out_j["check"]["source"] == f"oci:{reg.host}/bk/node:stable"
        assert out_j["applied"]["upgrade"]["result"] == "upgraded"
    extra = node.esp / "EFI/Linux/active.efi.extra.d/tools-v2.sysext.raw"
    assert extra.read_bytes() == kit.tools_v2.read_bytes()


def test_a_registry_blob_tampered_at_rest_never_reaches_the_esp(tmp_path: Path, kit: Kit, node: Node) -> None:
    with registry.serve(tmp_path / "registry") as reg:
        _push(kit, f"oci:{reg.host}/bk/node:2", "v2")
        r = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reg.host}/bk/node:2"],
                           capture_output=True, text=True, check=False)  # fmt: skip
        assert r.returncode == 0, r.stderr
        uki_digest = next(x["digest"] for x in json.loads(r.stdout)["layers"] if x["mediaType"].endswith("uki.v1"))
        data = reg.blob_data(uki_digest)
        raw = bytearray(data.read_bytes())
        raw[100] ^= 0xFF
        data.write_bytes(bytes(raw))
        before = tree(node.esp)
        r = node.bk("--source", f"oci:{reg.host}/bk/node:2")
    assert r.returncode == 4, r.stderr
    assert uki_digest in _one_line(r)
    assert tree(node.esp) == before


def test_skopeo_copies_both_ways_and_the_node_updates_from_either_copy(tmp_path: Path, kit: Kit, node: Node) -> None:
    """Pushed by bootkeeper to a registry, copied by skopeo into a layout: the node updates from the
    layout. And the reverse: pushed by bootkeeper into a layout, copied by skopeo into the registry:
    the node updates from the registry (--preserve-digests: skopeo would otherwise recompress)."""
    with registry.serve(tmp_path / "registry") as reg:
        _push(kit, f"oci:{reg.host}/bk/node:2", "v2", kit.tools_v2)
        copy = ["skopeo", "copy", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false"]
        p = subprocess.run([*copy, f"docker://{reg.host}/bk/node:2", f"oci:{tmp_path / 'copy'}:2"],
                           capture_output=True, text=True, check=False)  # fmt: skip
        assert p.returncode == 0, p.stderr
        _push(kit, f"ocifile:{tmp_path / 'ours'}:3", "v3")
        p = subprocess.run([*copy, f"oci:{tmp_path / 'ours'}:3", f"docker://{reg.host}/bk/other:3"],
                           capture_output=True, text=True, check=False)  # fmt: skip
        assert p.returncode == 0, p.stderr
        r = node.bk("--source", f"ocifile:{tmp_path / 'copy'}:2")
        assert r.returncode == 0, r.stderr
        assert "result: upgraded (2, signed by CN=release good)" in r.stdout
        r = node.bk("--source", f"oci:{reg.host}/bk/other:3")
        assert r.returncode == 0, r.stderr
        assert "result: upgraded (3, signed by CN=release good)" in r.stdout


def test_after_a_fallback_the_next_update_replaces_the_bad_active(tmp_path: Path, kit: Kit, node: Node) -> None:
    """Active used its tries (the node fell back and runs passive): the update replaces the bad active and
    keeps the running passive byte for byte; no entry is deleted by hand on the read-only /efi."""
    linux = node.esp / "EFI/Linux"
    (linux / "active+3.efi").rename(linux / "active+0-3.efi")
    passive = (linux / "passive+3.efi").read_bytes()
    _push(kit, f"ocifile:{tmp_path / 'layout'}:3", "v3")
    r = node.bk("--source", f"ocifile:{tmp_path / 'layout'}:3")
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in linux.iterdir() if p.is_file())
    assert "active+0-3.efi" not in names and "passive+3.efi" in names, names
    active = next(n for n in names if n.startswith("active+"))
    assert (linux / active).read_bytes() == kit.ukis["v3"].read_bytes()
    assert (linux / "passive+3.efi").read_bytes() == passive


def test_a_release_that_failed_here_is_not_installed_again(tmp_path: Path, kit: Kit, node: Node) -> None:
    """After a fallback the running passive is older, so a channel still naming the release that failed
    offers it as newer: refused while it is the bad active byte for byte; --force installs it anyway."""
    linux = node.esp / "EFI/Linux"
    (linux / "active+3.efi").unlink()
    shutil.copy(kit.ukis["v2"], linux / "active+0-3.efi")  # v2 was installed and used its tries
    _push(kit, f"ocifile:{tmp_path / 'layout'}:stable", "v2")
    before = tree(node.esp)
    r = node.bk("--source", f"ocifile:{tmp_path / 'layout'}:stable")
    assert r.returncode == 1, r.stderr
    assert "node-2.efi: this release is the active entry that failed here (EFI/Linux/active+0-3.efi)" in _one_line(r)
    assert tree(node.esp) == before
    r = node.bk("--source", f"ocifile:{tmp_path / 'layout'}:stable", "--force")
    assert r.returncode == 0, r.stderr
    assert any(p.name.startswith("active+3") for p in linux.iterdir())


def test_the_scheduled_update_stays_out_of_recovery(tmp_path: Path, kit: Kit, node: Node) -> None:
    """On a recovery boot (here named by LoaderEntrySelected, as on a node without /run/cos) the timer's
    run does nothing: repair owns that boot (the node scenario saw both download at once)."""
    fake_efivars(node.root / "sys/firmware/efi/efivars", LoaderEntrySelected="recovery.efi")
    _push(kit, f"ocifile:{tmp_path / 'layout'}:stable", "v2")
    before = tree(node.esp)
    r = node.bk("--scheduled", "--source", f"ocifile:{tmp_path / 'layout'}:stable")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("no update: booted recovery (LoaderEntrySelected=recovery.efi)")
    assert tree(node.esp) == before and not node.staging.exists()


def test_the_timer_on_a_node_without_a_source_does_nothing(node: Node) -> None:
    """bootkeeper-update.timer is installed on every node: without update.source its run is not a failed
    unit (a failed unit fails the boot under good_when: no-failed-units)."""
    r = node.bk("--scheduled")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "no update: update.source is not set\n"


def test_a_medium_holding_several_releases_gives_the_channel_s(tmp_path: Path, kit: Kit) -> None:
    """A stick written by ``release push --tag stable`` holds one release under two tags (the version's
    and the channel's) and may hold older ones: repair takes the one update.channel names."""
    from bootkeeper.node.repair import _channel_on_medium
    from bootkeeper.update.source import parse

    stick = tmp_path / "stick"
    _push(kit, f"ocifile:{stick}:0", "v0")
    r = bk("release", "push", kit.ukis["v2"], "--to", f"ocifile:{stick}:2", "--tag", "stable")
    assert r.returncode == 0, r.stderr
    assert str(_channel_on_medium(parse(f"ocifile:{stick}"), "stable")) == f"ocifile:{stick}:stable"
    assert str(_channel_on_medium(parse(f"ocifile:{stick}"), "edge")) == f"ocifile:{stick}"  # not there: as found
    assert str(_channel_on_medium(parse(f"ocifile:{stick}:0"), "stable")) == f"ocifile:{stick}:0"  # tag given


def _hostile_layout(kit: Kit, at: Path, how: str) -> None:
    """A layout of the v2 release (with tools-v2) whose manifest is made hostile: ``title`` names a file
    ``../../x.raw``; ``layers`` lists 10,000 layers; ``huge`` is a manifest over the 4 MiB any origin may
    hand over (padded with an annotation)."""
    from bootkeeper.update import layout, release

    built = release.build([kit.ukis["v2"], kit.tools_v2], "2")
    doc = json.loads(built.manifest)
    if how == "title":
        doc["layers"][1]["annotations"][release.TITLE] = "../../x.raw"
    elif how == "layers":
        doc["layers"] = [dict(doc["layers"][1], annotations={release.TITLE: f"e{i}.raw"}) for i in range(10_000)]
    else:
        doc["annotations"]["pad"] = "x" * (5 << 20)
    layout.write(at, "2", release.Built(built.config, json.dumps(doc).encode(), built.blobs))


@pytest.mark.parametrize(
    ("how", "why"),
    [
        ("title", "layers[1]: file name '../../x.raw' is not a plain file name"),
        ("layers", "10000 layers, more than the 256 a release may have"),
        ("huge", "bytes, more than 4194304"),
    ],
)
def test_a_hostile_manifest_stops_the_update_in_one_line(
    tmp_path: Path, kit: Kit, node: Node, how: str, why: str
) -> None:
    _hostile_layout(kit, tmp_path / "layout", how)
    before = tree(node.esp)
    r = node.bk("--source", f"ocifile:{tmp_path / 'layout'}:2")
    assert r.returncode == 4, r.stderr
    assert why in _one_line(r)
    assert tree(node.esp) == before
    assert not (tmp_path / "x.raw").exists() and not (node.root / "x.raw").exists()
    assert bk("update", "--root", node.root, "--config", node.config, "--apply-downloaded").returncode == 3


def test_a_hostile_registry_stops_the_update_in_one_line(tmp_path: Path, kit: Kit, node: Node) -> None:
    """Through the verb, with the node's config: a registry answering one byte a second ends at
    update.deadline (not a hang), and a redirect to another host is refused; the ESP stays as it was."""
    import time

    from test_oci import head, hostile, trickle

    node.config.write_text(node.config.read_text() + "update:\n  deadline: 2s\n  timeout: 3s\n")
    before = tree(node.esp)
    with hostile(trickle) as (host, _):
        t0 = time.monotonic()
        r = node.bk("--source", f"oci:{host}/bk/node:2")
        assert time.monotonic() - t0 < 20
    assert r.returncode == 7, r.stderr
    assert "manifest 2: the deadline of 2 s passed (update.deadline)" in _one_line(r)
    with hostile(lambda h: head(h, 307, Location="http://127.0.0.2:9/x", Content_Length="0")) as (host, _):
        r = node.bk("--source", f"oci:{host}/bk/node:2")
    assert r.returncode == 7, r.stderr
    assert "redirect to 'http://127.0.0.2:9/x' refused" in _one_line(r)
    assert tree(node.esp) == before
