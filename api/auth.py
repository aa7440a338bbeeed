"""API keys on every ``/v1`` and ``/v2`` route; per-key rate limits; the credits header.

Health, readiness, metrics and the OpenAPI document are outside ``/v1`` and ``/v2`` and
need no key. ``AUTH_ENABLED=false`` turns keys off for local development: jobs then
belong to nobody and cost nothing.
"""

from __future__ import annotations

from flask import Flask, Response, g, request

from shared.errors import RateLimited, Unauthorized
from shared.keys import ApiKey, KeyStore
from shared.pricing import format_credits
from shared.settings import Settings

KEY_HEADER = "x-api-key"
_PROTECTED = ("/v1/", "/v2/")


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
        if not settings.auth_enabled or not request.path.startswith(_PROTECTED):
            return
        presented = request.headers.get(KEY_HEADER, "")
        admission = keys.admit(presented) if presented else None
        if admission is None:
            raise Unauthorized(f"missing, unknown or revoked API key (send it in {KEY_HEADER})")
        g.api_key = admission.key
        limit = admission.key.rate_limit or settings.rate_limit_per_minute
        if admission.count > limit:
            raise RateLimited(f"rate limit of {limit} requests per minute reached", admission.retry_after)

    @app.after_request
    def remaining_credits(response: Response) -> Response:
        key = current_key()
        if key is not None:
            noted: int | None = g.get("balance_milli")
            balance = noted if noted is not None else keys.balance(key.id)
            response.headers["x-remaining-credits"] = format_credits(balance)
        return response
