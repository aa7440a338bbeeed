"""Per-process worker state: settings, clients, the loaded runner, readiness heartbeat.

The pipeline loads once per worker process, in a background thread started when the
process starts (Celery kills ``worker_process_init`` handlers that block for 4 s).
Tasks wait for the load to finish; the process reports ready only after it has.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery import Celery

from shared.celery_app import make_celery
from shared.jobstore import JobStore
from shared.settings import Settings
from shared.storage import Storage
from shared.webhooks import enqueue_webhook
from worker.executor import JobExecutor
from worker.metrics import WorkerMetrics
from worker.runner import load_runner_class
from worker.sweeper import Sweeper

log = logging.getLogger(__name__)


class WorkerRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._loaded = threading.Event()
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self._executor: JobExecutor | None = None
        self._store = JobStore(settings)
        self._celery: Celery = make_celery(settings)
        self._sweeper = Sweeper(settings, self._store, self._celery)
        self.metrics = WorkerMetrics(self._store)

    def start(self) -> None:
        """Load in the background; :meth:`executor` blocks until loading is done."""
        self.metrics.serve(self.settings.worker_metrics_port)
        threading.Thread(target=self._load, name="runner-load", daemon=True).start()

    def _load(self) -> None:
        try:
            storage = Storage(self.settings)
            runner = load_runner_class(self.settings.runner)(self.settings)
            runner.load()
            self._executor = JobExecutor(
                self.settings,
                self._store,
                storage,
                runner,
                self.name,
                on_finished=self._notify,
                metrics=self.metrics,
            )
        except BaseException as exc:
            log.exception("worker %s: loading failed", self.name)
            self._error = exc
        finally:
            self._loaded.set()
        if self._error is None:
            threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()

    def _notify(self, job_id: str) -> None:
        """Hand a finished job's webhook to the webhook worker; never delivered from here."""
        job = self._store.get(job_id)
        if job is not None and job.webhook:
            enqueue_webhook(self._celery, self.settings, job_id)

    def _heartbeat(self) -> None:
        """Readiness beats, and a recovery sweep whenever the farm is due one."""
        period = min(self.settings.worker_heartbeat_seconds, self.settings.sweep_interval_seconds)
        while not self._stopped.is_set():
            try:
                self._store.mark_worker_ready(self.name)
                self._sweeper.maybe_sweep()
            except Exception:
                log.warning("worker %s: heartbeat failed", self.name, exc_info=True)
            self._stopped.wait(period)

    def executor(self) -> JobExecutor:
        if not self._loaded.wait(self.settings.load_timeout_seconds):
            raise RuntimeError("the model did not load in time")
        if self._executor is None:
            raise RuntimeError(f"the model failed to load: {self._error}")
        return self._executor

    def stop(self) -> None:
        self._stopped.set()
        if self._executor is not None:
            self._executor.close()
        try:
            self._store.mark_worker_gone(self.name)
        except Exception:
            log.warning("worker %s: could not deregister", self.name, exc_info=True)
