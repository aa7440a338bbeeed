"""The Celery task: a thin call into the pool process's job executor.

The pool process's runtime starts loading when the process starts; the main process's
:func:`worker.lifecycle.load_gate` consumes from the job queue only once it is ready. A
message that still reaches a pool process that cannot run it (loading, or failed) goes back
to the queue unacknowledged, for a worker that can.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.exceptions import Reject
from celery.signals import worker_process_init, worker_process_shutdown

from shared.celery_app import RUN_JOB_TASK
from shared.settings import Settings
from worker.lifecycle import LoadState, load_gate
from worker.runtime import WorkerRuntime


def register(app: Celery, settings: Settings) -> None:
    """Register the task, the load gate, and the runtime's lifecycle on the pool's process
    signals. Call in the main process, before the pool forks (the load state is shared)."""
    state = LoadState()
    app.steps["consumer"].add(load_gate(state, settings.queue_name, settings.load_timeout_seconds))
    runtime: dict[str, WorkerRuntime] = {}

    @worker_process_init.connect(weak=False)
    def start_runtime(**_: object) -> None:
        state.loading(os.getpid())
        runtime["rt"] = WorkerRuntime(settings, state)
        runtime["rt"].start()

    @worker_process_shutdown.connect(weak=False)
    def stop_runtime(**_: object) -> None:
        if "rt" in runtime:
            runtime["rt"].stop()

    @app.task(name=RUN_JOB_TASK, ignore_result=True)
    def run_job(job_id: str) -> None:
        executor = runtime["rt"].ready_executor() if "rt" in runtime else None
        if executor is None:
            raise Reject("this worker's model is not loaded", requeue=True)
        executor.execute(job_id)
