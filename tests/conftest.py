"""Real pieces for integration tests: redis-server and an S3 server on free loopback
ports, the tiny model on disk, Celery worker processes and the gateway app."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from deploy.local import GatewayProcess, RedisServer, S3Server, WorkerProcess
from shared.settings import Settings
from shared.store import JobStore

ROOT = Path(__file__).resolve().parent.parent

# Fixtures that start real processes (Redis, S3, workers, gateways) or write the model: a test
# that uses one, directly or through another fixture, is an integration test. The others form
# the unit tier (``make test-unit``).
INTEGRATION_FIXTURES = frozenset({"redis_server", "s3_server", "tiny_model"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


TINY_MODEL = ROOT / "var" / "models" / "tiny"
TORCH_THREADS = 2


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from worker.models import ensure_tiny_model

    return ensure_tiny_model(TINY_MODEL)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def base_settings(redis_server: RedisServer, s3_server: S3Server, tiny_model: Path) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        s3_endpoint_url=s3_server.url,
        s3_bucket="img2img-test",
        s3_access_key_id="test",
        s3_secret_access_key="test",
        model_dir=str(tiny_model),
        device="cpu",
        torch_threads=TORCH_THREADS,
        sync_wait_seconds=60,
        worker_heartbeat_seconds=1.0,
        auth_enabled=False,
        warmup="off",  # a test worker is ready as soon as its model is loaded
    )


def start_worker(
    settings: Settings, workdir: Path, name: str, env: Mapping[str, str] | None = None
) -> WorkerProcess:
    """A worker process, once it reports its model loaded; ``env`` adds to its environment."""
    worker = WorkerProcess(settings, workdir, name=name, extra_env=env)
    store = JobStore(settings)
    before = store.workers.fresh(max_age=3600)
    worker.start()
    try:
        worker.wait_ready(store, timeout=180, before=before)
    except Exception:
        worker.stop()
        raise
    return worker


@pytest.fixture(scope="session")
def settings(base_settings: Settings) -> Settings:
    """Settings of the main test farm: its own queue and key prefix."""
    return base_settings.replace(queue_name="img2img-main", key_prefix="t-main")


@pytest.fixture(scope="session")
def worker(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    proc = start_worker(settings, tmp_path_factory.mktemp("worker"), "main")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def app(settings: Settings, worker: WorkerProcess) -> Flask:
    from api.app import create_app

    return create_app(settings)


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture()
def isolated_settings(base_settings: Settings) -> Settings:
    """Settings with a fresh queue and key prefix, for tests that start their own workers."""
    tag = uuid.uuid4().hex[:8]
    return base_settings.replace(queue_name=f"img2img-{tag}", key_prefix=f"t-{tag}")


@pytest.fixture(scope="session")
def faulty_farm(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """A gateway and a worker whose runner raises when the prompt contains ``[fail]``."""
    from api.app import create_app

    settings = base_settings.replace(
        queue_name="img2img-faulty",
        key_prefix="t-faulty",
        runner="tests.fixtures.runners:FailOnMarkerRunner",
    )
    proc = start_worker(settings, tmp_path_factory.mktemp("faulty"), "faulty")
    yield create_app(settings)
    proc.stop()


@pytest.fixture(scope="session")
def gateway(
    settings: Settings, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The main farm's gateway under gunicorn, as ``make run`` serves it; yields its URL."""
    proc = GatewayProcess(settings, tmp_path_factory.mktemp("gateway"))
    proc.start()
    yield proc.url
    proc.stop()
