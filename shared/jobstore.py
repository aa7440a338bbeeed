"""Job records in Redis, with atomic status transitions and a completion stream.

Each job is a hash ``{prefix}:job:{id}`` plus an event stream ``{prefix}:job:{id}:events``.
Every status change is one Lua script: it checks the current status against the states
the change may start from, writes the new fields and appends an event, so a transition
repeated by a redelivered task is a no-op. Every script is also safe to run twice with the
same arguments: the Redis client retries a call whose connection failed, and a call whose
reply was lost may have run already. Waiters block on the stream with ``XREAD``
(no polling); reading from the start of the stream means an event that happened before
the waiter arrived is never missed.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import redis

from shared.jobs import Job, JobStatus, shape_key
from shared.schema import GenerationParams
from shared.settings import Settings

log = logging.getLogger(__name__)

# Gives a job's charge back to its key, at most once. Uses KEYS[1] (job hash), ARGV[5]
# (API-key hash prefix).
_REFUND_BODY = """
  local owner = redis.call('HGET', KEYS[1], 'owner')
  local cost = tonumber(redis.call('HGET', KEYS[1], 'cost') or '0')
  if owner and owner ~= '' and cost > 0 and redis.call('HSETNX', KEYS[1], 'refunded', '1') == 1 then
    redis.call('HINCRBY', ARGV[5] .. owner, 'balance', cost)
  end
"""

_REFUND = (
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
"""
    + _REFUND_BODY
    + """
return 1
"""
)

# KEYS: queued set, job hash, event stream, stats, shape list, input copy, API-key hash,
# orphan-check set, idempotency key. ARGV: queue limit (0: none), cost (-1: nobody pays),
# ttl, id, created at, shape-list cap, input image ('' for none), the idempotency key's
# expected value ('' for none), fields... Records a queued job only if the queue has room,
# its key can pay and (with an idempotency key) the key is still bound to this job, charging
# the key in the same step: {'queued', balance after the charge}, or {'full' | 'credits' |
# 'revoked' | 'superseded', balance}. A job already recorded is left as it is.
_SUBMIT = """
if redis.call('EXISTS', KEYS[2]) == 1 then -- a repeated call (its first reply was lost)
  return {'queued', tonumber(redis.call('HGET', KEYS[7], 'balance') or '0')}
end
if ARGV[8] ~= '' and redis.call('GET', KEYS[9]) ~= ARGV[8] then return {'superseded', 0} end
local limit = tonumber(ARGV[1])
if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then return {'full', 0} end
local balance = 0
local cost = tonumber(ARGV[2])
if cost >= 0 then
  if redis.call('EXISTS', KEYS[7]) == 0 or redis.call('HGET', KEYS[7], 'revoked') == '1' then
    return {'revoked', 0}
  end
  balance = tonumber(redis.call('HGET', KEYS[7], 'balance'))
  if balance < cost then return {'credits', balance} end
  balance = redis.call('HINCRBY', KEYS[7], 'balance', -cost)
end
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[4])
redis.call('ZADD', KEYS[8], ARGV[5], ARGV[4])
redis.call('HSET', KEYS[2], unpack(ARGV, 9))
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 64, '*', 'status', 'queued')
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('HINCRBY', KEYS[4], 'jobs_queued', 1)
if ARGV[7] ~= '' then redis.call('SET', KEYS[6], ARGV[7], 'EX', ARGV[3]) end
redis.call('RPUSH', KEYS[5], ARGV[4])
redis.call('LTRIM', KEYS[5], -tonumber(ARGV[6]), -1)
redis.call('EXPIRE', KEYS[5], ARGV[3])
return {'queued', balance}
"""

# KEYS: job hash, event stream, queued set, running set, orphan-check set. ARGV: allowed
# statuses, new status, ttl, id, API-key hash prefix, attempt ('': any), fields... A move
# from ``running`` with an attempt happens only while that attempt owns the job, so a worker
# whose lease was taken over cannot end the job another worker runs. A failed job, or one
# canceled before it ran, gets its charge back in the same step, once: ``refunded`` is set
# with HSETNX.
_TRANSITION = (
    """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {0, ''} end
local allowed = false
for s in string.gmatch(ARGV[1], '%S+') do
  if s == current then allowed = true end
end
if not allowed then return {0, current} end
if ARGV[6] ~= '' and current == 'running' and redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[6] then
  return {0, 'another attempt'}
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], unpack(ARGV, 7))
if ARGV[2] == 'running' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
if current == 'queued' then redis.call('ZREM', KEYS[3], ARGV[4]); redis.call('ZREM', KEYS[5], ARGV[4]) end
if current == 'running' then redis.call('ZREM', KEYS[4], ARGV[4]) end
if ARGV[2] == 'failed' or (ARGV[2] == 'canceled' and current == 'queued') then
"""
    + _REFUND_BODY
    + """
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 64, '*', 'status', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {1, current}
"""
)

# KEYS: job hash, running set. ARGV: step, total, attempt, lease seconds, id.
# Returns 1 when the worker must stop: the job was canceled, or it is no longer this
# attempt's to run (its lease lapsed and another worker took it over). Renews the lease.
_PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 1 end
if redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[3] then return 1 end
redis.call('HSET', KEYS[1], 'progress_step', ARGV[1], 'progress_total', ARGV[2])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[2], tonumber(now[1]) + tonumber(ARGV[4]), ARGV[5])
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then return 1 end
return 0
"""

# KEYS: job hash, event stream, queued set, running set, stats, input copy, orphan-check
# set, uploads set. ARGV: worker, lease seconds, max attempts, ttl, API-key hash prefix (for
# the refund when attempts run out), id, shape-list prefix. Starts a queued job, or takes
# over a running one whose lease lapsed (its worker died); a started job leaves its shape's
# list of batching candidates. A job whose record has expired leaves every set, so the
# sweeper stops handing it out. Returns {outcome, attempt or seconds, and when started: job
# fields, queued jobs left and the input copy (false once expired)}: started (to the worker
# holding the lease too, as the same start), busy (lease held), exhausted, missing, upload
# (succeeded, outputs not yet in S3), or the final status.
_CLAIM_JOB = (
    """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  for _, set in ipairs({KEYS[3], KEYS[4], KEYS[7], KEYS[8]}) do redis.call('ZREM', set, ARGV[6]) end
  return {'missing', 0}
end
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
if status == 'running' then
  local lease = tonumber(redis.call('ZSCORE', KEYS[4], ARGV[6]) or '0')
  if lease > t and redis.call('HGET', KEYS[1], 'worker') == ARGV[1] then
    -- this worker's own claim, repeated (its first reply was lost): the same start again
    return {'started', tonumber(redis.call('HGET', KEYS[1], 'attempts')), redis.call('HGETALL', KEYS[1]),
      redis.call('ZCARD', KEYS[3]), redis.call('GET', KEYS[6])}
  end
  if lease > t then return {'busy', tostring(lease - t)} end
elseif status == 'succeeded' and redis.call('HGET', KEYS[1], 'upload_pending') == '1' then
  return {'upload', 0}
elseif status ~= 'queued' then
  return {status, 0}
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('ZREM', KEYS[3], ARGV[6])
redis.call('ZREM', KEYS[7], ARGV[6])
if attempt > tonumber(ARGV[3]) then
  redis.call('ZREM', KEYS[4], ARGV[6])
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', tostring(t),
    'error', 'the job was started ' .. (attempt - 1) .. ' times and its worker died each time')
"""
    + _REFUND_BODY
    + """
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 64, '*', 'status', 'failed')
  redis.call('HINCRBY', KEYS[5], 'jobs_failed', 1)
  return {'exhausted', attempt - 1}
end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[1], 'progress_step', '0')
if status == 'queued' then redis.call('HSET', KEYS[1], 'started_at', tostring(t)) end
local shape = redis.call('HGET', KEYS[1], 'shape')
if shape then redis.call('LREM', ARGV[7] .. shape, 1, ARGV[6]) end
redis.call('ZADD', KEYS[4], t + tonumber(ARGV[2]), ARGV[6])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 64, '*', 'status', 'running')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('HINCRBY', KEYS[5], 'jobs_running', 1)
return {'started', attempt, redis.call('HGETALL', KEYS[1]), redis.call('ZCARD', KEYS[3]),
  redis.call('GET', KEYS[6])}
"""
)

# KEYS: job hash, event stream, running set, uploads set, stats, result keys...
# ARGV: attempt, ttl, id, outputs (JSON), generation time, finished at, upload deadline,
# counters ("name amount ..."), images... running -> succeeded for this attempt only (a
# worker that lost its lease writes nothing); 1 again for a job this attempt has already
# succeeded. The images are kept in Redis, without the
# short cache expiry, until :meth:`JobStore.uploaded` says S3 holds them; the uploads set
# lets the sweeper finish an upload whose worker died. The counters are added to the
# stats hash in the same step, so they are up to date when a client sees the job end.
_SUCCEED = """
local status = redis.call('HGET', KEYS[1], 'status')
if redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then return 0 end
if status == 'succeeded' then return 1 end -- this attempt's own success, repeated
if status ~= 'running' then return 0 end
for i = 6, #KEYS do redis.call('SET', KEYS[i], ARGV[3 + i], 'EX', ARGV[2]) end
local name = nil
for word in string.gmatch(ARGV[8], '%S+') do
  if name then redis.call('HINCRBY', KEYS[5], name, word); name = nil else name = word end
end
redis.call('HSET', KEYS[1], 'status', 'succeeded', 'outputs', ARGV[4], 'generation_time', ARGV[5],
  'finished_at', ARGV[6], 'upload_pending', '1')
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[7], ARGV[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 64, '*', 'status', 'succeeded')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[5], 'jobs_succeeded', 1)
return 1
"""


# Marks a running job for cancelation; queued jobs are canceled by a transition instead.
_REQUEST_CANCEL = """
local current = redis.call('HGET', KEYS[1], 'status')
if current == 'running' then redis.call('HSET', KEYS[1], 'cancel_requested', '1') end
return current
"""

# KEYS: job hash. ARGV: webhook state. Records how a job's webhook ended, once, on a job
# that still exists (HSETNX alone would recreate an expired hash with no expiry).
_SET_WEBHOOK_STATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSETNX', KEYS[1], 'webhook_state', ARGV[1])
"""

# KEYS: idempotency key. ARGV: expected value, new value ('': delete). Compare and swap,
# keeping the key's expiry.
_SWAP_IDEMPOTENCY = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL') end
return 1
"""

# Claims an idempotency key for a job; returns the job id that owns it and its fingerprint.
_CLAIM = """
local ok = redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'NX', 'EX', ARGV[3])
if ok then return {ARGV[1], ARGV[2]} end
local value = redis.call('GET', KEYS[1])
local space = string.find(value, ' ')
return {string.sub(value, 1, space - 1), string.sub(value, space + 1)}
"""


class SubmitOutcome(enum.StrEnum):
    """What :meth:`JobStore.submit` decided."""

    QUEUED = "queued"
    FULL = "full"  # the queue limit is reached
    CREDITS = "credits"  # the key cannot pay
    REVOKED = "revoked"  # the key was revoked (or deleted) since it was checked
    SUPERSEDED = "superseded"  # the idempotency key was taken over by a retry


@dataclass(frozen=True)
class Submitted:
    """What :meth:`JobStore.submit` decided: the job recorded, or why not."""

    outcome: SubmitOutcome
    balance_milli: int  # the paying key's balance after the charge (or that fell short)
    job: Job | None = None  # the record, when queued


@dataclass(frozen=True)
class Idempotency:
    """An idempotency key (already scoped to its owner) and the body fingerprint bound to it."""

    key: str
    fingerprint: str

    def value(self, job_id: str) -> str:
        """What the key holds while it is bound to ``job_id``."""
        return f"{self.fingerprint} {job_id}"


@dataclass(frozen=True)
class Watched:
    """A job as a wait left it, with what the answer to its client needs."""

    job: Job | None  # None: there is no such job
    images: list[bytes | None]  # its first outputs while Redis keeps them (None: not there)
    balance_milli: int | None  # its owner's balance, when an owner was named


class ClaimOutcome(enum.StrEnum):
    """What :meth:`JobStore.claim` decided."""

    STARTED = "started"  # run it, as ``Claim.attempt``
    BUSY = "busy"  # another worker holds its lease
    EXHAUSTED = "exhausted"  # its workers died too often: failed (and refunded) now
    MISSING = "missing"  # no such job (it expired)
    UPLOAD = "upload"  # succeeded; its outputs are still to be written to S3
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


@dataclass(frozen=True)
class Claim:
    """What :meth:`JobStore.claim` decided: run it (as ``attempt``) or why not."""

    outcome: ClaimOutcome
    attempt: int = 0  # the attempt started; with EXHAUSTED, the starts it had
    wait_seconds: float = 0.0
    job: Job | None = None  # the record as the claim left it, when started
    queued: int = 0  # jobs still queued after this one was taken, when started
    image: bytes | None = None  # the Redis copy of the input, when started and still kept

    @property
    def started(self) -> bool:
        return self.outcome is ClaimOutcome.STARTED


# Longest a per-shape list of batching candidates may grow.
_SHAPE_LIST_CAP = 1000

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
        self._input_ttl = settings.input_cache_seconds
        self._succeed = self._blobs.register_script(_SUCCEED)
        self._submit = self._blobs.register_script(_SUBMIT)
        self._transition = self._redis.register_script(_TRANSITION)
        self._progress = self._redis.register_script(_PROGRESS)
        self._request_cancel = self._redis.register_script(_REQUEST_CANCEL)
        self._claim = self._redis.register_script(_CLAIM)
        self._claim_job = self._blobs.register_script(_CLAIM_JOB)  # returns the input's bytes
        self._refund = self._redis.register_script(_REFUND)
        self._set_webhook_state = self._redis.register_script(_SET_WEBHOOK_STATE)
        self._swap_idempotency = self._redis.register_script(_SWAP_IDEMPOTENCY)
        self._apikey_prefix = f"{self._prefix}:apikey:"

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    def key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    def _job_key(self, job_id: str) -> str:
        return self.key("job", job_id)

    def _events_key(self, job_id: str) -> str:
        return self.key("job", job_id, "events")

    def _input_key(self, job_id: str) -> str:
        return self.key("job", job_id, "input")

    def _result_key(self, job_id: str, index: int) -> str:
        return self.key("job", job_id, "result", str(index))

    # -- writes ---------------------------------------------------------------

    def create(
        self,
        job_id: str,
        params: GenerationParams,
        seeds: Sequence[int],
        webhook: str | None = None,
        image: bytes | None = None,
    ) -> Job:
        """Record a new queued job that nobody pays for, with no queue limit (see :meth:`submit`)."""
        job = self.submit(job_id, params, seeds, webhook=webhook, image=image).job
        if job is None:  # nothing refuses a job without a queue limit or a payer
            raise RuntimeError(f"job {job_id} was not recorded")
        return job

    def submit(
        self,
        job_id: str,
        params: GenerationParams,
        seeds: Sequence[int],
        webhook: str | None = None,
        owner: str = "",
        cost_milli: int = 0,
        image: bytes | None = None,
        max_queue_depth: int = 0,
        idempotency: Idempotency | None = None,
    ) -> Submitted:
        """Record a new queued job in one step, unless the queue already holds
        ``max_queue_depth`` jobs (0: no limit), ``owner``'s key cannot pay ``cost_milli`` or
        the ``idempotency`` key is no longer bound to this job: the charge, its place in the
        queue and its shape list and, with ``image``, a copy of its input for the worker
        (kept until :meth:`input_stored`)."""
        now = time.time()
        fields: dict[str, str] = {
            "id": job_id,
            "status": JobStatus.QUEUED.value,
            "params": json.dumps(params.to_dict()),
            "seeds": json.dumps(list(seeds)),
            "created_at": repr(now),
            "progress_total": str(params.denoising_steps),
            "shape": shape_key(params),
        }
        if webhook:
            fields["webhook"] = webhook
        if owner:
            fields["owner"] = owner
            fields["cost"] = str(cost_milli)
        keys = [
            self.key("queued"),
            self._job_key(job_id),
            self._events_key(job_id),
            self.key("stats"),
            self._shape_key(fields["shape"]),
            self._input_key(job_id),
            self._apikey_prefix + owner,
            self.key("sent"),
            self._idempotency_key(idempotency.key if idempotency else ""),
        ]
        args: list[bytes | str | int] = [
            max_queue_depth,
            cost_milli if owner else -1,
            self._ttl,
            job_id,
            repr(now),
            _SHAPE_LIST_CAP,  # ids of jobs that ran alone never pile up
            image if image is not None else "",
            idempotency.value(job_id) if idempotency else "",
        ]
        for name, value in fields.items():
            args += [name, value]
        reply, balance = self._submit(keys=keys, args=args)
        outcome = SubmitOutcome(reply.decode())
        job = Job.from_hash(fields) if outcome is SubmitOutcome.QUEUED else None
        return Submitted(outcome, int(balance), job)

    def _shape_key(self, shape: str) -> str:
        return self.key("shape", shape)

    def next_of_shape(self, shape: str, timeout: float) -> str | None:
        """The oldest job id submitted with ``shape`` that no batch has taken yet, waiting
        up to ``timeout`` seconds for one (0: do not wait). The id may name a job that has
        run already (its own message ran it); the caller's claim tells."""
        key = self._shape_key(shape)
        if timeout <= 0:
            return cast(str | None, self._redis.lpop(key))
        reply = cast(tuple[str, str] | None, self._redis.blpop([key], timeout=timeout))
        return None if reply is None else reply[1]

    def return_to_shape(self, shape: str, job_id: str) -> None:
        """Put back an id taken by :meth:`next_of_shape` that did not fit the batch."""
        self._redis.lpush(self._shape_key(shape), job_id)

    def start_batch(self, job_ids: Sequence[str], batch_id: str, started_at: float) -> None:
        """Record which pipeline call (batch) the jobs run in and when it started."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            key = self._job_key(job_id)
            pipe.hset(key, mapping={"batch_id": batch_id, "batch_started_at": repr(started_at)})
        pipe.execute()

    def claim(self, job_id: str, worker: str, lease_seconds: float, max_attempts: int) -> Claim:
        """Take a job to run: a queued one, or a running one whose worker's lease lapsed.

        The lease is renewed at every step (:meth:`progress`); a worker that dies stops
        renewing it, and the next claim after it lapses takes the job over. After
        ``max_attempts`` starts the job fails (and is refunded) instead of looping.
        """
        reply = self._claim_job(
            keys=[
                self._job_key(job_id),
                self._events_key(job_id),
                self.key("queued"),
                self.key("running"),
                self.key("stats"),
                self._input_key(job_id),
                self.key("sent"),
                self.key("uploads"),
            ],
            args=[
                worker,
                lease_seconds,
                max_attempts,
                self._ttl,
                self._apikey_prefix,
                job_id,
                self._shape_key(""),
            ],
        )
        outcome, value = ClaimOutcome(reply[0].decode()), reply[1]
        if outcome is ClaimOutcome.STARTED:
            flat = [item.decode() for item in reply[2]]
            job = Job.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
            return Claim(outcome, attempt=int(value), job=job, queued=int(reply[3]), image=reply[4])
        if outcome is ClaimOutcome.BUSY:
            return Claim(outcome, wait_seconds=float(value))
        return Claim(outcome, attempt=int(value) if outcome is ClaimOutcome.EXHAUSTED else 0)

    def progress(
        self, job_id: str, step: int, total: int, attempt: int = 0, lease_seconds: float = 3600
    ) -> bool:
        """Record a finished denoising step and renew the lease; True when the worker must
        stop (the job was canceled, or another attempt owns it now)."""
        if attempt == 0:
            attempt = int(cast(str, self._redis.hget(self._job_key(job_id), "attempts") or "0"))
        return bool(
            self._progress(
                keys=[self._job_key(job_id), self.key("running")],
                args=[step, total, attempt, lease_seconds, job_id],
            )
        )

    def lapsed_leases(self) -> list[str]:
        """Running jobs whose worker stopped renewing its lease (probably dead)."""
        now = float(cast(list[str], self._redis.time())[0])
        return cast(list[str], self._redis.zrangebyscore(self.key("running"), "-inf", now))

    def stale_queued(self, older_than: float) -> list[str]:
        """Jobs queued for more than ``older_than`` seconds."""
        return cast(
            list[str], self._redis.zrangebyscore(self.key("queued"), "-inf", time.time() - older_than)
        )

    def unclaimed_since(self, seconds: float, limit: int = 10_000) -> list[str]:
        """Queued jobs whose message was sent (or last seen in the broker) more than
        ``seconds`` ago and that no worker has claimed since: their message may be lost."""
        return cast(
            list[str],
            self._redis.zrangebyscore(self.key("sent"), "-inf", time.time() - seconds, start=0, num=limit),
        )

    def mark_sent(self, job_ids: Sequence[str]) -> None:
        """The messages of ``job_ids`` are in flight now (sent again, or seen in the broker);
        jobs claimed meanwhile are left out."""
        if job_ids:
            now = time.time()
            self._redis.zadd(self.key("sent"), dict.fromkeys(job_ids, now), xx=True)

    def try_lock(self, name: str, seconds: float) -> bool:
        """A farm-wide lock that lapses by itself (e.g. one sweeper per interval)."""
        return bool(self._redis.set(self.key("lock", name), "1", nx=True, px=int(seconds * 1000)))

    def succeed(
        self,
        job_id: str,
        attempt: int,
        outputs: Sequence[str],
        images: Sequence[bytes],
        generation_time: float,
        upload_seconds: float,
        counters: Mapping[str, int] | None = None,
    ) -> bool:
        """running -> succeeded, if ``attempt`` still owns the job, with the output keys and
        the images themselves: waiting clients are answered from Redis at once, while the
        worker writes S3. Until :meth:`uploaded`, the job is in the uploads set with a
        deadline ``upload_seconds`` away, past which :meth:`lapsed_uploads` hands it out again.
        ``counters`` are added to the farm-wide counters (as :meth:`count`) in the same step."""
        keys = [
            self._job_key(job_id),
            self._events_key(job_id),
            self.key("running"),
            self.key("uploads"),
            self.key("stats"),
            *(self._result_key(job_id, i) for i in range(len(images))),
        ]
        now = time.time()
        args: list[bytes | str | int] = [
            attempt,
            self._ttl,
            job_id,
            json.dumps(list(outputs)),
            f"{generation_time:.6f}",
            repr(now),
            repr(now + upload_seconds),
            " ".join(f"{name} {amount}" for name, amount in (counters or {}).items() if amount),
            *images,
        ]
        return bool(self._succeed(keys=keys, args=args))

    def cancel(self, job_id: str) -> JobStatus | None:
        """Cancel a job: a queued one at once, a running one at its next step.

        Returns the status the job had (``None`` if there is no such job); a finished job
        is left as it is.
        """
        if self._move(
            job_id,
            (JobStatus.QUEUED,),
            JobStatus.CANCELED,
            None,
            error="canceled",
            finished_at=repr(time.time()),
        ):
            return JobStatus.QUEUED
        current = self._request_cancel(keys=[self._job_key(job_id)])
        return JobStatus(current) if current else None

    def finish_canceled(self, job_id: str, attempt: int) -> bool:
        """running -> canceled, once the worker of ``attempt`` has stopped."""
        return self._move(
            job_id,
            (JobStatus.RUNNING,),
            JobStatus.CANCELED,
            attempt,
            error="canceled",
            finished_at=repr(time.time()),
        )

    def refund(self, job_id: str) -> None:
        """Give the job's charge back to its key if that has not happened yet (idempotent)."""
        self._refund(keys=[self._job_key(job_id)], args=[0, 0, 0, 0, self._apikey_prefix])

    def fail_queued(self, job_id: str, error: str) -> bool:
        """queued -> failed (and refunded), by the gateway or the sweeper; a job that has
        started already is left to its worker."""
        return self._move(
            job_id, (JobStatus.QUEUED,), JobStatus.FAILED, None, error=error, finished_at=repr(time.time())
        )

    def fail(self, job_id: str, attempt: int, error: str) -> bool:
        """running -> failed (and refunded) with a message the client sees, while ``attempt``
        owns the job: a worker whose lease was taken over leaves the job to its new owner."""
        return self._move(
            job_id,
            (JobStatus.RUNNING,),
            JobStatus.FAILED,
            attempt,
            error=error,
            finished_at=repr(time.time()),
        )

    def _move(
        self,
        job_id: str,
        allowed: Iterable[JobStatus],
        new: JobStatus,
        attempt: int | None = None,
        **fields: str,
    ) -> bool:
        args: list[str] = [
            " ".join(s.value for s in allowed),
            new.value,
            str(self._ttl),
            job_id,
            self._apikey_prefix,
            "" if attempt is None else str(attempt),
        ]
        for name, value in fields.items():
            args += [name, value]
        keys = [
            self._job_key(job_id),
            self._events_key(job_id),
            self.key("queued"),
            self.key("running"),
            self.key("sent"),
        ]
        moved, previous = self._transition(keys=keys, args=args)
        if not moved:
            log.info("job %s: not moved to %s (status %r)", job_id, new.value, previous)
        else:  # jobs by status, for /metrics
            self.count(**{f"jobs_{new.value}": 1})
        return bool(moved)

    # -- reads ----------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        data = cast(dict[str, str], self._redis.hgetall(self._job_key(job_id)))
        return Job.from_hash(data) if data else None

    def queue_position(self, job_id: str) -> int | None:
        """How many queued jobs are ahead of this one (0: next); None when not queued."""
        rank = self._redis.zrank(self.key("queued"), job_id)
        return None if rank is None else int(cast(int, rank))

    def queue_length(self) -> int:
        return int(self._redis.zcard(self.key("queued")))

    def wait(self, job_id: str, timeout: float, any_event: bool = False) -> Job | None:
        """Block until the job ends (or, with ``any_event``, until it exists) or ``timeout``
        passes; return it as it then stands."""
        return self.watch(job_id, timeout, any_event=any_event).job

    def watch(
        self, job_id: str, timeout: float, any_event: bool = False, images: int = 0, owner: str = ""
    ) -> Watched:
        """:meth:`wait`, returning with the job its first ``images`` outputs kept in Redis and
        ``owner``'s balance, all read in the same round trip as the event that ends the wait:
        each blocking read is pipelined with the reads that follow it."""
        deadline = time.monotonic() + timeout
        last_id = b"0-0"
        stream = self._events_key(job_id)
        while True:
            remaining = deadline - time.monotonic()
            block_ms = max(1, int(min(remaining, _BLOCK_SLICE_SECONDS) * 1000)) if remaining > 0 else None
            pipe = self._blobs.pipeline(transaction=False)
            if block_ms is not None:
                pipe.xread({stream: last_id}, block=block_ms)
            pipe.hgetall(self._job_key(job_id))
            if images:
                pipe.mget([self._result_key(job_id, index) for index in range(images)])
            if owner:
                pipe.hget(self._apikey_prefix + owner, "balance")
            replies = iter(pipe.execute())
            streams = next(replies) if block_ms is not None else None
            record = {key.decode(): value.decode() for key, value in next(replies).items()}
            blobs = list(next(replies)) if images else []
            balance = next(replies) if owner else None
            watched = Watched(
                Job.from_hash(record) if record else None,
                blobs,
                int(balance) if balance is not None else None,
            )
            if block_ms is None:
                return watched
            for _stream, events in streams or ():
                for event_id, event in events:
                    last_id = event_id
                    if any_event or JobStatus(event[b"status"].decode()).terminal:
                        return watched
            if not streams and watched.job is None:  # nothing happened, and no such job
                return watched

    # -- webhooks -------------------------------------------------------------

    def webhook_state(self, job_id: str) -> str | None:
        return cast(str | None, self._redis.hget(self._job_key(job_id), "webhook_state"))

    def set_webhook_state(self, job_id: str, state: str) -> None:
        """``delivered`` or ``failed: ...``, once; a job that has expired meanwhile stays gone."""
        self._set_webhook_state(keys=[self._job_key(job_id)], args=[state])

    # -- idempotency ----------------------------------------------------------

    def claim_idempotency_key(self, idempotency: Idempotency, job_id: str, ttl: int) -> tuple[str, str]:
        """Bind the key to ``job_id`` unless already bound; return the (fingerprint, job id) bound."""
        owner_fp, owner_job = self._claim(
            keys=[self._idempotency_key(idempotency.key)], args=[idempotency.fingerprint, job_id, ttl]
        )
        return str(owner_fp), str(owner_job)

    def release_idempotency_key(self, idempotency: Idempotency, job_id: str) -> None:
        """Free the key if ``job_id`` holds it (its submission was refused before it was queued)."""
        self._swap_idempotency(
            keys=[self._idempotency_key(idempotency.key)], args=[idempotency.value(job_id), ""]
        )

    def rebind_idempotency_key(self, idempotency: Idempotency, old_job: str, new_job: str) -> bool:
        """Bind the key to ``new_job`` if it is still bound to ``old_job`` (a job that was never
        recorded); :meth:`submit` then refuses ``old_job``, so one job at most is recorded."""
        return bool(
            self._swap_idempotency(
                keys=[self._idempotency_key(idempotency.key)],
                args=[idempotency.value(old_job), idempotency.value(new_job)],
            )
        )

    def _idempotency_key(self, key: str) -> str:
        return self.key("idem", key)

    # -- images in Redis ------------------------------------------------------

    def input_image(self, job_id: str) -> bytes | None:
        """The copy of the job's input written by :meth:`create`, while it is kept."""
        return cast(bytes | None, self._blobs.get(self._input_key(job_id)))

    def input_stored(self, job_id: str) -> None:
        """S3 holds the input now: the Redis copy need only outlive a short queue."""
        if self._input_ttl > 0:
            self._blobs.expire(self._input_key(job_id), self._input_ttl)
        else:
            self._blobs.delete(self._input_key(job_id))

    def drop_input(self, job_id: str) -> None:
        """Forget the Redis copy of a job that will not run."""
        self._blobs.delete(self._input_key(job_id))

    def cached_result(self, job_id: str, index: int) -> bytes | None:
        """An output image while Redis keeps it: until it is uploaded, and a little after."""
        return cast(bytes | None, self._blobs.get(self._result_key(job_id, index)))

    def cached_results(self, job_id: str, count: int) -> list[bytes | None]:
        """The first ``count`` outputs as :meth:`cached_result` gives them, in one round trip."""
        keys = [self._result_key(job_id, index) for index in range(count)]
        return cast(list[bytes | None], self._blobs.mget(keys)) if keys else []

    def uploaded(self, job_id: str, count: int) -> None:
        """S3 holds the job's ``count`` outputs: Redis keeps them only as a short cache."""
        pipe = self._blobs.pipeline(transaction=False)
        pipe.hdel(self._job_key(job_id), "upload_pending")
        pipe.zrem(self.key("uploads"), job_id)
        for index in range(count):
            if self._result_ttl > 0:
                pipe.expire(self._result_key(job_id, index), self._result_ttl)
            else:
                pipe.delete(self._result_key(job_id, index))
        pipe.execute()

    def retry_upload_in(self, job_id: str, seconds: float) -> None:
        """Hand the upload out again (:meth:`lapsed_uploads`) in ``seconds``."""
        self._redis.zadd(self.key("uploads"), {job_id: time.time() + seconds}, xx=True)

    def forget_upload(self, job_id: str) -> None:
        """Drop a pending upload that can no longer be done (the job has expired)."""
        self._redis.zrem(self.key("uploads"), job_id)

    def lapsed_uploads(self) -> list[str]:
        """Succeeded jobs whose outputs are not in S3 past their upload deadline."""
        return cast(list[str], self._redis.zrangebyscore(self.key("uploads"), "-inf", time.time()))

    def pending_uploads(self) -> int:
        return int(self._redis.zcard(self.key("uploads")))

    # -- workers --------------------------------------------------------------

    def mark_worker_ready(self, name: str, forget_after: float) -> None:
        """A heartbeat of worker ``name``; workers silent for ``forget_after`` seconds (killed
        processes that never said goodbye) leave the set."""
        now = time.time()
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(self.key("workers"), {name: now})
        pipe.zremrangebyscore(self.key("workers"), "-inf", now - forget_after)
        pipe.execute()

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

    def record_run_seconds(self, seconds: float, weight: float = 0.2) -> None:
        """Fold a job's run time into the moving average used for queue ETAs."""
        key = self.key("stats")
        previous = cast(str | None, self._redis.hget(key, "run_seconds_avg"))
        average = seconds if previous is None else (1 - weight) * float(previous) + weight * seconds
        self._redis.hset(key, "run_seconds_avg", f"{average:.6f}")

    def average_run_seconds(self) -> float | None:
        value = cast(str | None, self._redis.hget(self.key("stats"), "run_seconds_avg"))
        return None if value is None else float(value)

    def stats(self) -> dict[str, int]:
        counters = cast(dict[str, str], self._redis.hgetall(self.key("stats")))
        return {name: int(value) for name, value in counters.items() if value.lstrip("-").isdigit()}

    def ping(self) -> bool:
        return bool(self._redis.ping())
