"""The gateway's app factory."""

from __future__ import annotations

import logging

from flask import Flask

from api import a1111, openai_images, ops, opspage, playground, routes, v2
from api.auth import init_auth
from api.context import install
from api.errors import register_error_handlers
from api.metrics import init_metrics
from api.proxies import ForwardedHeaders, check_public_url, trusted_networks
from api.service import JobService
from shared.errors import Unavailable
from shared.fetch import ImageFetcher
from shared.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, service: JobService | None = None) -> Flask:
    """Build the gateway. ``settings`` default to the environment; ``service`` to real clients."""
    settings = settings or Settings.from_env()
    check_public_url(settings)
    app = Flask(__name__)
    app.wsgi_app = ForwardedHeaders(app.wsgi_app, trusted_networks(settings.trusted_proxies))  # type: ignore[method-assign]
    # A base64 image grows by a third; leave room for the other fields.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_image_bytes * 4 // 3 + 64 * 1024
    app.json.sort_keys = False  # type: ignore[attr-defined]
    service = service or JobService(settings)
    try:
        service.storage.ensure_bucket()
    except Unavailable as exc:
        log.warning("storage not ready at start (%s); /readyz will say so", exc)
    install(app, service, ImageFetcher(settings))
    register_error_handlers(app)
    init_auth(app, settings, service.keys)
    app.register_blueprint(routes.bp)
    app.register_blueprint(v2.bp)
    app.register_blueprint(a1111.bp)
    app.register_blueprint(openai_images.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(playground.bp)
    app.register_blueprint(opspage.bp)
    init_metrics(app, service)
    return app
