"""Step progress written off the denoising loop: leases renewed, stops seen, Redis never waited on."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from shared.jobs import JobStatus
from shared.schema import parse_request
from shared.settings import Settings
from shared.store import JobStore
from tests.helpers import create_job, raw_redis, reference_body
from worker.progress import Batch, ProgressWriter, StopRun


@dataclass
class Run:
    job_id: str
    attempt: int
    stopped: bool = False


def running_job(store: JobStore, settings: Settings, job_id: str) -> Run:
    create_job(store, job_id, parse_request(reference_body(), settings).params, [1])
    claim = store.jobs.claim(job_id, "w1", 30, 3)
    assert claim.started
    return Run(job_id, claim.attempt)


def eventually(check: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_steps_reach_redis_and_renew_the_lease(isolated_settings: Settings) -> None:
    store = JobStore(isolated_settings)
    run = running_job(store, isolated_settings, "a")
    raw = raw_redis(isolated_settings)
    before = raw.zscore(store.keys.running, "a")
    time.sleep(0.05)
    batch = Batch("b1", ["a"])
    writer = ProgressWriter(store)
    with writer.call([run], lease_seconds=60, batch=batch) as progress:
        for step in range(1, 6):
            progress.report(step, 18)
        assert eventually(lambda: store.jobs.get("a").progress_step == 5)  # type: ignore[union-attr]
    assert raw.zscore(store.keys.running, "a") > before  # type: ignore[operator]
    assert not run.stopped
    job = store.jobs.get("a")
    assert job is not None and job.batch_id == "b1"
    assert job.batch_started_at == pytest.approx(batch.started_at)
    # The same thread serves the next call: no thread per call.
    again = running_job(store, isolated_settings, "a2")
    with writer.call([again], lease_seconds=60) as progress:
        progress.report(3, 18)
        assert eventually(lambda: store.jobs.get("a2").progress_step == 3)  # type: ignore[union-attr]
    writer.close()


def test_a_report_does_not_wait_for_redis(isolated_settings: Settings) -> None:
    unreachable = isolated_settings.replace(redis_url="redis://127.0.0.1:9/0")  # nothing listens
    run = Run("b", 1)
    writer = ProgressWriter(JobStore(unreachable))
    with writer.call([run], lease_seconds=60) as progress:
        started = time.perf_counter()
        for step in range(100):
            progress.report(step, 100)
        assert time.perf_counter() - started < 0.1
    assert not run.stopped  # a failed write is skipped, it stops nothing
    writer.close()


def test_cancel_stops_only_its_job_then_the_call(isolated_settings: Settings) -> None:
    store = JobStore(isolated_settings)
    first, second = running_job(store, isolated_settings, "c1"), running_job(store, isolated_settings, "c2")
    writer = ProgressWriter(store)
    with writer.call([first, second], lease_seconds=60) as progress:
        progress.report(1, 18)
        assert store.jobs.cancel("c1") is JobStatus.RUNNING
        progress.report(2, 18)
        assert eventually(lambda: first.stopped)
        progress.report(3, 18)  # the other job still runs
        assert not second.stopped
        store.jobs.cancel("c2")
        progress.report(4, 18)
        assert eventually(lambda: second.stopped)
        with pytest.raises(StopRun):
            progress.report(5, 18)
    writer.close()
