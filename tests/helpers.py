"""Request bodies and images the tests share."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Sequence
from typing import Any, cast

import redis
from PIL import Image

from shared.fetch import ImageFetcher
from shared.images import check_image_bytes, read_image_field
from shared.jobs import Job
from shared.schema import REFERENCE_REQUEST, GenerationParams
from shared.settings import Settings
from shared.store import JobStore, RedisKeys

REFERENCE = REFERENCE_REQUEST


def sample_image(size: tuple[int, int] = (512, 512), fmt: str = "PNG") -> bytes:
    """A deterministic picture with some structure (a gradient and a square)."""
    width, height = size
    image = Image.new("RGB", size)
    image.putdata([(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)])
    image.paste((250, 200, 40), (width // 4, height // 4, width // 2, height // 2))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def reference_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"image": b64(sample_image()), **REFERENCE}
    body.update(changes)
    return body


def decode_image_field(value: str, settings: Settings, fetcher: ImageFetcher | None = None) -> bytes:
    """Every check the gateway runs on an ``image`` field, in one call: the header checks
    before it accepts a job (:func:`read_image_field`), then the full decode it runs once the
    job is queued (:func:`check_image_bytes`)."""
    data = read_image_field(value, settings, fetcher)
    check_image_bytes(data, settings)
    return data


def jpeg_pixels(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    image.load()
    return image


def raw_redis(settings: Settings, binary: bool = False) -> redis.Redis:
    """A client of the settings' Redis, for tests that look under the store."""
    return redis.Redis.from_url(settings.redis_url, decode_responses=not binary)


def create_job(
    store: JobStore,
    job_id: str,
    params: GenerationParams,
    seeds: Sequence[int],
    webhook: str | None = None,
    image: bytes | None = None,
) -> Job:
    """Record a queued job that nobody pays for, with no queue limit (and no message)."""
    job = store.jobs.submit(job_id, params, seeds, webhook=webhook, image=image).job
    if job is None:
        raise AssertionError(f"job {job_id} was not recorded")
    return job


def queue_length(settings: Settings) -> int:
    """Queued jobs in the store of ``settings``."""
    return int(raw_redis(settings).zcard(RedisKeys(settings.key_prefix).queued))


def input_copy(settings: Settings, job_id: str) -> bytes | None:
    """The Redis copy of a job's input, while it is kept."""
    data = raw_redis(settings, binary=True).get(RedisKeys(settings.key_prefix).input(job_id))
    return cast(bytes | None, data)


def no_message_left(settings: Settings, job_id: str, queue: str | None = None, timeout: float = 30.0) -> None:
    """Wait until no message for ``job_id`` is waiting in ``queue`` (the job queue by default)
    or held by a worker unacknowledged: from then on no late delivery of it can come."""
    from shared.celery_app import RUN_JOB_TASK
    from shared.webhooks import WEBHOOK_TASK

    queue = queue or settings.queue_name
    task = WEBHOOK_TASK if queue == settings.webhook_queue else RUN_JOB_TASK
    broker = JobStore(settings).broker
    deadline = time.monotonic() + timeout
    while job_id in broker.in_flight(queue, task):
        if time.monotonic() > deadline:
            raise AssertionError(f"a message for job {job_id} is still in {queue}")
        time.sleep(0.05)
