"""Every Redis key name the service uses, in one place.

All keys start with ``KEY_PREFIX`` (default ``img2img``), so several farms (or test runs) can
share one Redis. The broker's own keys (Celery's queue lists, kombu's ``unacked`` hash) are
named by kombu; :mod:`shared.store.broker` reads them.

| key | type | holds |
|---|---|---|
| ``{p}:job:{id}`` | hash | a job's record (:class:`shared.jobs.Job`) |
| ``{p}:job:{id}:events`` | stream | its status changes, for waiting clients |
| ``{p}:job:{id}:input`` | string | the Redis copy of its input image |
| ``{p}:job:{id}:result:{i}`` | string | output ``i`` until S3 holds it, then a short cache |
| ``{p}:queued`` | zset | queued jobs by creation time (queue positions) |
| ``{p}:running`` | zset | running jobs by lease end |
| ``{p}:sent`` | zset | queued jobs by when their message was last known in flight |
| ``{p}:uploads`` | zset | succeeded jobs by upload deadline, while S3 lacks their outputs |
| ``{p}:shape:{shape}`` | list | queued job ids of one shape, for batching |
| ``{p}:workers`` | zset | ready worker processes by last heartbeat |
| ``{p}:stats`` | hash | farm-wide counters (jobs by status, pipeline calls, images, ...) |
| ``{p}:hist:{name}`` | hash | a latency histogram's buckets and sum |
| ``{p}:lock:{name}`` | string | a lock that lapses by itself |
| ``{p}:idem:{owner}:{key}`` | string | an Idempotency-Key: ``{fingerprint} {job id}`` |
| ``{p}:failures`` | list | the latest failed job ids, newest first (capped at 100) |
| ``{p}:latest:{owner}`` | string | the id of an owner's latest job (owner empty with keys off) |
| ``{p}:apikey:{id}`` | hash | an API key: digest, balance, rate limit, revoked |
| ``{p}:apikeys`` | set | every API key id |
| ``{p}:rate:{id}:{window}`` | string | a key's requests in one rate-limit window |
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    prefix: str

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # -- one job ----------------------------------------------------------------------

    def job(self, job_id: str) -> str:
        return self._key("job", job_id)

    def events(self, job_id: str) -> str:
        return self._key("job", job_id, "events")

    def input(self, job_id: str) -> str:
        return self._key("job", job_id, "input")

    def result(self, job_id: str, index: int) -> str:
        return self._key("job", job_id, "result", str(index))

    # -- sets of jobs -----------------------------------------------------------------

    @property
    def queued(self) -> str:
        return self._key("queued")

    @property
    def running(self) -> str:
        return self._key("running")

    @property
    def sent(self) -> str:
        return self._key("sent")

    @property
    def uploads(self) -> str:
        return self._key("uploads")

    @property
    def shape_prefix(self) -> str:
        return self._key("shape", "")

    def shape(self, shape: str) -> str:
        return self.shape_prefix + shape

    # -- the farm ---------------------------------------------------------------------

    @property
    def workers(self) -> str:
        return self._key("workers")

    @property
    def stats(self) -> str:
        return self._key("stats")

    def histogram(self, name: str) -> str:
        return self._key("hist", name)

    def lock(self, name: str) -> str:
        return self._key("lock", name)

    def idempotency(self, key: str) -> str:
        return self._key("idem", key)

    @property
    def failures(self) -> str:
        return self._key("failures")

    def latest(self, owner: str) -> str:
        return self._key("latest", owner)

    # -- API keys ---------------------------------------------------------------------

    @property
    def apikey_prefix(self) -> str:
        return self._key("apikey", "")

    def apikey(self, key_id: str) -> str:
        return self.apikey_prefix + key_id

    @property
    def apikeys(self) -> str:
        return self._key("apikeys")

    def rate_window(self, key_id: str, window: int, reads: bool = False) -> str:
        """The counter of a key's submits (or reads) in one rate-limit window."""
        return self._key("reads" if reads else "rate", key_id, str(window))
