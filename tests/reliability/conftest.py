"""Fault-test plumbing: isolated queues, short leases, helpers to submit and watch jobs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from api.service import JobService
from deploy.local import RedisServer
from shared.jobs import Job
from shared.keys import KeyStore
from shared.schema import parse_request
from shared.settings import Settings
from shared.store import JobStore
from tests.helpers import reference_body, sample_image

LONG = {"num_inference_steps": 100, "strength": 1.0}
# A long job at a quarter of the pixels: mid-denoising for seconds, quick to run again.
LONG_SMALL = {**LONG, "img_width": 256, "img_height": 256}


@pytest.fixture()
def fault_settings(base_settings: Settings) -> Settings:
    """A queue and key prefix of its own, and leases short enough to recover in seconds."""
    tag = uuid.uuid4().hex[:8]
    return base_settings.replace(
        queue_name=f"img2img-{tag}",
        key_prefix=f"t-{tag}",
        job_lease_seconds=3.0,
        sweep_interval_seconds=1.0,
        max_job_attempts=3,
        worker_soft_shutdown_seconds=60.0,
        allowed_sizes=(256, 512, 768),
    )


class Farm:
    """Submits jobs the way the gateway does (charged to a key) and watches them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service = JobService(settings)
        self.service.storage.ensure_bucket()
        self.store = JobStore(settings)
        self.keys = KeyStore(settings)
        _, record = self.keys.create("faults", 10_000_000)
        self.owner = record.id

    def submit(self, **changes: object) -> Job:
        params = parse_request(reference_body(**changes), self.settings).params
        return self.service.submit(params, sample_image(), owner=self.owner)

    def wait(self, job_id: str, until: Callable[[Job], bool], timeout: float = 180.0) -> Job:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.store.jobs.get(job_id)
            if job is not None and until(job):
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id}: {self.store.jobs.get(job_id)}")

    def finished(self, job_id: str, timeout: float = 180.0) -> Job:
        return self.wait(job_id, lambda job: job.status.terminal, timeout)

    def pipeline_calls(self) -> int:
        return self.store.counters.all().get("pipeline_calls", 0)

    def balance(self) -> int:
        return self.keys.balance(self.owner)

    def objects(self, job_id: str, count: int | None = None, timeout: float = 30.0) -> list[str]:
        """The job's S3 keys; with ``count``, once that many are there (outputs are written
        just after the job is marked succeeded), or as they are when ``timeout`` runs out."""
        client = self.service.storage._client
        deadline = time.monotonic() + timeout
        while True:
            listing = client.list_objects_v2(Bucket=self.settings.s3_bucket, Prefix=f"jobs/{job_id}/")
            keys = sorted(item["Key"] for item in listing.get("Contents", []))
            if count is None or len(keys) >= count or time.monotonic() > deadline:
                return keys
            time.sleep(0.05)


@pytest.fixture()
def farm(fault_settings: Settings) -> Farm:
    return Farm(fault_settings)


@pytest.fixture()
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, with AOF, that the test may stop and start again."""
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    yield server
    server.stop()
