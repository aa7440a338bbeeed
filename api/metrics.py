"""``GET /metrics``: the gateway's Prometheus endpoint.

Two kinds of numbers:

* per-process request counters and latency histograms, kept by prometheus_client. Under
  gunicorn with several worker processes, set ``PROMETHEUS_MULTIPROC_DIR`` (an empty,
  writable directory; ``deploy/gunicorn.conf.py`` clears it at start) and every process
  writes its values there, so a scrape that reaches any process reports them all;
* farm-wide numbers read from Redis at scrape time (queue depth, jobs by status, images,
  ready workers, queue-wait and time-to-result histograms), right whatever process answers.

``/metrics`` needs no API key: keep it off the public network (scrape it from inside).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from api.protocols import Protocol, protocol_of
from api.service import JobService
from shared.metrics import HISTOGRAMS, QUEUE_WAIT, TIME_TO_RESULT, FarmMetrics

log = logging.getLogger(__name__)

EXTENSION: Final = "img2img.metrics"
_STARTED: Final = "img2img.metrics.started"
UNMATCHED: Final = "<unmatched>"
# Methods counted by name; any other (a client may send any token) is counted as OTHER, so
# labels stay few whatever clients send.
KNOWN_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD: Final = "OTHER"

REQUEST_BUCKETS: Final[tuple[float, ...]] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2,
    5,
    10,
    30,
    60,
    120,
    300,
)

_HISTOGRAM_HELP: Final = {
    QUEUE_WAIT: "Seconds jobs waited in the queue before a worker started them (all jobs)",
    TIME_TO_RESULT: "Seconds from a job's creation to its success (all jobs)",
}

bp = Blueprint("metrics", __name__)


def multiprocess_mode() -> bool:
    """Whether prometheus_client keeps values in ``PROMETHEUS_MULTIPROC_DIR`` files.

    The library decides this once, from the environment, when it is first imported.
    """
    return prometheus_values.ValueClass is not prometheus_values.MutexValue


class FarmCollector(Collector):
    """Reads the farm-wide numbers from Redis at each scrape."""

    def __init__(self, service: JobService) -> None:
        self._service = service
        self._farm = FarmMetrics(service.store)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("img2img_redis_up", "Whether the gateway could read the farm state in Redis")
        try:
            families = list(self._farm_families())
        except Exception as exc:  # noqa: BLE001 - a scrape reports Redis down, it does not fail
            log.warning("metrics: cannot read the farm state: %s", exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from families

    def _farm_families(self) -> Iterable[Metric]:
        settings = self._service.settings
        depth = GaugeMetricFamily(
            "img2img_queue_depth", "Jobs waiting in the Celery queue (Redis list length)", labels=["queue"]
        )
        depth.add_metric([settings.queue_name], float(self._farm.queue_depth(settings.queue_name)))
        yield depth

        jobs = CounterMetricFamily("img2img_jobs", "Jobs that entered each status", labels=["status"])
        for status, count in sorted(self._farm.jobs_by_status().items()):
            jobs.add_metric([status], float(count))
        yield jobs

        stats = self._service.store.counters.all()
        yield CounterMetricFamily("img2img_images", "Images generated", value=float(stats.get("images", 0)))
        yield CounterMetricFamily(
            "img2img_pipeline_calls",
            "Pipeline calls (one per job)",
            value=float(stats.get("pipeline_calls", 0)),
        )

        yield GaugeMetricFamily(
            "img2img_uploads_pending",
            "Succeeded jobs whose outputs are not in S3 yet (kept in Redis until they are)",
            value=float(self._service.store.uploads.pending()),
        )

        window = settings.worker_fresh_seconds
        ready = len(self._service.store.workers.fresh(max_age=window))
        yield GaugeMetricFamily("img2img_workers_ready", "Workers with a loaded model", value=float(ready))

        for name in HISTOGRAMS:
            snapshot = self._farm.histogram(name)
            histogram = HistogramMetricFamily(f"img2img_{name}", _HISTOGRAM_HELP[name])
            histogram.add_metric([], [(le, float(n)) for le, n in snapshot.buckets], snapshot.total)
            yield histogram


class GatewayMetrics:
    """The gateway's metrics and the registry ``/metrics`` serves."""

    def __init__(self, service: JobService) -> None:
        # The metric objects live in a registry of their own, so several apps in one
        # process (tests) never clash; in multiprocess mode their values go to files.
        own = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "img2img_http_requests",
            "HTTP requests answered, by route, method and status code",
            ["route", "method", "code"],
            registry=own,
        )
        self.protocols = Counter(
            "img2img_protocol_requests",
            "HTTP requests answered, by protocol (segmind, a1111, openai, none) and status code",
            ["protocol", "code"],
            registry=own,
        )
        self.latency = Histogram(
            "img2img_http_request_duration_seconds",
            "Seconds from a request's arrival to its answer (end to end for synchronous img2img)",
            ["route", "method"],
            buckets=REQUEST_BUCKETS,
            registry=own,
        )
        if multiprocess_mode():
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        else:
            self.registry = own
        self.registry.register(FarmCollector(service))

    def observe(self, route: str, method: str, code: int, seconds: float | None, protocol: Protocol) -> None:
        self.requests.labels(route, method, str(code)).inc()
        self.protocols.labels(protocol.value, str(code)).inc()
        if seconds is not None:
            self.latency.labels(route, method).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def init_metrics(app: Flask, service: JobService) -> GatewayMetrics:
    """Count every request of ``app`` and serve ``/metrics``."""
    metrics = GatewayMetrics(service)
    app.extensions[EXTENSION] = metrics
    app.wsgi_app = _Timed(app.wsgi_app)  # type: ignore[method-assign]
    app.after_request(_record)
    app.register_blueprint(bp)
    return metrics


class _Timed:
    """WSGI middleware noting when a request arrived, before any hook of the app runs."""

    def __init__(self, wsgi_app: Callable[..., Any]) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        environ[_STARTED] = time.perf_counter()
        return self.wsgi_app(environ, start_response)


def _record(response: Response) -> Response:
    try:
        started = request.environ.get(_STARTED)
        seconds = None if started is None else time.perf_counter() - started
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
        method = request.method if request.method in KNOWN_METHODS else OTHER_METHOD
        metrics: GatewayMetrics = current_app.extensions[EXTENSION]
        metrics.observe(route, method, response.status_code, seconds, protocol_of(request.path))
    except Exception:
        log.warning("metrics: could not record a request", exc_info=True)
    return response


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    metrics: GatewayMetrics = current_app.extensions[EXTENSION]
    return Response(metrics.render(), mimetype=None, content_type=CONTENT_TYPE_LATEST)
