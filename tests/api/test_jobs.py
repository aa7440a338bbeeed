"""The native job API: progress, queue position, cancel, wait-or-poll, retention."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from shared.settings import Settings
from shared.store import JobStore
from tests.helpers import jpeg_pixels, no_message_left, reference_body

URL = "/v1/sd1.5-img2img"
ASYNC = {"Prefer": "respond-async"}
# A job long enough to watch: 100 denoising steps.
LONG = {"num_inference_steps": 100, "strength": 1.0}


def poll(client: FlaskClient, job_id: str, until: Any, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").get_json()
        if until(job):
            return dict(job)
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached the expected state")


def finished(job: dict[str, Any]) -> bool:
    return job["status"] in ("succeeded", "failed", "canceled")


def submit(client: FlaskClient, **changes: Any) -> str:
    reply = client.post(URL, json=reference_body(**changes), headers=ASYNC)
    assert reply.status_code == 202, reply.get_data(as_text=True)
    assert reply.headers["Location"] == f"/v1/jobs/{reply.get_json()['id']}"
    return str(reply.get_json()["id"])


def test_progress_rises_monotonically_to_total(client: FlaskClient) -> None:
    job_id = submit(client, **LONG)
    seen: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").get_json()
        assert job["progress"]["total"] == 100
        seen.append(job["progress"]["step"])
        if finished(job):
            break
        time.sleep(0.01)
    assert job["status"] == "succeeded"
    assert seen == sorted(seen)
    assert seen[-1] == 100
    assert len(set(seen)) > 3  # watched it move, not just start and end


def test_queue_position_counts_down(client: FlaskClient) -> None:
    first = submit(client, **LONG)
    second = submit(client, **LONG)
    third = submit(client)
    positions: list[int] = []
    etas: list[float] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{third}").get_json()
        if job["status"] != "queued":
            break
        positions.append(job["queue_position"])
        if job["eta_seconds"] is not None:
            etas.append(job["eta_seconds"])
        time.sleep(0.02)
    assert positions == sorted(positions, reverse=True)
    assert positions[0] >= 1 and positions[-1] == 0
    assert etas and all(eta > 0 for eta in etas)
    for job_id in (first, second, third):
        assert poll(client, job_id, finished)["status"] == "succeeded"
    assert client.get(f"/v1/jobs/{third}").get_json()["queue_position"] is None


def test_cancel_while_queued_never_runs(client: FlaskClient, settings: Settings) -> None:
    running = submit(client, **LONG)
    queued = submit(client)
    reply = client.post(f"/v1/jobs/{queued}/cancel")
    assert reply.status_code == 200
    assert reply.get_json()["status"] == "canceled"
    poll(client, running, finished)
    no_message_left(settings, queued)  # the worker has taken (and dropped) its message
    job = JobStore(settings).jobs.get(queued)
    assert job is not None
    assert job.status.value == "canceled"
    assert job.started_at is None and job.worker is None and job.attempts == 0
    again = client.post(f"/v1/jobs/{queued}/cancel")
    assert again.status_code == 409
    assert "canceled" in again.get_json()["error"]


def test_cancel_while_running_stops_within_one_step(client: FlaskClient) -> None:
    job_id = submit(client, **LONG)
    poll(client, job_id, lambda job: job["progress"]["step"] >= 2)
    reply = client.post(f"/v1/jobs/{job_id}/cancel")
    assert reply.status_code in (200, 202)
    step_at_cancel = reply.get_json()["progress"]["step"]
    job = poll(client, job_id, finished)
    assert job["status"] == "canceled"
    assert job["progress"]["step"] <= step_at_cancel + 1
    assert job["outputs"] == []
    nxt = client.post(URL, json=reference_body())
    assert nxt.status_code == 200


def test_cancel_of_a_finished_job_is_409(client: FlaskClient) -> None:
    done = client.post(URL, json=reference_body())
    assert done.status_code == 200
    reply = client.post(f"/v1/jobs/{done.headers['x-job-id']}/cancel")
    assert reply.status_code == 409
    assert client.post("/v1/jobs/nope/cancel").status_code == 404


def test_wait_budget_runs_out_with_202_and_location(client: FlaskClient) -> None:
    reply = client.post(
        URL, json=reference_body(**LONG, img_width=768, img_height=768), headers={"Prefer": "wait=1"}
    )
    assert reply.status_code == 202
    location = reply.headers["Location"]
    body = reply.get_json()
    assert location == f"/v1/jobs/{body['id']}"
    assert body["status"] in ("queued", "running")
    job = poll(client, body["id"], finished)
    assert job["status"] == "succeeded"
    image = client.get(job["outputs"][0])
    assert image.status_code == 200
    assert jpeg_pixels(image.data).size == (768, 768)


def test_respond_async_answers_at_once(client: FlaskClient) -> None:
    started = time.monotonic()
    job_id = submit(client, **LONG)
    assert time.monotonic() - started < 1.0
    assert poll(client, job_id, finished)["status"] == "succeeded"


@pytest.fixture()
def short_lived(base_settings: Settings) -> Flask:
    from api.app import create_app

    return create_app(
        base_settings.replace(queue_name="img2img-unserved", key_prefix="t-ttl", job_ttl_seconds=1)
    )


def test_expired_job_is_404(short_lived: Flask) -> None:
    client = short_lived.test_client()
    job_id = submit(client)
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200
    deadline = time.monotonic() + 10
    while client.get(f"/v1/jobs/{job_id}").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.1)  # its record lives one second (JOB_TTL_SECONDS)
    gone = client.get(f"/v1/jobs/{job_id}")
    assert gone.status_code == 404
    assert gone.get_json()["error"] == f"no job {job_id}"
    assert client.get(f"/v1/jobs/{job_id}/images/0").status_code == 404


def test_outputs_expire_with_their_jobs(app: Flask) -> None:
    from api.context import service_of

    assert service_of(app).storage.expiry_days() == 1
