"""Every error the gateway can answer, mapped to a status code and a JSON body in one place.

Bodies are in the shape of the protocol the request speaks (:mod:`api.protocols`): the
farm's own ``{"error": ..., "field": ...}``, or OpenAI's ``{"error": {"message", "type",
"param", "code"}}`` under ``/v1/images``, where an answer retrying cannot help carries
``x-should-retry: false`` so the SDKs do not run a failed generation three times.
"""

from __future__ import annotations

import logging
from typing import Final

import redis
from flask import Flask, Response, request
from gunicorn.http.errors import ParseException as BodyParseError
from werkzeug.exceptions import HTTPException

from api.protocols import Protocol, protocol_of
from api.views import ErrorBody, OpenAIError, OpenAIErrorDetail, respond
from shared.errors import (
    Conflict,
    IdempotencyMismatch,
    InvalidInput,
    JobFailed,
    NotEnoughCredits,
    NotFound,
    RateLimited,
    ResultTimeout,
    ServiceError,
    Unauthorized,
    Unavailable,
)

log = logging.getLogger(__name__)

REALM: Final = 'realm="img2img farm"'
# OpenAI's status for an exhausted balance; retrying does not help.
OPENAI_NO_CREDITS_STATUS: Final = 429


def error_body(exc: ServiceError) -> ErrorBody:
    """The body of a service error: its message, and what it concerns."""
    match exc:
        case InvalidInput():
            return ErrorBody(exc.message, field=exc.field)
        case NotEnoughCredits():
            return ErrorBody(exc.message, balance=exc.balance, cost=exc.cost)
        case JobFailed() | ResultTimeout():
            return ErrorBody(exc.message, job_id=exc.job_id)
        case _:
            return ErrorBody(exc.message)


def openai_error(exc: ServiceError) -> tuple[OpenAIError, int, bool]:
    """OpenAI's body for a service error, its status, and whether a retry may succeed."""
    status, kind, code, retry = exc.status_code, "invalid_request_error", None, False
    match exc:
        case InvalidInput():
            code = {413: "payload_too_large", 415: "invalid_image_format"}.get(status, "invalid_value")
        case Unauthorized():
            code = "invalid_api_key"
        case RateLimited():
            kind, code, retry = "requests", "rate_limit_exceeded", True
        case NotEnoughCredits():
            status, kind, code = OPENAI_NO_CREDITS_STATUS, "insufficient_quota", "insufficient_quota"
        case NotFound():
            code = "not_found"
        case Conflict() | IdempotencyMismatch():
            code = "conflict"
        case Unavailable():
            kind, code, retry = "server_error", "service_unavailable", True
        case JobFailed():
            kind, code = "server_error", "generation_failed"
        case ResultTimeout():
            kind, code = "server_error", "timeout"
        case _:
            kind = "server_error" if status >= 500 else kind
    param = exc.field if isinstance(exc, InvalidInput) else None
    return OpenAIError(OpenAIErrorDetail(exc.message, kind, param, code)), status, retry


def _answer(exc: ServiceError) -> Response:
    """The response to ``exc`` in the request's protocol, with the headers it calls for."""
    protocol = protocol_of(request.path)
    if protocol is Protocol.OPENAI:
        body, status, retry = openai_error(exc)
        response = respond(body, status)
        response.headers["x-should-retry"] = "true" if retry else "false"
    else:
        response = respond(error_body(exc), exc.status_code)
    if isinstance(exc, Unavailable | RateLimited):
        response.headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthorized):
        scheme = "Basic" if protocol is Protocol.A1111 else "Bearer"
        response.headers["WWW-Authenticate"] = f"{scheme} {REALM}"
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        if exc.status_code >= 500:
            log.warning("%s: %s", type(exc).__name__, exc.message)
        return _answer(exc)

    @app.errorhandler(redis.RedisError)
    def _redis_error(exc: redis.RedisError) -> Response:
        log.error("redis unavailable: %s", exc)
        return _service_error(Unavailable("the job store is unavailable; try again"))

    @app.errorhandler(BodyParseError)
    def _unreadable_body(exc: BodyParseError) -> Response:
        # gunicorn raises these while the body is read (e.g. a malformed chunk size).
        log.info("unreadable request body: %s", exc)
        return _answer(InvalidInput("body", "could not be read (malformed HTTP framing)"))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        failure = ServiceError(_http_message(exc))
        failure.status_code = exc.code or 500
        response = _answer(failure)
        if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return _answer(ServiceError("internal server error"))


def _http_message(exc: HTTPException) -> str:
    if exc.code == 404:
        return "not found"
    if exc.code == 405:
        return "method not allowed"
    if exc.code == 413:
        return "request body is too large"
    return exc.description or exc.name
