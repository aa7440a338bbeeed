"""What the gateway does with a checked request: store, record, enqueue, wait, fetch."""

from __future__ import annotations

import logging
import secrets
from dataclasses import replace

from celery import Celery
from kombu.exceptions import KombuError

from shared.celery_app import RUN_JOB_TASK, make_celery
from shared.errors import NotFound, Unavailable
from shared.jobs import Job, input_key, new_job_id
from shared.jobstore import JobStore
from shared.schema import RANDOM_SEED, GenerationParams
from shared.settings import Settings
from shared.storage import Storage

log = logging.getLogger(__name__)

# Random seeds stay below 2**32 so they are easy to read and paste back.
_RANDOM_SEED_BOUND = 2**32


class JobService:
    """The gateway's side of a job's life. One per app; thread-safe."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore | None = None,
        storage: Storage | None = None,
        celery: Celery | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or JobStore(settings)
        self.storage = storage or Storage(settings)
        self.celery = celery or make_celery(settings)

    def submit(self, params: GenerationParams, image: bytes) -> Job:
        """Store the input, record the job and enqueue it; the queue carries only the id."""
        job_id = new_job_id()
        if params.seed == RANDOM_SEED:
            params = replace(params, seed=secrets.randbelow(_RANDOM_SEED_BOUND))
        seeds = [params.seed + i for i in range(params.samples)]
        self.storage.put(input_key(job_id), image, "application/octet-stream")
        job = self.store.create(job_id, params, seeds)
        try:
            self.celery.send_task(RUN_JOB_TASK, args=[job_id], queue=self.settings.queue_name)
        except (KombuError, OSError) as exc:
            log.error("job %s: cannot enqueue: %s", job_id, exc)
            self.store.fail(job_id, "the queue is unavailable")
            raise Unavailable("the queue is unavailable; try again") from exc
        log.info("job %s: queued (%d samples)", job_id, params.samples)
        return job

    def get(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    def wait(self, job_id: str, timeout: float) -> Job:
        """The job once it ends, or as it stands when ``timeout`` runs out."""
        job = self.store.wait(job_id, timeout)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    def image(self, job: Job, index: int) -> bytes:
        if not 0 <= index < len(job.outputs):
            raise NotFound(f"job {job.id} has no image {index}")
        cached = self.store.cached_result(job.id, index)
        return cached if cached is not None else self.storage.get(job.outputs[index])

    def ready(self) -> dict[str, bool]:
        """Readiness of each dependency, for ``/readyz``."""
        checks = {"redis": False, "storage": False, "workers": False}
        try:
            checks["redis"] = self.store.ping()
            window = self.settings.worker_heartbeat_seconds * 3
            checks["workers"] = bool(self.store.ready_workers(max_age=window))
        except Exception:
            log.warning("readiness: redis check failed", exc_info=True)
        checks["storage"] = self.storage.ping()
        return checks
