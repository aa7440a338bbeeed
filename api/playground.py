"""The playground at ``/``: a page that builds its form from the running request schema and
talks to the public API like any client (static files under ``api/static``, no build step,
nothing fetched from another site)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

STATIC = Path(__file__).with_name("static")

bp = Blueprint("playground", __name__)


@bp.get("/")
def index() -> Response:
    return send_from_directory(STATIC, "index.html", mimetype="text/html", max_age=0)
