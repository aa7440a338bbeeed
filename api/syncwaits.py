"""How many synchronous waits a gateway process holds at once, per key and per job.

A synchronous request waits for its job in the gateway (up to ``SYNC_WAIT_SECONDS``). Waiting
is cheap (a greenlet), but not free, and one key must not crowd out the others: each process
holds at most ``MAX_SYNC_WAITS_PER_KEY`` waits of one key and ``MAX_SYNC_WAITS_PER_JOB`` waits
on one job (many requests can attach to one job through one ``Idempotency-Key``). A request
beyond either is not held: clients that can take a job URL (``Prefer``, the job APIs) get
``202`` with the job at once; clients that need the result in the answer get ``429`` with
``Retry-After`` (plain Segmind v1, the web UI and OpenAI protocols).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from shared.errors import RateLimited

RETRY_SECONDS: Final = 2
_ANONYMOUS: Final = ""


class SyncWaits:
    """Counts the waits in progress in this process. Thread-safe (and greenlet-safe)."""

    def __init__(self, per_key: int, per_job: int) -> None:
        self._per_key = per_key
        self._per_job = per_job
        self._lock = threading.Lock()
        self._by_key: Counter[str] = Counter()
        self._by_job: Counter[str] = Counter()

    @contextmanager
    def for_key(self, owner: str | None) -> Iterator[bool]:
        """One of ``owner``'s waits, taken before its submit and held while the block runs;
        yields False (and holds nothing) when the key holds all of its waits."""
        with self._held(self._by_key, owner or _ANONYMOUS, self._per_key) as admitted:
            yield admitted

    @contextmanager
    def for_job(self, job_id: str) -> Iterator[bool]:
        """One of the waits on ``job_id``, held while the block runs; yields False (and holds
        nothing) when the job has all of its waits."""
        with self._held(self._by_job, job_id, self._per_job) as admitted:
            yield admitted

    @contextmanager
    def _held(self, counter: Counter[str], name: str, bound: int) -> Iterator[bool]:
        with self._lock:
            admitted = counter[name] < bound
            if admitted:
                counter[name] += 1
        try:
            yield admitted
        finally:
            if admitted:
                with self._lock:
                    counter[name] -= 1
                    if counter[name] <= 0:
                        del counter[name]

    def refusal(self, job_id: str | None = None) -> RateLimited:
        """The 429 for a client that needs its result in the answer."""
        goes_on = f"; job {job_id} goes on: GET /v1/jobs/{job_id}" if job_id else ""
        return RateLimited(
            f"too many synchronous waits at once (at most {self._per_key} per key and "
            f"{self._per_job} per job){goes_on}",
            RETRY_SECONDS,
        )
