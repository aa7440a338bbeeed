"""How jobs look to clients: the native job body and Segmind's v2 bodies."""

from __future__ import annotations

from api.context import base_url
from api.service import JobService
from shared.jobs import Job, JobStatus
from shared.jobview import image_urls, job_document

V2_STATUS = {
    JobStatus.QUEUED: "QUEUED",
    JobStatus.RUNNING: "PROCESSING",
    JobStatus.SUCCEEDED: "COMPLETED",
    JobStatus.FAILED: "FAILED",
    JobStatus.CANCELED: "FAILED",
}


def job_body(service: JobService, job: Job) -> dict[str, object]:
    position, eta = service.queue_estimate(job.id) if job.status is JobStatus.QUEUED else (None, None)
    return job_document(job, base_url(), position, eta)


def v2_status_body(job: Job) -> dict[str, object]:
    body: dict[str, object] = {"request_id": job.id, "status": V2_STATUS[job.status]}
    if body["status"] == "FAILED":
        body["error"] = job.error or job.status.value
    return body


def v2_result_body(job: Job) -> dict[str, object]:
    if job.status is not JobStatus.SUCCEEDED:
        return v2_status_body(job)
    outputs = image_urls(job, base_url())
    return {
        "request_id": job.id,
        "status": "COMPLETED",
        "output": outputs[0],
        "outputs": outputs,
        "seeds": list(job.seeds),
        "metrics": {
            "queue_seconds": job.queue_seconds,
            "run_seconds": job.run_seconds,
            "generation_seconds": job.generation_time,
        },
    }
