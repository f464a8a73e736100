"""A client of the OCI distribution protocol (opencontainers/distribution-spec ``spec.md``: pull, push), on
``http.client`` and ``ssl`` only: a registry as an :class:`~bootkeeper.update.origin.Origin`.

The rules it keeps (docs/updates.md, Registries): HTTPS with the system's CAs or ``update.ca_file`` as the
only bundle, plain HTTP only to a loopback registry without a ``ca_file``; basic auth and the bearer-token
flow (distribution ``docs/spec/auth/token.md``) from a containers-auth.json(5) file; redirects only to the
same scheme, host and port; every socket operation bounded by ``update.timeout`` and each whole call by
``update.deadline``; blobs streamed in chunks, hashed as written, resumed with ``Range``. Nothing a
registry says is trusted beyond the digests; credentials never reach a message."""

from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import json
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TypeVar

from bootkeeper.errors import InputError, MalformedError, UnreadableError, UsageError, WriteError
from bootkeeper.update.origin import MAX_MANIFEST, Descriptor, Fetched, Net, Progress
from bootkeeper.update.source import Kind, Source, parse

ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
CHUNK = 1 << 20  # bytes read or sent at a time: memory stays bounded whatever a blob's size
MAX_REDIRECTS = 5
MAX_TOKEN_REPLY = 64 * 1024  # bytes of a token server's JSON answer
MAX_AUTH_FILE = 1 << 20
_SHA256 = re.compile(r"sha256:[a-f0-9]{64}")
_ERROR_CODE = re.compile(r"[A-Z_]{1,64}")
_PARAM = re.compile(r'([A-Za-z_]+)="([^"]*)"')
_REDIRECTS = {301, 302, 303, 307, 308}
T = TypeVar("T")


class _Deadline(Exception):
    """The whole call's ``update.deadline`` passed (turned into an UnreadableError by the caller)."""


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1: the only registries plain HTTP may reach."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: ``https`` or not, host name (no brackets) and port."""

    https: bool
    host: str
    port: int

    @classmethod
    def of(cls, registry: str, ca_file: Path | None) -> Endpoint:
        """The scheme rule: loopback without a ``ca_file`` speaks HTTP, everything else HTTPS."""
        if registry.startswith("["):
            host, _, rest = registry[1:].partition("]")
            port_text = rest.removeprefix(":")
        else:
            host, _, port_text = registry.partition(":")
        https = ca_file is not None or not is_loopback(host)
        return cls(https, host, int(port_text) if port_text else 443 if https else 80)

    def same_origin(self, url: urllib.parse.SplitResult) -> bool:
        if url.scheme not in ("http", "https") or (url.scheme == "https") != self.https:
            return False
        try:
            port = url.port or (443 if self.https else 80)
        except ValueError:
            return False
        return (url.hostname or "").lower() == self.host.lower() and port == self.port


class _Clock:
    """One call's budget: each socket operation gets ``timeout`` (or what is left), the call ``deadline``."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.end = time.monotonic() + net.deadline

    def left(self) -> float:
        return self.end - time.monotonic()

    def timeout(self) -> float:
        left = self.left()
        if left <= 0:
            raise _Deadline
        return min(self.net.timeout, left)


class Credentials:
    """containers-auth.json(5): ``{"auths": {"HOST[:PORT][/PATH]": {"auth": base64("user:pass")} or
    {"identitytoken": "…"}}}``, looked up for a registry and repository, most specific key first."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._auths: dict[str, dict[str, str]] = {}
        if path is None:
            return
        try:
            with path.open("rb") as f:
                data = f.read(MAX_AUTH_FILE + 1)
        except OSError as e:
            raise UnreadableError(f"{path}: update.auth_file: {e.strerror or e}") from None
        if len(data) > MAX_AUTH_FILE:
            raise MalformedError(f"{path}: update.auth_file: more than {MAX_AUTH_FILE} bytes")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise MalformedError(f"{path}: update.auth_file: not JSON") from None
        auths = doc.get("auths") if isinstance(doc, dict) else None
        if not isinstance(auths, dict):
            raise MalformedError(f"{path}: auths: expected an object of registries (containers-auth.json(5))")
        for key, entry in auths.items():
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise MalformedError(f"{path}: auths.{key!r}: expected an object of strings")
            self._auths[key.removeprefix("https://").removeprefix("http://").rstrip("/")] = entry

    def _entry(self, registry: str, repository: str) -> dict[str, str] | None:
        parts = repository.split("/")
        for n in range(len(parts), -1, -1):
            key = "/".join([registry, *parts[:n]])
            if key in self._auths:
                return self._auths[key]
        return None

    def basic(self, registry: str, repository: str) -> str | None:
        """The ``Authorization: Basic`` value, or None."""
        entry = self._entry(registry, repository)
        if not entry or not entry.get("auth"):
            return None
        try:
            pair = base64.b64decode(entry["auth"], validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            raise MalformedError(f"{self.path}: auths.{registry!r}.auth: not base64 of USER:PASSWORD") from None
        if ":" not in pair:
            raise MalformedError(f"{self.path}: auths.{registry!r}.auth: not base64 of USER:PASSWORD")
        return "Basic " + base64.b64encode(pair.encode()).decode()

    def identity_token(self, registry: str, repository: str) -> str | None:
        entry = self._entry(registry, repository)
        return entry.get("identitytoken") or None if entry else None


def _reason(e: BaseException) -> str:
    """An OSError as a short reason (never a credential: none is in a socket error)."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS: certificate refused: {e.verify_message}"
    if isinstance(e, ssl.SSLError):
        return f"TLS: {e.reason or e}"
    if isinstance(e, TimeoutError):
        return "no byte within update.timeout"
    if isinstance(e, socket.gaierror):
        return "unreachable: name not resolved"
    if isinstance(e, ConnectionRefusedError):
        return "unreachable: connection refused"
    if isinstance(e, http.client.IncompleteRead):
        return "the connection ended early"
    if isinstance(e, http.client.HTTPException):
        return f"not an HTTP answer ({type(e).__name__})"
    if isinstance(e, OSError):
        return f"unreachable: {e.strerror or type(e).__name__}"
    return type(e).__name__


def _status(resp: http.client.HTTPResponse) -> str:
    """``404 Not Found (MANIFEST_UNKNOWN)``: the status and the registry's error code, when it gave one."""
    text = f"{resp.status} {resp.reason}".strip()
    if (resp.getheader("Content-Type") or "").startswith("application/json"):
        try:
            doc = json.loads(resp.read(16 * 1024))
            code = doc["errors"][0]["code"]
            if isinstance(code, str) and _ERROR_CODE.fullmatch(code):
                text += f" ({code})"
        except (ValueError, KeyError, IndexError, TypeError, OSError, http.client.HTTPException):
            pass
    return text[:200] if text.isprintable() else str(resp.status)


class Registry:
    """A repository in a registry (and its mirrors, for pulls): ``where`` is ``oci:REGISTRY/REPO``."""

    def __init__(self, registry: str, repository: str, net: Net, *, mirrors: tuple[str, ...] = ()) -> None:
        parse(f"oci:{registry}/{repository}", "registry")  # the grammar of update/source.py, one home
        for mirror in mirrors:
            parse(f"oci:{mirror}/{repository}", "update.mirrors")
        self.registry = registry
        self.repository = repository
        self.net = net
        self.mirrors = mirrors
        self.where = f"oci:{registry}/{repository}"
        self._creds: Credentials | None = None
        self._auth: dict[str, str] = {}  # host -> Authorization value earned by a challenge
        self._dead: dict[str, str] = {}  # mirror -> why it was skipped (unreachable: not tried again)
        self._ssl: ssl.SSLContext | None = None

    # -- pulls: the Origin protocol ---------------------------------------------------------------

    def manifest(self, reference: str) -> Fetched:
        self._check_reference(reference)
        clock = _Clock(self.net)  # one deadline for the call, mirrors included
        return self._each_host(f"manifest {reference}", lambda host: self._manifest(host, reference, clock))

    def blob(self, desc: Descriptor, dest: Path, progress: Progress | None = None) -> None:
        if not _SHA256.fullmatch(desc.digest) or desc.size < 0:
            raise MalformedError(f"{self.where}: blob {desc.digest!r:.80}: not a sha256: digest with a size")
        clock = _Clock(self.net)
        self._each_host(f"blob {desc.digest}", lambda host: self._blob(host, desc, dest, progress, clock))

    # -- pushes: to the registry itself, never a mirror --------------------------------------------

    def push_blob(self, path: Path, digest: str, size: int) -> None:
        """``path`` (``size`` bytes, ``digest``) into the repository, unless it is there already: HEAD,
        then POST an upload and PUT the file in one request, streamed from disk."""
        if not _SHA256.fullmatch(digest):
            raise UsageError(f"{self.where}: blob {digest!r:.80}: not a sha256: digest")
        what = f"blob {digest}"
        clock = _Clock(self.net)
        with self._guard(self.registry, what):
            with self._request(clock, self.registry, what, "HEAD", f"/v2/{self.repository}/blobs/{digest}") as resp:
                if resp.status == 200:
                    return
            with self._request(clock, self.registry, what, "POST", f"/v2/{self.repository}/blobs/uploads/") as resp:
                if resp.status != 202:
                    self._fail(self.registry, what, f"upload refused: {_status(resp)}")
                location = resp.getheader("Location") or ""
            url = urllib.parse.urlsplit(urllib.parse.urljoin(self._url(self.registry, "/v2/"), location))
            if not location or not self._endpoint(self.registry).same_origin(url):
                self._fail(self.registry, what, f"upload location {location[:120]!r} is not on {self.registry}")
            query = f"{url.query}&" if url.query else ""
            target = f"{url.path}?{query}digest={urllib.parse.quote(digest)}"
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            with self._request(clock, self.registry, what, "PUT", target, headers, body=path) as resp:
                if resp.status != 201:
                    self._fail(self.registry, what, f"upload refused: {_status(resp)}")

    def push_manifest(self, reference: str, raw: bytes, media_type: str) -> str:
        """``raw`` under ``reference`` (a tag or its own digest); returns its digest, computed here."""
        self._check_reference(reference)
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if len(raw) > MAX_MANIFEST:
            raise UsageError(f"{self.where}: manifest {reference}: {len(raw)} bytes, more than {MAX_MANIFEST}")
        if reference.startswith("sha256:") and reference != digest:
            raise UsageError(f"{self.where}: manifest {reference}: the bytes hash to {digest}")
        what = f"manifest {reference}"
        clock = _Clock(self.net)
        headers = {"Content-Type": media_type, "Content-Length": str(len(raw))}
        path = f"/v2/{self.repository}/manifests/{reference}"
        with (
            self._guard(self.registry, what),
            self._request(clock, self.registry, what, "PUT", path, headers, raw) as resp,
        ):
            if resp.status != 201:
                self._fail(self.registry, what, f"push refused: {_status(resp)}")
        return digest

    # -- one host --------------------------------------------------------------------------------

    def _manifest(self, host: str, reference: str, clock: _Clock) -> Fetched:
        what = f"manifest {reference}"
        path = f"/v2/{self.repository}/manifests/{reference}"
        with self._guard(host, what), self._request(clock, host, what, "GET", path, {"Accept": ACCEPT}) as resp:
            if resp.status != 200:
                self._fail(host, what, _status(resp))
            length = resp.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > MAX_MANIFEST:
                raise MalformedError(f"{self._where(host)}: {what}: {length} bytes, more than {MAX_MANIFEST}")
            raw = bytearray()
            while len(raw) <= MAX_MANIFEST:
                chunk = resp.read1(min(CHUNK, MAX_MANIFEST + 1 - len(raw)))
                if not chunk:
                    break
                raw += chunk
                clock.timeout()
            clock.timeout()
            if len(raw) > MAX_MANIFEST:
                raise MalformedError(f"{self._where(host)}: {what}: more than {MAX_MANIFEST} bytes")
            if length is not None and length.isdigit() and int(length) != len(raw):
                self._fail(host, what, f"the connection ended after {len(raw)} of {length} bytes")
            media_type = (resp.getheader("Content-Type") or "").partition(";")[0].strip()
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise MalformedError(f"{self._where(host)}: {what}: the bytes served hash to {digest}")
        return Fetched(bytes(raw), media_type, digest)

    def _blob(self, host: str, desc: Descriptor, dest: Path, progress: Progress | None, clock: _Clock) -> None:
        hasher, have = _hash_prefix(dest, desc.size)
        if have == desc.size and "sha256:" + hasher.hexdigest() == desc.digest:
            return
        if have == desc.size:  # a whole file of other bytes: start over
            hasher, have = hashlib.sha256(), 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            self._fetch_blob(host, desc, dest, progress, clock, hasher, have, headers)
        except MalformedError:
            _remove(dest)
            raise

    def _fetch_blob(
        self,
        host: str,
        desc: Descriptor,
        dest: Path,
        progress: Progress | None,
        clock: _Clock,
        hasher: hashlib._Hash,
        have: int,
        headers: dict[str, str],
    ) -> None:
        what = f"blob {desc.digest}"
        where = self._where(host)
        path = f"/v2/{self.repository}/blobs/{desc.digest}"
        with self._guard(host, what), self._request(clock, host, what, "GET", path, headers) as resp:
            if resp.status == 200:
                hasher, have = hashlib.sha256(), 0  # the registry ignored the Range: start over
            elif resp.status == 206 and have:
                start = re.match(r"bytes (\d+)-", resp.getheader("Content-Range") or "")
                if not start or int(start.group(1)) != have:
                    raise MalformedError(f"{where}: {what}: answered a range from byte {have} with another range")
            else:
                self._fail(host, what, _status(resp))
            length = resp.getheader("Content-Length")
            if length is not None and length.isdigit() and have + int(length) > desc.size:
                raise MalformedError(
                    f"{where}: {what}: serves {have + int(length)} bytes, the manifest says {desc.size}"
                )
            with _Sink(dest, have) as out:
                have = self._stream(resp, out, hasher, have, desc.size, clock, progress, where, what)
                out.sync()
            if have != desc.size:
                if resp.length or (resp.length is None and not resp.chunked):  # cut short: kept, to resume
                    self._fail(host, what, f"the connection ended after {have} of {desc.size} bytes")
                raise MalformedError(f"{where}: {what}: served {have} bytes, the manifest says {desc.size}")
        got = "sha256:" + hasher.hexdigest()
        if got != desc.digest:
            raise MalformedError(f"{where}: {what}: the bytes served hash to {got}")

    def _stream(
        self,
        resp: http.client.HTTPResponse,
        out: _Sink,
        hasher: hashlib._Hash,
        have: int,
        size: int,
        clock: _Clock,
        progress: Progress | None,
        where: str,
        what: str,
    ) -> int:
        """Copies the body into ``out`` until EOF, never past ``size`` bytes, at ``limit_rate`` at most."""
        rate = self.net.limit_rate
        chunk_size = min(CHUNK, max(rate // 4, 4096)) if rate else CHUNK
        started, sent = time.monotonic(), 0
        while True:
            chunk = resp.read1(min(chunk_size, size - have + 1))
            if not chunk:
                clock.timeout()  # an end made by the deadline's watchdog is the deadline
                return have
            if have + len(chunk) > size:
                out.write(chunk[: size - have])
                raise MalformedError(f"{where}: {what}: serves more than the {size} bytes the manifest says")
            out.write(chunk)
            hasher.update(chunk)
            have += len(chunk)
            if progress:
                progress(have, size)
            if rate:
                sent += len(chunk)
                wait = sent / rate - (time.monotonic() - started)
                if wait > 0:
                    if wait >= clock.left():
                        raise _Deadline
                    time.sleep(wait)
            clock.timeout()

    # -- hosts, mirrors, messages ------------------------------------------------------------------

    def _where(self, host: str) -> str:
        return f"oci:{host}/{self.repository}"

    def _fail(self, host: str, what: str, reason: str) -> NoReturn:
        raise UnreadableError(f"{self._where(host)}: {what}: {reason}")

    def _each_host(self, what: str, pull: Callable[[str], T]) -> T:
        """``pull`` from each mirror in order, then the registry: a mirror that fails is skipped and said
        in the registry's error if that fails too."""
        skipped: list[str] = []
        for mirror in self.mirrors:
            if mirror in self._dead:
                skipped.append(self._dead[mirror])
                continue
            try:
                return pull(mirror)
            except InputError as e:
                skipped.append(str(e))
        try:
            return pull(self.registry)
        except InputError as e:
            if not skipped:
                raise
            raise type(e)(f"{e}; mirrors skipped: {'; '.join(skipped)}") from None

    @contextmanager
    def _guard(self, host: str, what: str) -> Iterator[None]:
        """Socket and protocol failures, and the deadline, as one-line UnreadableErrors."""
        try:
            yield
        except _Deadline:
            self._fail(host, what, f"the deadline of {self.net.deadline:g} s passed (update.deadline)")
        except (OSError, http.client.HTTPException) as e:
            message = f"{self._where(host)}: {what}: {_reason(e)}"
            if host != self.registry and isinstance(e, OSError) and not isinstance(e, ssl.SSLError):
                self._dead[host] = message  # unreachable: not tried again by this client
            raise UnreadableError(message) from None

    def _endpoint(self, host: str) -> Endpoint:
        return Endpoint.of(host, self.net.ca_file)

    def _url(self, host: str, path: str) -> str:
        ep = self._endpoint(host)
        name = f"[{ep.host}]" if ":" in ep.host else ep.host
        return f"{'https' if ep.https else 'http'}://{name}:{ep.port}{path}"

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            ca = self.net.ca_file
            if ca is not None and not ca.is_file():
                raise UnreadableError(f"{ca}: update.ca_file: not a readable file")
            self._ssl = ssl.create_default_context(cafile=str(ca) if ca else None)
        return self._ssl

    def _credentials(self) -> Credentials:
        if self._creds is None:
            self._creds = Credentials(self.net.auth_file)
        return self._creds

    def _check_reference(self, reference: str) -> None:
        sep = "@" if reference.startswith("sha256:") else ":"
        parse(f"{self.where}{sep}{reference}", "reference")

    # -- HTTP ------------------------------------------------------------------------------------

    @contextmanager
    def _request(
        self,
        clock: _Clock,
        host: str,
        what: str,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | Path | None = None,
    ) -> Iterator[http.client.HTTPResponse]:
        """The response to ``method path`` once redirects (same origin only) and auth challenges are
        answered; the connection is closed when the block ends. ``body``: bytes, or a file streamed."""
        ep = self._endpoint(host)
        for _hop in range(MAX_REDIRECTS + 1):
            for attempt in range(3):
                conn, resp = self._exchange(clock, ep, host, method, path, headers or {}, body)
                if resp.status == 401 and attempt < 2 and self._answer(clock, host, what, resp):
                    conn.close()
                    continue
                break
            if resp.status == 401:
                conn.close()
                known = self._credentials().basic(host, self.repository) or self._credentials().identity_token(
                    host, self.repository
                )
                why = "credentials refused" if known else "no credentials for it in update.auth_file"
                self._fail(host, what, f"401 Unauthorized ({why})")
            if resp.status in _REDIRECTS and method in ("GET", "HEAD"):
                location = resp.getheader("Location") or ""
                conn.close()
                url = urllib.parse.urlsplit(urllib.parse.urljoin(self._url(host, path), location))
                if not ep.same_origin(url):
                    self._fail(host, what, f"redirect to {location[:160]!r} refused: not {host}")
                path = f"{url.path}?{url.query}" if url.query else url.path
                continue
            try:
                yield resp
            finally:
                conn.close()
            return
        self._fail(host, what, f"more than {MAX_REDIRECTS} redirects")

    def _exchange(
        self,
        clock: _Clock,
        ep: Endpoint,
        host: str,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes | Path | None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn: http.client.HTTPConnection
        if ep.https:
            conn = http.client.HTTPSConnection(
                ep.host, ep.port, timeout=clock.timeout(), context=self._context(), blocksize=CHUNK
            )
        else:
            conn = http.client.HTTPConnection(ep.host, ep.port, timeout=clock.timeout(), blocksize=CHUNK)
        _watch(conn, clock)
        sent = {"User-Agent": "bootkeeper", **headers}
        if host in self._auth:
            sent["Authorization"] = self._auth[host]
        try:
            if isinstance(body, Path):
                with body.open("rb") as f:
                    conn.request(method, path, body=f, headers=sent)
            else:
                conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
        except BaseException:
            conn.close()
            if clock.left() <= 0:
                raise _Deadline from None
            raise
        return conn, resp

    def _answer(self, clock: _Clock, host: str, what: str, resp: http.client.HTTPResponse) -> bool:
        """Earns the Authorization a 401's challenge asks for; False when there is nothing to try."""
        challenge = resp.getheader("WWW-Authenticate") or ""
        scheme = challenge.partition(" ")[0].lower()
        params = dict(_PARAM.findall(challenge))
        creds = self._credentials()
        basic = creds.basic(host, self.repository)
        if scheme == "basic":
            if basic is None or self._auth.get(host) == basic:
                return False
            self._auth[host] = basic
            return True
        if scheme != "bearer" or "realm" not in params:
            return False
        token = self._token(clock, host, what, params, basic, creds.identity_token(host, self.repository))
        if self._auth.get(host) == f"Bearer {token}":
            return False
        self._auth[host] = f"Bearer {token}"
        return True

    def _token(
        self, clock: _Clock, host: str, what: str, params: dict[str, str], basic: str | None, identity: str | None
    ) -> str:
        """The bearer token flow (distribution docs/spec/auth/token.md, oauth.md for an identity token)."""
        realm = urllib.parse.urlsplit(params["realm"])
        if not (realm.scheme == "https" or (realm.scheme == "http" and is_loopback(realm.hostname or ""))):
            self._fail(host, what, f"token realm {params['realm'][:160]!r} refused: not https (nor http on loopback)")
        query: dict[str, str] = {k: params[k] for k in ("service", "scope") if k in params}
        headers = {"Accept": "application/json"}
        body: bytes | None = None
        method = "GET"
        if identity:
            method = "POST"
            form = {**query, "grant_type": "refresh_token", "refresh_token": identity, "client_id": "bootkeeper"}
            body = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            target = realm.path or "/"
        else:
            target = (realm.path or "/") + "?" + urllib.parse.urlencode(query)
            if basic:
                headers["Authorization"] = basic
        https = realm.scheme == "https"
        try:
            port = realm.port or (443 if https else 80)
        except ValueError:
            self._fail(host, what, "token realm has a bad port")
        conn: http.client.HTTPConnection
        name = realm.hostname or ""
        if https:
            conn = http.client.HTTPSConnection(name, port, timeout=clock.timeout(), context=self._context())
        else:
            conn = http.client.HTTPConnection(name, port, timeout=clock.timeout())
        _watch(conn, clock)
        try:
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            if resp.status != 200:
                self._fail(host, what, f"the token server at {name} answered {_status(resp)}")
            data = resp.read(MAX_TOKEN_REPLY + 1)
        except (OSError, http.client.HTTPException) as e:
            if clock.left() <= 0:
                raise _Deadline from None
            self._fail(host, what, f"token server at {name}: {_reason(e)}")
        finally:
            conn.close()
        try:
            doc = json.loads(data) if len(data) <= MAX_TOKEN_REPLY else None
        except (ValueError, UnicodeDecodeError):
            doc = None
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token or not token.isascii() or not token.isprintable() or " " in token:
            self._fail(host, what, f"the token server at {name} gave no token")
        return token


def _watch(conn: http.client.HTTPConnection, clock: _Clock) -> None:
    """At the deadline, shut the connection's socket: a read blocked on a trickling server returns."""

    def shut() -> None:
        sock = conn.sock
        if sock is not None:
            with suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the fd itself, under any TLS layer

    timer = threading.Timer(max(clock.left(), 0.0), shut)
    timer.daemon = True
    timer.start()
    close = conn.close

    def closing() -> None:
        timer.cancel()
        close()

    conn.close = closing  # type: ignore[method-assign]


def _hash_prefix(dest: Path, size: int) -> tuple[hashlib._Hash, int]:
    """The hash of what ``dest`` already holds (a download to resume); nothing if it holds too much."""
    hasher = hashlib.sha256()
    try:
        have = dest.stat().st_size
    except FileNotFoundError:
        return hasher, 0
    except OSError as e:
        raise UnreadableError(f"{dest}: {e.strerror or e}") from None
    if have > size:
        return hasher, 0
    try:
        with dest.open("rb") as f:
            while chunk := f.read(CHUNK):
                hasher.update(chunk)
    except OSError as e:
        raise UnreadableError(f"{dest}: {e.strerror or e}") from None
    return hasher, have


class _Sink:
    """``dest`` open for writing at ``offset`` and cut there (what follows is what the registry sends). A
    failure of the local disk (a full staging partition) is a WriteError naming ``dest``, never taken for
    a network one, and leaves what was written for the next run."""

    def __init__(self, dest: Path, offset: int) -> None:
        self.dest = dest
        self.fd = -1
        try:
            self.fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.ftruncate(self.fd, offset)
            os.lseek(self.fd, offset, os.SEEK_SET)
        except OSError as e:
            self.close()
            raise WriteError(f"{dest}: {e.strerror or e}") from None

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as e:
            raise WriteError(f"{self.dest}: {e.strerror or e}") from None

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as e:
            raise WriteError(f"{self.dest}: fsync: {e.strerror or e}") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _remove(dest: Path) -> None:
    dest.unlink(missing_ok=True)


def open_registry(src: Source, net: Net) -> Registry:
    """The registry an ``oci:`` source names, with ``net.mirrors`` tried first for pulls."""
    if src.kind is not Kind.OCI:
        raise UsageError(f"{src}: not an oci: source")
    return Registry(src.registry, src.repository, net, mirrors=net.mirrors)
