"""From a submit request to an accepted job: shared by the v1 and v2 submit routes."""

from __future__ import annotations

from typing import Final

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from api.auth import current_owner
from api.context import fetcher
from api.service import JobService
from shared.errors import InvalidInput
from shared.images import read_image_field
from shared.jobs import Job
from shared.schema import parse_request

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
    checked = parse_request(body, svc.settings)
    key = idempotency_key()
    webhook = svc.check_webhook(checked.webhook) if checked.webhook else None
    image = read_image_field(checked.image, svc.settings, fetcher=fetcher())  # decoded in full by submit
    return svc.submit(checked.params, image, webhook=webhook, idempotency_key=key, owner=current_owner())
