"""Where a worker finds a job's input: the Redis copy first, S3 once the copy has expired."""

from __future__ import annotations

from pathlib import Path

from shared.jobs import JobStatus, input_key
from shared.settings import Settings
from tests.conftest import start_worker
from tests.helpers import input_copy, raw_redis
from tests.reliability.conftest import LONG, Farm


def test_the_redis_copy_is_used_and_s3_backs_it(fault_settings: Settings, tmp_path: Path) -> None:
    """The gateway writes nothing to S3; the worker runs a job from its Redis copy and stores the
    input in S3, after which the copy expires. A job whose copy is gone runs from S3."""
    worker = start_worker(fault_settings.replace(input_cache_seconds=0), tmp_path, "inputs")
    try:
        farm = Farm(fault_settings)
        blocker = farm.submit(prompt="holds the worker", **LONG)
        farm.wait(blocker.id, lambda j: j.status is JobStatus.RUNNING and j.progress_step >= 1)

        from_redis = farm.submit(seed=1)
        sent = input_copy(farm.settings, from_redis.id)
        assert sent is not None
        assert farm.objects(from_redis.id) == []  # nothing in S3 at submit

        # A job whose Redis copy has gone (as after a long wait in the queue): S3 has the input.
        from_s3 = farm.submit(seed=2)
        data = input_copy(farm.settings, from_s3.id)
        assert data is not None
        farm.service.storage.put(input_key(from_s3.id), data, "application/octet-stream")
        raw_redis(farm.settings, binary=True).delete(farm.store.keys.input(from_s3.id))

        farm.store.jobs.cancel(blocker.id)
        for job in (from_redis, from_s3):
            done = farm.finished(job.id)
            assert done.status is JobStatus.SUCCEEDED, done.error
        # The worker stored the input it ran from, then dropped the copy (INPUT_CACHE_SECONDS=0).
        farm.wait(from_redis.id, lambda _: input_copy(farm.settings, from_redis.id) is None, timeout=30)
        assert input_key(from_redis.id) in farm.objects(from_redis.id, count=2)
        assert farm.service.storage.get(input_key(from_redis.id)) == sent
    finally:
        worker.stop()
