"""Job records in Redis, with atomic status transitions and a completion stream.

Each job is a hash ``{prefix}:job:{id}`` plus an event stream ``{prefix}:job:{id}:events``.
Every status change is one Lua script: it checks the current status against the states
the change may start from, writes the new fields and appends an event, so a transition
repeated by a redelivered task is a no-op. Waiters block on the stream with ``XREAD``
(no polling); reading from the start of the stream means an event that happened before
the waiter arrived is never missed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, cast

import redis

from shared.jobs import Job, JobStatus
from shared.schema import GenerationParams
from shared.settings import Settings

log = logging.getLogger(__name__)

_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {0, ''} end
local allowed = false
for s in string.gmatch(ARGV[1], '%S+') do
  if s == current then allowed = true end
end
if not allowed then return {0, current} end
redis.call('HSET', KEYS[1], 'status', ARGV[2], unpack(ARGV, 4))
if ARGV[2] == 'running' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 64, '*', 'status', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {1, current}
"""

_PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'progress_step', ARGV[1], 'progress_total', ARGV[2])
return 1
"""

# A blocking read never waits longer than this in one call, so a dead connection shows.
_BLOCK_SLICE_SECONDS = 5.0


class JobStore:
    """Reads and changes job records. Thread-safe: one Redis client with a pool."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self._prefix = settings.key_prefix
        self._ttl = settings.job_ttl_seconds
        self._redis = client or redis.Redis.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_timeout=_BLOCK_SLICE_SECONDS + 5,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        # Image bytes are not text: results travel on a second, binary client.
        self._blobs = redis.Redis.from_url(
            settings.redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
        )
        self._result_ttl = settings.result_cache_seconds
        self._transition = self._redis.register_script(_TRANSITION)
        self._progress = self._redis.register_script(_PROGRESS)

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    def key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    def _job_key(self, job_id: str) -> str:
        return self.key("job", job_id)

    def _events_key(self, job_id: str) -> str:
        return self.key("job", job_id, "events")

    # -- writes ---------------------------------------------------------------

    def create(self, job_id: str, params: GenerationParams, seeds: Sequence[int]) -> Job:
        """Record a new queued job."""
        now = time.time()
        fields: dict[str, str] = {
            "id": job_id,
            "status": JobStatus.QUEUED.value,
            "params": json.dumps(params.to_dict()),
            "seeds": json.dumps(list(seeds)),
            "created_at": repr(now),
            "progress_total": str(params.denoising_steps),
        }
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._job_key(job_id), mapping=cast(dict[Any, Any], fields))
        pipe.expire(self._job_key(job_id), self._ttl)
        pipe.xadd(self._events_key(job_id), {"status": JobStatus.QUEUED.value}, maxlen=64)
        pipe.expire(self._events_key(job_id), self._ttl)
        pipe.execute()
        return Job.from_hash(fields)

    def start(self, job_id: str, worker: str) -> bool:
        """queued -> running. False when the job is not queued (already taken, ended, gone)."""
        return self._move(
            job_id,
            (JobStatus.QUEUED,),
            JobStatus.RUNNING,
            started_at=repr(time.time()),
            worker=worker,
        )

    def progress(self, job_id: str, step: int, total: int) -> None:
        self._progress(keys=[self._job_key(job_id)], args=[step, total])

    def succeed(self, job_id: str, outputs: Sequence[str], generation_time: float) -> bool:
        """running -> succeeded with the output keys."""
        return self._move(
            job_id,
            (JobStatus.RUNNING,),
            JobStatus.SUCCEEDED,
            outputs=json.dumps(list(outputs)),
            generation_time=f"{generation_time:.6f}",
            finished_at=repr(time.time()),
        )

    def fail(self, job_id: str, error: str) -> bool:
        """queued or running -> failed with a message the client sees."""
        return self._move(
            job_id,
            (JobStatus.QUEUED, JobStatus.RUNNING),
            JobStatus.FAILED,
            error=error,
            finished_at=repr(time.time()),
        )

    def _move(self, job_id: str, allowed: Iterable[JobStatus], new: JobStatus, **fields: str) -> bool:
        args: list[str] = [" ".join(s.value for s in allowed), new.value, str(self._ttl)]
        for name, value in fields.items():
            args += [name, value]
        moved, previous = self._transition(keys=[self._job_key(job_id), self._events_key(job_id)], args=args)
        if not moved:
            log.info("job %s: not moved to %s (status %r)", job_id, new.value, previous)
        return bool(moved)

    # -- reads ----------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        data = cast(dict[str, str], self._redis.hgetall(self._job_key(job_id)))
        return Job.from_hash(data) if data else None

    def wait(self, job_id: str, timeout: float) -> Job | None:
        """Block until the job ends or ``timeout`` passes; return it as it then stands."""
        deadline = time.monotonic() + timeout
        last_id = "0-0"
        stream = self._events_key(job_id)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self.get(job_id)
            block_ms = max(1, int(min(remaining, _BLOCK_SLICE_SECONDS) * 1000))
            reply = cast(
                list[tuple[str, list[tuple[str, dict[str, str]]]]],
                self._redis.xread({stream: last_id}, block=block_ms),
            )
            for _stream, events in reply or ():
                for event_id, event in events:
                    last_id = event_id
                    if JobStatus(event["status"]).terminal:
                        return self.get(job_id)
            if not reply and self.get(job_id) is None:
                return None

    # -- result cache ---------------------------------------------------------

    def cache_results(self, job_id: str, images: Sequence[bytes]) -> None:
        """Keep fresh output bytes in Redis briefly, so a waiting request skips the S3 read."""
        if self._result_ttl <= 0:
            return
        pipe = self._blobs.pipeline(transaction=False)
        for index, data in enumerate(images):
            pipe.set(self.key("job", job_id, "result", str(index)), data, ex=self._result_ttl)
        pipe.execute()

    def cached_result(self, job_id: str, index: int) -> bytes | None:
        data = self._blobs.get(self.key("job", job_id, "result", str(index)))
        return cast(bytes | None, data)

    # -- workers --------------------------------------------------------------

    def mark_worker_ready(self, name: str) -> None:
        self._redis.zadd(self.key("workers"), {name: time.time()})

    def mark_worker_gone(self, name: str) -> None:
        self._redis.zrem(self.key("workers"), name)

    def ready_workers(self, max_age: float) -> list[str]:
        """Workers whose last heartbeat is at most ``max_age`` seconds old."""
        names = self._redis.zrangebyscore(self.key("workers"), time.time() - max_age, "+inf")
        return cast(list[str], names)

    # -- counters -------------------------------------------------------------

    def count(self, **increments: int) -> None:
        """Add to the farm-wide counters (pipeline calls, images, ...)."""
        pipe = self._redis.pipeline(transaction=False)
        for name, amount in increments.items():
            pipe.hincrby(self.key("stats"), name, amount)
        pipe.execute()

    def stats(self) -> dict[str, int]:
        counters = cast(dict[str, str], self._redis.hgetall(self.key("stats")))
        return {name: int(value) for name, value in counters.items()}

    def ping(self) -> bool:
        return bool(self._redis.ping())
