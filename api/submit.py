"""From a submit request to an accepted job, and from a job to its result: shared by every
protocol's submit route (v1, v2, the web UI API, OpenAI's edits)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Final, cast

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from api.auth import current_owner, note_balance
from api.context import fetcher
from api.service import JobService
from shared.errors import InvalidInput, JobFailed, ResultTimeout
from shared.images import read_image_field
from shared.jobs import Job, JobStatus
from shared.schema import Img2ImgRequest, parse_request

IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY: Final = 255


def json_body() -> object | None:
    """The decoded JSON body, or ``None`` when it is not JSON.

    413 past ``MAX_CONTENT_LENGTH``, chunked bodies included: for those werkzeug stops
    reading at the limit without raising, which would otherwise look like truncated JSON.
    """
    data = request.get_data(cache=True)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(data) >= limit:
        raise RequestEntityTooLarge()
    try:
        return request.get_json(force=True, silent=True)
    except RecursionError:  # nested deeper than the parser's stack
        return None


def idempotency_key() -> str | None:
    """The request's ``Idempotency-Key``: 1 to 255 characters when present."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidInput(IDEMPOTENCY_HEADER, f"must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    return key


def submit_from_request(svc: JobService) -> Job:
    """Check the body and image, then accept the job (once per ``Idempotency-Key``)."""
    body = json_body()
    if body is None:
        raise InvalidInput("body", "must be a JSON object")
    return accept_checked(svc, parse_request(body, svc.settings))


def accept_checked(svc: JobService, checked: Img2ImgRequest, image: bytes | None = None) -> Job:
    """Accept a checked request (once per ``Idempotency-Key``); ``image``: its bytes when they
    came in another part of the request, else read from its ``image`` field."""
    key = idempotency_key()
    webhook = svc.check_webhook(checked.webhook) if checked.webhook else None
    if image is None:
        image = read_image_field(checked.image, svc.settings, fetcher=fetcher())  # decoded in full by submit
    return svc.submit(checked.params, image, webhook=webhook, idempotency_key=key, owner=current_owner())


@contextmanager
def synchronous(svc: JobService) -> Iterator[None]:
    """Hold one of the key's synchronous waits while a request whose answer is its result is
    accepted and waited for: a 429 (nothing accepted, nothing charged) when the key holds all
    of its waits in this process."""
    with svc.sync_waits.for_key(current_owner()) as admitted:
        if not admitted:
            raise svc.sync_waits.refusal()
        yield


def wait_for_result(svc: JobService, job: Job) -> tuple[Job, list[bytes | None] | None]:
    """The job once it succeeds (within ``SYNC_WAIT_SECONDS``), with the outputs the wait
    read; for protocols whose answer is the result. A failed or canceled job is a
    :class:`JobFailed`; one still going after the wait a 504 that names it (it goes on, and
    ``/v1/jobs/{id}`` has it); a wait beyond the key's or the job's bound a 429 naming it."""
    cached: list[bytes | None] | None = None
    if not job.status.terminal:
        with svc.sync_waits.for_job(job.id) as admitted:
            if not admitted:
                raise svc.sync_waits.refusal(job.id)
            job, cached = watch(svc, job, svc.settings.sync_wait_seconds)
        if not job.status.terminal:
            raise ResultTimeout(
                f"job {job.id} is still {job.status.value}; it goes on: GET /v1/jobs/{job.id}", job.id
            )
    if job.status is not JobStatus.SUCCEEDED:
        raise JobFailed(job.error or f"job {job.status.value}", job.id)
    return job, cached


def watch(svc: JobService, job: Job, budget: float) -> tuple[Job, list[bytes | None] | None]:
    """The job once it ends or ``budget`` seconds pass, with the outputs the wait read; the
    owner's balance read with it goes to the credits header."""
    watched = svc.wait(job, budget)
    note_balance(watched.balance_milli)
    return cast(Job, watched.job), watched.images  # wait() raises NotFound for no job


@contextmanager
def renamed_fields(names: Mapping[str, str]) -> Iterator[None]:
    """Errors about the farm's request fields named as another protocol names them."""
    try:
        yield
    except InvalidInput as exc:
        raise exc.renamed(names.get(exc.field, exc.field)) from exc
