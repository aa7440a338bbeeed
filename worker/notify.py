"""Webhook delivery, run by a light Celery worker on the webhook queue (no torch).

The GPU worker only enqueues a delivery when a job ends; this worker POSTs the signed
job document, retrying with exponential backoff up to ``WEBHOOK_MAX_ATTEMPTS`` times.
Delivery is at least once: the outcome is recorded on the job, and a task that finds it
recorded does nothing, but a POST whose answer was lost (a timeout after the receiver took
it, this worker killed before recording it) is sent again. Receivers deduplicate on the
job id header.
"""

from __future__ import annotations

import json
import logging
import time

from celery import Celery, Task

from shared.errors import InvalidInput
from shared.jobview import job_document
from shared.settings import Settings
from shared.store import JobStore
from shared.webhooks import WEBHOOK_TASK, WebhookRejected, WebhookSender, signed_headers

log = logging.getLogger(__name__)

DELIVERED = "delivered"


def register(app: Celery, settings: Settings) -> None:
    store = JobStore(settings)
    sender = WebhookSender(settings)

    @app.task(name=WEBHOOK_TASK, bind=True, acks_late=True, max_retries=settings.webhook_max_attempts - 1)
    def deliver_webhook(task: Task, job_id: str) -> None:
        job = store.jobs.get(job_id)
        if job is None or not job.webhook or store.webhooks.get(job_id) is not None:
            return
        body = json.dumps(job_document(job, settings.public_url)).encode()
        headers = signed_headers(settings.webhook_secret, job_id, int(time.time()), body)
        attempt = task.request.retries + 1
        try:
            status = sender.post(job.webhook, body, headers)
        except InvalidInput as exc:
            log.warning("job %s: webhook refused: %s", job_id, exc.message)
            store.webhooks.set(job_id, f"failed: {exc.message}")
            return
        except (OSError, WebhookRejected) as exc:
            if attempt >= settings.webhook_max_attempts:
                log.warning("job %s: webhook gave up after %d attempts: %s", job_id, attempt, exc)
                store.webhooks.set(job_id, f"failed: {exc}")
                return
            delay = settings.webhook_backoff_seconds * 2 ** (attempt - 1)
            log.info("job %s: webhook attempt %d failed (%s); retrying in %.1fs", job_id, attempt, exc, delay)
            raise task.retry(countdown=delay, exc=exc) from exc
        store.webhooks.set(job_id, DELIVERED)
        log.info("job %s: webhook delivered (HTTP %d, attempt %d)", job_id, status, attempt)
