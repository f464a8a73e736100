"""The node tests' registry: Debian's docker-registry (the CNCF distribution registry) on the host's
loopback with TLS from a test CA, which the guest reaches through QEMU's guestfwd (nodevm.NetSpec).

The CA and the server certificate are made once by openssl and kept under ``.cache/node/registry-tls``
(the guest trusts the CA through the scenario's ``update.ca_file``, a copy on its ESP); the server
certificate names both addresses it is reached by: ``IP:127.0.0.1`` (the host pushes there) and
``IP:10.0.2.100`` (the guest's view, nodevm.GUEST_REGISTRY). Each registry gets its own storage and config
in a folder of the test, a free port, and is stopped when the block ends, however it ends.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nodevm

REGISTRY_BIN = "/usr/bin/docker-registry"
GUEST_HOST = nodevm.GUEST_REGISTRY.split(":")[0]


@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path


def tls() -> Tls:
    """The test CA and the registry's certificate (SAN IP:127.0.0.1 and IP:10.0.2.100), made once."""
    d = nodevm.CACHE / "registry-tls"
    t = Tls(d / "ca.pem", d / "server.pem", d / "server.key")
    if t.key.exists() and t.cert.exists() and t.ca.exists():
        return t
    d.mkdir(parents=True, exist_ok=True)
    ca_key = d / "ca.key"
    run = nodevm._run
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(ca_key), "-out", str(t.ca), "-days", "3650", "-subj", "/CN=bootkeeper node test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])  # fmt: skip
    csr = d / "server.csr"
    run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(t.key), "-out", str(csr), "-subj", "/CN=bootkeeper node test registry"])  # fmt: skip
    ext = d / "server.ext"
    ext.write_text(
        f"subjectAltName=IP:127.0.0.1,IP:{GUEST_HOST}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
    )
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(t.ca), "-CAkey", str(ca_key), "-CAcreateserial",
         "-out", str(t.cert), "-days", "3650", "-extfile", str(ext)])  # fmt: skip
    csr.unlink()
    return t


@dataclass(frozen=True)
class Registry:
    port: int
    ca: Path
    folder: Path

    @property
    def host(self) -> str:
        """As the host reaches it (``bootkeeper release push --to oci:HOST/...``)."""
        return f"127.0.0.1:{self.port}"

    @property
    def net(self) -> nodevm.NetSpec:
        """The guest's NIC for this registry (nodevm.boot(net=...))."""
        return nodevm.NetSpec(self.port)

    def source(self, repo: str) -> str:
        """The source a node names it by (``update.source``): the guest's address of it."""
        return f"oci:{nodevm.GUEST_REGISTRY}/{repo}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _up(url: str, ca: Path) -> bool:
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
            return int(r.status) == 200
    except (OSError, urllib.error.URLError):
        return False


@contextlib.contextmanager
def registry(folder: Path) -> Iterator[Registry]:
    """docker-registry ``serve`` with its config and storage in ``folder``, TLS from :func:`tls`, on a
    free port of 127.0.0.1; yields once ``/v2/`` answers 200, stopped when the block ends."""
    t = tls()
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "registry.log"
    for attempt in range(3):  # the free port may be taken between the probe and the registry's bind
        port = _free_port()
        config = folder / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {folder / 'storage'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {t.cert}\n    key: {t.key}\n"
        )
        with log.open("ab") as out:
            p = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 20
            while p.poll() is None and time.monotonic() < deadline and not _up(f"https://127.0.0.1:{port}/v2/", t.ca):
                time.sleep(0.1)
            if p.poll() is None and _up(f"https://127.0.0.1:{port}/v2/", t.ca):
                yield Registry(port, t.ca, folder)
                return
            if attempt == 2:
                raise RuntimeError(f"docker-registry did not answer on 127.0.0.1:{port}; see {log}")
        finally:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
            p.wait()
