"""A worker process's Prometheus endpoint (worker.metrics)."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from deploy.local import LOOPBACK, free_port
from shared.metrics import QUEUE_WAIT, TIME_TO_RESULT, FarmMetrics
from shared.schema import parse_request
from shared.settings import Settings
from shared.store import JobStore
from tests.helpers import create_job, reference_body
from worker.metrics import WorkerMetrics


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def test_serves_what_the_jobs_did(isolated_settings: Settings) -> None:
    store = JobStore(isolated_settings)
    metrics = WorkerMetrics(store)
    assert not metrics.serve(0)
    port = free_port()
    assert metrics.serve(port)
    assert not WorkerMetrics().serve(port)  # taken: logged, the worker goes on

    job = create_job(store, "job-metrics", parse_request(reference_body(), isolated_settings).params, [1])
    metrics.job_started(job)
    metrics.pipeline_ran(images=2, steps=18, seconds=0.5)
    time.sleep(0.01)
    metrics.job_succeeded(job)

    samples = scrape(port)
    assert samples["img2img_worker_jobs_total"] == 1
    assert samples["img2img_worker_images_total"] == 2
    assert samples["img2img_worker_denoising_steps_total"] == 18
    assert samples["img2img_worker_steps_per_second"] == 36
    assert samples["img2img_worker_pipeline_seconds_count"] == 1
    assert samples["img2img_worker_queue_wait_seconds_count"] == 1
    # No CUDA here: no GPU memory series rather than zeros.
    assert not any(name.startswith("img2img_worker_gpu_") for name in samples)

    farm = FarmMetrics(store)
    assert farm.histogram(QUEUE_WAIT).count == 1
    assert farm.histogram(TIME_TO_RESULT).count == 1
    assert farm.histogram(TIME_TO_RESULT).total >= farm.histogram(QUEUE_WAIT).total


def test_redis_trouble_never_reaches_the_job(isolated_settings: Settings) -> None:
    down = isolated_settings.replace(redis_url=f"redis://{LOOPBACK}:{free_port()}/0")
    metrics = WorkerMetrics(JobStore(down))
    job = create_job(
        JobStore(isolated_settings),
        "job-metrics-down",
        parse_request(reference_body(), isolated_settings).params,
        [1],
    )
    metrics.job_started(job)  # logs a warning, raises nothing
    metrics.job_succeeded(job)
    assert metrics.registry.get_sample_value("img2img_worker_jobs_total") == 1
