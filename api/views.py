"""The gateway's response bodies as typed views: each builds its JSON and states its schema.

The job body itself is :class:`shared.jobview.JobView` (webhook bodies use it too). The
OpenAPI document takes every schema from these classes (see :mod:`shared.views`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Annotated, ClassVar, Final, Literal

from flask import Response, jsonify

from shared.jobs import Job, JobStatus
from shared.jobview import image_urls
from shared.views import OMIT, Doc, Omitted, View


def respond(view: View, status: int = 200) -> Response:
    """A JSON response carrying ``view``'s body."""
    response = jsonify(view.to_json())
    response.status_code = status
    return response


@dataclass(frozen=True)
class ErrorBody(View):
    """An error: what went wrong, and for some errors what it concerns."""

    SCHEMA_NAME: ClassVar[str] = "Error"

    error: Annotated[str, Doc("What went wrong; for bad input it starts with the field's name.")]
    field: Annotated[str | Omitted, Doc("The request field at fault (bad input only).")] = OMIT
    job_id: Annotated[str | Omitted, Doc("The failed job (generation failures only).")] = OMIT
    balance: Annotated[str | Omitted, Doc("The key's credits (406 only).")] = OMIT
    cost: Annotated[str | Omitted, Doc("What the job would cost (406 only).")] = OMIT


@dataclass(frozen=True)
class Img2ImgResult(View):
    """The result of a synchronous submit with `base64` true: every image as a base64 JPEG."""

    image: Annotated[str, Doc("The first image, base64 JPEG.")]
    images: Annotated[tuple[str, ...], Doc("Every image, base64 JPEG.")]
    seeds: Annotated[tuple[int, ...], Doc("Seed of each image.")]
    job_id: str


@dataclass(frozen=True)
class Health(View):
    """The gateway is alive."""

    status: Literal["ok"] = "ok"


@dataclass(frozen=True)
class ReadinessChecks(View):
    """Whether each dependency is ready."""

    redis: Annotated[bool, Doc("Redis answers.")]
    storage: Annotated[bool, Doc("The S3 bucket answers.")]
    workers: Annotated[bool, Doc("At least one worker has loaded its model recently.")]


@dataclass(frozen=True)
class Readiness(View):
    """Readiness: Redis and S3 reachable, and a worker with its model loaded."""

    status: Literal["ready", "not ready"]
    checks: ReadinessChecks

    @classmethod
    def of(cls, checks: ReadinessChecks) -> Readiness:
        ready = checks.redis and checks.storage and checks.workers
        return cls("ready" if ready else "not ready", checks)

    @property
    def ready(self) -> bool:
        return self.status == "ready"


# -- Segmind's v2 queue protocol -----------------------------------------------------------


class V2State(enum.StrEnum):
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


V2_STATUS: Final[dict[JobStatus, V2State]] = {
    JobStatus.QUEUED: V2State.QUEUED,
    JobStatus.RUNNING: V2State.PROCESSING,
    JobStatus.SUCCEEDED: V2State.COMPLETED,
    JobStatus.FAILED: V2State.FAILED,
    JobStatus.CANCELED: V2State.FAILED,
}


@dataclass(frozen=True)
class V2Submitted(View):
    """A v2 request, queued: where to poll its status and fetch its result (absolute URLs)."""

    request_id: str
    status: V2State
    status_url: str
    response_url: str
    poll_url: Annotated[str, Doc("Same as `status_url`.")]


@dataclass(frozen=True)
class V2Status(View):
    """A v2 request's status; FAILED (canceled jobs too) carries `error`."""

    request_id: str
    status: V2State
    error: Annotated[str | Omitted, Doc("Why it failed (FAILED only).")] = OMIT

    @classmethod
    def of(cls, job: Job) -> V2Status:
        status = V2_STATUS[job.status]
        if status is V2State.FAILED:
            return cls(job.id, status, error=job.error or job.status.value)
        return cls(job.id, status)


@dataclass(frozen=True)
class V2Metrics(View):
    """Where the request's time went, in seconds."""

    queue_seconds: float | None
    run_seconds: float | None
    generation_seconds: float | None


@dataclass(frozen=True)
class V2Result(View):
    """A completed v2 request: its image URLs, seeds and timings."""

    request_id: str
    status: Literal["COMPLETED"]
    output: Annotated[str, Doc("URL of the first image.")]
    outputs: Annotated[tuple[str, ...], Doc("URLs of every image.")]
    seeds: tuple[int, ...]
    metrics: V2Metrics

    @classmethod
    def of(cls, job: Job, base_url: str) -> V2Result | V2Status:
        """The result of a succeeded job; the status body of any other."""
        if job.status is not JobStatus.SUCCEEDED:
            return V2Status.of(job)
        outputs = tuple(image_urls(job, base_url))
        metrics = V2Metrics(job.queue_seconds, job.run_seconds, job.generation_time)
        return cls(job.id, "COMPLETED", outputs[0], outputs, job.seeds, metrics)
