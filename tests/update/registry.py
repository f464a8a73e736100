"""Debian's docker-registry (distribution 2.8) on 127.0.0.1 for the update tests: a config of its own in a
temporary folder, a free port, and a stop on every way out. Variants: htpasswd basic auth, TLS with a test
CA made by openssl, and bearer tokens from a small token server (distribution ``registry/auth/token``:
an RS256 JWT whose ``x5c`` certificate is the registry's ``rootcertbundle``).

    with registry.serve(tmp_path) as reg:            # reg.host == "127.0.0.1:PORT"
        ...
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DOCKER_REGISTRY = "/usr/bin/docker-registry"
START_TIMEOUT = 15.0


def free_port(addr: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Tls:
    """A test CA and a server certificate it signed for IP:127.0.0.1 and localhost."""

    ca: Path
    cert: Path
    key: Path


def make_tls(folder: Path) -> Tls:
    """openssl: a CA, and a server key and certificate (SAN IP:127.0.0.1, DNS:localhost) signed by it."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))

    def openssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        ca_key,
        "-out",
        ca,
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
    )
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-out",
        cert,
        "-days",
        "2",
        "-extfile",
        ext,
    )
    return Tls(ca, cert, key)


def bcrypt_line(user: str, password: str) -> str:
    """An htpasswd line with a bcrypt hash (the only kind distribution's htpasswd accepts): Python's crypt
    on libxcrypt, else apache2-utils' htpasswd."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt

        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
        if hashed and hashed.startswith("$2"):
            return f"{user}:{hashed}"
    except ImportError:
        pass
    if shutil.which("htpasswd") is None:
        pytest.fail("no bcrypt: neither python's crypt with libxcrypt nor htpasswd (apache2-utils)")
    out = subprocess.run(["htpasswd", "-Bbn", user, password], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def auth_file(path: Path, host: str, user: str | None = None, password: str | None = None, **extra: str) -> Path:
    """A containers-auth.json(5) file with one entry for ``host``."""
    entry = dict(extra)
    if user is not None:
        entry["auth"] = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: entry}}))
    return path


class TokenServer:
    """A token issuer on 127.0.0.1 (distribution docs/spec/auth/token.md): GET ?service&scope with basic
    auth, or POST an identity token (oauth.md), answers ``{"token": JWT}`` granting the scope asked for.
    ``issued`` counts tokens; ``users`` maps user -> password, ``identity`` is the refresh token accepted."""

    ISSUER = "bootkeeper-test-issuer"
    SERVICE = "bootkeeper-test-registry"

    def __init__(self, folder: Path, users: dict[str, str], identity: str | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.key_path, self.cert = folder / "token.key", folder / "token.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(self.key_path),
                "-out",
                str(self.cert),
                "-days",
                "2",
                "-subj",
                "/CN=token",
            ],
            check=True,
            capture_output=True,
        )
        self.users, self.identity = users, identity
        self.issued = 0
        self.refused = 0
        self.port = 0
        self._httpd: http.server.ThreadingHTTPServer | None = None

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def jwt(self, scope: str) -> str:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        der = cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        access = []
        for item in scope.split(" ") if scope else []:
            kind, _, rest = item.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": self.ISSUER,
            "sub": "test",
            "aud": self.SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": hashlib.sha256(f"{now}{self.issued}".encode()).hexdigest()[:16],
            "access": access,
        }

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        signature = key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing}.{b64(signature)}"

    @contextmanager
    def running(self) -> Iterator[TokenServer]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def answer(self, ok: bool, scope: str) -> None:
                if not ok:
                    server.refused += 1
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                server.issued += 1
                body = json.dumps({"token": server.jwt(scope), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlsplit

                query = parse_qs(urlsplit(self.path).query)
                given = self.headers.get("Authorization", "")
                ok = not server.users or any(
                    given == "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode() for u, p in server.users.items()
                )
                self.answer(ok, " ".join(query.get("scope", [])))

            def do_POST(self) -> None:
                from urllib.parse import parse_qs

                length = min(int(self.headers.get("Content-Length", "0")), 65536)
                form = parse_qs(self.rfile.read(length).decode())
                ok = server.identity is not None and form.get("refresh_token") == [server.identity]
                self.answer(ok, " ".join(form.get("scope", [])))

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(5)


@dataclass
class Running:
    """A started registry: ``host`` (127.0.0.1:PORT) as sources name it, its storage folder, its log."""

    host: str
    root: Path
    log: Path
    tls: Tls | None = None
    token: TokenServer | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def blob_data(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes (distribution registry/storage/paths.go)."""
        hexa = digest.removeprefix("sha256:")
        return self.root / "docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data"


def _config(
    folder: Path, port: int, htpasswd: Path | None, tls: Tls | None, token: TokenServer | None
) -> tuple[Path, Path]:
    root = folder / "storage"
    root.mkdir(parents=True, exist_ok=True)
    lines = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {root}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    if tls:
        lines += ["  tls:", f"    certificate: {tls.cert}", f"    key: {tls.key}"]
    if htpasswd:
        lines += ["auth:", "  htpasswd:", "    realm: bootkeeper-test", f"    path: {htpasswd}"]
    if token:
        lines += [
            "auth:",
            "  token:",
            f"    realm: {token.realm}",
            f"    service: {token.SERVICE}",
            f"    issuer: {token.ISSUER}",
            f"    rootcertbundle: {token.cert}",
        ]
    config = folder / "config.yml"
    config.write_text("\n".join(lines) + "\n")
    return config, root


def _wait(proc: subprocess.Popen[bytes], port: int, tls: Tls | None, log: Path) -> None:
    end = time.monotonic() + START_TIMEOUT
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"docker-registry exited {proc.returncode}: {log.read_text()[-2000:]}")
        conn: http.client.HTTPConnection
        if tls:
            ctx = ssl.create_default_context(cafile=str(tls.ca))
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=ctx)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/v2/")
            if conn.getresponse().status in (200, 401):
                return
        except OSError:
            time.sleep(0.05)
        finally:
            conn.close()
    pytest.fail(f"docker-registry did not answer /v2/ within {START_TIMEOUT} s: {log.read_text()[-2000:]}")


@contextmanager
def serve(
    folder: Path,
    *,
    users: dict[str, str] | None = None,
    tls: bool = False,
    token: TokenServer | None = None,
) -> Iterator[Running]:
    """A docker-registry on 127.0.0.1 (storage and config under ``folder``), stopped on the way out:
    ``users`` turns on htpasswd basic auth, ``tls`` HTTPS with a test CA, ``token`` bearer tokens
    (``token`` must be running: its realm goes into the config)."""
    if not Path(DOCKER_REGISTRY).exists():
        pytest.fail("docker-registry missing: scripts/setup-test-deps.sh installs it")
    folder.mkdir(parents=True, exist_ok=True)
    htpasswd = None
    if users:
        htpasswd = folder / "htpasswd"
        htpasswd.write_text("".join(bcrypt_line(u, p) + "\n" for u, p in users.items()))
    certs = make_tls(folder / "tls") if tls else None
    port = free_port()
    config, root = _config(folder, port, htpasswd, certs, token)
    log = folder / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [DOCKER_REGISTRY, "serve", str(config)], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait(proc, port, certs, log)
        yield Running(f"127.0.0.1:{port}", root, log, certs, token)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
