"""The job state machine: every status change is one script.

A script checks the job's current status against the states the change may start from,
writes the new fields and appends an event to the job's stream (waiters read it, see
:mod:`shared.store.waits`), so a transition repeated by a redelivered task changes nothing.
Every script is also safe to run twice with the same arguments: the Redis client retries a
call whose connection failed, and a call whose reply was lost may have run already.

    queued --claim--> running --succeed--> succeeded
      |                  |--fail (its attempt)--> failed (refunded)
      |                  '--cancel, then finish_canceled (its attempt)--> canceled
      |--fail_queued (gateway, sweeper)--> failed (refunded)
      '--cancel--> canceled (refunded)

A running job holds a lease, renewed at every step (:meth:`Jobs.progress`); the claim of a
job whose lease lapsed takes it over as the next attempt, and every move a worker makes is
fenced by its attempt.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from shared.jobs import Job, JobStatus, shape_key
from shared.scaling import FleetLoad
from shared.schema import GenerationParams
from shared.store.clients import Clients
from shared.store.idempotency import Idempotency
from shared.store.scripts import Script

# Longest a per-shape list of batching candidates may grow: ids of jobs that ran alone
# never pile up.
SHAPE_LIST_CAP = 1000


class SubmitOutcome(enum.StrEnum):
    """What :meth:`Jobs.submit` decided."""

    QUEUED = "queued"
    FULL = "full"  # the queue limit is reached
    CREDITS = "credits"  # the key cannot pay
    REVOKED = "revoked"  # the key was revoked (or deleted) since it was checked
    SUPERSEDED = "superseded"  # the idempotency key was taken over by a retry


@dataclass(frozen=True)
class Submitted:
    """What :meth:`Jobs.submit` decided: the job recorded, or why not."""

    outcome: SubmitOutcome
    balance_milli: int  # the paying key's balance after the charge (or that fell short)
    job: Job | None = None  # the record, exactly when queued


class ClaimOutcome(enum.StrEnum):
    """What :meth:`Jobs.claim` decided."""

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
    """What :meth:`Jobs.claim` decided: run it (as ``attempt``) or why not."""

    outcome: ClaimOutcome
    attempt: int = 0  # the attempt started; with EXHAUSTED, the starts it had
    wait_seconds: float = 0.0  # with BUSY, until the lease lapses
    job: Job | None = None  # the record as the claim left it, when started
    queued: int = 0  # jobs still queued after this one was taken, when started
    image: bytes | None = None  # the Redis copy of the input, when started and still kept

    @property
    def started(self) -> bool:
        return self.outcome is ClaimOutcome.STARTED


class Jobs:
    """Job records and their transitions. Thread-safe."""

    def __init__(self, clients: Clients, ttl: int) -> None:
        self._keys = clients.keys
        self._text = clients.text
        self._ttl = ttl
        self._submit = Script(clients.blobs, "submit")  # takes the input's bytes
        self._claim = Script(clients.blobs, "claim")  # returns them
        self._transition = Script(clients.text, "transition")
        self._progress = Script(clients.text, "progress")
        self._succeed = Script(clients.blobs, "succeed")
        self._request_cancel = Script(clients.text, "request_cancel")

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
        (kept until the gateway says S3 holds it)."""
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
        keys = self._keys
        reply, balance = self._submit(
            keys={
                "queued": keys.queued,
                "job": keys.job(job_id),
                "events": keys.events(job_id),
                "stats": keys.stats,
                "shape": keys.shape(fields["shape"]),
                "input": keys.input(job_id),
                "apikey": keys.apikey(owner),
                "sent": keys.sent,
                "idempotency": keys.idempotency(idempotency.key if idempotency else ""),
                "latest": keys.latest(owner),
            },
            args={
                "limit": max_queue_depth,
                "cost": cost_milli if owner else -1,
                "ttl": self._ttl,
                "id": job_id,
                "created_at": repr(now),
                "shape_cap": SHAPE_LIST_CAP,
                "image": image if image is not None else "",
                "idempotency_value": idempotency.value(job_id) if idempotency else "",
                "fields": [part for pair in fields.items() for part in pair],
            },
        )
        outcome = SubmitOutcome(reply.decode())
        job = Job.from_hash(fields) if outcome is SubmitOutcome.QUEUED else None
        return Submitted(outcome, int(balance), job)

    def claim(self, job_id: str, worker: str, lease_seconds: float, max_attempts: int) -> Claim:
        """Take a job to run: a queued one, or a running one whose worker's lease lapsed.

        The lease is renewed at every step (:meth:`progress`); a worker that dies stops
        renewing it, and the next claim after it lapses takes the job over. After
        ``max_attempts`` starts the job fails (and is refunded) instead of looping.
        """
        keys = self._keys
        reply = self._claim(
            keys={
                "job": keys.job(job_id),
                "events": keys.events(job_id),
                "queued": keys.queued,
                "running": keys.running,
                "stats": keys.stats,
                "input": keys.input(job_id),
                "sent": keys.sent,
                "uploads": keys.uploads,
                "failures": keys.failures,
            },
            args={
                "worker": worker,
                "lease_seconds": lease_seconds,
                "max_attempts": max_attempts,
                "ttl": self._ttl,
                "apikey_prefix": keys.apikey_prefix,
                "id": job_id,
                "shape_prefix": keys.shape_prefix,
            },
        )
        outcome, value = ClaimOutcome(reply[0].decode()), reply[1]
        if outcome is ClaimOutcome.STARTED:
            flat = [item.decode() for item in reply[2]]
            job = Job.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
            return Claim(outcome, attempt=int(value), job=job, queued=int(reply[3]), image=reply[4])
        if outcome is ClaimOutcome.BUSY:
            return Claim(outcome, wait_seconds=float(value))
        return Claim(outcome, attempt=int(value) if outcome is ClaimOutcome.EXHAUSTED else 0)

    def progress(self, job_id: str, step: int, total: int, attempt: int, lease_seconds: float) -> bool:
        """Record a finished denoising step and renew the lease; True when the worker must
        stop (the job was canceled, or another attempt owns it now)."""
        return bool(
            self._progress(
                keys={"job": self._keys.job(job_id), "running": self._keys.running},
                args={
                    "step": step,
                    "total": total,
                    "attempt": attempt,
                    "lease_seconds": lease_seconds,
                    "id": job_id,
                },
            )
        )

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
        worker writes S3. Until the upload is done (:class:`shared.store.uploads.Uploads`),
        the job is in the uploads set with a deadline ``upload_seconds`` away, past which the
        sweeper hands it out again. ``counters`` are added to the farm-wide counters in the
        same step."""
        keys = self._keys
        now = time.time()
        return bool(
            self._succeed(
                keys={
                    "job": keys.job(job_id),
                    "events": keys.events(job_id),
                    "running": keys.running,
                    "uploads": keys.uploads,
                    "stats": keys.stats,
                    "results": [keys.result(job_id, i) for i in range(len(images))],
                },
                args={
                    "attempt": attempt,
                    "ttl": self._ttl,
                    "id": job_id,
                    "outputs": json.dumps(list(outputs)),
                    "generation_time": f"{generation_time:.6f}",
                    "finished_at": repr(now),
                    "upload_deadline": repr(now + upload_seconds),
                    "counters": " ".join(f"{n} {a}" for n, a in (counters or {}).items() if a),
                    "images": list(images),
                },
            )
        )

    def fail(self, job_id: str, attempt: int, error: str) -> bool:
        """running -> failed (and refunded) with a message the client sees, while ``attempt``
        owns the job: a worker whose lease was taken over leaves the job to its new owner."""
        return self._move(job_id, (JobStatus.RUNNING,), JobStatus.FAILED, attempt, error=error)

    def fail_queued(self, job_id: str, error: str) -> bool:
        """queued -> failed (and refunded), by the gateway or the sweeper; a job that has
        started already is left to its worker."""
        return self._move(job_id, (JobStatus.QUEUED,), JobStatus.FAILED, None, error=error)

    def cancel(self, job_id: str) -> JobStatus | None:
        """Cancel a job: a queued one at once (refunded), a running one at its next step.

        Returns the status the job had (``None`` if there is no such job); a finished job
        is left as it is.
        """
        if self._move(job_id, (JobStatus.QUEUED,), JobStatus.CANCELED, None, error="canceled"):
            return JobStatus.QUEUED
        current = self._request_cancel(keys={"job": self._keys.job(job_id)}, args={})
        return JobStatus(current) if current else None

    def finish_canceled(self, job_id: str, attempt: int) -> bool:
        """running -> canceled, once the worker of ``attempt`` has stopped."""
        return self._move(job_id, (JobStatus.RUNNING,), JobStatus.CANCELED, attempt, error="canceled")

    def _move(
        self, job_id: str, allowed: Iterable[JobStatus], new: JobStatus, attempt: int | None, **fields: str
    ) -> bool:
        keys = self._keys
        fields["finished_at"] = repr(time.time())
        moved, _previous = self._transition(
            keys={
                "job": keys.job(job_id),
                "events": keys.events(job_id),
                "queued": keys.queued,
                "running": keys.running,
                "sent": keys.sent,
                "stats": keys.stats,
                "failures": keys.failures,
            },
            args={
                "allowed": " ".join(s.value for s in allowed),
                "new": new.value,
                "ttl": self._ttl,
                "id": job_id,
                "apikey_prefix": keys.apikey_prefix,
                "attempt": "" if attempt is None else attempt,
                "fields": [part for pair in fields.items() for part in pair],
            },
        )
        return bool(moved)

    def start_batch(self, job_ids: Sequence[str], batch_id: str, started_at: float) -> None:
        """Record which pipeline call (batch) the jobs run in and when it started."""
        pipe = self._text.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hset(
                self._keys.job(job_id), mapping={"batch_id": batch_id, "batch_started_at": repr(started_at)}
            )
        pipe.execute()

    # -- reads ------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        data = cast(dict[str, str], self._text.hgetall(self._keys.job(job_id)))
        return Job.from_hash(data) if data else None

    def recent_failures(self, count: int) -> list[Job]:
        """The latest failed jobs, newest first (at most the last 100; expired ones left out)."""
        ids = cast(list[str], self._text.lrange(self._keys.failures, 0, count - 1))
        return [job for job in (self.get(job_id) for job_id in ids) if job is not None]

    def latest(self, owner: str = "") -> Job | None:
        """``owner``'s most recent job (with keys off, owner ``""``: anyone's), while it is kept."""
        job_id = self._text.get(self._keys.latest(owner))
        return None if job_id is None else self.get(str(job_id))

    def queue_position(self, job_id: str) -> int | None:
        """How many queued jobs are ahead of this one (0: next); None when not queued."""
        rank = self._text.zrank(self._keys.queued, job_id)
        return None if rank is None else int(cast(int, rank))

    def queue_estimate(self, job_id: str, fresh_seconds: float) -> tuple[int | None, float | None, int]:
        """In one round trip: the job's queue position (as :meth:`queue_position`), the average
        run time, and how many workers sent a heartbeat within ``fresh_seconds``."""
        pipe = self._text.pipeline(transaction=False)
        pipe.zrank(self._keys.queued, job_id)
        pipe.hget(self._keys.stats, "run_seconds_avg")
        pipe.zcount(self._keys.workers, time.time() - fresh_seconds, "+inf")
        rank, average, workers = pipe.execute()
        return (
            None if rank is None else int(rank),
            None if average is None else float(average),
            int(workers),
        )

    def fleet_load(self, fresh_seconds: float) -> FleetLoad:
        """Queued and running jobs, the distinct workers running them, and the workers with a
        heartbeat within ``fresh_seconds``: two round trips."""
        pipe = self._text.pipeline(transaction=False)
        pipe.zcard(self._keys.queued)
        pipe.zrange(self._keys.running, 0, -1)
        pipe.zcount(self._keys.workers, time.time() - fresh_seconds, "+inf")
        queued, running, ready = pipe.execute()
        pipe = self._text.pipeline(transaction=False)
        for job_id in running:
            pipe.hget(self._keys.job(job_id), "worker")
        busy = {worker for worker in pipe.execute() if worker} if running else set()
        return FleetLoad(int(queued), len(running), len(busy), int(ready))

    def lapsed_leases(self) -> list[str]:
        """Running jobs whose worker stopped renewing its lease (probably dead)."""
        now = float(cast(list[Any], self._text.time())[0])
        return cast(list[str], self._text.zrangebyscore(self._keys.running, "-inf", now))

    def stale_queued(self, older_than: float) -> list[str]:
        """Jobs queued for more than ``older_than`` seconds."""
        return cast(list[str], self._text.zrangebyscore(self._keys.queued, "-inf", time.time() - older_than))

    def unclaimed_since(self, seconds: float, limit: int = 10_000) -> list[str]:
        """Queued jobs whose message was sent (or last seen in the broker) more than
        ``seconds`` ago and that no worker has claimed since: their message may be lost."""
        cutoff = time.time() - seconds
        return cast(list[str], self._text.zrangebyscore(self._keys.sent, "-inf", cutoff, start=0, num=limit))

    def mark_sent(self, job_ids: Sequence[str]) -> None:
        """The messages of ``job_ids`` are in flight now (sent again, or seen in the broker);
        jobs claimed meanwhile are left out."""
        if job_ids:
            self._text.zadd(self._keys.sent, dict.fromkeys(job_ids, time.time()), xx=True)
