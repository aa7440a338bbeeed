"""Segmind's v2 queue protocol: submit, poll status, fetch the result.

Existing Segmind clients work with only the base URL changed. FAILED (which also
covers canceled jobs) is served with HTTP 422 and carries ``error``.
"""

from __future__ import annotations

from flask import Blueprint, Response

from api.auth import current_owner
from api.context import absolute_url, base_url, service
from api.submit import submit_from_request
from api.views import V2_STATUS, V2Result, V2State, V2Status, V2Submitted, respond

bp = Blueprint("v2", __name__, url_prefix="/v2")


@bp.post("/sd1.5-img2img")
def submit() -> Response:
    job = submit_from_request(service())
    status_url = absolute_url("v2.status", request_id=job.id)
    response_url = absolute_url("v2.result", request_id=job.id)
    return respond(V2Submitted(job.id, V2_STATUS[job.status], status_url, response_url, poll_url=status_url))


@bp.get("/requests/<request_id>/status")
def status(request_id: str) -> Response:
    job = service().get(request_id, current_owner())
    return _with_status(V2Status.of(job))


@bp.get("/requests/<request_id>")
def result(request_id: str) -> Response:
    job = service().get(request_id, current_owner())
    return _with_status(V2Result.of(job, base_url()))


def _with_status(view: V2Status | V2Result) -> Response:
    return respond(view, 422 if view.status == V2State.FAILED else 200)
