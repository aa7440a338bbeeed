"""Celery entry: ``celery -A worker.main worker -Q img2img -c 1``."""

from __future__ import annotations

from shared.celery_app import make_celery
from shared.settings import Settings
from worker.tasks import register

settings = Settings.from_env()
app = make_celery(settings)
register(app, settings)
