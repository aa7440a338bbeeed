"""Where a worker finds a job's input: the Redis copy first, S3 once the copy has expired."""

from __future__ import annotations

from pathlib import Path

from shared.jobs import JobStatus, input_key
from shared.settings import Settings
from tests.conftest import start_worker
from tests.helpers import input_copy
from tests.reliability.conftest import LONG, Farm


def test_the_redis_copy_is_used_and_s3_backs_it(fault_settings: Settings, tmp_path: Path) -> None:
    worker = start_worker(fault_settings, tmp_path, "inputs")
    try:
        farm = Farm(fault_settings)
        blocker = farm.submit(prompt="holds the worker", **LONG)
        farm.wait(blocker.id, lambda j: j.status is JobStatus.RUNNING and j.progress_step >= 1)

        from_redis = farm.submit(seed=1)
        storage = farm.service.storage
        storage._client.delete_object(Bucket=storage.bucket, Key=input_key(from_redis.id))
        assert input_copy(farm.settings, from_redis.id) is not None

        # A gateway that keeps no copy once S3 has the input, as after a long wait in the queue.
        from_s3 = Farm(fault_settings.replace(input_cache_seconds=0)).submit(seed=2)
        assert input_copy(farm.settings, from_s3.id) is None
        assert farm.objects(from_s3.id) == [input_key(from_s3.id)]

        farm.store.jobs.cancel(blocker.id)
        for job in (from_redis, from_s3):
            done = farm.finished(job.id)
            assert done.status is JobStatus.SUCCEEDED, done.error
    finally:
        worker.stop()
