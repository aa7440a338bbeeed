"""Idempotency keys and clients that go away: over real HTTP to the gunicorn gateway."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from shared.jobstore import JobStore
from shared.settings import Settings
from tests.helpers import reference_body

URL = "/v1/sd1.5-img2img"


def pipeline_calls(settings: Settings) -> int:
    return JobStore(settings).stats().get("pipeline_calls", 0)


def wait_finished(gateway: str, job_id: str, timeout: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(f"{gateway}/v1/jobs/{job_id}", timeout=10).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return dict(job)
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def test_ten_concurrent_submits_with_one_key_make_one_job(gateway: str, settings: Settings) -> None:
    key = uuid.uuid4().hex
    body = reference_body(seed=4242)
    before = pipeline_calls(settings)

    def post(_: int) -> requests.Response:
        return requests.post(
            f"{gateway}{URL}",
            json=body,
            headers={"Idempotency-Key": key, "Prefer": "respond-async"},
            timeout=60,
        )

    with ThreadPoolExecutor(max_workers=10) as pool:
        replies = list(pool.map(post, range(10)))
    assert [r.status_code for r in replies] == [202] * 10
    ids = {r.json()["id"] for r in replies}
    assert len(ids) == 1
    job = wait_finished(gateway, ids.pop())
    assert job["status"] == "succeeded"
    time.sleep(0.5)
    assert pipeline_calls(settings) == before + 1

    again = requests.post(f"{gateway}{URL}", json=body, headers={"Idempotency-Key": key}, timeout=60)
    assert again.status_code == 200
    assert again.headers["x-job-id"] == job["id"]
    assert pipeline_calls(settings) == before + 1


def test_same_key_with_another_body_is_422(gateway: str) -> None:
    key = uuid.uuid4().hex
    first = requests.post(
        f"{gateway}{URL}",
        json=reference_body(),
        headers={"Idempotency-Key": key, "Prefer": "respond-async"},
        timeout=60,
    )
    assert first.status_code == 202
    other = requests.post(
        f"{gateway}{URL}", json=reference_body(prompt="another"), headers={"Idempotency-Key": key}, timeout=60
    )
    assert other.status_code == 422
    assert "Idempotency-Key" in other.json()["error"]
    wait_finished(gateway, first.json()["id"])


def test_client_that_drops_mid_wait_still_gets_its_job(gateway: str, settings: Settings) -> None:
    key = uuid.uuid4().hex
    body = reference_body(num_inference_steps=100, strength=1.0, img_width=768, img_height=768)
    before = pipeline_calls(settings)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{gateway}{URL}", json=body, headers={"Idempotency-Key": key}, timeout=(5, 1.0))
    reply = requests.post(
        f"{gateway}{URL}", json=body, headers={"Idempotency-Key": key, "Prefer": "respond-async"}, timeout=60
    )
    assert reply.status_code in (200, 202)
    job_id = reply.headers["x-job-id"]
    job = wait_finished(gateway, job_id)
    assert job["status"] == "succeeded"
    outputs = job["outputs"]
    assert isinstance(outputs, list)
    assert requests.get(outputs[0], timeout=10).status_code == 200
    time.sleep(0.5)
    assert pipeline_calls(settings) == before + 1
