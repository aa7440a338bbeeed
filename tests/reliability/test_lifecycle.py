"""What a GPU farm does to its workers, with real worker processes: cold starts slower than
the time limit, workers that cannot load, lost messages and stale attempts. No accepted job
is stranded, run twice, or ended by a worker that no longer owns it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from kombu import Connection

from deploy.local import WorkerProcess
from shared.celery_app import RUN_JOB_TASK, make_celery
from shared.jobs import JobStatus, new_job_id
from shared.pricing import job_cost_milli
from shared.schema import parse_request
from shared.settings import Settings
from shared.store import JobStore
from tests.conftest import start_worker
from tests.helpers import raw_redis, reference_body, sample_image
from tests.reliability.conftest import Farm
from worker.lifecycle import EXIT_LOAD_FAILED
from worker.sweeper import Sweeper

SMALL = 128  # pixels: a job of a few hundred milliseconds at most


def distinct_shapes(count: int) -> list[dict[str, object]]:
    """Requests that batching cannot put together: each has its own number of steps."""
    return [{"seed": i, "num_inference_steps": 20 + 5 * i, "strength": 0.1} for i in range(count)]


def test_a_worker_that_cannot_load_exits_and_strands_no_job(
    farm: Farm, fault_settings: Settings, tmp_path: Path
) -> None:
    healthy = start_worker(fault_settings, tmp_path, "healthy")
    broken = WorkerProcess(
        fault_settings.replace(model_dir=str(tmp_path / "no-such-model")), tmp_path, name="broken"
    )
    try:
        broken.start()
        jobs = [farm.submit(**shape) for shape in distinct_shapes(6)]
        done = [farm.finished(job.id, timeout=120) for job in jobs]
        assert [job.status for job in done] == [JobStatus.SUCCEEDED] * 6, [job.error for job in done]
        assert all(job.attempts == 1 for job in done)
        assert broken.proc is not None and broken.proc.wait(60) == EXIT_LOAD_FAILED
        log = broken.log_file.read_text()
        assert "worker exits with status 3: the model failed to load" in log
        assert "Task img2img.run_job" not in log  # it never took a message
    finally:
        broken.stop()
        healthy.stop()


def test_a_worker_loading_past_the_time_limit_takes_no_message_until_loaded(
    farm: Farm, fault_settings: Settings, tmp_path: Path
) -> None:
    settings = fault_settings.replace(
        runner="tests.fixtures.runners:SlowLoadRunner",
        allowed_sizes=(SMALL,),  # jobs far inside the time limit, on however busy a machine
        torch_threads=1,  # two workers share the cores: spinning thread pools stall each other
        task_soft_time_limit=3,
        task_time_limit=30,
        visibility_timeout=60,
    )
    farm = Farm(settings)
    healthy = start_worker(settings, tmp_path, "healthy")
    slow = WorkerProcess(settings, tmp_path, name="slow", extra_env={"SLOW_LOAD_SECONDS": "6"})
    try:
        healthy.signal(signal.SIGSTOP)
        before = farm.store.workers.fresh(max_age=3600)
        slow.start()
        jobs = [farm.submit(img_width=SMALL, img_height=SMALL, **shape) for shape in distinct_shapes(4)]
        slow.wait_ready(farm.store, timeout=120, before=before)
        healthy.signal(signal.SIGCONT)
        done = [farm.finished(job.id, timeout=120) for job in jobs]
        assert [job.status for job in done] == [JobStatus.SUCCEEDED] * 4, [j.error for j in done]
        assert all(job.attempts == 1 for job in done)
    finally:
        healthy.signal(signal.SIGCONT)
        slow.stop()
        healthy.stop()


def test_a_job_whose_message_was_lost_runs_within_the_orphan_bound(
    fault_settings: Settings, tmp_path: Path
) -> None:
    settings = fault_settings.replace(orphan_after_seconds=2.0)
    farm = Farm(settings)
    worker = start_worker(settings, tmp_path, "sweeping")
    try:
        params = parse_request(reference_body(seed=5), settings).params
        job_id = new_job_id()
        # Recorded and charged, then the gateway died before publishing its message.
        recorded = farm.store.jobs.submit(
            job_id, params, [5], owner=farm.owner, cost_milli=100, image=sample_image()
        )
        assert recorded.job is not None
        done = farm.finished(job_id, timeout=60)
        assert done.status is JobStatus.SUCCEEDED and done.attempts == 1, done.error
        assert done.started_at is not None
        waited = done.started_at - done.created_at  # until a worker took it: the run not counted
        bound = settings.orphan_after_seconds + 2 * settings.sweep_interval_seconds + 5
        assert waited < bound, f"the orphan waited {waited:.1f} s"
    finally:
        worker.stop()


def test_only_jobs_without_a_message_anywhere_are_sent_again(isolated_settings: Settings) -> None:
    """A message waiting in a long queue, or taken by a worker and not yet acknowledged, is
    not duplicated; a job with neither gets one new message."""
    settings = isolated_settings.replace(orphan_after_seconds=0.5)
    store = JobStore(settings)
    celery = make_celery(settings)
    params = parse_request(reference_body(), settings).params
    waiting, delivered, lost = "a" * 32, "b" * 32, "c" * 32
    for job_id in (waiting, delivered, lost):
        assert store.jobs.submit(job_id, params, [1]).job is not None
    celery.send_task(RUN_JOB_TASK, args=[delivered], queue=settings.queue_name)
    celery.send_task(RUN_JOB_TASK, args=[waiting], queue=settings.queue_name)
    with Connection(settings.redis_url) as conn:
        # A worker's prefetch: taken from the queue, not acknowledged.
        taken = conn.SimpleQueue(settings.queue_name, no_ack=False).get(timeout=5)
        assert taken.payload[0] == [delivered]
        in_flight = store.broker.in_flight(settings.queue_name, RUN_JOB_TASK)
        assert {waiting, delivered} <= in_flight and lost not in in_flight
        time.sleep(0.6)  # all three are past ORPHAN_AFTER_SECONDS
        sweeper = Sweeper(settings, store, celery)
        assert sweeper.resend_orphans() == [lost]
        assert raw_redis(settings).llen(settings.queue_name) == 2  # the waiting message and the new one
        assert lost in store.broker.in_flight(settings.queue_name, RUN_JOB_TASK)
        assert sweeper.resend_orphans() == []  # each is looked at again ORPHAN_AFTER_SECONDS later
        taken.ack()


def test_a_stale_attempt_cannot_fail_the_job_another_worker_runs(
    fault_settings: Settings, tmp_path: Path
) -> None:
    settings = fault_settings.replace(runner="tests.fixtures.runners:StaleAttemptRunner")
    farm = Farm(settings)
    stalled = start_worker(settings, tmp_path, "stalled", env={"STALL_UNTIL_TAKEN_OVER": "1"})
    healthy = None
    try:
        before = farm.balance()
        job = farm.submit()
        farm.wait(job.id, lambda j: j.status is JobStatus.RUNNING)
        healthy = start_worker(settings, tmp_path, "healthy")  # takes the job over once the lease lapses
        done = farm.finished(job.id)
        assert done.status is JobStatus.SUCCEEDED and done.attempts == 2, done.error
        assert not done.refunded
        assert before - farm.balance() == job_cost_milli(done.params, settings)  # charged once
        stalled_log = stalled.log_file
        deadline = time.monotonic() + 30
        while "driver timed out" not in stalled_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "driver timed out" in stalled_log.read_text()  # the stale attempt did try to fail it
        again = farm.store.jobs.get(job.id)
        assert again is not None and again.status is JobStatus.SUCCEEDED and not again.refunded
    finally:
        stalled.stop()
        if healthy is not None:
            healthy.stop()


def test_jobs_the_sweeper_fails_send_their_webhook(isolated_settings: Settings) -> None:
    settings = isolated_settings.replace(queued_deadline_seconds=0)
    store = JobStore(settings)
    params = parse_request(reference_body(), settings).params
    assert store.jobs.submit("overdue", params, [1], webhook="https://example.com/hook").job is not None
    ended: list[str] = []
    Sweeper(settings, store, make_celery(settings), on_finished=ended.append).sweep()
    job = store.jobs.get("overdue")
    assert job is not None and job.status is JobStatus.FAILED
    assert ended == ["overdue"]
