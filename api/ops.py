"""Operations routes, outside ``/v1`` and ``/v2`` (no API key): liveness, readiness, the document."""

from __future__ import annotations

from flask import Blueprint, Response

from api.context import service
from api.openapi import document_json
from api.views import Health, Readiness, ReadinessChecks, respond

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return respond(Health())


@bp.get("/readyz")
def readyz() -> Response:
    readiness = Readiness.of(ReadinessChecks(**service().ready()))
    return respond(readiness, 200 if readiness.ready else 503)


@bp.get("/openapi.json")
def openapi() -> Response:
    return Response(document_json(service().settings), mimetype="application/json")
