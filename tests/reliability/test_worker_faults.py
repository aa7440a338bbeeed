"""Workers dying, stopping and crashing: every accepted job completes once or fails visibly."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from deploy.local import WorkerProcess
from shared.jobs import JobStatus
from shared.pricing import job_cost_milli
from shared.settings import Settings
from tests.conftest import start_worker
from tests.reliability.conftest import LONG, LONG_SMALL, Farm


def owner_of(job_worker: str, workers: list[WorkerProcess]) -> WorkerProcess:
    """The WorkerProcess whose pool child (``host:pid``) runs the job."""
    pid = int(job_worker.rsplit(":", 1)[1])
    group = os.getpgid(pid)
    return next(w for w in workers if w.pid == group)


def test_kill_9_mid_denoising_five_times(farm: Farm, fault_settings: Settings, tmp_path: Path) -> None:
    workers = [start_worker(fault_settings, tmp_path, f"w{i}") for i in range(2)]
    before_calls, before_balance = farm.pipeline_calls(), farm.balance()
    jobs = []
    try:
        for round_ in range(5):
            job = farm.submit(seed=round_, **LONG_SMALL)
            running = farm.wait(job.id, lambda j: j.status is JobStatus.RUNNING and j.progress_step >= 3)
            victim = owner_of(running.worker or "", workers)
            victim.signal(signal.SIGKILL)
            victim.proc.wait(10)  # type: ignore[union-attr]
            workers.remove(victim)
            # A replacement boots while the surviving worker takes the job over.
            replacement = WorkerProcess(fault_settings, tmp_path, name=f"w{round_ + 2}")
            ready_before = farm.store.workers.fresh(max_age=3600)
            replacement.start()
            workers.append(replacement)
            done = farm.finished(job.id)
            assert done.status is JobStatus.SUCCEEDED, done.error
            # Taken over once; on a starved machine a lease may lapse once more on the way.
            assert done.attempts >= 2 and done.worker != running.worker
            jobs.append(done)
            replacement.wait_ready(farm.store, timeout=180, before=ready_before)
    finally:
        for worker in workers:
            worker.stop()
    cost = job_cost_milli(jobs[0].params, fault_settings)
    assert farm.pipeline_calls() - before_calls == 5  # each job ran to completion exactly once
    assert before_balance - farm.balance() == 5 * cost  # one charge per job, nothing refunded
    for job in jobs:
        assert farm.objects(job.id, count=2) == [f"jobs/{job.id}/0.jpg", f"jobs/{job.id}/input"]


def test_sigterm_mid_job_finishes_it(farm: Farm, fault_settings: Settings, tmp_path: Path) -> None:
    worker = start_worker(fault_settings, tmp_path, "term")
    try:
        job = farm.submit(**LONG)
        farm.wait(job.id, lambda j: j.status is JobStatus.RUNNING and j.progress_step >= 3)
        os.kill(worker.pid, signal.SIGTERM)  # the main process: a warm shutdown
        done = farm.finished(job.id)
        assert done.status is JobStatus.SUCCEEDED and done.attempts == 1
        assert worker.proc is not None and worker.proc.wait(60) == 0
    finally:
        worker.stop()


def test_task_that_always_kills_its_worker_fails_after_bounded_retries(
    farm: Farm, fault_settings: Settings, tmp_path: Path
) -> None:
    settings = fault_settings.replace(runner="tests.fixtures.runners:CrashOnMarkerRunner")
    worker = start_worker(settings, tmp_path, "crashy")
    try:
        before = farm.balance()
        job = farm.submit(prompt="a lighthouse [crash]")
        done = farm.finished(job.id, timeout=240)
        assert done.status is JobStatus.FAILED
        assert "started 3 times" in (done.error or "")
        assert done.attempts == 4  # three starts and the claim that gave up
        assert farm.balance() == before  # refunded
        healthy = farm.submit(prompt="a lighthouse")
        assert farm.finished(healthy.id).status is JobStatus.SUCCEEDED
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def oom_farm(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One worker whose GPU is too small for some batches, shared by the tests below."""
    settings = base_settings.replace(
        queue_name="img2img-oom", key_prefix="t-oom", runner="tests.fixtures.runners:OutOfMemoryRunner"
    )
    worker = start_worker(settings, tmp_path_factory.mktemp("oom"), "oom")
    yield Farm(settings)
    worker.stop()


def test_out_of_memory_at_batch_four_succeeds_by_splitting(oom_farm: Farm) -> None:
    before = oom_farm.pipeline_calls()
    job = oom_farm.submit(prompt="a forest [oom>1]", samples=4, seed=10)
    done = oom_farm.finished(job.id)
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.seeds == (10, 11, 12, 13) and len(done.outputs) == 4
    assert oom_farm.pipeline_calls() - before == 4  # 4 -> 2 + 2 -> 1 + 1 + 1 + 1


def test_out_of_memory_at_batch_one_fails_clean(oom_farm: Farm) -> None:
    before = oom_farm.balance()
    job = oom_farm.submit(prompt="a forest [oom>0]")
    done = oom_farm.finished(job.id)
    assert done.status is JobStatus.FAILED
    assert "OutOfMemoryError" in (done.error or "") and "out of memory" in (done.error or "")
    assert oom_farm.balance() == before
    after = oom_farm.submit(prompt="a forest")
    assert oom_farm.finished(after.id).status is JobStatus.SUCCEEDED


def test_job_past_its_soft_time_limit_fails_with_a_timeout(
    farm: Farm, fault_settings: Settings, tmp_path: Path
) -> None:
    settings = fault_settings.replace(task_soft_time_limit=1, task_time_limit=60, visibility_timeout=120)
    worker = start_worker(settings, tmp_path, "slow")
    try:
        before = farm.balance()
        job = farm.submit(img_width=768, img_height=768, **LONG)
        done = farm.finished(job.id)
        assert done.status is JobStatus.FAILED
        assert done.error == "the job ran past its time limit of 1 s"
        assert farm.balance() == before
    finally:
        worker.stop()
