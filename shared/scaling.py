"""How many GPU workers the farm wants: the autoscaler's formula, from the job store's counts.

The Celery list is the wrong thing to scale on: running jobs have left it (50 busy workers
with 10 jobs waiting would scale down to 5, killing running jobs on the way), and it still
holds the messages of jobs that ran as another job's batching partners. The job store knows
both sides: its queued set holds exactly the jobs that wait, and every running job names its
worker. The formula keeps every busy worker and adds enough for the waiting jobs::

    desired = busy workers + ceil(queued jobs / SCALE_JOBS_PER_WORKER)

so a pool never shrinks below the workers that are running jobs, and grows by one worker per
``SCALE_JOBS_PER_WORKER`` waiting jobs. KEDA reads ``desired`` from ``/ops/scaling`` with a
target of 1 (deploy/k8s/worker-scaledobject.yaml).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class FleetLoad:
    """What the job store counts at one moment."""

    queued: int  # jobs waiting for a worker
    running: int  # jobs being run (several per worker when batched)
    busy_workers: int  # distinct workers running at least one job
    ready_workers: int  # workers with a fresh heartbeat

    def desired_workers(self, jobs_per_worker: int) -> int:
        """Busy workers, plus one per ``jobs_per_worker`` waiting jobs (rounded up)."""
        return self.busy_workers + math.ceil(self.queued / jobs_per_worker)
