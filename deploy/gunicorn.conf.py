"""gunicorn settings of the gateway image: ``gunicorn -c deploy/gunicorn.conf.py api.wsgi:app``.

Processes and connections come from the ``GATEWAY_WORKERS`` and ``GATEWAY_CONNECTIONS``
settings. The worker is gevent's: a synchronous request waiting for its job (up to
``SYNC_WAIT_SECONDS``) holds a greenlet, not a thread, so ``GATEWAY_WORKERS *
GATEWAY_CONNECTIONS`` clients can wait at once.

The worker class, timeouts and keep-alive come from ``deploy.processes``, which also builds
the command line of the gateway ``make run`` and the tests start (the image copies it).

With ``PROMETHEUS_MULTIPROC_DIR`` set, the directory is emptied at start and a dead
process's files are marked, so ``/metrics`` adds up all processes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from deploy.processes import (
    GATEWAY_KEEPALIVE,
    GATEWAY_WORKER_CLASS,
    gateway_graceful_timeout,
    gateway_timeout,
)
from shared.settings import Settings

_settings = Settings.from_env()
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")

bind = "0.0.0.0:8000"  # --bind on the command line overrides it
workers = _settings.gateway_workers
worker_connections = _settings.gateway_connections
worker_class = GATEWAY_WORKER_CLASS
# A synchronous request may legitimately wait SYNC_WAIT_SECONDS; let it finish on shutdown too.
timeout = gateway_timeout(_settings.sync_wait_seconds)
graceful_timeout = gateway_graceful_timeout(_settings.sync_wait_seconds)
keepalive = GATEWAY_KEEPALIVE
# X-Forwarded-Proto is believed from TRUSTED_PROXIES only (api/proxies.py does the rest).
forwarded_allow_ips = _settings.trusted_proxies
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
