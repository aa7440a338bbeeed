"""``python -m worker.health``, the readiness probe of worker containers, against a real Redis."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from deploy.local import LOOPBACK, free_port, service_env
from shared.settings import Settings
from shared.store import JobStore
from tests.helpers import raw_redis

ROOT = Path(__file__).resolve().parents[2]
HOST = socket.gethostname()


def probe(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.health", *args],
        env=service_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ready_only_with_a_fresh_heartbeat_of_this_host(isolated_settings: Settings) -> None:
    store = JobStore(isolated_settings)
    workers = store.keys.workers
    assert probe(isolated_settings).returncode == 1

    store.workers.ready("some-other-pod:41", forget_after=3600)
    raw_redis(isolated_settings).zadd(
        workers, {f"{HOST}:42": time.time() - 60}
    )  # stale: a dead worker's last beat
    result = probe(isolated_settings)
    assert result.returncode == 1, result.stderr
    assert "0 of 1" in result.stderr

    store.workers.ready(f"{HOST}:43", forget_after=3600)
    result = probe(isolated_settings)
    assert result.returncode == 0, result.stderr
    assert f"{HOST}:43" in result.stderr
    assert probe(isolated_settings, "--min", "2").returncode == 1
    store.workers.ready(f"{HOST}:44", forget_after=3600)
    assert probe(isolated_settings, "--min", "2").returncode == 0


def test_not_ready_when_redis_is_down(isolated_settings: Settings) -> None:
    down = isolated_settings.replace(redis_url=f"redis://{LOOPBACK}:{free_port()}/0")
    result = probe(down)
    assert result.returncode == 1
    assert "cannot read Redis" in result.stderr


def test_probe_and_worker_metrics_import_no_torch() -> None:
    code = (
        "import sys, worker.health, worker.metrics, deploy.launcher; "
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
