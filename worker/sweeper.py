"""Recovery of jobs whose worker died, whose message was lost, or that are stuck past their
deadline.

Every ready worker process runs :meth:`Sweeper.maybe_sweep` from its heartbeat thread; a
farm-wide lock lets one sweep run per interval. A sweep:

- re-enqueues running jobs whose lease lapsed (their worker stopped renewing it: killed,
  out of memory, host lost), so a live worker takes them over within about
  ``JOB_LEASE_SECONDS + SWEEP_INTERVAL_SECONDS``; after ``MAX_JOB_ATTEMPTS`` starts the
  claim fails the job (and refunds it) instead of looping;
- re-sends queued jobs whose message is lost: sent (or last seen in the broker) more than
  ``ORPHAN_AFTER_SECONDS`` ago, never claimed, and found neither waiting in the broker's
  queue nor delivered to a worker. A gateway that died between recording a job and
  publishing it, or a broker that lost a message, costs a job at most about
  ``ORPHAN_AFTER_SECONDS + SWEEP_INTERVAL_SECONDS`` of extra wait. A job whose message is
  still waiting is left alone (no duplicates in a long queue); a duplicate sent in a race
  costs nothing, since the claim runs a job once;
- fails (and refunds) queued jobs that waited longer than ``QUEUED_DEADLINE_SECONDS``;
- re-enqueues succeeded jobs whose outputs are still not in S3 past their upload deadline
  (the upload failed, or its worker died after answering): the claim hands such a job
  out as an upload, which a worker finishes from the images kept in Redis.

Every job a sweep ends is handed to ``on_finished`` (its webhook), like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery

from shared.celery_app import RUN_JOB_TASK
from shared.settings import Settings
from shared.store import JobStore

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        celery: Celery,
        on_finished: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.celery = celery
        self.on_finished = on_finished

    def maybe_sweep(self) -> bool:
        """Sweep if no other process did within the interval; True when this one swept."""
        if not self.store.locks.try_take("sweep", self.settings.sweep_interval_seconds * 0.9):
            return False
        self.sweep()
        return True

    def sweep(self) -> None:
        for job_id in self.store.jobs.lapsed_leases():
            self._requeue(job_id, "requeue", "its worker stopped renewing the lease")
        for job_id in self.store.uploads.lapsed():
            self._requeue(job_id, "upload", "its outputs are not in S3 yet")
        self.resend_orphans()
        deadline = self.settings.queued_deadline_seconds
        for job_id in self.store.jobs.stale_queued(deadline):
            if self.store.jobs.fail_queued(job_id, f"the job was not started within {deadline} s"):
                log.error("job %s: failed, queued for more than %d s", job_id, deadline)
                if self.on_finished is not None:
                    self.on_finished(job_id)

    def resend_orphans(self) -> list[str]:
        """Send again the queued jobs whose message is in neither the queue nor a worker."""
        candidates = self.store.jobs.unclaimed_since(self.settings.orphan_after_seconds)
        if not candidates:
            return []
        in_flight = self.store.broker.in_flight(self.settings.queue_name, RUN_JOB_TASK)
        lost = [job_id for job_id in candidates if job_id not in in_flight]
        for job_id in lost:
            log.warning("job %s: queued without a message; sending it again", job_id)
            self.celery.send_task(RUN_JOB_TASK, args=[job_id], queue=self.settings.queue_name)
        self.store.jobs.mark_sent(candidates)  # each is looked at again ORPHAN_AFTER_SECONDS from now
        return lost

    def _requeue(self, job_id: str, kind: str, why: str) -> None:
        """Send the job's task again, once per lease period however many sweepers see it."""
        if self.store.locks.try_take(f"{kind}:{job_id}", self.settings.job_lease_seconds):
            log.warning("job %s: %s; re-enqueueing", job_id, why)
            self.celery.send_task(RUN_JOB_TASK, args=[job_id], queue=self.settings.queue_name)
