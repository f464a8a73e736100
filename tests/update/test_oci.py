"""update/oci.py against Debian's docker-registry (distribution 2.8) on 127.0.0.1, skopeo as the reference
client, and small hostile stdlib servers (docs/updates.md, Registries)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

import registry
from bootkeeper.errors import MalformedError, UnreadableError, WriteError
from bootkeeper.update.oci import Endpoint, Registry, open_registry
from bootkeeper.update.origin import MAX_MANIFEST, Descriptor, Net
from bootkeeper.update.source import parse

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
FAST = Net(timeout=5, deadline=20)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Image:
    """An OCI image: blob files by digest, the layers' descriptors, the manifest's bytes."""

    files: dict[str, Path]
    layers: list[Descriptor]
    config: Descriptor
    raw: bytes

    @property
    def digest(self) -> str:
        return sha(self.raw)


def make_image(folder: Path, sizes: tuple[int, ...] = (300_000, 5_000)) -> Image:
    folder.mkdir(parents=True, exist_ok=True)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    files: dict[str, Path] = {}

    def add(data: bytes, media_type: str) -> Descriptor:
        digest = sha(data)
        path = folder / digest.removeprefix("sha256:")
        path.write_bytes(data)
        files[digest] = path
        return Descriptor(media_type, digest, len(data))

    cfg = add(config.encode(), OCI_CONFIG)
    layers = [add(os.urandom(n), OCI_LAYER) for n in sizes]

    def d(x: Descriptor) -> dict[str, object]:
        return {"mediaType": x.media_type, "digest": x.digest, "size": x.size}

    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": d(cfg), "layers": [d(x) for x in layers]}
    return Image(files, layers, cfg, json.dumps(manifest, indent=1).encode())


def push(reg: Registry, img: Image, tag: str) -> str:
    for digest, path in img.files.items():
        reg.push_blob(path, digest, path.stat().st_size)
    return reg.push_manifest(tag, img.raw, OCI_MANIFEST)


def pull_all(reg: Registry, img: Image, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for desc in [img.config, *img.layers]:
        reg.blob(desc, dest / desc.digest.removeprefix("sha256:"))
        assert (dest / desc.digest.removeprefix("sha256:")).read_bytes() == img.files[desc.digest].read_bytes()


def skopeo(*args: str) -> str:
    done = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- against the real registry ---------------------------------------------------------------------


def test_push_then_pull_and_skopeo_sees_the_same(tmp_path: Path) -> None:
    img = make_image(tmp_path / "img")
    with registry.serve(tmp_path / "reg") as reg:
        client = Registry(reg.host, "os/node", FAST)
        assert client.where == f"oci:{reg.host}/os/node"
        assert push(client, img, "v1") == img.digest
        push(client, img, "v1")  # again: the blobs are there (HEAD), the tag is rewritten

        got = client.manifest("v1")
        assert (got.raw, got.media_type, got.digest) == (img.raw, OCI_MANIFEST, img.digest)
        assert client.manifest(img.digest).raw == img.raw
        pull_all(client, img, tmp_path / "pulled")

        ref = f"docker://{reg.host}/os/node:v1"
        assert skopeo("inspect", "--tls-verify=false", "--raw", ref).encode() == img.raw
        assert json.loads(skopeo("inspect", "--tls-verify=false", ref))["Digest"] == img.digest
        skopeo("copy", "--src-tls-verify=false", ref, f"dir:{tmp_path / 'skopeo'}")
        for digest, path in img.files.items():
            assert (tmp_path / "skopeo" / digest.removeprefix("sha256:")).read_bytes() == path.read_bytes()


def test_pulls_what_skopeo_pushed(tmp_path: Path) -> None:
    img = make_image(tmp_path / "img", (70_000,))
    layout = tmp_path / "layout"
    (layout / "blobs/sha256").mkdir(parents=True)
    for digest, path in img.files.items():
        (layout / "blobs/sha256" / digest.removeprefix("sha256:")).write_bytes(path.read_bytes())
    (layout / "blobs/sha256" / img.digest.removeprefix("sha256:")).write_bytes(img.raw)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": img.digest,
                "size": len(img.raw),
                "annotations": {"org.opencontainers.image.ref.name": "v7"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    with registry.serve(tmp_path / "reg") as reg:
        skopeo(
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            f"oci:{layout}:v7",
            f"docker://{reg.host}/os/other:v7",
        )
        client = Registry(reg.host, "os/other", FAST)
        got = client.manifest("v7")
        ref = f"docker://{reg.host}/os/other:v7"
        assert got.raw == skopeo("inspect", "--tls-verify=false", "--raw", ref).encode()
        assert got.digest == json.loads(skopeo("inspect", "--tls-verify=false", ref))["Digest"]
        manifest = json.loads(got.raw)
        assert [x["digest"] for x in manifest["layers"]] == [x.digest for x in img.layers]
        pull_all(client, img, tmp_path / "pulled")


def test_an_absent_manifest_and_blob_are_unreadable(tmp_path: Path) -> None:
    with registry.serve(tmp_path / "reg") as reg:
        client = Registry(reg.host, "os/node", FAST)
        with pytest.raises(UnreadableError) as e:
            client.manifest("v9")
        assert str(e.value) == f"oci:{reg.host}/os/node: manifest v9: 404 Not Found (MANIFEST_UNKNOWN)"
        missing = Descriptor(OCI_LAYER, sha(b"nothing"), 7)
        with pytest.raises(UnreadableError, match=r"blob sha256:[0-9a-f]{64}: 404 Not Found"):
            client.blob(missing, tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_basic_auth(tmp_path: Path) -> None:
    img = make_image(tmp_path / "img", (1000,))
    with registry.serve(tmp_path / "reg", users={"alice": "s3cret-pw"}) as reg:
        good = registry.auth_file(tmp_path / "good.json", reg.host, "alice", "s3cret-pw")
        client = Registry(reg.host, "os/node", Net(auth_file=good, timeout=5, deadline=20))
        push(client, img, "v1")
        assert client.manifest("v1").digest == img.digest
        pull_all(client, img, tmp_path / "pulled")

        bad = registry.auth_file(tmp_path / "bad.json", reg.host, "alice", "wrong-pw-123")
        with pytest.raises(UnreadableError) as e:
            Registry(reg.host, "os/node", Net(auth_file=bad, timeout=5, deadline=20)).manifest("v1")
        message = str(e.value)
        assert message.startswith(f"oci:{reg.host}/os/node: ")
        assert message == f"oci:{reg.host}/os/node: manifest v1: 401 Unauthorized (credentials refused)"
        assert "\n" not in message and "wrong-pw-123" not in message and "alice" not in message

        with pytest.raises(UnreadableError, match=r"401 Unauthorized \(no credentials for it in update\.auth_file\)"):
            Registry(reg.host, "os/node", FAST).manifest("v1")


def test_bearer_tokens(tmp_path: Path) -> None:
    img = make_image(tmp_path / "img", (2000,))
    token = registry.TokenServer(tmp_path / "token", {"bob": "hunter2-pw"}, identity="refresh-me")
    with token.running(), registry.serve(tmp_path / "reg", token=token) as reg:
        creds = registry.auth_file(tmp_path / "auth.json", reg.host, "bob", "hunter2-pw")
        client = Registry(reg.host, "os/node", Net(auth_file=creds, timeout=5, deadline=20))
        push(client, img, "v1")
        assert client.manifest("v1").digest == img.digest
        pull_all(client, img, tmp_path / "pulled")
        assert token.issued >= 2  # pull, then pull+push scopes

        ident = registry.auth_file(tmp_path / "ident.json", reg.host, identitytoken="refresh-me")
        assert Registry(reg.host, "os/node", Net(auth_file=ident)).manifest("v1").digest == img.digest

        bad = registry.auth_file(tmp_path / "bad.json", reg.host, "bob", "nope-nope")
        with pytest.raises(UnreadableError) as e:
            Registry(reg.host, "os/node", Net(auth_file=bad, timeout=5, deadline=20)).manifest("v1")
        assert (
            str(e.value)
            == f"oci:{reg.host}/os/node: manifest v1: the token server at 127.0.0.1 answered 401 Unauthorized"
        )
        assert "nope-nope" not in str(e.value) and token.refused == 1


def test_tls_with_and_without_the_ca(tmp_path: Path) -> None:
    img = make_image(tmp_path / "img", (4000,))
    with registry.serve(tmp_path / "reg", tls=True) as reg:
        assert reg.tls is not None
        client = Registry(reg.host, "os/node", Net(ca_file=reg.tls.ca, timeout=5, deadline=20))
        push(client, img, "v1")
        assert client.manifest("v1").raw == img.raw
        pull_all(client, img, tmp_path / "pulled")
        # loopback without a ca_file speaks HTTP to a TLS port; a wrong CA bundle is refused on the certificate
        other = registry.make_tls(tmp_path / "other")
        with pytest.raises(UnreadableError) as e:
            Registry(reg.host, "os/node", Net(ca_file=other.ca, timeout=5, deadline=20)).manifest("v1")
        assert str(e.value).startswith(f"oci:{reg.host}/os/node: manifest v1: TLS: certificate refused")
        system = Path("/etc/ssl/certs/ca-certificates.crt")
        with pytest.raises(UnreadableError, match="manifest v1: TLS: certificate refused"):
            Registry(reg.host, "os/node", Net(ca_file=system, timeout=5, deadline=20)).manifest("v1")
        with pytest.raises(UnreadableError, match="manifest v1: "):
            Registry(reg.host, "os/node", FAST).manifest("v1")  # plain HTTP to a TLS port: no answer it reads


def test_resume_completes_a_truncated_blob(tmp_path: Path) -> None:
    img = make_image(tmp_path / "img", (600_000,))
    layer = img.layers[0]
    data = img.files[layer.digest].read_bytes()
    with registry.serve(tmp_path / "reg") as reg:
        client = Registry(reg.host, "os/node", FAST)
        push(client, img, "v1")
        dest = tmp_path / "layer"
        dest.write_bytes(data[: len(data) // 2])
        seen: list[int] = []
        client.blob(layer, dest, lambda done, total: seen.append(done))
        assert dest.read_bytes() == data
        assert seen[0] > len(data) // 2  # the first bytes written came after the half already there
        # a half of other bytes: the Range request completes it, the digest refuses it, nothing is left
        dest.write_bytes(os.urandom(len(data) // 2))
        with pytest.raises(MalformedError, match=f"blob {layer.digest}: the bytes served hash to sha256:"):
            client.blob(layer, dest)
        assert not dest.exists()


def test_a_tampered_blob_is_refused_and_removed(tmp_path: Path) -> None:
    img = make_image(tmp_path / "img", (50_000,))
    layer = img.layers[0]
    with registry.serve(tmp_path / "reg") as reg:
        client = Registry(reg.host, "os/node", FAST)
        push(client, img, "v1")
        stored = reg.blob_data(layer.digest)
        raw = bytearray(stored.read_bytes())
        raw[100] ^= 0xFF
        stored.write_bytes(bytes(raw))
        dest = tmp_path / "layer"
        with pytest.raises(MalformedError) as e:
            client.blob(layer, dest)
        assert str(e.value) == (
            f"oci:{reg.host}/os/node: blob {layer.digest}: the bytes served hash to {sha(bytes(raw))}"
        )
        assert not dest.exists()


def test_mirrors_dead_or_empty_are_skipped(tmp_path: Path) -> None:
    img = make_image(tmp_path / "img", (3000,))
    dead = f"127.0.0.1:{registry.free_port()}"
    with registry.serve(tmp_path / "empty") as empty, registry.serve(tmp_path / "reg") as reg:
        push(Registry(reg.host, "os/node", FAST), img, "v1")
        net = Net(mirrors=(dead, empty.host), timeout=5, deadline=20)
        client = open_registry(parse(f"oci:{reg.host}/os/node:v1"), net)
        assert client.manifest("v1").digest == img.digest
        pull_all(client, img, tmp_path / "pulled")
        with pytest.raises(UnreadableError) as e:
            client.manifest("v2")
        message = str(e.value)
        assert message.startswith(f"oci:{reg.host}/os/node: manifest v2: 404 Not Found")
        assert f"mirrors skipped: oci:{dead}/os/node: manifest v1: unreachable: connection refused" in message
        assert f"oci:{empty.host}/os/node: manifest v2: 404 Not Found" in message
        # a mirror's content is checked like the registry's
        push(Registry(empty.host, "os/node", FAST), img, "v1")
        layer = img.layers[0]
        stored = empty.blob_data(layer.digest)
        stored.write_bytes(b"x" * layer.size)
        client.blob(layer, tmp_path / "again")
        assert (tmp_path / "again").read_bytes() == img.files[layer.digest].read_bytes()


# -- hostile servers -------------------------------------------------------------------------------

Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


@contextmanager
def hostile(handle: Handler, addr: str = "127.0.0.1") -> Iterator[tuple[str, list[str]]]:
    """A stdlib server on ``addr`` whose every GET runs ``handle``; yields its host:port and the requests
    it saw (method, path, Range)."""
    seen: list[str] = []

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(f"GET {self.path} {self.headers.get('Range', '')}".strip())
            with suppress(BrokenPipeError, ConnectionResetError):
                handle(self)

    httpd = http.server.ThreadingHTTPServer((addr, 0), H)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{addr}:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def head(h: http.server.BaseHTTPRequestHandler, status: int, **headers: str) -> None:
    h.send_response(status)
    for k, v in headers.items():
        h.send_header(k.replace("_", "-"), v)
    h.end_headers()


def test_a_huge_manifest_is_refused_early(tmp_path: Path) -> None:
    sent = [0]

    def declared(h: http.server.BaseHTTPRequestHandler) -> None:
        head(h, 200, Content_Type=OCI_MANIFEST, Content_Length=str(100 << 20))
        for _ in range(100):
            h.wfile.write(b" " * (1 << 20))
            sent[0] += 1 << 20

    def undeclared(h: http.server.BaseHTTPRequestHandler) -> None:
        head(h, 200, Content_Type=OCI_MANIFEST)
        for _ in range(100):
            h.wfile.write(b" " * (1 << 20))
            sent[0] += 1 << 20

    with hostile(declared) as (host, _):
        with pytest.raises(MalformedError) as e:
            Registry(host, "os/node", FAST).manifest("v1")
        assert str(e.value) == f"oci:{host}/os/node: manifest v1: {100 << 20} bytes, more than {MAX_MANIFEST}"
    with hostile(undeclared) as (host, _):
        t0 = time.monotonic()
        with pytest.raises(MalformedError, match=f"manifest v1: more than {MAX_MANIFEST} bytes"):
            Registry(host, "os/node", FAST).manifest("v1")
        assert time.monotonic() - t0 < 5
    assert sent[0] < 100 << 20  # the client hung up long before the server was done


def trickle(h: http.server.BaseHTTPRequestHandler) -> None:
    head(h, 200, Content_Type=OCI_MANIFEST, Content_Length="1000")
    for _ in range(30):
        h.wfile.write(b"{")
        h.wfile.flush()
        time.sleep(1)


def test_one_byte_a_second_is_a_deadline(tmp_path: Path) -> None:
    net = Net(timeout=3, deadline=2)
    with hostile(trickle) as (host, _):
        t0 = time.monotonic()
        with pytest.raises(UnreadableError) as e:
            Registry(host, "os/node", net).manifest("v1")
        assert time.monotonic() - t0 < 10
        assert str(e.value) == f"oci:{host}/os/node: manifest v1: the deadline of 2 s passed (update.deadline)"
        t0 = time.monotonic()
        with pytest.raises(UnreadableError, match="the deadline of 2 s passed"):
            Registry(host, "os/node", net).blob(Descriptor(OCI_LAYER, sha(b"x" * 1000), 1000), tmp_path / "b")
        assert time.monotonic() - t0 < 10


def test_a_redirect_to_another_host_is_refused(tmp_path: Path) -> None:
    with hostile(lambda h: head(h, 200, Content_Length="0"), "127.0.0.2") as (other, other_seen):
        other_port = other.rpartition(":")[2]

        def away(h: http.server.BaseHTTPRequestHandler) -> None:
            head(h, 307, Location=f"http://127.0.0.2:{other_port}/x", Content_Length="0")

        with hostile(away) as (host, _):
            client = Registry(host, "os/node", FAST)
            with pytest.raises(UnreadableError) as e:
                client.manifest("v1")
            assert str(e.value) == (
                f"oci:{host}/os/node: manifest v1: redirect to 'http://127.0.0.2:{other_port}/x' refused: not {host}"
            )
    assert other_seen == []


def test_a_same_host_redirect_is_followed(tmp_path: Path) -> None:
    data = b"layer bytes" * 100

    def here(h: http.server.BaseHTTPRequestHandler) -> None:
        if h.path == "/store/blob":
            head(h, 200, Content_Length=str(len(data)))
            h.wfile.write(data)
        else:
            head(h, 302, Location="/store/blob", Content_Length="0")

    with hostile(here) as (host, seen):
        desc = Descriptor(OCI_LAYER, sha(data), len(data))
        Registry(host, "os/node", FAST).blob(desc, tmp_path / "b")
        assert (tmp_path / "b").read_bytes() == data
        assert seen == [f"GET /v2/os/node/blobs/{desc.digest}", "GET /store/blob"]


def test_a_200_to_a_range_starts_over(tmp_path: Path) -> None:
    data = os.urandom(40_000)

    def whole(h: http.server.BaseHTTPRequestHandler) -> None:
        head(h, 200, Content_Length=str(len(data)))
        h.wfile.write(data)

    with hostile(whole) as (host, seen):
        dest = tmp_path / "b"
        dest.write_bytes(os.urandom(10_000))  # not the blob's first bytes: only a restart gives the digest
        Registry(host, "os/node", FAST).blob(Descriptor(OCI_LAYER, sha(data), len(data)), dest)
        assert dest.read_bytes() == data
        assert seen[0].endswith("bytes=10000-")


def test_content_length_lies(tmp_path: Path) -> None:
    data = os.urandom(20_000)
    desc = Descriptor(OCI_LAYER, sha(data), len(data))

    def too_long(h: http.server.BaseHTTPRequestHandler) -> None:
        head(h, 200, Content_Length=str(len(data) + 1))
        h.wfile.write(data + b"!")

    def cut(h: http.server.BaseHTTPRequestHandler) -> None:
        head(h, 200, Content_Length=str(len(data)))
        h.wfile.write(data[:5000])

    def more_than_said(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.end_headers()
        h.wfile.write(data + b"extra")

    dest = tmp_path / "b"
    with hostile(too_long) as (host, _):
        with pytest.raises(MalformedError) as e:
            Registry(host, "os/node", FAST).blob(desc, dest)
        assert str(e.value) == f"oci:{host}/os/node: blob {desc.digest}: serves 20001 bytes, the manifest says 20000"
        assert not dest.exists()
    with hostile(cut) as (host, _):
        with pytest.raises(UnreadableError, match="the connection ended after 5000 of 20000 bytes"):
            Registry(host, "os/node", FAST).blob(desc, dest)
        assert dest.read_bytes() == data[:5000]  # kept: the next run resumes it
    dest.unlink()
    with hostile(more_than_said) as (host, _):
        with pytest.raises(MalformedError, match="serves more than the 20000 bytes the manifest says"):
            Registry(host, "os/node", FAST).blob(desc, dest)
        assert not dest.exists()


def test_a_digest_reference_is_checked_against_the_bytes(tmp_path: Path) -> None:
    raw = b'{"schemaVersion": 2}'
    asked = sha(b"something else")

    def serve(h: http.server.BaseHTTPRequestHandler) -> None:
        head(h, 200, Content_Type=OCI_MANIFEST, Content_Length=str(len(raw)), Docker_Content_Digest=asked)
        h.wfile.write(raw)

    with hostile(serve) as (host, _):
        with pytest.raises(MalformedError) as e:
            Registry(host, "os/node", FAST).manifest(asked)
        assert str(e.value) == f"oci:{host}/os/node: manifest {asked}: the bytes served hash to {sha(raw)}"


def test_a_plain_http_token_realm_off_loopback_is_refused(tmp_path: Path) -> None:
    def challenge(h: http.server.BaseHTTPRequestHandler) -> None:
        realm = 'Bearer realm="http://registry.example/token",service="s",scope="repository:os/node:pull"'
        head(h, 401, WWW_Authenticate=realm, Content_Length="0")

    with hostile(challenge) as (host, _):
        with pytest.raises(UnreadableError) as e:
            Registry(host, "os/node", FAST).manifest("v1")
        assert "token realm 'http://registry.example/token' refused: not https (nor http on loopback)" in str(e.value)


def test_limit_rate_slows_a_blob(tmp_path: Path) -> None:
    data = os.urandom(64 * 1024)

    def whole(h: http.server.BaseHTTPRequestHandler) -> None:
        head(h, 200, Content_Length=str(len(data)))
        h.wfile.write(data)

    with hostile(whole) as (host, _):
        t0 = time.monotonic()
        Registry(host, "os/node", Net(limit_rate=64 * 1024, timeout=5, deadline=20)).blob(
            Descriptor(OCI_LAYER, sha(data), len(data)), tmp_path / "b"
        )
        assert 0.6 < time.monotonic() - t0 < 5


def test_the_scheme_rule() -> None:
    assert Endpoint.of("127.0.0.1:5000", None) == Endpoint(False, "127.0.0.1", 5000)
    assert Endpoint.of("127.9.9.9", None) == Endpoint(False, "127.9.9.9", 80)
    assert Endpoint.of("localhost:5000", None) == Endpoint(False, "localhost", 5000)
    assert Endpoint.of("[::1]:5000", None) == Endpoint(False, "::1", 5000)
    assert Endpoint.of("127.0.0.1:5000", Path("/ca.pem")) == Endpoint(True, "127.0.0.1", 5000)
    assert Endpoint.of("registry.example", None) == Endpoint(True, "registry.example", 443)
    assert Endpoint.of("10.0.0.1:5000", None) == Endpoint(True, "10.0.0.1", 5000)
    assert Endpoint.of("128.0.0.1:80", None).https


def test_a_local_write_failure_is_a_write_error(tmp_path: Path) -> None:
    data = os.urandom(1000)

    def whole(h: http.server.BaseHTTPRequestHandler) -> None:
        head(h, 200, Content_Length=str(len(data)))
        h.wfile.write(data)

    dest = tmp_path / "no-such-folder" / "b"
    with hostile(whole) as (host, _):
        with pytest.raises(WriteError) as e:
            Registry(host, "os/node", FAST).blob(Descriptor(OCI_LAYER, sha(data), len(data)), dest)
        assert str(e.value) == f"{dest}: No such file or directory"
