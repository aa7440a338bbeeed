"""Every error the gateway can answer, mapped to a status code and a JSON body in one place."""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response
from gunicorn.http.errors import ParseException as BodyParseError
from werkzeug.exceptions import HTTPException

from api.views import ErrorBody, respond
from shared.errors import InvalidInput, JobFailed, NotEnoughCredits, RateLimited, ServiceError, Unavailable

log = logging.getLogger(__name__)


def error_body(exc: ServiceError) -> ErrorBody:
    """The body of a service error: its message, and what it concerns."""
    match exc:
        case InvalidInput():
            return ErrorBody(exc.message, field=exc.field)
        case NotEnoughCredits():
            return ErrorBody(exc.message, balance=exc.balance, cost=exc.cost)
        case JobFailed():
            return ErrorBody(exc.message, job_id=exc.job_id)
        case _:
            return ErrorBody(exc.message)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        response = respond(error_body(exc), exc.status_code)
        if isinstance(exc, Unavailable | RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after)
        if exc.status_code >= 500:
            log.warning("%s: %s", type(exc).__name__, exc.message)
        return response

    @app.errorhandler(redis.RedisError)
    def _redis_error(exc: redis.RedisError) -> Response:
        log.error("redis unavailable: %s", exc)
        return _service_error(Unavailable("the job store is unavailable; try again"))

    @app.errorhandler(BodyParseError)
    def _unreadable_body(exc: BodyParseError) -> Response:
        # gunicorn raises these while the body is read (e.g. a malformed chunk size).
        log.info("unreadable request body: %s", exc)
        message = "body: could not be read (malformed HTTP framing)"
        return respond(ErrorBody(message, field="body"), 400)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        response = respond(ErrorBody(_http_message(exc)), status)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return respond(ErrorBody("internal server error"), 500)


def _http_message(exc: HTTPException) -> str:
    if exc.code == 404:
        return "not found"
    if exc.code == 405:
        return "method not allowed"
    if exc.code == 413:
        return "request body is too large"
    return exc.description or exc.name
