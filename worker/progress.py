"""Progress of a running pipeline call, written to Redis off the denoising loop.

A worker process has one :class:`ProgressWriter`: a long-lived thread, so a pipeline call
starts and ends no thread of its own. For each call, a :class:`StepReporter` hands it the
call's jobs. The thread first records the call (its batch id and start time) on every job
claimed for it. Then, each step the pipeline calls :meth:`StepReporter.report`, which only
records the step and returns: the thread writes the newest step of every job of the call
(renewing its lease) and marks the jobs that must stop (canceled, or taken over by another
attempt). The loop never waits on Redis; a stop is seen at most one step later than it is
written. If Redis is unreachable for a while, steps are skipped, not queued: the job
carries on and its final transition tells whether it still owns the job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from shared.store import JobStore

log = logging.getLogger(__name__)

# Longest the end of a call, or the writer's close, waits for a write in flight.
_WRITE_WAIT_SECONDS = 15.0


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


class ProgressWriter:
    """The thread that writes the progress of the pipeline calls in flight (one, in a
    process that runs one job at a time). Thread-safe; :meth:`close` once, when the
    process stops."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._wake = threading.Condition()
        self._writing = threading.Lock()  # held by the thread for the length of a write
        self._calls: list[StepReporter] = []
        self._closed = False
        self._thread = threading.Thread(target=self._write_loop, name="progress", daemon=True)
        self._thread.start()

    def call(self, runs: Sequence[Tracked], lease_seconds: float, batch: Batch | None = None) -> StepReporter:
        """A reporter for one pipeline call of ``runs``; use it as a context manager."""
        return StepReporter(self, self._store, runs, lease_seconds, batch)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(_WRITE_WAIT_SECONDS)

    def _attach(self, call: StepReporter) -> None:
        with self._wake:
            self._calls.append(call)
            self._wake.notify()

    def _post(self, call: StepReporter, step: tuple[int, int]) -> None:
        with self._wake:
            call.pending = step
            self._wake.notify()

    def _detach(self, call: StepReporter) -> None:
        """No write of ``call`` happens once this returns (one in flight is waited for)."""
        with self._wake:
            self._calls.remove(call)
        if self._writing.acquire(timeout=_WRITE_WAIT_SECONDS):
            self._writing.release()

    def _due(self) -> StepReporter | None:
        return next((call for call in self._calls if call.due()), None)

    def _write_loop(self) -> None:
        while True:
            with self._wake:
                call = self._due()
                while call is None and not self._closed:
                    self._wake.wait()
                    call = self._due()
                if call is None:  # closed
                    return
                batch, step = call.take()
                self._writing.acquire()  # before the condition is let go: see _detach
            try:
                call.write(batch, step)
            finally:
                self._writing.release()


class StepReporter:
    """One pipeline call's progress, written by its :class:`ProgressWriter` between ``with``
    and its end; with ``batch``, first the batch on its jobs."""

    def __init__(
        self,
        writer: ProgressWriter,
        store: JobStore,
        runs: Sequence[Tracked],
        lease_seconds: float,
        batch: Batch | None,
    ) -> None:
        self._writer = writer
        self._store = store
        self._runs = runs
        self._lease = lease_seconds
        self._batch = batch
        self.pending: tuple[int, int] | None = None  # the newest step not written yet

    def __enter__(self) -> StepReporter:
        self._writer._attach(self)
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self._writer._detach(self)

    def report(self, step: int, total: int) -> None:
        """Record ``step`` of ``total``; raise :class:`StopRun` once no job of the call may go on."""
        self._writer._post(self, (step, total))
        if all(run.stopped for run in self._runs):
            raise StopRun(self._runs[0].job_id)

    # The writer's side, called with its condition held (due, take) or from its thread (write).

    def due(self) -> bool:
        return self._batch is not None or self.pending is not None

    def take(self) -> tuple[Batch | None, tuple[int, int] | None]:
        batch, step = self._batch, self.pending
        self._batch = self.pending = None
        return batch, step

    def write(self, batch: Batch | None, step: tuple[int, int] | None) -> None:
        store = self._store
        if batch is not None:
            try:
                store.jobs.start_batch(batch.job_ids, batch.id, batch.started_at)
            except Exception as exc:  # noqa: BLE001 - the record is informative; the job goes on
                log.warning("batch %s: could not be recorded on its jobs: %s", batch.id, exc)
        if step is None:
            return
        for run in self._runs:
            if run.stopped:
                continue
            try:
                if store.jobs.progress(run.job_id, step[0], step[1], run.attempt, self._lease):
                    run.stopped = True
            except Exception as exc:  # noqa: BLE001 - a missed step must not end the job
                log.warning("job %s: could not record step %d: %s", run.job_id, step[0], exc)
