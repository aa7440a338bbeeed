"""Webhooks: one signed POST per finished job, retried with backoff, never to disallowed hosts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask

from deploy.local import NotifierProcess, WorkerProcess
from shared.settings import Settings
from shared.store import JobStore
from shared.webhooks import verify
from tests.helpers import no_message_left, reference_body

SECRET = "test-webhook-secret"
URL = "/v1/sd1.5-img2img"


@dataclass
class Receiver:
    """A loopback receiver that records every POST and can fail the next few."""

    port: int = 0
    fail_next: int = 0
    calls: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    status = 500 if receiver.fail_next > 0 else 200
                    receiver.fail_next -= 1 if receiver.fail_next > 0 else 0
                    receiver.calls.append((status, dict(self.headers.items()), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        return Handler

    def wait_calls(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.calls) < count:
            time.sleep(0.02)
        assert len(self.calls) >= count, f"{len(self.calls)} calls"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), rec.handler())
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def hooked(
    settings: Settings, worker: WorkerProcess, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Flask, Settings]]:
    from api.app import create_app

    hooked_settings = settings.replace(
        webhook_secret=SECRET, webhook_allow=f"127.0.0.1:{receiver.port}", webhook_backoff_seconds=0.2
    )
    notifier = NotifierProcess(hooked_settings, tmp_path_factory.mktemp("notifier"))
    notifier.start()
    yield create_app(hooked_settings), hooked_settings
    notifier.stop()


def test_one_signed_post_per_job(hooked: tuple[Flask, Settings], receiver: Receiver) -> None:
    app, settings = hooked
    receiver.calls.clear()
    hook = f"http://127.0.0.1:{receiver.port}/hooks/img2img"
    reply = app.test_client().post(URL, json=reference_body(webhook=hook))
    assert reply.status_code == 200
    job_id = reply.headers["x-job-id"]
    receiver.wait_calls(1)
    no_message_left(settings, job_id, settings.webhook_queue)  # so no second delivery can come
    assert JobStore(settings).webhooks.get(job_id) == "delivered"
    assert len(receiver.calls) == 1
    status, headers, body = receiver.calls[0]
    assert status == 200
    assert verify(SECRET, headers, body)
    assert not verify("another secret", headers, body)
    document = json.loads(body)
    assert document["id"] == job_id and document["status"] == "succeeded"
    assert len(document["outputs"]) == 1
    assert JobStore(settings).webhooks.get(job_id) == "delivered"


def test_failing_receiver_gets_the_body_on_the_third_try(
    hooked: tuple[Flask, Settings], receiver: Receiver
) -> None:
    app, settings = hooked
    receiver.calls.clear()
    receiver.fail_next = 2
    hook = f"http://127.0.0.1:{receiver.port}/retry"
    reply = app.test_client().post(URL, json=reference_body(webhook=hook))
    assert reply.status_code == 200
    receiver.wait_calls(3)
    no_message_left(settings, reply.headers["x-job-id"], settings.webhook_queue)
    assert [status for status, _, _ in receiver.calls] == [500, 500, 200]
    bodies = {json.loads(body)["id"] for _, _, body in receiver.calls}
    assert bodies == {reply.headers["x-job-id"]}
    assert all(verify(SECRET, headers, body) for _, headers, body in receiver.calls)
    assert JobStore(settings).webhooks.get(reply.headers["x-job-id"]) == "delivered"


@pytest.mark.parametrize(
    "hook",
    [
        "http://127.0.0.1:1/not-allowed-port",
        "http://10.1.2.3/private",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/loopback",
        "ftp://example.com/x",
    ],
)
def test_disallowed_targets_are_refused_at_submit(hooked: tuple[Flask, Settings], hook: str) -> None:
    app, _ = hooked
    reply = app.test_client().post(
        URL, json=reference_body(webhook=hook), headers={"Prefer": "respond-async"}
    )
    assert reply.status_code == 400
    assert reply.get_json()["field"] == "webhook"


def test_webhooks_need_a_secret(client: Any, receiver: Receiver) -> None:
    hook = f"http://127.0.0.1:{receiver.port}/x"
    reply = client.post(URL, json=reference_body(webhook=hook), headers={"Prefer": "respond-async"})
    assert reply.status_code == 400
    assert "WEBHOOK_SECRET" in reply.get_json()["error"]
