"""How a request reaches its app's job service and image fetcher.

:func:`install` puts both in ``app.extensions`` once, when the app is built; blueprints
reach them through :func:`service` and :func:`fetcher` while a request is handled.
"""

from __future__ import annotations

from typing import Any, Final

from flask import Flask, current_app, request, url_for

from api.service import JobService
from shared.fetch import ImageFetcher

SERVICE_EXTENSION: Final = "img2img"
FETCHER_EXTENSION: Final = "img2img.fetcher"


def install(app: Flask, service: JobService, fetcher: ImageFetcher) -> None:
    """Make ``service`` and ``fetcher`` the ones every request of ``app`` uses."""
    app.extensions[SERVICE_EXTENSION] = service
    app.extensions[FETCHER_EXTENSION] = fetcher


def service_of(app: Flask) -> JobService:
    service: JobService = app.extensions[SERVICE_EXTENSION]
    return service


def fetcher_of(app: Flask) -> ImageFetcher:
    fetcher: ImageFetcher = app.extensions[FETCHER_EXTENSION]
    return fetcher


def service() -> JobService:
    """The job service of the app handling this request."""
    return service_of(current_app)


def fetcher() -> ImageFetcher:
    """The image fetcher of the app handling this request."""
    return fetcher_of(current_app)


def base_url() -> str:
    """Where clients reach this gateway: ``PUBLIC_URL`` when set, else the request's host."""
    return service().settings.public_url or request.host_url


def absolute_url(endpoint: str, **values: Any) -> str:
    return base_url().rstrip("/") + url_for(endpoint, **values)
