"""Cross-request batching: a worker that has claimed a job gathers queued jobs of the same
shape (size, steps, strength, scheduler, guidance) to run in the same pipeline call.

At submit every job's id is also pushed onto a list of its shape (:meth:`~shared.store.jobs.Jobs.submit`).
After claiming a job, the worker pops ids from that job's list and claims each with the
same :meth:`~shared.store.jobs.Jobs.claim` that guards every start, so a partner is only taken while it is
still queued; its own Celery message later finds it running or finished and does nothing.
Jobs of other shapes are never taken: their own messages run them.

Limits: at most ``BATCH_MAX_IMAGES`` images (samples, summed over jobs) per call, and at most
``BATCH_WAIT_MS`` spent waiting for partners to arrive, counted from the claim.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from shared.jobs import Job, JobStatus, shape_key
from shared.settings import Settings
from shared.store import JobStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    """A claimed job in a batch, with the attempt its lease belongs to and the Redis copy of
    its input (None once that has expired: the input is then read from S3)."""

    job: Job
    attempt: int
    image: bytes | None = None


def collect_partners(
    settings: Settings, store: JobStore, first: Member, worker: str, queued: int
) -> list[Member]:
    """Claim queued jobs of ``first``'s shape until the batch is full or the wait is over.

    ``queued``: how many jobs were still queued when ``first`` was claimed."""
    limit = settings.batch_max_images
    images = first.job.params.samples
    # On an idle farm a lone job does not wait or look: partners can only come from the queue.
    if limit <= 1 or images >= limit or queued == 0:
        return []
    shape = shape_key(first.job.params)
    wait = settings.batch_wait_ms / 1000
    deadline = time.monotonic() + wait
    partners: list[Member] = []
    while images < limit:
        job_id = store.shapes.next(shape, max(0.0, deadline - time.monotonic()))
        if job_id is None:
            break
        if job_id == first.job.id:
            continue
        job = store.jobs.get(job_id)
        if job is None or job.status is not JobStatus.QUEUED:
            continue  # ran already (its own message) or was canceled
        if images + job.params.samples > limit:
            store.shapes.put_back(shape, job_id)  # the next batch takes it
            break
        claim = store.jobs.claim(job_id, worker, settings.job_lease_seconds, settings.max_job_attempts)
        if not claim.started or claim.job is None:
            continue
        partners.append(Member(claim.job, claim.attempt, claim.image))  # as started, not as queued
        images += job.params.samples
    if partners:
        log.info(
            "job %s: batched with %s (%d images)",
            first.job.id,
            ", ".join(p.job.id for p in partners),
            images,
        )
    return partners
