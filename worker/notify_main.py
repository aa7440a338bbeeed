"""Celery entry of the webhook worker.

celery -A worker.notify_main worker -Q img2img-webhooks -P threads -c 8
"""

from __future__ import annotations

from shared.celery_app import make_celery
from shared.settings import Settings
from worker.notify import register

settings = Settings.from_env()
app = make_celery(settings)
register(app, settings)
