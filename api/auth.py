"""API keys on every ``/v1``, ``/v2`` and ``/sdapi`` route; per-key rate limits; the credits header.

Each key has two rate windows a minute long: submits and other changes
(``RATE_LIMIT_PER_MINUTE``, or the key's own limit) and reads (GET and HEAD: polls, images,
listings; ``READ_RATE_LIMIT_PER_MINUTE``), so a client watching its jobs never uses up its
submits. Beyond either: 429 with ``Retry-After``.

A key is read from ``x-api-key``, ``Authorization: Bearer <key>`` (OpenAI's SDKs and most
HTTP API clients) or ``Authorization: Basic`` with the key as the password and any user name
(the web UI's clients). Health, readiness, metrics and the OpenAPI document need no key.
``AUTH_ENABLED=false`` turns keys off for local development: jobs then belong to nobody
and cost nothing.
"""

from __future__ import annotations

import base64
import binascii

from flask import Flask, Response, g, request

from api.protocols import keyed
from shared.errors import RateLimited, Unauthorized
from shared.keys import ApiKey, KeyStore
from shared.pricing import format_credits
from shared.settings import Settings

KEY_HEADER = "x-api-key"
# Polls, images and listings: counted apart from submits, under their own (larger) limit.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
KEY_SOURCES = f"{KEY_HEADER}, Authorization: Bearer <key> or Basic with the key as the password"


def presented_key() -> str:
    """The key this request presents, wherever it puts it; empty when none."""
    if key := request.headers.get(KEY_HEADER, ""):
        return key
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return ""
        return decoded.partition(":")[2]
    return ""


def current_key() -> ApiKey | None:
    """The authenticated key of this request (None with auth off)."""
    key: ApiKey | None = g.get("api_key")
    return key


def current_owner() -> str | None:
    """Whose jobs this request may see: the key's id, or None (everyone's) with auth off."""
    key = current_key()
    return key.id if key is not None else None


def note_balance(balance_milli: int | None) -> None:
    """The key's balance as this request last read it (with its job), so the
    ``x-remaining-credits`` header needs no read of its own; None: read it for the header."""
    g.balance_milli = balance_milli


def init_auth(app: Flask, settings: Settings, keys: KeyStore) -> None:
    @app.before_request
    def authenticate() -> None:
        g.api_key = None
        if not settings.auth_enabled or not keyed(request.path):
            return
        presented = presented_key()
        reads = request.method in READ_METHODS
        admission = keys.admit(presented, reads=reads) if presented else None
        if admission is None:
            raise Unauthorized(f"missing, unknown or revoked API key (send it in {KEY_SOURCES})")
        g.api_key = admission.key
        if reads:
            limit, what = settings.read_rate_limit_per_minute, "reads"
        else:
            limit, what = admission.key.rate_limit or settings.rate_limit_per_minute, "requests"
        if admission.count > limit:
            raise RateLimited(f"rate limit of {limit} {what} per minute reached", admission.retry_after)

    @app.after_request
    def remaining_credits(response: Response) -> Response:
        key = current_key()
        if key is not None:
            noted: int | None = g.get("balance_milli")
            balance = noted if noted is not None else keys.balance(key.id)
            response.headers["x-remaining-credits"] = format_credits(balance)
        return response
