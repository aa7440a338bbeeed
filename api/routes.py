"""HTTP routes of the gateway."""

from __future__ import annotations

import base64

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from api.prefer import parse_prefer
from api.service import JobService
from shared.errors import InvalidInput, JobFailed
from shared.images import decode_image_field
from shared.jobs import Job, JobStatus
from shared.schema import parse_request

bp = Blueprint("gateway", __name__)


def _service() -> JobService:
    from api.app import service_of

    return service_of(current_app)


@bp.post("/v1/sd1.5-img2img")
def img2img() -> Response:
    service = _service()
    body = request.get_json(force=True, silent=True)
    if body is None:
        raise InvalidInput("body", "must be a JSON object")
    checked = parse_request(body, service.settings)
    image = decode_image_field(checked.image, service.settings)
    prefer = parse_prefer(request.headers.get("Prefer", ""))
    job = service.submit(checked.params, image)
    if not prefer.respond_async:
        budget = service.settings.sync_wait_seconds
        if prefer.wait is not None:
            budget = min(prefer.wait, budget)
        job = service.wait(job.id, budget)
    return _finished_response(service, job) if job.status.terminal else _accepted_response(job)


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    job = _service().get(job_id)
    return _with_job_headers(jsonify(job_body(job)), job)


@bp.get("/v1/jobs/<job_id>/images/<int:index>")
def get_job_image(job_id: str, index: int) -> Response:
    service = _service()
    job = service.get(job_id)
    response = Response(service.image(job, index), mimetype="image/jpeg")
    return _with_job_headers(response, job)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    checks = _service().ready()
    ready = all(checks.values())
    response = jsonify({"status": "ready" if ready else "not ready", "checks": checks})
    response.status_code = 200 if ready else 503
    return response


def job_body(job: Job) -> dict[str, object]:
    """The public view of a job: never the input image."""
    return {
        "id": job.id,
        "status": job.status.value,
        "progress": {"step": job.progress_step, "total": job.progress_total},
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "parameters": job.params.to_dict(),
        "seeds": list(job.seeds),
        "outputs": [_image_url(job.id, i) for i in range(len(job.outputs))],
        "generation_time": job.generation_time,
        "error": job.error,
    }


def _finished_response(service: JobService, job: Job) -> Response:
    if job.status is not JobStatus.SUCCEEDED:
        raise JobFailed(job.error or f"job {job.status.value}", job.id)
    if job.params.base64:
        images = [base64.b64encode(service.image(job, i)).decode("ascii") for i in range(len(job.outputs))]
        response = jsonify({"image": images[0], "images": images, "seeds": list(job.seeds), "job_id": job.id})
    else:
        response = Response(service.image(job, 0), mimetype="image/jpeg")
    response.headers["x-seed-value"] = str(job.seeds[0])
    response.headers["x-generation-time"] = f"{job.generation_time or 0.0:.3f}"
    return _with_job_headers(response, job)


def _accepted_response(job: Job) -> Response:
    response = jsonify(job_body(job))
    response.status_code = 202
    return _with_job_headers(response, job)


def _with_job_headers(response: Response, job: Job) -> Response:
    response.headers["x-job-id"] = job.id
    response.headers["x-request-id"] = job.id
    response.headers["Location"] = url_for("gateway.get_job", job_id=job.id)
    return response


def _image_url(job_id: str, index: int) -> str:
    return url_for("gateway.get_job_image", job_id=job_id, index=index, _external=True)
