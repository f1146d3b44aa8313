"""The shuffler as a process: a small HTTP service around `privacy.shuffle.Shuffler`, its
key file, and the client the collector uses to talk to it.

The shuffler is a separate party from the server: its own process, its own X25519 key (the
server never holds it), so the server, which relays the devices' outer blobs, cannot open
them. The API is three calls (JSON answers; errors are ``{"error": "<one line>"}``):

* ``GET /public-key`` -> ``{"public_key": hex, "min_crowd": K}``;
* ``POST /collections/<label>/batches`` with header ``X-Fedmsr-Sender`` (the Flower node id
  the server received the blob from) and the outer blob as the body -> ``{"senders": n}``,
  or 409 with the refusal (second batch, closed collection, blob that does not open);
* ``POST /collections/<label>/release`` -> ``{"senders": n, "records": [hex, ...]}`` (the
  collection's inner ciphertexts, shuffled), or 409 when the crowd is below min-crowd.

It speaks plain HTTP and authenticates no one, so it binds loopback only: the collector and
the shuffler run on one host (the contents are sealed either way; the sender ids are not).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import x25519

from privacy.shuffle.sealed import (
    generate_private_key,
    private_key_from_pem,
    private_key_pem,
    public_bytes,
)
from privacy.shuffle.shuffler import Shuffler, ShuffleRefused

SENDER_HEADER = "X-Fedmsr-Sender"
MAX_BODY = 64 * 1024 * 1024
REQUEST_TIMEOUT_S = 60.0


class ShufflerError(RuntimeError):
    """The shuffler refused, or could not be reached (the message says which and why)."""


# -- keys --------------------------------------------------------------------------------


def write_key(path: Path, force: bool = False) -> bytes:
    """A new X25519 private key at `path` (mode 0600, never over an existing file unless
    `force`); returns its public key."""
    key = generate_private_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    if force:
        path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_key_pem(key))
    return public_bytes(key)


def read_key(path: Path) -> x25519.X25519PrivateKey:
    """The key at `path`; ValueError (one line) if it is missing or not an X25519 key."""
    try:
        return private_key_from_pem(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def analyzer_key(path: Path) -> x25519.X25519PrivateKey:
    """The analyzer's key at `path`, generated there on first use (a run that loses the
    race to create it reads the winner's)."""
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            write_key(path)
    return read_key(path)


# -- the journal: what a restarted shuffler must remember --------------------------------


class FileJournal:
    """Closed collections and seen blob hashes, one line each (``closed <label hex>`` /
    ``seen <sha256 hex>``), appended and fsynced before the shuffler answers. A last line
    without its newline is a write the crash cut short, never answered: it is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def load(self) -> tuple[set[str], set[bytes]]:
        """(closed labels, seen digests); ValueError (one line) for a damaged journal."""
        closed: set[str] = set()
        seen: set[bytes] = set()
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return closed, seen
        except OSError as exc:
            raise ValueError(f"cannot read {self.path}: {exc.strerror}") from None
        lines = text.split("\n")
        for number, line in enumerate(lines[:-1], start=1):  # lines[-1]: "" or a torn write
            kind, _, value = line.partition(" ")
            try:
                if kind == "closed":
                    closed.add(bytes.fromhex(value).decode())
                elif kind == "seen" and len(value) == 64:
                    seen.add(bytes.fromhex(value))
                else:
                    raise ValueError
            except (ValueError, UnicodeDecodeError):
                raise ValueError(f"{self.path}: line {number} is not a journal entry") from None
        return closed, seen

    def closed(self, collection: str) -> None:
        self._append(f"closed {collection.encode().hex()}")

    def seen(self, digest: bytes) -> None:
        self._append(f"seen {digest.hex()}")

    def _append(self, line: str) -> None:
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, (line + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)


def journal_path(key: Path) -> Path:
    """The shuffler's journal lives next to its key: <key>.journal."""
    return key.with_name(key.name + ".journal")


# -- the service ------------------------------------------------------------------------


def require_loopback(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ValueError(f"the shuffler binds loopback only (plain HTTP, no authentication), "
                         f"got {host}")


def make_server(shuffler: Shuffler, host: str, port: int) -> ThreadingHTTPServer:
    """A bound (not yet serving) HTTP server; `server.server_address[1]` is the port."""
    require_loopback(host)
    public = shuffler.public_key.hex()

    class Handler(BaseHTTPRequestHandler):
        server_version = "fedmsr-shuffler/1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
            pass  # the shuffler logs no sender ids

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (stdlib name)
            if self.path != "/public-key":
                self._answer(404, {"error": f"no such resource {self.path}"})
                return
            self._answer(200, {"public_key": public, "min_crowd": shuffler.min_crowd})

        def do_POST(self) -> None:  # noqa: N802 (stdlib name)
            parts = self.path.split("/")
            if len(parts) != 4 or parts[1] != "collections" or parts[3] not in (
                    "batches", "release"):
                self._answer(404, {"error": f"no such resource {self.path}"})
                return
            label = urllib.parse.unquote(parts[2])
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self._answer(400, {"error": "Content-Length is not a number"})
                return
            if not 0 <= length <= MAX_BODY:
                self._answer(413, {"error": f"body of {length} bytes, at most {MAX_BODY}"})
                return
            body = self.rfile.read(length)
            try:
                if parts[3] == "release":
                    released = shuffler.release(label)
                    self._answer(200, {"senders": released.senders,
                                       "records": [c.hex() for c in released.inner]})
                    return
                sender = self.headers.get(SENDER_HEADER, "")
                accepted = shuffler.submit(label, sender, body)
                self._answer(200, {"senders": accepted.senders})
            except ShuffleRefused as exc:
                self._answer(409, {"error": str(exc)})

    return ThreadingHTTPServer((host, port), Handler)


# -- the client -------------------------------------------------------------------------


@dataclass(frozen=True)
class ShufflerInfo:
    public_key: bytes
    min_crowd: int


@dataclass(frozen=True)
class Release:
    senders: int
    records: tuple[bytes, ...]


class ShufflerClient:
    """What the collector calls; every failure is a ShufflerError with one line."""

    def __init__(self, url: str, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"shuffler URL must be http://HOST:PORT, got {url!r}")
        self.url, self.timeout_s = url.rstrip("/"), timeout_s

    def info(self) -> ShufflerInfo:
        answer = self._call("GET", "/public-key")
        try:
            return ShufflerInfo(bytes.fromhex(answer["public_key"]), int(answer["min_crowd"]))
        except (KeyError, TypeError, ValueError):
            raise ShufflerError(f"shuffler at {self.url} answered no public key") from None

    def submit(self, label: str, sender: str, blob: bytes) -> int:
        """Hand one sender's outer blob over; the collection's sender count so far."""
        answer = self._call("POST", f"/collections/{_quote(label)}/batches", blob,
                            {SENDER_HEADER: sender})
        return int(answer["senders"])

    def release(self, label: str) -> Release:
        answer = self._call("POST", f"/collections/{_quote(label)}/release", b"")
        return Release(int(answer["senders"]),
                       tuple(bytes.fromhex(c) for c in answer["records"]))

    def _call(self, method: str, path: str, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers={"Content-Type": "application/octet-stream",
                                                  **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            try:
                reason = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                reason = exc.reason
            raise ShufflerError(f"shuffler refused: {reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ShufflerError(f"shuffler at {self.url} unreachable: {reason}") from None


def _quote(label: str) -> str:
    return urllib.parse.quote(label, safe="")
