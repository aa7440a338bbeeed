"""Webhook signing and queueing. Delivery runs in the webhook worker (``worker.notify``).

Each delivery is a POST of the job document (JSON) with three headers:

- ``X-Img2img-Job-Id``: the job id,
- ``X-Img2img-Timestamp``: Unix seconds when the delivery was signed,
- ``X-Img2img-Signature``: ``v1=`` + hex HMAC-SHA256 with ``WEBHOOK_SECRET`` over
  ``"{job_id}.{timestamp}." + body``.

Receivers recompute the HMAC over the raw body, compare in constant time and refuse
timestamps far from their clock.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ssl
import time

from celery import Celery

from shared.errors import InvalidInput
from shared.fetch import ImageFetcher, PinnedConnection, parse_target
from shared.settings import Settings

WEBHOOK_TASK = "img2img.deliver_webhook"
ID_HEADER = "X-Img2img-Job-Id"
TIMESTAMP_HEADER = "X-Img2img-Timestamp"
SIGNATURE_HEADER = "X-Img2img-Signature"


def signature(secret: str, job_id: str, timestamp: int, body: bytes) -> str:
    message = f"{job_id}.{timestamp}.".encode() + body
    return "v1=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(secret: str, job_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        ID_HEADER: job_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, job_id, timestamp, body),
    }


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    expected = signature(secret, headers[ID_HEADER], int(headers[TIMESTAMP_HEADER]), body)
    return hmac.compare_digest(expected, headers[SIGNATURE_HEADER])


class WebhookRejected(Exception):
    """The receiver answered, but not with a 2xx status."""


class WebhookSender:
    """POSTs to webhook URLs under the same address rules as image URLs.

    Loopback, private, link-local and other special addresses are refused unless
    ``WEBHOOK_ALLOW`` names them; the connection goes to the address that was checked.
    Redirects are not followed: a receiver answers where it was registered.
    """

    def __init__(self, settings: Settings) -> None:
        self._checker = ImageFetcher(
            settings.replace(image_url_allow=settings.webhook_allow, image_url_enabled=True)
        )
        self._timeout = settings.webhook_timeout_seconds
        self._tls = ssl.create_default_context()

    def check(self, url: str) -> None:
        """Refuse a URL the service must never call, as a 400 naming ``webhook``."""
        try:
            self._checker.addresses(parse_target(url), time.monotonic() + self._timeout)
        except InvalidInput as exc:
            raise InvalidInput("webhook", exc.message.removeprefix("image: ")) from exc

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """Deliver once; the receiver's status code. Raises ``InvalidInput`` for a refused
        address and ``OSError``/``WebhookRejected`` for delivery failures worth retrying."""
        deadline = time.monotonic() + self._timeout
        target = parse_target(url)
        addresses = self._checker.addresses(target, deadline)
        tls = self._tls if target.scheme == "https" else None
        conn = PinnedConnection(target, addresses, self._timeout, deadline, tls)
        try:
            conn.request("POST", target.path, body=body, headers={**headers, "Connection": "close"})
            response = conn.getresponse()
            response.read(64 * 1024)
            if not 200 <= response.status < 300:
                raise WebhookRejected(f"the receiver answered HTTP {response.status}")
            return response.status
        except (TimeoutError, ssl.SSLError, http.client.HTTPException) as exc:
            raise WebhookRejected(f"delivery failed: {type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()


def enqueue_webhook(celery: Celery, settings: Settings, job_id: str) -> None:
    celery.send_task(WEBHOOK_TASK, args=[job_id], queue=settings.webhook_queue)
