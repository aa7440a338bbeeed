"""The public document of a job, shared by the gateway's answers and webhook bodies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from shared.jobs import Job, JobStatus
from shared.pricing import format_credits
from shared.schema import GenerationParams
from shared.views import OMIT, Doc, Omitted, Ref, View

# The schema of a job's parameters is built from the request schema (by the OpenAPI document).
PARAMETERS_SCHEMA = "GenerationParameters"


def job_path(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def image_urls(job: Job, base_url: str) -> list[str]:
    base = base_url.rstrip("/")
    return [f"{base}{job_path(job.id)}/images/{i}" for i in range(len(job.outputs))]


@dataclass(frozen=True)
class Progress(View):
    """Denoising steps done and to do (the worker reports every step)."""

    step: int
    total: int


@dataclass(frozen=True)
class JobView(View):
    """A job: status, progress, parameters, seeds and outputs, never its input image."""

    SCHEMA_NAME: ClassVar[str] = "Job"

    id: str
    status: JobStatus
    progress: Progress
    queue_position: Annotated[int | None, Doc("Jobs ahead (0 = next), while queued.")]
    eta_seconds: Annotated[float | None, Doc("Estimated wait, while queued (null until a job has run).")]
    created_at: Annotated[float, Doc("Unix seconds.")]
    started_at: Annotated[float | None, Doc("Unix seconds.")]
    finished_at: Annotated[float | None, Doc("Unix seconds.")]
    parameters: Annotated[GenerationParams, Ref(PARAMETERS_SCHEMA)]
    seeds: Annotated[tuple[int, ...], Doc("Seed of each sample.")]
    outputs: Annotated[tuple[str, ...], Doc("Absolute URLs of the output images.")]
    generation_time: Annotated[float | None, Doc("Seconds spent in the pipeline.")]
    error: str | None
    cost: Annotated[str | Omitted, Doc("Credits the job costs (only with API keys on).")] = OMIT
    refunded: Annotated[bool | Omitted, Doc("Whether its cost was given back (only with API keys on).")] = (
        OMIT
    )
    cancel_requested: Annotated[
        bool | Omitted,
        Doc("Present (true) while a running job is being canceled: it stops at its next step."),
    ] = OMIT

    @classmethod
    def of(
        cls, job: Job, base_url: str, queue_position: int | None = None, eta_seconds: float | None = None
    ) -> JobView:
        """The view of ``job``; ``base_url`` makes its output URLs absolute. The queue
        position and wait are shown only while the job is queued."""
        queued = job.status is JobStatus.QUEUED
        return cls(
            id=job.id,
            status=job.status,
            progress=Progress(step=job.progress_step, total=job.progress_total),
            queue_position=queue_position if queued else None,
            eta_seconds=eta_seconds if queued else None,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            parameters=job.params,
            seeds=job.seeds,
            outputs=tuple(image_urls(job, base_url)),
            generation_time=job.generation_time,
            error=job.error,
            cost=format_credits(job.cost_milli) if job.owner else OMIT,
            refunded=job.refunded if job.owner else OMIT,
            cancel_requested=True if job.status is JobStatus.RUNNING and job.cancel_requested else OMIT,
        )


def job_document(
    job: Job, base_url: str, queue_position: int | None = None, eta_seconds: float | None = None
) -> dict[str, object]:
    """The native view of a job as JSON (the gateway's job body, a webhook's body)."""
    return JobView.of(job, base_url, queue_position, eta_seconds).to_json()
