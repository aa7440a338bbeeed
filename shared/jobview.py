"""The public document of a job, shared by the gateway's answers and webhook bodies."""

from __future__ import annotations

from shared.jobs import Job, JobStatus
from shared.pricing import format_credits


def job_path(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def image_urls(job: Job, base_url: str) -> list[str]:
    base = base_url.rstrip("/")
    return [f"{base}{job_path(job.id)}/images/{i}" for i in range(len(job.outputs))]


def job_document(
    job: Job, base_url: str, queue_position: int | None = None, eta_seconds: float | None = None
) -> dict[str, object]:
    """The native view of a job: never the input image."""
    body: dict[str, object] = {
        "id": job.id,
        "status": job.status.value,
        "progress": {"step": job.progress_step, "total": job.progress_total},
        "queue_position": queue_position if job.status is JobStatus.QUEUED else None,
        "eta_seconds": eta_seconds if job.status is JobStatus.QUEUED else None,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "parameters": job.params.to_dict(),
        "seeds": list(job.seeds),
        "outputs": image_urls(job, base_url),
        "generation_time": job.generation_time,
        "error": job.error,
    }
    if job.owner:
        body["cost"] = format_credits(job.cost_milli)
        body["refunded"] = job.refunded
    if job.status is JobStatus.RUNNING and job.cancel_requested:
        body["cancel_requested"] = True
    return body
