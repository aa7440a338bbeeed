"""A worker's lifecycle: it takes messages only while its model is loaded, and exits when
the model cannot load.

A worker is two processes: Celery's main process consumes from the broker, and one pool
process (forked from it) loads the pipeline and runs jobs. The pool process loads in a
background thread (Celery kills ``worker_process_init`` handlers after 4 s; a real load with
its compile warm-up takes minutes) and records how the load went in :class:`LoadState`,
shared memory made in the main process before the pool forks.

The main process's :class:`LoadGate` consumer step reads that state twice a second:

- it consumes from the job queue only while its current pool process is ready, so a worker
  that is loading, or reloading after its pool process died, leaves every message to the
  workers that can run it now;
- when the load failed, or has not finished within ``LOAD_TIMEOUT_SECONDS``, it stops the
  worker with exit status :data:`EXIT_LOAD_FAILED`, so its supervisor (the launcher, compose,
  Kubernetes) restarts it and the operator sees it.

A message that reaches a pool process that is not ready (the gate had not closed yet) is
handed back unacknowledged (``worker/tasks.py``).
"""

from __future__ import annotations

import enum
import logging
import multiprocessing
import time
from typing import Any

from celery import bootsteps
from celery.worker import state as worker_state

log = logging.getLogger(__name__)

# Exit status of a worker whose model could not load (0 and 1 are Celery's own).
EXIT_LOAD_FAILED = 3

# How often the main process looks at the load.
_CHECK_SECONDS = 0.5
_ERROR_BYTES = 1024


class Phase(enum.IntEnum):
    NONE = 0  # no pool process has started loading
    LOADING = 1
    READY = 2
    FAILED = 3


class LoadState:
    """The load of the pool process, in memory shared with the main process.

    Made in the main process before the pool forks; the pool process writes, the main
    process reads. A replacement pool process starts over at ``LOADING`` with its own pid.
    """

    def __init__(self) -> None:
        self._cells = multiprocessing.RawArray("d", 3)  # pid, phase, when the phase began
        self._error = multiprocessing.RawArray("c", _ERROR_BYTES)

    def loading(self, pid: int) -> None:
        self._set(pid, Phase.LOADING)

    def ready(self, pid: int) -> None:
        self._set(pid, Phase.READY)

    def failed(self, pid: int, error: str) -> None:
        self._error.value = error.encode("utf-8", "replace")[: _ERROR_BYTES - 1]
        self._set(pid, Phase.FAILED)

    def _set(self, pid: int, phase: Phase) -> None:
        self._cells[1] = Phase.NONE  # readers never see a new pid with the old phase
        self._cells[0] = pid
        self._cells[2] = time.time()
        self._cells[1] = phase

    def read(self) -> tuple[int, Phase, float]:
        """(pid, phase, seconds in that phase)."""
        phase = Phase(int(self._cells[1]))
        return int(self._cells[0]), phase, time.time() - self._cells[2]

    @property
    def error(self) -> str:
        return bytes(self._error.value).decode("utf-8", "replace")


def load_gate(state: LoadState, queue: str, load_timeout: float) -> type[bootsteps.StartStopStep]:
    """The consumer step that opens ``queue`` only while the pool process is ready."""

    class LoadGate(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, c: Any, **kwargs: Any) -> None:
            super().__init__(c, **kwargs)
            self._timer: Any = None
            self._since = time.monotonic()  # when the worker started waiting for a load
            self._holding = False  # the queue is closed by this gate (not by an operator)

        def start(self, c: Any) -> None:
            self.check(c)
            self._timer = c.timer.call_repeatedly(_CHECK_SECONDS, self.check, (c,), priority=10)

        def stop(self, c: Any) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def check(self, c: Any) -> None:
            pid, phase, _ = state.read()
            ours = pid in c.pool.info.get("processes", ())
            if ours and phase is Phase.FAILED:
                self._give_up(f"the model failed to load: {state.error}")
                return
            ready = ours and phase is Phase.READY
            if not ready and time.monotonic() - self._since > load_timeout:
                self._give_up(f"the model did not load within LOAD_TIMEOUT_SECONDS ({load_timeout:.0f} s)")
                return
            if ready:
                self._since = time.monotonic()
            # Listed, not "consuming": the event loop starts consuming the listed queues
            # after this step's first check. Only a queue this gate closed is opened again,
            # so an operator's ``celery control cancel_consumer`` stands.
            listed = c.task_consumer is not None and queue in {q.name for q in c.task_consumer.queues}
            if ready and self._holding and not listed:
                log.info("the model is loaded: consuming from %s", queue)
                c.add_task_queue(queue)
                self._holding = False
            elif not ready and listed:
                log.info("the model is not loaded: not consuming from %s", queue)
                c.cancel_task_queue(queue)
                self._holding = True

        def _give_up(self, why: str) -> None:
            if worker_state.should_stop in (None, False):
                log.critical("worker exits with status %d: %s", EXIT_LOAD_FAILED, why)
                worker_state.should_stop = EXIT_LOAD_FAILED

    return LoadGate
