"""Redis and S3 failing under the farm: clean errors, refunds, and recovery."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from deploy.local import GatewayProcess, RedisServer, S3Server
from shared.jobs import JobStatus
from shared.settings import Settings
from shared.storage import Storage
from tests.conftest import start_worker
from tests.helpers import input_copy, queue_length, reference_body
from tests.reliability.conftest import LONG, Farm


@pytest.fixture()
def own_s3(tmp_path: Path) -> Iterator[S3Server]:
    server = S3Server(tmp_path / "s3")
    server.start()
    yield server
    server.stop()


def test_redis_restart_with_aof_keeps_queued_jobs(
    fault_settings: Settings, own_redis: RedisServer, tmp_path: Path
) -> None:
    settings = fault_settings.replace(redis_url=own_redis.url)
    farm = Farm(settings)
    jobs = [farm.submit(seed=i) for i in range(10)]
    time.sleep(1.5)  # appendfsync everysec
    own_redis.stop()
    own_redis.start()
    worker = start_worker(settings, tmp_path, "after-restart")
    try:
        done = [farm.finished(job.id) for job in jobs]
    finally:
        worker.stop()
    assert [job.status for job in done] == [JobStatus.SUCCEEDED] * 10


def test_redis_restart_mid_job_keeps_the_worker_and_its_model(
    fault_settings: Settings, own_redis: RedisServer, tmp_path: Path
) -> None:
    """A broker blip must not cost a GPU worker its loaded (and compiled) model."""
    settings = fault_settings.replace(redis_url=own_redis.url, job_lease_seconds=60.0)
    farm = Farm(settings)
    worker = start_worker(settings, tmp_path, "through-restart")
    try:
        job = farm.submit(**LONG)
        running = farm.wait(job.id, lambda j: j.status is JobStatus.RUNNING and j.progress_step >= 3)
        pool_pid = int((running.worker or "").rsplit(":", 1)[1])
        runs_before = farm.store.counters.all().get("pipeline_jobs", 0)
        time.sleep(1.5)  # appendfsync everysec: the running record is on disk
        own_redis.stop()
        own_redis.start()
        done = farm.finished(job.id)
        assert done.status is JobStatus.SUCCEEDED and done.attempts == 1, done.error
        assert farm.store.counters.all().get("pipeline_jobs", 0) - runs_before == 1  # it ran once
        assert worker.alive()
        os.kill(pool_pid, 0)  # the pool process that holds the model is the same one
        assert worker.log_file.read_text().count(f"loaded {settings.model_path} on") == 1  # never reloaded
        after = farm.submit(seed=1)
        assert farm.finished(after.id).worker == running.worker  # it takes new jobs too
    finally:
        worker.stop()


def test_s3_outage_mid_run_still_answers_and_uploads_once_s3_is_back(
    fault_settings: Settings, own_s3: S3Server, tmp_path: Path
) -> None:
    settings = fault_settings.replace(s3_endpoint_url=own_s3.url)
    farm = Farm(settings)
    worker = start_worker(settings, tmp_path, "s3-outage")
    try:
        before = farm.balance()
        job = farm.submit(**LONG)
        farm.wait(job.id, lambda j: j.status is JobStatus.RUNNING and j.progress_step >= 2)
        own_s3.stop()
        done = farm.finished(job.id)
        assert done.status is JobStatus.SUCCEEDED
        assert farm.service.image(done, 0)[:3] == b"\xff\xd8\xff"  # served from Redis meanwhile
        assert farm.balance() == before - done.cost_milli
        time.sleep(settings.job_lease_seconds + 2 * settings.sweep_interval_seconds)  # a retry fails too
        assert farm.store.uploads.pending() == 1
        assert farm.store.blobs.result(job.id, 0) is not None
        own_s3.start()
        Storage(settings).ensure_bucket()  # moto keeps nothing across restarts; MinIO or S3 would
        farm.wait(job.id, lambda _: farm.objects(job.id) == ["jobs/" + job.id + "/0.jpg"], timeout=60)
        assert farm.store.uploads.pending() == 0
        again = farm.submit()
        assert farm.finished(again.id).status is JobStatus.SUCCEEDED
    finally:
        worker.stop()


def test_s3_down_at_submit_does_not_stop_submits(fault_settings: Settings, own_s3: S3Server) -> None:
    """The gateway writes nothing to S3 at submit: with S3 down a job is accepted, charged
    and queued with its input's Redis copy (the worker stores the input in S3 later)."""
    settings = fault_settings.replace(s3_endpoint_url=own_s3.url)
    farm = Farm(settings)  # no worker: the job stays queued
    before = farm.balance()
    own_s3.stop()
    job = farm.submit()
    assert farm.store.jobs.get(job.id).status is JobStatus.QUEUED  # type: ignore[union-attr]
    assert farm.balance() == before - job.cost_milli
    assert input_copy(farm.settings, job.id) is not None


def test_redis_down_at_submit_is_503_and_charges_nothing(
    fault_settings: Settings, own_redis: RedisServer
) -> None:
    from api.app import create_app
    from shared.keys import KeyStore

    settings = fault_settings.replace(redis_url=own_redis.url, auth_enabled=True)
    key, record = KeyStore(settings).create("down", 1_000_000)
    client = create_app(settings).test_client()
    own_redis.stop()
    reply = client.post("/v1/sd1.5-img2img", json=reference_body(), headers={"x-api-key": key})
    assert reply.status_code == 503
    assert int(reply.headers["Retry-After"]) > 0
    assert "unavailable" in reply.get_json()["error"]
    own_redis.start()
    assert KeyStore(settings).balance(record.id) == 1_000_000
    assert queue_length(settings) == 0


def post_when_up(url: str, body: dict[str, object], headers: dict[str, str]) -> requests.Response:
    """POST, retrying while a just-started gateway is still booting its workers."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return requests.post(url, json=body, headers=headers, timeout=60)
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_gateway_restart_while_a_client_waits(fault_settings: Settings, tmp_path: Path) -> None:
    worker = start_worker(fault_settings, tmp_path, "behind-gateway")
    gateway = GatewayProcess(fault_settings, tmp_path)
    gateway.start()
    farm = Farm(fault_settings)
    body = reference_body(img_width=768, img_height=768, **LONG)
    key = {"Idempotency-Key": "restart-test"}
    calls = farm.pipeline_calls()
    try:
        # The gateway process dies (SIGKILL) under the waiting request.
        threading.Timer(2.0, gateway.signal, args=(signal.SIGKILL,)).start()
        with pytest.raises(requests.RequestException):
            requests.post(f"{gateway.url}/v1/sd1.5-img2img", json=body, headers=key, timeout=60)
        gateway.stop()  # reap the killed process
        gateway = GatewayProcess(fault_settings, tmp_path)
        gateway.start()
        again = post_when_up(f"{gateway.url}/v1/sd1.5-img2img", body, {**key, "Prefer": "respond-async"})
        assert again.status_code in (200, 202)
        done = farm.finished(again.headers["x-job-id"])
        assert done.status is JobStatus.SUCCEEDED
        assert requests.get(f"{gateway.url}/v1/jobs/{done.id}", timeout=10).json()["status"] == "succeeded"
        assert farm.pipeline_calls() - calls == 1
    finally:
        gateway.stop()
        worker.stop()
