"""The gateway's app factory."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from api.errors import register_error_handlers
from api.routes import bp
from api.service import JobService
from shared.errors import Unavailable
from shared.settings import Settings

log = logging.getLogger(__name__)

EXTENSION = "img2img"


def create_app(settings: Settings | None = None, service: JobService | None = None) -> Flask:
    """Build the gateway. ``settings`` default to the environment; ``service`` to real clients."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    # A base64 image grows by a third; leave room for the other fields.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_image_bytes * 4 // 3 + 64 * 1024
    app.json.sort_keys = False  # type: ignore[attr-defined]
    service = service or JobService(settings)
    try:
        service.storage.ensure_bucket()
    except Unavailable as exc:
        log.warning("storage not ready at start (%s); /readyz will say so", exc)
    app.extensions[EXTENSION] = service
    register_error_handlers(app)
    app.register_blueprint(bp)
    return app


def service_of(app: Any) -> JobService:
    service: JobService = app.extensions[EXTENSION]
    return service
