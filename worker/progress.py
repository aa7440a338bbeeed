"""Progress of a running pipeline call, written to Redis off the denoising loop.

The background thread first records the call (its batch id and start time) on every job
claimed for it. Then, each step the pipeline calls :meth:`StepReporter.report`, which only
records the step and returns: the thread writes the newest step of every job of the call
(renewing its lease) and marks the jobs that must stop (canceled, or taken over by another attempt).
The loop never waits on Redis; a stop is seen at most one step later than it is written.
If Redis is unreachable for a while, steps are skipped, not queued: the job carries on and
its final transition tells whether it still owns the job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from shared.jobstore import JobStore

log = logging.getLogger(__name__)

# Longest :meth:`StepReporter.close` waits for a write in flight.
_CLOSE_TIMEOUT_SECONDS = 15.0


class Tracked(Protocol):
    """A job of the call: its id, the attempt its lease belongs to, whether it must stop."""

    @property
    def job_id(self) -> str: ...

    @property
    def attempt(self) -> int: ...

    stopped: bool


class StopRun(Exception):
    """Raised from the step callback: every job of the call was canceled or is owned elsewhere."""


@dataclass(frozen=True)
class Batch:
    """A pipeline call: its id, every job claimed for it (a job whose input could not be
    used included), and when it started."""

    id: str
    job_ids: Sequence[str]
    started_at: float = field(default_factory=time.time)


class StepReporter:
    """Writes step progress for ``runs`` from its own thread, between ``with`` and its end;
    with ``batch``, first the batch on its jobs."""

    def __init__(
        self, store: JobStore, runs: Sequence[Tracked], lease_seconds: float, batch: Batch | None = None
    ) -> None:
        self._store = store
        self._runs = runs
        self._lease = lease_seconds
        self._batch = batch
        self._pending: tuple[int, int] | None = None
        self._closed = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._write_loop, name="progress", daemon=True)

    def __enter__(self) -> StepReporter:
        self._thread.start()
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def report(self, step: int, total: int) -> None:
        """Record ``step`` of ``total``; raise :class:`StopRun` once no job of the call may go on."""
        with self._wake:
            self._pending = (step, total)
            self._wake.notify()
        if all(run.stopped for run in self._runs):
            raise StopRun(self._runs[0].job_id)

    def close(self) -> None:
        """Stop writing; after this the ``stopped`` marks no longer change."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(_CLOSE_TIMEOUT_SECONDS)

    def _write_loop(self) -> None:
        if self._batch is not None:
            batch = self._batch
            try:
                self._store.start_batch(batch.job_ids, batch.id, batch.started_at)
            except Exception as exc:  # noqa: BLE001 - the record is informative; the job goes on
                log.warning("batch %s: could not be recorded on its jobs: %s", batch.id, exc)
        while True:
            with self._wake:
                while self._pending is None and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                step, total = self._pending or (0, 0)
                self._pending = None
            self._write(step, total)

    def _write(self, step: int, total: int) -> None:
        for run in self._runs:
            if run.stopped:
                continue
            try:
                if self._store.progress(run.job_id, step, total, run.attempt, self._lease):
                    run.stopped = True
            except Exception as exc:  # noqa: BLE001 - a missed step must not end the job
                log.warning("job %s: could not record step %d: %s", run.job_id, step, exc)
