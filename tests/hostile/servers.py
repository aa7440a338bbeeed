"""Small HTTP servers on loopback that play image hosts, honest or hostile.

Each server runs in a thread, records every request it receives and answers by path
with a :data:`Handler`. Handlers that stream forever stop when the server stops, so no
test can leave one behind.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Handler = Callable[["_RequestHandler", "LoopbackServer"], None]


@dataclass(frozen=True)
class Seen:
    path: str
    host: str


class LoopbackServer:
    """A threaded HTTP server on ``127.0.0.1`` or ``::1`` with one handler per path."""

    def __init__(self, host: str = "127.0.0.1", routes: dict[str, Handler] | None = None) -> None:
        self.host = host
        self.routes = dict(routes or {})
        self.seen: list[Seen] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type(
            "_Server", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True}
        )
        self._server = server_class((host, 0), _RequestHandler)
        self._server.owner = self
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return f"http://{self.netloc}{path}"

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@contextmanager
def serving(*servers: LoopbackServer) -> Iterator[None]:
    for server in servers:
        server.start()
    try:
        yield
    finally:
        for server in servers:
            server.stop()


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        owner: LoopbackServer = self.server.owner  # type: ignore[attr-defined]
        owner.record(Seen(self.path, self.headers.get("Host", "")))
        handler = owner.routes.get(self.path.split("?")[0], not_found)
        try:
            handler(self, owner)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should

    def log_message(self, format: str, *args: object) -> None:
        pass


# -- handlers ----------------------------------------------------------------------------


def not_found(request: _RequestHandler, _server: LoopbackServer) -> None:
    _send(request, 404, b"no such image", "text/plain")


def body(data: bytes, content_type: str = "image/png") -> Handler:
    def handler(request: _RequestHandler, _server: LoopbackServer) -> None:
        _send(request, 200, data, content_type)

    return handler


def redirect(location: str, status: int = 302) -> Handler:
    def handler(request: _RequestHandler, _server: LoopbackServer) -> None:
        request.send_response(status)
        request.send_header("Location", location)
        request.send_header("Content-Length", "0")
        request.end_headers()

    return handler


def drip_body(seconds_per_byte: float = 1.0, limit: int = 120) -> Handler:
    """Headers at once, then one byte of body every ``seconds_per_byte``."""

    def handler(request: _RequestHandler, server: LoopbackServer) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "image/png")
        request.send_header("Content-Length", str(limit))
        request.end_headers()
        request.wfile.flush()
        for _ in range(limit):
            if server.stopping.wait(seconds_per_byte):
                return
            request.wfile.write(b"\x89")
            request.wfile.flush()

    return handler


def drip_headers(seconds_per_byte: float = 1.0, limit: int = 120) -> Handler:
    """A status line, then an endless header one byte at a time."""

    def handler(request: _RequestHandler, server: LoopbackServer) -> None:
        request.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        request.wfile.flush()
        for _ in range(limit):
            if server.stopping.wait(seconds_per_byte):
                return
            request.wfile.write(b"a")
            request.wfile.flush()

    return handler


def endless(chunk: int = 64 * 1024, limit: int = 256 * 1024 * 1024) -> Handler:
    """A body with no length that goes on until the client hangs up (or ``limit`` bytes)."""

    def handler(request: _RequestHandler, server: LoopbackServer) -> None:
        request.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n")
        block = b"\x89PNG\r\n\x1a\n" + bytes(chunk - 8)
        sent = 0
        while sent < limit and not server.stopping.is_set():
            request.wfile.write(block)
            sent += len(block)
        request.close_connection = True

    return handler


def declared_too_long(length: int) -> Handler:
    """Claims a ``Content-Length`` over the cap; sends a little, then waits."""

    def handler(request: _RequestHandler, server: LoopbackServer) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "image/png")
        request.send_header("Content-Length", str(length))
        request.end_headers()
        request.wfile.write(b"\x89PNG\r\n\x1a\n")
        request.wfile.flush()
        server.stopping.wait(5)

    return handler


def hang_up(request: _RequestHandler, _server: LoopbackServer) -> None:
    """Close without a word."""
    request.close_connection = True
    request.connection.shutdown(socket.SHUT_RDWR)


def _send(request: _RequestHandler, status: int, data: bytes, content_type: str) -> None:
    request.send_response(status)
    request.send_header("Content-Type", content_type)
    request.send_header("Content-Length", str(len(data)))
    request.end_headers()
    request.wfile.write(data)
