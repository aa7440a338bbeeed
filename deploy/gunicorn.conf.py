"""gunicorn settings of the gateway image: ``gunicorn -c deploy/gunicorn.conf.py api.wsgi:app``.

Processes and threads come from the ``GATEWAY_WORKERS`` and ``GATEWAY_THREADS`` settings.
Every synchronous request holds one thread while it waits (up to ``SYNC_WAIT_SECONDS``),
so ``GATEWAY_WORKERS * GATEWAY_THREADS`` is the number of clients that can wait at once.

With ``PROMETHEUS_MULTIPROC_DIR`` set, the directory is emptied at start and a dead
process's files are marked, so ``/metrics`` adds up all processes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from shared.settings import Settings

_settings = Settings.from_env()
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")

bind = "0.0.0.0:8000"  # --bind on the command line overrides it
workers = _settings.gateway_workers
threads = _settings.gateway_threads
worker_class = "gthread"
# A synchronous request may legitimately wait SYNC_WAIT_SECONDS; let it finish on shutdown too.
timeout = int(_settings.sync_wait_seconds) + 60
graceful_timeout = int(_settings.sync_wait_seconds) + 10
keepalive = 30
accesslog = "-"
errorlog = "-"


def on_starting(_server: Any) -> None:
    if _metrics_dir:
        path = Path(_metrics_dir)
        if path.exists():
            for child in path.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        path.mkdir(parents=True, exist_ok=True)


def child_exit(_server: Any, worker: Any) -> None:
    if _metrics_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
