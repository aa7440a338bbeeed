"""Celery entry: ``celery -A worker.main worker -Q img2img -c 1``.

The main process imports the runner (torch, diffusers: seconds of CPU) before it forks its
pool process, so a pool process that dies (killed for memory, a crash in a kernel) is
replaced by a fork that only has to load the weights again. What those imports made is then
frozen out of the garbage collector: the fork does not copy those pages to scan them, and
the process exits in a fraction of a second instead of tearing the modules down object by
object.
"""

from __future__ import annotations

import gc

from shared.celery_app import make_celery
from shared.settings import Settings
from worker.runs import load_runner_class
from worker.tasks import register

settings = Settings.from_env()
app = make_celery(settings)
register(app, settings)
try:
    load_runner_class(settings.runner)
except (ImportError, AttributeError, ValueError):
    pass  # the pool process's load fails on it too, and the worker exits 3 with its reason
gc.freeze()
