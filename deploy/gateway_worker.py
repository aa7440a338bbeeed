"""The gateway's gunicorn worker: gthread, with the errors gunicorn answers by itself (a
malformed request line, a request line or header over its limit, ...) written as JSON in
the API's error shape, ``{"error": "..."}``, like every other answer, instead of an HTML page.
"""

from __future__ import annotations

import json
import socket

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """What gunicorn's ``util.write_error`` writes, as JSON (the connection closes after it)."""
    text = f"{reason.lower()}: {mesg}" if mesg else reason.lower()
    body = json.dumps({"error": text}, ensure_ascii=True).encode("ascii")
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


class JsonErrorThreadWorker(ThreadWorker):
    def init_process(self) -> None:
        util.write_error = write_json_error  # this worker process's errors, before it serves
        super().init_process()
