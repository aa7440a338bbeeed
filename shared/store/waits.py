"""Waiting for a job to end, on its event stream: no polling, and no event missed.

Waiters block with ``XREAD`` on the job's stream from its start, so an event that happened
before the waiter arrived is seen too. Each blocking read is pipelined with the reads its
caller needs once the wait ends (the record, the first outputs, the owner's balance), so a
wait that ends costs one round trip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from shared.jobs import Job, JobStatus
from shared.store.clients import BLOCK_SLICE_SECONDS, Clients


@dataclass(frozen=True)
class Watched:
    """A job as a wait left it, with what the answer to its client needs."""

    job: Job | None  # None: there is no such job
    images: list[bytes | None]  # its first outputs while Redis keeps them (None: not there)
    balance_milli: int | None  # its owner's balance, when an owner was named


class Waits:
    def __init__(self, clients: Clients) -> None:
        self._keys = clients.keys
        self._blobs = clients.blobs

    def wait(self, job_id: str, timeout: float, any_event: bool = False) -> Job | None:
        """Block until the job ends (or, with ``any_event``, until it exists) or ``timeout``
        passes; return it as it then stands."""
        return self.watch(job_id, timeout, any_event=any_event).job

    def watch(
        self, job_id: str, timeout: float, any_event: bool = False, images: int = 0, owner: str = ""
    ) -> Watched:
        """:meth:`wait`, returning with the job its first ``images`` outputs kept in Redis and
        ``owner``'s balance, all read in the same round trip as the event that ends the wait."""
        keys = self._keys
        deadline = time.monotonic() + timeout
        last_id = b"0-0"
        stream = keys.events(job_id)
        while True:
            remaining = deadline - time.monotonic()
            block_ms = max(1, int(min(remaining, BLOCK_SLICE_SECONDS) * 1000)) if remaining > 0 else None
            pipe = self._blobs.pipeline(transaction=False)
            if block_ms is not None:
                pipe.xread({stream: last_id}, block=block_ms)
            pipe.hgetall(keys.job(job_id))
            if images:
                pipe.mget([keys.result(job_id, index) for index in range(images)])
            if owner:
                pipe.hget(keys.apikey(owner), "balance")
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
