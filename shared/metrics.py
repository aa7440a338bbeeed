"""Farm-wide job numbers kept in Redis, so that every gateway process reports the same ones.

Workers write them as jobs move (queue wait, time to result); the gateway reads them when
``/metrics`` is scraped, together with the queue depth and the jobs-by-status counters the
job store keeps (``jobs_<status>`` fields of the stats hash). Counting in Redis rather than
in each process keeps the numbers right behind any number of gunicorn processes and hosts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from shared.store import JobStore

log = logging.getLogger(__name__)

# Upper bounds (seconds) of the latency histograms; a job outside them lands in +Inf.
LATENCY_BUCKETS: Final[tuple[float, ...]] = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)

QUEUE_WAIT: Final = "queue_wait_seconds"  # created -> a worker started it
TIME_TO_RESULT: Final = "job_seconds"  # created -> succeeded
HISTOGRAMS: Final[tuple[str, ...]] = (QUEUE_WAIT, TIME_TO_RESULT)

INF: Final = "+Inf"

_STATUS_PREFIX: Final = "jobs_"


@dataclass(frozen=True)
class HistogramSnapshot:
    """Cumulative ``(upper bound, count)`` pairs ending with ``+Inf``, and the sum."""

    buckets: tuple[tuple[str, int], ...]
    total: float

    @property
    def count(self) -> int:
        return self.buckets[-1][1]


def bucket_label(bound: float) -> str:
    """The ``le`` text of a bucket bound, as Prometheus writes it (``1.0``, ``0.25``)."""
    return repr(float(bound))


class FarmMetrics:
    """Reads and writes the farm-wide numbers kept by a :class:`JobStore`."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def observe(self, name: str, seconds: float) -> None:
        """Add one observation to histogram ``name`` (one bucket field, count and sum)."""
        bucket = next((bucket_label(b) for b in LATENCY_BUCKETS if seconds <= b), INF)
        self._store.counters.observe(name, bucket, seconds)

    def histogram(self, name: str) -> HistogramSnapshot:
        data = self._store.counters.histogram(name)
        running = 0
        buckets: list[tuple[str, int]] = []
        for label in (*(bucket_label(b) for b in LATENCY_BUCKETS), INF):
            running += int(data.get(label, 0))
            buckets.append((label, running))
        return HistogramSnapshot(tuple(buckets), float(data.get("sum", 0.0)))

    def queue_depth(self, queue: str) -> int:
        """Messages waiting in the Celery queue ``queue`` (not those a worker holds)."""
        return self._store.broker.depth(queue)

    def jobs_by_status(self) -> dict[str, int]:
        """How many jobs ever entered each status (``queued`` counts every job created)."""
        return {
            name.removeprefix(_STATUS_PREFIX): value
            for name, value in self._store.counters.all().items()
            if name.startswith(_STATUS_PREFIX)
        }
