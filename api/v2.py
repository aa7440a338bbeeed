"""Segmind's v2 queue protocol: submit, poll status, fetch the result.

Existing Segmind clients work with only the base URL changed. FAILED (which also
covers canceled jobs) is served with HTTP 422 and carries ``error``.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.auth import current_owner
from api.context import absolute_url, service
from api.submit import submit_from_request
from api.views import V2_STATUS, v2_result_body, v2_status_body

bp = Blueprint("v2", __name__, url_prefix="/v2")


@bp.post("/sd1.5-img2img")
def submit() -> Response:
    job = submit_from_request(service())
    status_url = absolute_url("v2.status", request_id=job.id)
    response_url = absolute_url("v2.result", request_id=job.id)
    return jsonify(
        {
            "request_id": job.id,
            "status": V2_STATUS[job.status],
            "status_url": status_url,
            "response_url": response_url,
            "poll_url": status_url,
        }
    )


@bp.get("/requests/<request_id>/status")
def status(request_id: str) -> Response:
    job = service().get(request_id, current_owner())
    return _with_status(jsonify(v2_status_body(job)), V2_STATUS[job.status])


@bp.get("/requests/<request_id>")
def result(request_id: str) -> Response:
    job = service().get(request_id, current_owner())
    return _with_status(jsonify(v2_result_body(job)), V2_STATUS[job.status])


def _with_status(response: Response, status: str) -> Response:
    response.status_code = 422 if status == "FAILED" else 200
    return response
