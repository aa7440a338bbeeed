"""The gateway as ``make run`` serves it: gunicorn (gevent), over real HTTP."""

from __future__ import annotations

import requests

from shared.settings import Settings
from tests.helpers import jpeg_pixels, reference_body


def test_health_and_readiness(gateway: str) -> None:
    assert requests.get(f"{gateway}/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(f"{gateway}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"redis": True, "storage": True, "workers": True}


def test_reference_request_over_http(gateway: str) -> None:
    reply = requests.post(f"{gateway}/v1/sd1.5-img2img", json=reference_body(), timeout=120)
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"] == "image/jpeg"
    assert jpeg_pixels(reply.content).size == (512, 512)
    job = requests.get(f"{gateway}/v1/jobs/{reply.headers['x-job-id']}", timeout=10).json()
    assert job["outputs"][0].startswith(gateway)
    assert requests.get(job["outputs"][0], timeout=10).content == reply.content


def test_readiness_without_workers(base_settings: Settings) -> None:
    from api.app import create_app

    app = create_app(base_settings.replace(key_prefix="t-nobody"))
    reply = app.test_client().get("/readyz")
    assert reply.status_code == 503
    assert reply.get_json()["checks"]["workers"] is False
