"""``GET /metrics``: Prometheus text that parses, whose counters follow the farm's work."""

from __future__ import annotations

import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from deploy.local import LOOPBACK, ManagedProcess, free_port, service_env, wait_until
from shared.settings import Settings
from tests.helpers import reference_body

URL = "/v1/sd1.5-img2img"
ROOT = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(client: FlaskClient) -> Samples:
    reply = client.get("/metrics")
    assert reply.status_code == 200
    assert reply.content_type.startswith("text/plain")
    return parse(reply.get_data(as_text=True))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_counters_move_after_a_job(client: FlaskClient, settings: Settings) -> None:
    before = scrape(client)
    reply = client.post(URL, json=reference_body())
    assert reply.status_code == 200, reply.get_data(as_text=True)

    def moved(samples: Samples) -> dict[str, float]:
        return {
            "requests": value(samples, "img2img_http_requests_total", route=URL, method="POST", code="200")
            - value(before, "img2img_http_requests_total", route=URL, method="POST", code="200"),
            "latency": value(samples, "img2img_http_request_duration_seconds_count", route=URL, method="POST")
            - value(before, "img2img_http_request_duration_seconds_count", route=URL, method="POST"),
            **{
                status: value(samples, "img2img_jobs_total", status=status)
                - value(before, "img2img_jobs_total", status=status)
                for status in ("queued", "running", "succeeded")
            },
            "images": value(samples, "img2img_images_total") - value(before, "img2img_images_total"),
            "queue_wait": value(samples, "img2img_queue_wait_seconds_count")
            - value(before, "img2img_queue_wait_seconds_count"),
            "job_seconds": value(samples, "img2img_job_seconds_count")
            - value(before, "img2img_job_seconds_count"),
        }

    expected = dict.fromkeys(
        ("requests", "latency", "queued", "running", "succeeded", "images", "queue_wait", "job_seconds"), 1.0
    )
    # The worker records a finished job just after the waiting request sees it end.
    assert eventually(lambda: moved(scrape(client)) == expected), moved(scrape(client))

    after = scrape(client)
    assert value(after, "img2img_redis_up") == 1.0
    assert value(after, "img2img_workers_ready") >= 1.0
    assert ("img2img_uploads_pending", frozenset()) in after
    assert ("img2img_queue_depth", frozenset({("queue", settings.queue_name)})) in after
    # Cumulative buckets: the +Inf bucket holds every observation.
    assert value(after, "img2img_queue_wait_seconds_bucket", le="+Inf") == value(
        after, "img2img_queue_wait_seconds_count"
    )


def test_errors_are_counted_by_route_and_code(client: FlaskClient) -> None:
    before = scrape(client)
    assert client.get("/v1/jobs/does-not-exist").status_code == 404
    assert client.get("/no/such/path").status_code == 404
    after = scrape(client)
    job_route = {"route": "/v1/jobs/<job_id>", "method": "GET", "code": "404"}
    unmatched = {"route": "<unmatched>", "method": "GET", "code": "404"}
    for labels in (job_route, unmatched):
        assert (
            value(after, "img2img_http_requests_total", **labels)
            == value(before, "img2img_http_requests_total", **labels) + 1
        )


def test_queue_depth_is_the_length_of_the_celery_queue(isolated_settings: Settings) -> None:
    """Jobs sent to a queue no worker reads wait in its Redis list, and /metrics says how many."""
    from api.app import create_app

    client = create_app(isolated_settings).test_client()
    assert value(scrape(client), "img2img_queue_depth", queue=isolated_settings.queue_name) == 0
    for _ in range(3):
        reply = client.post(URL, json=reference_body(), headers={"Prefer": "respond-async"})
        assert reply.status_code == 202
    samples = scrape(client)
    assert value(samples, "img2img_queue_depth", queue=isolated_settings.queue_name) == 3
    assert value(samples, "img2img_jobs_total", status="queued") == 3
    assert value(samples, "img2img_jobs_total", status="running") == 0


def test_redis_down_is_reported_not_raised(isolated_settings: Settings) -> None:
    from api.app import create_app

    down = isolated_settings.replace(redis_url=f"redis://{LOOPBACK}:{free_port()}/0")
    samples = scrape(create_app(down).test_client())
    assert value(samples, "img2img_redis_up") == 0.0
    assert not any(name == "img2img_queue_depth" for name, _ in samples)


def pids_with_files(metrics_dir: Path) -> set[str]:
    """Processes that wrote metric files (named ``{kind}_{pid}.db``)."""
    return {f.stem.rpartition("_")[2] for f in metrics_dir.glob("*.db")}


def test_gunicorn_processes_add_up(
    isolated_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two gunicorn processes sharing PROMETHEUS_MULTIPROC_DIR report every request once."""
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "stale.db").write_bytes(b"left from an earlier run")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    port = free_port()
    settings = isolated_settings.replace(gateway_workers=2)
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "deploy" / "gunicorn.conf.py"),
        "--bind",
        f"{LOOPBACK}:{port}",
        # Sync workers accept only while idle, so concurrent clients reach both processes.
        "--worker-class",
        "sync",
        "api.wsgi:app",
    ]
    gateway = ManagedProcess("gateway-mp", argv, tmp_path / "gateway.log", service_env(settings))
    gateway.start()
    try:
        base = f"http://{LOOPBACK}:{port}"

        def get(path: str) -> str:
            with urllib.request.urlopen(base + path, timeout=10) as reply:
                body: bytes = reply.read()
                return body.decode()

        wait_until(lambda: bool(get("/healthz")), 60, "gateway", gateway.log_file)
        assert not (metrics_dir / "stale.db").exists()
        sent = 1
        # Concurrent requests until both processes have answered some (each then has files).
        with ThreadPoolExecutor(max_workers=8) as pool:
            while len(pids_with_files(metrics_dir)) < 2 and sent < 2000:
                list(pool.map(get, ["/healthz"] * 20))
                sent += 20
        assert len(pids_with_files(metrics_dir)) >= 2
        labels = {"route": "/healthz", "method": "GET", "code": "200"}
        # Every scrape, whichever process answers it, counts every request once.
        for _ in range(6):
            assert value(parse(get("/metrics")), "img2img_http_requests_total", **labels) == sent
    finally:
        gateway.stop()
