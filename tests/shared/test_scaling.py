"""The autoscaler's formula, and the counts it reads from the job store and /ops/scaling."""

from __future__ import annotations

import pytest

from api.app import create_app
from api.service import JobService
from shared.scaling import FleetLoad
from shared.schema import parse_request
from shared.settings import Settings
from shared.store import JobStore
from tests.helpers import reference_body, sample_image


@pytest.mark.parametrize(
    ("queued", "busy", "per_worker", "desired"),
    [
        (0, 0, 2, 0),  # idle: scale to zero
        (1, 0, 2, 1),  # one waiting job wakes one worker
        (10, 50, 2, 55),  # 50 busy with 10 waiting: never fewer than the busy ones
        (0, 3, 2, 3),  # busy workers are kept while nothing waits
        (7, 0, 1, 7),
    ],
)
def test_the_formula_keeps_busy_workers_and_adds_for_waiting_jobs(
    queued: int, busy: int, per_worker: int, desired: int
) -> None:
    load = FleetLoad(queued=queued, running=busy * 3, busy_workers=busy, ready_workers=busy)
    assert load.desired_workers(per_worker) == desired


def test_the_counts_come_from_the_job_store(isolated_settings: Settings) -> None:
    """Six jobs queued; two workers claim four of them (batched: two each) and beat; two
    wait. The store counts 2 queued, 4 running, 2 busy, 2 ready: 2 + ceil(2 / 2) = 3 wanted,
    and /ops/scaling says the same behind OPS_TOKEN."""
    settings = isolated_settings.replace(ops_token="scale-token", scale_jobs_per_worker=2)
    service = JobService(settings)
    params = parse_request(reference_body(), settings).params
    jobs = [service.submit(params, sample_image()) for _ in range(6)]
    store = JobStore(settings)
    for index, job in enumerate(jobs[:4]):
        store.jobs.claim(job.id, f"gpu{index % 2}@host", lease_seconds=60, max_attempts=3)
    for name in ("gpu0@host", "gpu1@host"):
        store.workers.ready(name, forget_after=60)
    load = store.jobs.fleet_load(settings.worker_fresh_seconds)
    assert load == FleetLoad(queued=2, running=4, busy_workers=2, ready_workers=2)
    assert load.desired_workers(2) == 3

    client = create_app(settings).test_client()
    assert client.get("/ops/scaling").status_code == 401
    reply = client.get("/ops/scaling", headers={"Authorization": "Bearer scale-token"})
    assert reply.status_code == 200
    assert reply.get_json() == {
        "queued": 2,
        "running": 4,
        "busy_workers": 2,
        "ready_workers": 2,
        "jobs_per_worker": 2,
        "desired_workers": 3,
    }
