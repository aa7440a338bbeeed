"""Farm-wide histograms and counters in Redis (shared.metrics), on a real redis-server."""

from __future__ import annotations

from shared.metrics import INF, LATENCY_BUCKETS, QUEUE_WAIT, FarmMetrics, bucket_label
from shared.settings import Settings
from shared.store import JobStore
from tests.helpers import raw_redis


def test_histogram_buckets_are_cumulative(isolated_settings: Settings) -> None:
    farm = FarmMetrics(JobStore(isolated_settings))
    assert farm.histogram(QUEUE_WAIT).count == 0
    for seconds in (0.1, 0.25, 0.3, 7.0, 99999.0):
        farm.observe(QUEUE_WAIT, seconds)
    snapshot = farm.histogram(QUEUE_WAIT)
    buckets = dict(snapshot.buckets)
    assert [label for label, _ in snapshot.buckets] == [bucket_label(b) for b in LATENCY_BUCKETS] + [INF]
    assert buckets["0.25"] == 2  # a bound holds the values equal to it
    assert buckets["0.5"] == 3
    assert buckets["5.0"] == 3
    assert buckets["10.0"] == 4
    assert buckets[INF] == snapshot.count == 5
    assert abs(snapshot.total - (0.1 + 0.25 + 0.3 + 7.0 + 99999.0)) < 1e-6


def test_queue_depth_counts_every_priority_list(isolated_settings: Settings) -> None:
    store = JobStore(isolated_settings)
    farm = FarmMetrics(store)
    queue = isolated_settings.queue_name
    assert farm.queue_depth(queue) == 0
    raw = raw_redis(isolated_settings)
    raw.rpush(queue, "a", "b")
    raw.rpush(f"{queue}\x06\x163", "c")
    assert farm.queue_depth(queue) == 3
    raw.delete(queue, f"{queue}\x06\x163")
