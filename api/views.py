"""The gateway's response bodies as typed views: each builds its JSON and states its schema.

The job body itself is :class:`shared.jobview.JobView` (webhook bodies use it too). The
OpenAPI document takes every schema from these classes (see :mod:`shared.views`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Final, Literal

from flask import Response, jsonify

from shared.jobs import Job, JobStatus
from shared.jobview import image_urls
from shared.schema import OutputFormat
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
    """The result of a synchronous submit with `base64` true: every image, base64, in its
    `output_format`."""

    image: Annotated[str, Doc("The first image, base64.")]
    images: Annotated[tuple[str, ...], Doc("Every image, base64.")]
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


# -- the AUTOMATIC1111 web UI API ----------------------------------------------------------


@dataclass(frozen=True)
class A1111Img2ImgResult(View):
    """The web UI's img2img answer: base64 JPEGs, the request as sent (without its images)
    and `info`, a JSON string with the seeds, prompts and settings the images were made with."""

    images: Annotated[tuple[str, ...], Doc("Every image, base64 JPEG (none with `send_images` false).")]
    parameters: Annotated[dict[str, Any], Doc("The request body, `init_images` and `mask` null.")]
    info: Annotated[str, Doc("JSON: `seed`, `all_seeds`, `prompt`, `sd_model_name`, `job_id`, ...")]


@dataclass(frozen=True)
class A1111ProgressState(View):
    """The web UI's state of the key's latest job."""

    job: Annotated[str, Doc("The job id (empty before the key's first job).")]
    job_count: Annotated[int, Doc("1 while the job has not ended, else 0.")]
    job_no: int
    job_timestamp: Annotated[str, Doc("When the job was created, YYYYmmddHHMMSS (UTC).")]
    skipped: bool
    interrupted: Annotated[bool, Doc("The job was canceled.")]
    sampling_step: int
    sampling_steps: int


@dataclass(frozen=True)
class A1111Progress(View):
    """Progress of this key's latest job, as the web UI reports it."""

    progress: Annotated[float, Doc("0 to 1; 1 once the job has ended.")]
    eta_relative: Annotated[float, Doc("Estimated seconds of queue wait (0 once running).")]
    state: A1111ProgressState
    current_image: Annotated[str | None, Doc("Always null: no previews.")]
    textinfo: Annotated[str | None, Doc("The farm's status of the job.")]


# -- OpenAI's Images API -------------------------------------------------------------------


@dataclass(frozen=True)
class OpenAIImage(View):
    """One image: base64 (`b64_json`, the default) or its URL (`response_format=url`)."""

    b64_json: Annotated[str | Omitted, Doc("The image, base64, in `output_format`.")] = OMIT
    url: Annotated[str | Omitted, Doc("The job's image URL (fetching it needs the key).")] = OMIT


@dataclass(frozen=True)
class OpenAIImagesResponse(View):
    """OpenAI's images answer."""

    created: Annotated[int, Doc("Unix seconds the job was created.")]
    data: tuple[OpenAIImage, ...]
    size: Annotated[str, Doc("WIDTHxHEIGHT of the images.")]
    output_format: OutputFormat


@dataclass(frozen=True)
class OpenAIErrorDetail(View):
    """What went wrong, in OpenAI's words."""

    message: str
    type: Annotated[str, Doc("invalid_request_error, requests, insufficient_quota or server_error.")]
    param: Annotated[str | None, Doc("The form field at fault (bad input only).")]
    code: Annotated[str | None, Doc("A short machine-readable reason.")]


@dataclass(frozen=True)
class OpenAIError(View):
    """An error in OpenAI's shape."""

    SCHEMA_NAME: ClassVar[str] = "OpenAIError"

    error: OpenAIErrorDetail
