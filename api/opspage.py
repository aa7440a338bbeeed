"""The operator page at ``/ops``, its data at ``/ops/data`` and the worker autoscaler's
numbers at ``/ops/scaling``, behind ``OPS_TOKEN``.

Off (404) while ``OPS_TOKEN`` is unset. The page is static; it asks for the token, keeps it
in the browser and reads ``/ops/data`` with ``Authorization: Bearer <token>``: queue depth,
ready workers with their last heartbeat, jobs by status, the latest failures with their
errors, and the farm's counters (batching included). All of it is what ``/metrics`` and the
job store already know.
"""

from __future__ import annotations

import hmac
import time

from flask import Blueprint, Response, jsonify, request, send_from_directory

from api.context import service
from api.playground import STATIC
from shared.errors import NotFound, Unauthorized
from shared.metrics import FarmMetrics

bp = Blueprint("ops_page", __name__, url_prefix="/ops")

# Failures the page lists, newest first.
RECENT_FAILURES = 20


def _enabled() -> str:
    token = service().settings.ops_token
    if not token:
        raise NotFound("not found")
    return token


@bp.get("")
def page() -> Response:
    _enabled()
    return send_from_directory(STATIC, "ops.html", mimetype="text/html", max_age=0)


def _authorized() -> None:
    token = _enabled()
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
        raise Unauthorized("the operator page needs OPS_TOKEN as a Bearer token")


@bp.get("/scaling")
def scaling() -> Response:
    """What the worker autoscaler reads (shared/scaling.py): the counts and ``desired_workers``."""
    _authorized()
    settings = service().settings
    load = service().store.jobs.fleet_load(settings.worker_fresh_seconds)
    return jsonify(
        {
            "queued": load.queued,
            "running": load.running,
            "busy_workers": load.busy_workers,
            "ready_workers": load.ready_workers,
            "jobs_per_worker": settings.scale_jobs_per_worker,
            "desired_workers": load.desired_workers(settings.scale_jobs_per_worker),
        }
    )


@bp.get("/data")
def data() -> Response:
    _authorized()
    svc = service()
    settings, store = svc.settings, svc.store
    farm = FarmMetrics(store)
    now = time.time()
    workers = [
        {"name": name, "last_heartbeat": beat, "age_seconds": round(now - beat, 1)}
        for name, beat in store.workers.heartbeats(max_age=settings.worker_fresh_seconds)
    ]
    failures = [
        {"id": job.id, "error": job.error, "finished_at": job.finished_at, "attempts": job.attempts}
        for job in store.jobs.recent_failures(RECENT_FAILURES)
    ]
    return jsonify(
        {
            "queues": [{"name": settings.queue_name, "depth": farm.queue_depth(settings.queue_name)}],
            "workers": workers,
            "jobs": dict(sorted(farm.jobs_by_status().items())),
            "failures": failures,
            "counters": store.counters.all(),
            "uploads_pending": store.uploads.pending(),
        }
    )
