"""What the gateway does with a checked request: store, record, enqueue, wait, fetch."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import replace
from typing import assert_never

import redis
from celery import Celery
from kombu.exceptions import KombuError

from api.decodes import DecodeGate
from api.offload import offloaded
from api.syncwaits import SyncWaits
from shared.celery_app import RUN_JOB_TASK, make_celery
from shared.errors import (
    Conflict,
    IdempotencyMismatch,
    InvalidInput,
    NotEnoughCredits,
    NotFound,
    RateLimited,
    ServiceError,
    Unauthorized,
    Unavailable,
)
from shared.images import check_image_bytes, image_pixels
from shared.jobs import Job, is_job_id, new_job_id
from shared.keys import KeyStore
from shared.pricing import format_credits, job_cost_milli
from shared.schema import RANDOM_SEED, GenerationParams
from shared.settings import Settings
from shared.storage import Storage
from shared.store import Idempotency, JobStore, SubmitOutcome, Submitted, Watched
from shared.webhooks import WebhookSender, enqueue_webhook

log = logging.getLogger(__name__)

_QUEUE_FULL_RETRY_SECONDS = 10

# How long a repeated submit waits for the first one with its key to be recorded.
_CLAIM_WAIT_SECONDS = 10.0


def _fingerprint(params: GenerationParams, image: bytes, webhook: str | None) -> str:
    digest = hashlib.sha256(json.dumps(params.to_dict(), sort_keys=True).encode())
    digest.update(b"\0" + (webhook or "").encode() + b"\0")
    digest.update(image)
    return digest.hexdigest()


def _refusal(submitted: Submitted, cost: int) -> ServiceError:
    """The client's error for a submit the job store refused."""
    match submitted.outcome:
        case SubmitOutcome.FULL:
            return Unavailable("the queue is full; try again later", retry_after=_QUEUE_FULL_RETRY_SECONDS)
        case SubmitOutcome.CREDITS:
            return NotEnoughCredits(
                f"not enough credits: this job costs {format_credits(cost)}",
                balance=format_credits(submitted.balance_milli),
                cost=format_credits(cost),
            )
        case SubmitOutcome.REVOKED:
            return Unauthorized("missing, unknown or revoked API key")
        case SubmitOutcome.SUPERSEDED:
            return Unavailable("a retry with this Idempotency-Key has taken it over; retry")
        case SubmitOutcome.QUEUED:
            raise RuntimeError("a queued job was reported without its record")
        case _:
            assert_never(submitted.outcome)


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
        keys: KeyStore | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or JobStore(settings)
        self.storage = storage or Storage(settings)
        self.celery = celery or make_celery(settings)
        self.webhooks = WebhookSender(settings)
        self.keys = keys or KeyStore(settings)
        self.decodes = DecodeGate(settings.decode_budget_pixels, settings.max_decodes_per_key)
        self.sync_waits = SyncWaits(settings.max_sync_waits_per_key, settings.max_sync_waits_per_job)

    def submit(
        self,
        params: GenerationParams,
        image: bytes,
        webhook: str | None = None,
        idempotency_key: str | None = None,
        owner: str | None = None,
    ) -> Job:
        """Accept a job once: with an ``idempotency_key`` the same body returns the same job.

        The key is bound to a job id before the job is recorded, and the submit script
        records the job only while the key is still bound to it, so at most one job is ever
        recorded (and charged) per key. A refused submit frees the key; an ambiguous one (Redis
        failed, perhaps after the job was recorded) keeps it, and the retry finds the job. A
        retry that finds the key bound to a job that was never recorded takes the key over."""
        job_id = new_job_id()
        if idempotency_key is None:
            return self._enqueue(job_id, params, image, webhook, owner)
        idempotency = Idempotency(f"{owner or ''}:{idempotency_key}", _fingerprint(params, image, webhook))
        owner_fp, owner_job = self.store.idempotency.claim(
            idempotency, job_id, self.settings.idempotency_ttl_seconds
        )
        if owner_fp != idempotency.fingerprint:
            raise IdempotencyMismatch("Idempotency-Key was already used with a different body")
        if owner_job != job_id:
            job = self.store.waits.wait(owner_job, _CLAIM_WAIT_SECONDS, any_event=True)
            if job is not None:
                log.info("job %s: returned again for its idempotency key", owner_job)
                return job
            if not self.store.idempotency.rebind(idempotency, owner_job, job_id):
                raise Unavailable("the job for this Idempotency-Key is still being accepted; retry")
            log.warning("job %s: never recorded; its idempotency key now names job %s", owner_job, job_id)
        try:
            return self._enqueue(job_id, params, image, webhook, owner, idempotency)
        except redis.RedisError:
            raise  # the job may have been recorded: the key stays bound for the retry to find it
        except Exception:
            self.store.idempotency.release(idempotency, job_id)
            raise

    def _enqueue(
        self,
        job_id: str,
        params: GenerationParams,
        image: bytes,
        webhook: str | None,
        owner: str | None,
        idempotency: Idempotency | None = None,
    ) -> Job:
        """Record the job, charged to ``owner``, with a Redis copy of its input, in one step
        that refuses it when the queue is full or the key cannot pay; enqueue it (the queue
        carries only the id), then check the input's decode while a worker may already be
        running it. The client hears back after the check: an input that does not decode
        fails the job (refunded) with a 400. The decode waits for the process's
        :class:`DecodeGate`; a decode it refuses takes the job back like one that fails (429
        or 503), unless a worker has it already. The gateway writes nothing to S3: the Redis
        copy lives as long as the job, and the worker stores the input in S3."""
        if params.seed == RANDOM_SEED:
            params = replace(params, seed=secrets.randbelow(_RANDOM_SEED_BOUND))
        seeds = [params.seed + i for i in range(params.samples)]
        cost = job_cost_milli(params, self.settings) if owner else 0
        submitted = self.store.jobs.submit(
            job_id,
            params,
            seeds,
            webhook=webhook,
            owner=owner or "",
            cost_milli=cost,
            image=image,
            max_queue_depth=self.settings.max_queue_depth,
            idempotency=idempotency,
        )
        if submitted.job is None:
            raise _refusal(submitted, cost)
        try:
            self.celery.send_task(RUN_JOB_TASK, args=[job_id], queue=self.settings.queue_name)
        except (KombuError, OSError) as exc:
            log.error("job %s: cannot enqueue: %s", job_id, exc)
            self.store.jobs.fail_queued(job_id, "the queue is unavailable")  # refunds the charge
            raise Unavailable("the queue is unavailable; try again") from exc
        self._check_decodes(job_id, image, owner)
        log.info("job %s: queued (%d samples)", job_id, params.samples)
        return submitted.job

    def _check_decodes(self, job_id: str, image: bytes, owner: str | None) -> None:
        """Decode the input while a worker starts on the job (its header was checked before
        the job was accepted); an image that does not decode takes the job back, and so does
        a decode the gate refuses, unless a worker has started the job (it decodes the image
        itself, and fails the job visibly if it must)."""
        try:
            with self.decodes.admit(owner, image_pixels(image)):
                offloaded(check_image_bytes, image, self.settings)
        except InvalidInput as exc:
            # A worker that started the job already fails it on the same decode.
            if self.store.jobs.fail_queued(job_id, exc.message):
                self.store.blobs.drop_input(job_id)
            log.info("job %s: taken back, the image does not decode: %s", job_id, exc.message)
            raise
        except (RateLimited, Unavailable) as exc:
            if self.store.jobs.fail_queued(job_id, f"not accepted: {exc.message}"):
                self.store.blobs.drop_input(job_id)
                log.info("job %s: taken back, its image could not be checked now: %s", job_id, exc.message)
                raise
            log.info("job %s: a worker has it; the worker checks its image", job_id)

    def get(self, job_id: str, owner: str | None = None) -> Job:
        """The job, if ``owner`` may see it (another key's job is reported as missing). An id
        not of a job id's shape is missing too, before any store access."""
        if not is_job_id(job_id):
            raise NotFound("no such job")
        job = self.store.jobs.get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise NotFound(f"no job {job_id}")
        return job

    def latest(self, owner: str | None) -> Job | None:
        """The owner's latest job (anyone's with keys off)."""
        return self.store.jobs.latest(owner or "")

    def wait(self, job: Job, timeout: float) -> Watched:
        """The job once it ends, or as it stands when ``timeout`` runs out, with the outputs
        its answer carries (all with ``base64``, else the first) while Redis keeps them, and
        its owner's balance, read together with the event that ends the wait."""
        watched = self.store.waits.watch(
            job.id, timeout, images=job.params.samples if job.params.base64 else 1, owner=job.owner
        )
        if watched.job is None:
            raise NotFound(f"no job {job.id}")
        return watched

    def check_webhook(self, url: str) -> str:
        """A webhook URL the service may call: configured secret, http(s), allowed address."""
        if not self.settings.webhook_secret:
            raise InvalidInput("webhook", "webhooks are not enabled on this service (no WEBHOOK_SECRET)")
        self.webhooks.check(url)
        return url

    def cancel(self, job_id: str, owner: str | None = None) -> Job:
        """Cancel a queued job now or a running one at its next step; finished jobs: 409."""
        self.get(job_id, owner)
        previous = self.store.jobs.cancel(job_id)
        if previous is None:
            raise NotFound(f"no job {job_id}")
        if previous.terminal:
            raise Conflict(f"job {job_id} already {previous.value}; nothing to cancel")
        job = self.get(job_id)
        if job.status.terminal:
            self.notify(job)
        log.info("job %s: cancel requested while %s", job_id, previous.value)
        return job

    def notify(self, job: Job) -> None:
        """Queue the webhook of a job that just ended (delivered by the webhook worker)."""
        if job.webhook:
            enqueue_webhook(self.celery, self.settings, job.id)

    def queue_estimate(self, job_id: str) -> tuple[int, float | None]:
        """Jobs ahead of this one and a rough wait: (position + 1) x average run / workers."""
        rank, average, workers = self.store.jobs.queue_estimate(job_id, self.settings.worker_fresh_seconds)
        # A job read as queued that has just left the queue set is being started: next up.
        position = rank or 0
        if average is None:
            return position, None
        return position, round((position + 1) * average / max(1, workers), 2)

    def image(self, job: Job, index: int) -> bytes:
        """Output ``index`` of a succeeded job: from Redis while it is kept there, else S3."""
        if not 0 <= index < len(job.outputs):
            raise NotFound(f"job {job.id} has no image {index}")
        cached = self.store.blobs.result(job.id, index)
        return cached if cached is not None else self.storage.get(job.outputs[index])

    def images(
        self, job: Job, count: int | None = None, cached: list[bytes | None] | None = None
    ) -> list[bytes]:
        """The first ``count`` outputs (all by default), as :meth:`image` finds them; with
        ``cached``, those already read from Redis."""
        keys = job.outputs[: len(job.outputs) if count is None else count]
        if cached is None or len(cached) < len(keys):
            cached = self.store.blobs.results(job.id, len(keys))
        return [
            data if data is not None else self.storage.get(key)
            for data, key in zip(cached, keys, strict=True)
        ]

    def ready(self) -> dict[str, bool]:
        """Readiness of each dependency, for ``/readyz``."""
        checks = {"redis": False, "storage": False, "workers": False}
        try:
            checks["redis"] = self.store.ping()
            window = self.settings.worker_fresh_seconds
            checks["workers"] = bool(self.store.workers.fresh(max_age=window))
        except Exception:
            log.warning("readiness: redis check failed", exc_info=True)
        checks["storage"] = self.storage.ping()
        return checks
