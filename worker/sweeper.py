"""Recovery of jobs whose worker died, and of jobs stuck past their deadline.

Every worker process runs :meth:`Sweeper.maybe_sweep` from its heartbeat thread; a
farm-wide lock lets one sweep run per interval. A sweep:

- re-enqueues running jobs whose lease lapsed (their worker stopped renewing it: killed,
  out of memory, host lost), so a live worker takes them over within about
  ``JOB_LEASE_SECONDS + SWEEP_INTERVAL_SECONDS``; after ``MAX_JOB_ATTEMPTS`` starts the
  claim fails the job (and refunds it) instead of looping;
- fails (and refunds) queued jobs that waited longer than ``QUEUED_DEADLINE_SECONDS``;
- re-enqueues succeeded jobs whose outputs are still not in S3 past their upload deadline
  (the upload failed, or its worker died after answering): the claim hands such a job
  out as an upload, which a worker finishes from the images kept in Redis.
"""

from __future__ import annotations

import logging

from celery import Celery

from shared.celery_app import RUN_JOB_TASK
from shared.jobstore import JobStore
from shared.settings import Settings

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(self, settings: Settings, store: JobStore, celery: Celery) -> None:
        self.settings = settings
        self.store = store
        self.celery = celery

    def maybe_sweep(self) -> bool:
        """Sweep if no other process did within the interval; True when this one swept."""
        if not self.store.try_lock("sweep", self.settings.sweep_interval_seconds * 0.9):
            return False
        self.sweep()
        return True

    def sweep(self) -> None:
        for job_id in self.store.lapsed_leases():
            self._requeue(job_id, "requeue", "its worker stopped renewing the lease")
        for job_id in self.store.lapsed_uploads():
            self._requeue(job_id, "upload", "its outputs are not in S3 yet")
        deadline = self.settings.queued_deadline_seconds
        for job_id in self.store.stale_queued(deadline):
            if self.store.fail(job_id, f"the job was not started within {deadline} s"):
                log.error("job %s: failed, queued for more than %d s", job_id, deadline)

    def _requeue(self, job_id: str, kind: str, why: str) -> None:
        """Send the job's task again, once per lease period however many sweepers see it."""
        if self.store.try_lock(f"{kind}:{job_id}", self.settings.job_lease_seconds):
            log.warning("job %s: %s; re-enqueueing", job_id, why)
            self.celery.send_task(RUN_JOB_TASK, args=[job_id], queue=self.settings.queue_name)
