"""Segmind's v2 queue protocol: submit, poll status, fetch the result."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from flask import Flask
from flask.testing import FlaskClient

from tests.helpers import jpeg_pixels, reference_body


def poll_status(client: FlaskClient, status_url: str, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    path = urlsplit(status_url).path
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = client.get(path)
        body = reply.get_json()
        seen.append(body["status"])
        assert body["status"] in ("QUEUED", "PROCESSING", "COMPLETED", "FAILED")
        if body["status"] in ("COMPLETED", "FAILED"):
            return reply.status_code, body
        time.sleep(0.02)
    raise AssertionError(f"never finished: {seen[-5:]}")


def test_submit_poll_and_fetch(client: FlaskClient) -> None:
    reply = client.post("/v2/sd1.5-img2img", json=reference_body())
    assert reply.status_code == 200
    body = reply.get_json()
    assert set(body) == {"request_id", "status", "status_url", "response_url", "poll_url"}
    assert body["status"] == "QUEUED"
    request_id = body["request_id"]
    assert body["status_url"] == f"http://localhost/v2/requests/{request_id}/status"
    assert body["poll_url"] == body["status_url"]
    assert body["response_url"] == f"http://localhost/v2/requests/{request_id}"

    code, status = poll_status(client, body["status_url"])
    assert (code, status) == (200, {"request_id": request_id, "status": "COMPLETED"})

    result = client.get(urlsplit(body["response_url"]).path)
    assert result.status_code == 200
    final = result.get_json()
    assert final["status"] == "COMPLETED"
    assert final["outputs"] == [final["output"]]
    assert final["seeds"] == [98877465625]
    assert final["metrics"]["queue_seconds"] >= 0 and final["metrics"]["run_seconds"] > 0
    image = client.get(urlsplit(final["output"]).path)
    assert image.status_code == 200
    assert jpeg_pixels(image.data).size == (512, 512)


def test_failed_job_is_422_with_the_error(faulty_farm: Flask) -> None:
    client = faulty_farm.test_client()
    body = client.post("/v2/sd1.5-img2img", json=reference_body(prompt="boom [fail]")).get_json()
    code, status = poll_status(client, body["status_url"])
    assert code == 422
    assert status["status"] == "FAILED"
    assert "injected fault" in status["error"]
    result = client.get(urlsplit(body["response_url"]).path)
    assert result.status_code == 422
    assert result.get_json()["error"] == status["error"]


def test_unknown_request_is_404(client: FlaskClient) -> None:
    assert client.get("/v2/requests/0000/status").status_code == 404
    assert client.get("/v2/requests/0000").status_code == 404


def test_v2_validates_like_v1(client: FlaskClient) -> None:
    reply = client.post("/v2/sd1.5-img2img", json=reference_body(samples=9))
    assert reply.status_code == 400
    assert reply.get_json()["field"] == "samples"
