"""Farm-wide counters in one hash (jobs by status, pipeline calls, images, ...), the moving
average of run time behind queue ETAs, and latency histograms.

Status counters (``jobs_<status>``) are written only by the scripts that change a status, in
the same step; the rest by the worker after each pipeline call.
"""

from __future__ import annotations

from typing import cast

from shared.store.clients import Clients


class Counters:
    def __init__(self, clients: Clients) -> None:
        self._keys = clients.keys
        self._text = clients.text

    def add(self, **increments: int) -> None:
        """Add to the farm-wide counters."""
        pipe = self._text.pipeline(transaction=False)
        for name, amount in increments.items():
            pipe.hincrby(self._keys.stats, name, amount)
        pipe.execute()

    def all(self) -> dict[str, int]:
        counters = cast(dict[str, str], self._text.hgetall(self._keys.stats))
        return {name: int(value) for name, value in counters.items() if value.lstrip("-").isdigit()}

    def record_run_seconds(self, seconds: float, weight: float = 0.2) -> None:
        """Fold a job's run time into the moving average used for queue ETAs."""
        key = self._keys.stats
        previous = cast(str | None, self._text.hget(key, "run_seconds_avg"))
        average = seconds if previous is None else (1 - weight) * float(previous) + weight * seconds
        self._text.hset(key, "run_seconds_avg", f"{average:.6f}")

    def average_run_seconds(self) -> float | None:
        value = cast(str | None, self._text.hget(self._keys.stats, "run_seconds_avg"))
        return None if value is None else float(value)

    def observe(self, histogram: str, bucket: str, seconds: float) -> None:
        """One observation of ``histogram``: its bucket's count, and the sum."""
        key = self._keys.histogram(histogram)
        pipe = self._text.pipeline(transaction=False)
        pipe.hincrby(key, bucket, 1)
        pipe.hincrbyfloat(key, "sum", max(seconds, 0.0))
        pipe.execute()

    def histogram(self, histogram: str) -> dict[str, str]:
        """The raw buckets (count per bucket label) and ``sum`` of ``histogram``."""
        return cast(dict[str, str], self._text.hgetall(self._keys.histogram(histogram)))
