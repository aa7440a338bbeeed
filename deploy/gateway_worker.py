"""The gateway's gunicorn worker: gevent, so a waiting client costs a greenlet, not a thread.

A synchronous request waits for its job (up to ``SYNC_WAIT_SECONDS``) in a blocking Redis
read; under gevent that read yields, so one process holds thousands of waiting clients
(``GATEWAY_CONNECTIONS``) while health checks, polls and submits go on. A client that never
finishes its headers holds a greenlet only, and is cut when gunicorn's keep-alive timeout
(``GATEWAY_KEEPALIVE``) ends the header read. The file-descriptor limit is raised to its
hard limit, since each waiting client holds a socket to it and one to Redis.

Errors gunicorn answers by itself (a malformed request line, a request line or header over
its limit, ...) are written as JSON in the API's error shape, ``{"error": "..."}``, like
every other answer, instead of an HTML page.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
from typing import Any

from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker

_LINGER_SECONDS = 1.0
_LINGER_BYTES = 1024 * 1024


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """What gunicorn's ``util.write_error`` writes, as JSON (the connection closes after it)."""
    text = f"{reason.lower()}: {mesg}" if mesg else reason.lower()
    body = json.dumps({"error": text}, ensure_ascii=True).encode("ascii")
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)
    _linger(sock)


def _linger(sock: socket.socket) -> None:
    """Finish sending, then read what the client still sends (the rest of a line or header
    over the limit) for a moment: closing with unread input would reset the connection, and
    the client could lose the answer."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(_LINGER_SECONDS)
        drained = 0
        while drained < _LINGER_BYTES and (chunk := sock.recv(65536)):
            drained += len(chunk)
    except OSError:
        pass


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


class JsonErrorGeventWorker(GeventWorker):
    """gevent's worker, with JSON errors, a raised file limit and a shutdown that does not wait
    for idle connections: on SIGTERM the requests in progress (waiting clients included) finish
    within the graceful timeout, while kept-alive connections between requests are closed at
    once instead of holding the process until their keep-alive timeout."""

    def init_process(self) -> None:
        util.write_error = write_json_error  # this worker process's errors, before it serves
        raise_open_files_limit()
        self._idle: set[socket.socket] = set()  # connections with no request in progress
        super().init_process()

    def handle(self, listener: socket.socket, client: socket.socket, addr: Any) -> None:
        self._idle.add(client)
        try:
            super().handle(listener, client, addr)
        finally:
            self._idle.discard(client)

    def handle_request(self, listener_name: Any, req: Any, sock: socket.socket, addr: Any) -> None:
        self._idle.discard(sock)
        try:
            super().handle_request(listener_name, req, sock, addr)
        finally:
            if self.alive:
                self._idle.add(sock)

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        for sock in list(self._idle):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
