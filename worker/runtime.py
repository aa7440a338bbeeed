"""Per-process worker state: settings, clients, the loaded runner, readiness heartbeat.

The pipeline loads once per pool process, in a background thread started when the process
starts (Celery kills ``worker_process_init`` handlers that block for 4 s). How the load goes
is written to the :class:`~worker.lifecycle.LoadState` the main process reads: it consumes
only once the load is done, and exits when it failed. The process heartbeats as ready (for
``/readyz``, probes and queue ETAs) only after the load.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery import Celery

from shared.celery_app import make_celery
from shared.settings import Settings
from shared.storage import Storage
from shared.store import JobStore
from shared.webhooks import enqueue_webhook
from worker.executor import JobExecutor
from worker.lifecycle import LoadState
from worker.metrics import WorkerMetrics
from worker.runs import load_runner_class
from worker.sweeper import Sweeper

log = logging.getLogger(__name__)

# Heartbeats of a worker silent for this many readiness windows are dropped.
_FORGET_AFTER_WINDOWS = 20


class WorkerRuntime:
    def __init__(self, settings: Settings, state: LoadState) -> None:
        self.settings = settings
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._state = state
        self._stopped = threading.Event()
        self._executor: JobExecutor | None = None
        self._store = JobStore(settings)
        self._celery: Celery = make_celery(settings)
        self._sweeper = Sweeper(settings, self._store, self._celery, on_finished=self._notify)
        self.metrics = WorkerMetrics(self._store)

    def start(self) -> None:
        """Load in the background; :meth:`ready_executor` is None until the load is done."""
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
            log.critical(
                "worker %s: the model %s failed to load", self.name, self.settings.model_path, exc_info=exc
            )
            self._state.failed(os.getpid(), f"{type(exc).__name__}: {exc}")
            return
        self._state.ready(os.getpid())
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()

    def _notify(self, job_id: str) -> None:
        """Hand a finished job's webhook to the webhook worker; never delivered from here."""
        job = self._store.jobs.get(job_id)
        if job is not None and job.webhook:
            enqueue_webhook(self._celery, self.settings, job_id)

    def _heartbeat(self) -> None:
        """Readiness beats, and a recovery sweep whenever the farm is due one."""
        period = min(self.settings.worker_heartbeat_seconds, self.settings.sweep_interval_seconds)
        while not self._stopped.is_set():
            try:
                self._store.workers.ready(
                    self.name, forget_after=self.settings.worker_fresh_seconds * _FORGET_AFTER_WINDOWS
                )
                self._sweeper.maybe_sweep()
            except Exception:
                log.warning("worker %s: heartbeat failed", self.name, exc_info=True)
            self._stopped.wait(period)

    def ready_executor(self) -> JobExecutor | None:
        """The executor once the model is loaded (and warm); None while loading or failed."""
        return self._executor

    def stop(self) -> None:
        self._stopped.set()
        if self._executor is not None:
            self._executor.close()
        try:
            self._store.workers.gone(self.name)
        except Exception:
            log.warning("worker %s: could not deregister", self.name, exc_info=True)
