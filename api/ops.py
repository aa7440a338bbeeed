"""Operations routes, outside ``/v1`` and ``/v2`` (no API key): liveness, readiness, the document."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.context import service
from api.openapi import document_json

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    checks = service().ready()
    ready = all(checks.values())
    response = jsonify({"status": "ready" if ready else "not ready", "checks": checks})
    response.status_code = 200 if ready else 503
    return response


@bp.get("/openapi.json")
def openapi() -> Response:
    return Response(document_json(service().settings), mimetype="application/json")
