"""Prometheus metrics of one worker process, served over HTTP on ``WORKER_METRICS_PORT``.

Jobs run in Celery's prefork child, not in the main process, so the runtime that lives in
the child owns these metrics and starts the endpoint there (one child per worker: ``-c 1``).
Every job also feeds the farm-wide histograms in Redis (:mod:`shared.metrics`) that the
gateway's ``/metrics`` reports. Recording never fails a job: errors are logged and dropped.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.jobs import Job
from shared.metrics import LATENCY_BUCKETS, QUEUE_WAIT, TIME_TO_RESULT, FarmMetrics
from shared.store import JobStore

log = logging.getLogger(__name__)

BATCH_BUCKETS: Final[tuple[float, ...]] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
PIPELINE_BUCKETS: Final[tuple[float, ...]] = (0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300)


class CudaMemoryCollector(Collector):
    """GPU memory of the devices this process uses; nothing until torch has set CUDA up."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        allocated = GaugeMetricFamily(
            "img2img_worker_gpu_memory_allocated_bytes", "GPU memory held by tensors", labels=["device"]
        )
        reserved = GaugeMetricFamily(
            "img2img_worker_gpu_memory_reserved_bytes", "GPU memory reserved by torch", labels=["device"]
        )
        used = GaugeMetricFamily(
            "img2img_worker_gpu_memory_used_bytes", "GPU memory in use on the device", labels=["device"]
        )
        total = GaugeMetricFamily("img2img_worker_gpu_memory_total_bytes", "GPU memory", labels=["device"])
        for index in range(torch.cuda.device_count()):
            label = [str(index)]
            allocated.add_metric(label, float(torch.cuda.memory_allocated(index)))
            reserved.add_metric(label, float(torch.cuda.memory_reserved(index)))
            free, capacity = torch.cuda.mem_get_info(index)
            used.add_metric(label, float(capacity - free))
            total.add_metric(label, float(capacity))
        yield from (allocated, reserved, used, total)


class WorkerMetrics:
    """Counters of one worker process, in a registry of its own."""

    def __init__(self, store: JobStore | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.jobs = Counter("img2img_worker_jobs", "Jobs this worker started", registry=reg)
        self.images = Counter("img2img_worker_images", "Images generated", registry=reg)
        self.steps = Counter(
            "img2img_worker_denoising_steps",
            "Denoising steps run (one step covers a job's batch)",
            registry=reg,
        )
        self.pipeline_seconds = Histogram(
            "img2img_worker_pipeline_seconds",
            "Seconds in the pipeline per job",
            buckets=PIPELINE_BUCKETS,
            registry=reg,
        )
        self.steps_per_second = Gauge(
            "img2img_worker_steps_per_second", "Denoising steps per second of the last job", registry=reg
        )
        self.queue_wait = Histogram(
            "img2img_worker_queue_wait_seconds",
            "Seconds the jobs this worker started had waited in the queue",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.batch_images = Histogram(
            "img2img_worker_batch_images",
            "Images per pipeline call (one job's samples, or several jobs batched)",
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.batch_jobs = Histogram(
            "img2img_worker_batch_jobs", "Jobs per pipeline call", buckets=BATCH_BUCKETS, registry=reg
        )
        reg.register(CudaMemoryCollector())
        self._farm = FarmMetrics(store) if store is not None else None
        self.port: int | None = None

    def serve(self, port: int) -> bool:
        """Serve ``/metrics`` on ``port`` (all interfaces) from a daemon thread; 0 serves nothing."""
        if port <= 0:
            return False
        try:
            start_http_server(port, addr="0.0.0.0", registry=self.registry)
        except OSError as exc:
            log.warning("worker metrics: cannot listen on port %d: %s", port, exc)
            return False
        self.port = port
        log.info("worker metrics on port %d", port)
        return True

    def job_started(self, job: Job) -> None:
        """Count a job this worker started and how long it had been queued (until its claim)."""
        waited = max((job.started_at or time.time()) - job.created_at, 0.0)
        self.jobs.inc()
        self.queue_wait.observe(waited)
        self._observe_farm(QUEUE_WAIT, waited, job.id)

    def pipeline_ran(self, images: int, steps: int, seconds: float) -> None:
        self.images.inc(images)
        self.steps.inc(steps)
        self.pipeline_seconds.observe(seconds)
        if seconds > 0:
            self.steps_per_second.set(steps / seconds)

    def batch_ran(self, images: int, jobs: int) -> None:
        self.batch_images.observe(images)
        self.batch_jobs.observe(jobs)

    def job_succeeded(self, job: Job, finished_at: float | None = None) -> None:
        """How long the client waited for the result (until ``finished_at``, default now)."""
        waited = (finished_at or time.time()) - job.created_at
        self._observe_farm(TIME_TO_RESULT, max(waited, 0.0), job.id)

    def _observe_farm(self, name: str, seconds: float, job_id: str) -> None:
        if self._farm is None:
            return
        try:
            self._farm.observe(name, seconds)
        except Exception as exc:  # noqa: BLE001 - metrics never fail a job
            log.warning("job %s: could not record %s: %s", job_id, name, exc)
