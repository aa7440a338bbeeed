"""The gateway's app factory."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from api.auth import init_auth
from api.errors import register_error_handlers
from api.metrics import init_metrics
from api.routes import bp
from api.service import JobService
from api.v2 import bp as v2_bp
from shared.errors import Unavailable
from shared.fetch import ImageFetcher
from shared.settings import Settings

log = logging.getLogger(__name__)

EXTENSION = "img2img"
FETCHER_EXTENSION = "img2img.fetcher"


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
    app.extensions[FETCHER_EXTENSION] = ImageFetcher(settings)
    register_error_handlers(app)
    init_auth(app, settings, service.keys)
    app.register_blueprint(bp)
    app.register_blueprint(v2_bp)
    init_metrics(app, service)
    return app


def service_of(app: Any) -> JobService:
    service: JobService = app.extensions[EXTENSION]
    return service


def fetcher_of(app: Any) -> ImageFetcher:
    fetcher: ImageFetcher = app.extensions[FETCHER_EXTENSION]
    return fetcher
