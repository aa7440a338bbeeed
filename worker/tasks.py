"""The Celery task: a thin call into the process's job executor."""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

from shared.celery_app import RUN_JOB_TASK
from shared.settings import Settings
from worker.runtime import WorkerRuntime


def register(app: Celery, settings: Settings) -> None:
    """Register the task on ``app`` and the runtime's lifecycle on the pool's process signals."""
    runtime: dict[str, WorkerRuntime] = {}

    def current() -> WorkerRuntime:
        if "rt" not in runtime:  # a pool without child processes (solo, threads)
            start_runtime()
        return runtime["rt"]

    @worker_process_init.connect(weak=False)
    def start_runtime(**_: object) -> None:
        runtime["rt"] = WorkerRuntime(settings)
        runtime["rt"].start()

    @worker_process_shutdown.connect(weak=False)
    def stop_runtime(**_: object) -> None:
        if "rt" in runtime:
            runtime["rt"].stop()

    @app.task(name=RUN_JOB_TASK, ignore_result=True)
    def run_job(job_id: str) -> None:
        current().executor().execute(job_id)
