"""The short error hierarchy both sides raise; the gateway maps it to HTTP in one place
(status codes and bodies: ``api/errors.py``)."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service reports to a client."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServiceError):
    """The request is malformed or a field breaks its rule; ``field`` names it."""

    status_code = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message

    def renamed(self, field: str) -> InvalidInput:
        """The same error (same class and status) about ``field``: another protocol's name
        for the field this one concerns."""
        other = type(self).__new__(type(self))
        other.__dict__.update(self.__dict__, field=field, message=f"{field}: {self.reason}")
        Exception.__init__(other, other.message)
        return other


class UnsupportedMediaType(InvalidInput):
    """The image is in a format outside the allow-list."""

    status_code = 415


class PayloadTooLarge(InvalidInput):
    """A body or decoded image is over its byte limit."""

    status_code = 413


class Unauthorized(ServiceError):
    """Missing, unknown or revoked API key."""

    status_code = 401


class NotEnoughCredits(ServiceError):
    """The key's balance does not cover the job's cost."""

    status_code = 406

    def __init__(self, message: str, balance: str, cost: str) -> None:
        super().__init__(message)
        self.balance = balance
        self.cost = cost


class RateLimited(ServiceError):
    """Too many requests for this key in the current minute."""

    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(ServiceError):
    """No such job (or not one the caller may see)."""

    status_code = 404


class Conflict(ServiceError):
    """The request clashes with the job's state (e.g. canceling a finished job)."""

    status_code = 409


class IdempotencyMismatch(ServiceError):
    """An ``Idempotency-Key`` was reused with a different body."""

    status_code = 422


class Unavailable(ServiceError):
    """A dependency (Redis, S3, the queue) cannot take the request now."""

    status_code = 503

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class JobFailed(ServiceError):
    """The job was accepted but ended failed or canceled; the message is the job's error."""

    status_code = 500

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class ResultTimeout(ServiceError):
    """A protocol whose answer is the result waited its budget and the job is still going."""

    status_code = 504

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id
