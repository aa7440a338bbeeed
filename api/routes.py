"""The native v1 routes: the Segmind-compatible submit endpoint and the job API."""

from __future__ import annotations

import base64
import math

from flask import Blueprint, Response, request, url_for

from api.auth import current_owner
from api.context import base_url, service
from api.prefer import parse_prefer
from api.service import JobService
from api.submit import submit_from_request, watch
from api.views import Img2ImgResult, respond
from shared.errors import JobFailed
from shared.jobs import Job, JobStatus, output_media_type
from shared.jobview import JobView
from shared.pricing import format_credits

bp = Blueprint("gateway", __name__)


@bp.post("/v1/sd1.5-img2img")
def img2img() -> Response:
    """Submit, then wait for the job (``Prefer: wait=N`` shortens the wait, ``respond-async``
    skips it). A wait beyond the key's or the job's bound (:mod:`api.syncwaits`) is not held:
    a client that sent ``Prefer`` gets the job (202), a plain Segmind client a 429."""
    svc = service()
    prefer = parse_prefer(request.headers.get("Prefer", ""))
    if prefer.respond_async:
        return _accepted_or_finished(svc, submit_from_request(svc))
    takes_job_url = prefer.wait is not None
    budget = min(svc.settings.sync_wait_seconds, math.inf if prefer.wait is None else prefer.wait)
    cached: list[bytes | None] | None = None
    with svc.sync_waits.for_key(current_owner()) as key_admitted:
        if not key_admitted and not takes_job_url:
            raise svc.sync_waits.refusal()  # before the submit: nothing accepted
        job = submit_from_request(svc)
        if key_admitted and not job.status.terminal:
            with svc.sync_waits.for_job(job.id) as job_admitted:
                if job_admitted:
                    job, cached = watch(svc, job, budget)
                elif not takes_job_url:
                    raise svc.sync_waits.refusal(job.id)
    return _accepted_or_finished(svc, job, cached)


def _accepted_or_finished(svc: JobService, job: Job, cached: list[bytes | None] | None = None) -> Response:
    return _finished_response(svc, job, cached) if job.status.terminal else _accepted_response(svc, job)


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    svc = service()
    job = svc.get(job_id, current_owner())
    return with_job_headers(respond(job_view(svc, job)), job)


@bp.post("/v1/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    svc = service()
    job = svc.cancel(job_id, current_owner())
    response = respond(job_view(svc, job), 200 if job.status.terminal else 202)
    return with_job_headers(response, job)


@bp.get("/v1/jobs/<job_id>/images/<int:index>")
def get_job_image(job_id: str, index: int) -> Response:
    svc = service()
    job = svc.get(job_id, current_owner())
    response = Response(svc.image(job, index), mimetype=output_media_type(job.outputs[index]))
    response.headers["Cache-Control"] = "private, max-age=3600"
    return with_job_headers(response, job)


def job_view(svc: JobService, job: Job) -> JobView:
    """The job as clients see it, with its place in the queue while queued."""
    position, eta = svc.queue_estimate(job.id) if job.status is JobStatus.QUEUED else (None, None)
    return JobView.of(job, base_url(), position, eta)


def _finished_response(svc: JobService, job: Job, cached: list[bytes | None] | None = None) -> Response:
    """The answer to a job that ended; ``cached``: its outputs as already read from Redis."""
    if job.status is not JobStatus.SUCCEEDED:
        raise JobFailed(job.error or f"job {job.status.value}", job.id)
    if job.params.base64:
        images = tuple(base64.b64encode(data).decode("ascii") for data in svc.images(job, cached=cached))
        response = respond(Img2ImgResult(image=images[0], images=images, seeds=job.seeds, job_id=job.id))
    else:
        response = Response(svc.images(job, 1, cached)[0], mimetype=job.params.media_type)
    response.headers["x-seed-value"] = str(job.seeds[0])
    if job.owner:
        response.headers["x-cost"] = format_credits(job.cost_milli)
    response.headers["x-generation-time"] = f"{job.generation_time or 0.0:.3f}"
    return with_job_headers(response, job)


def _accepted_response(svc: JobService, job: Job) -> Response:
    return with_job_headers(respond(job_view(svc, job), 202), job)


def with_job_headers(response: Response, job: Job) -> Response:
    response.headers["x-job-id"] = job.id
    response.headers["x-request-id"] = job.id
    response.headers["Location"] = url_for("gateway.get_job", job_id=job.id)
    return response
