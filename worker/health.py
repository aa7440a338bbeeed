"""Readiness probe of a worker container: ``python -m worker.health``.

Exits 0 when at least ``--min`` worker processes of this host (its hostname: the pod or
container name) have loaded their model and sent a heartbeat within three heartbeat
periods (``WORKER_HEARTBEAT_SECONDS``); exits 1 otherwise, or when Redis cannot be read.
It imports no torch, so a Kubernetes exec probe or a Docker HEALTHCHECK answers fast.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence

import redis

from shared.settings import Settings
from shared.store import JobStore

log = logging.getLogger(__name__)


def ready_on_host(store: JobStore, host: str, max_age: float) -> list[str]:
    """Ready workers of ``host`` (their names are ``{host}:{pid}``)."""
    return [name for name in store.workers.fresh(max_age=max_age) if name.rpartition(":")[0] == host]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Exit 0 when this host's worker has loaded its model.")
    parser.add_argument("--min", type=int, default=1, help="ready worker processes needed (default 1)")
    parser.add_argument("--host", default=socket.gethostname(), help="host name (default: this host)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    settings = Settings.from_env()
    try:
        ready = ready_on_host(JobStore(settings), args.host, settings.worker_fresh_seconds)
    except redis.RedisError as exc:
        log.error("not ready: cannot read Redis: %s", exc)
        return 1
    if len(ready) < args.min:
        log.error(
            "not ready: %d of %d workers of %s have loaded their model", len(ready), args.min, args.host
        )
        return 1
    log.info("ready: %s", ", ".join(sorted(ready)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
