"""One job, start to end: claim it, fetch its input, run, store outputs, record the result.

A claimed job takes queued partners of its shape into the same pipeline call
(worker/batching.py); each job of the batch keeps its own lease, progress and result.

Delivery is at least once (acks late, requeue on worker loss); effects are once:
- a job runs only after :meth:`JobStore.claim` hands it to this worker (queued, or
  running with a lapsed lease because its worker died), so a redelivered message for a
  running or finished job does nothing;
- every step renews the lease and checks that this attempt still owns the job;
- outputs go to deterministic keys and status changes are idempotent Lua scripts, so a
  repeated write or transition changes nothing.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from shared.images import encode_jpeg, open_image, prepare_image
from shared.jobs import Job, input_key, output_key
from shared.jobstore import JobStore
from shared.schema import GenerationParams
from shared.settings import Settings
from shared.storage import Storage
from worker.batching import Member, collect_partners
from worker.metrics import WorkerMetrics
from worker.runner import BatchItem, Runner, StepCallback, job_items

log = logging.getLogger(__name__)


class StopRun(Exception):
    """Raised from the step callback: every job of the call was canceled or is owned elsewhere."""


@dataclass
class JobRun:
    """A job of the current pipeline call: its images' items, and whether it must stop."""

    member: Member
    items: list[BatchItem]
    stopped: bool = False


class JobExecutor:
    """Runs jobs on a loaded runner; the task layer stays a thin call into :meth:`execute`."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        storage: Storage,
        runner: Runner,
        name: str,
        on_finished: Callable[[str], None] | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.metrics = metrics or WorkerMetrics(store)
        self.on_finished = on_finished
        self.settings = settings
        self.store = store
        self.storage = storage
        self.runner = runner
        self.name = name

    def execute(self, job_id: str) -> None:
        claim = self.store.claim(
            job_id, self.name, self.settings.job_lease_seconds, self.settings.max_job_attempts
        )
        if not claim.started:
            if claim.outcome == "exhausted":
                log.error("job %s: failed after %d starts that each lost their worker", job_id, claim.attempt)
                self._finished(job_id, True)
            else:
                log.info("job %s: not run here (%s)", job_id, claim.outcome)
            return
        job = self.store.get(job_id)
        if job is None:
            return
        if claim.attempt > 1:
            log.warning("job %s: taking over, attempt %d", job_id, claim.attempt)
        first = Member(job, claim.attempt)
        members = [first, *collect_partners(self.settings, self.store, first, self.name)]
        for member in members:
            self.metrics.job_started(member.job)
        self._run(members)

    def _run(self, members: list[Member]) -> None:
        """One pipeline call for all ``members`` (jobs of one shape), results back to each."""
        self.store.mark_batch([m.job.id for m in members], uuid.uuid4().hex)
        runs = [r for r in (self._prepare(m) for m in members) if r is not None]
        if not runs:
            return
        params = runs[0].member.job.params
        items = [item for run in runs for item in run.items]
        started = time.monotonic()
        try:
            outputs = self._generate(params, items, self._step_reporter(runs), jobs=len(runs))
        except StopRun:
            for run in runs:
                self._stopped(run.member)
            return
        except SoftTimeLimitExceeded:
            message = f"the job ran past its time limit of {self.settings.task_soft_time_limit} s"
            for run in runs:
                log.error("job %s: past its soft time limit", run.member.job.id)
                self._fail(run, message)
            return
        except Exception as exc:
            for run in runs:
                log.error("job %s: failed: %s", run.member.job.id, _describe(exc), exc_info=exc)
                self._fail(run, f"generation failed: {_describe(exc)}")
            return
        elapsed = time.monotonic() - started
        self.metrics.pipeline_ran(len(outputs), params.denoising_steps, elapsed)
        self.metrics.batch_ran(len(outputs), len(runs))
        if len(runs) > 1:
            self.store.count(batched_jobs=len(runs))
        offset = 0
        for run in runs:
            images = outputs[offset : offset + len(run.items)]
            offset += len(run.items)
            if run.stopped:
                self._stopped(run.member)
            else:
                self._deliver(run.member.job, images, elapsed)

    def _prepare(self, member: Member) -> JobRun | None:
        """Fetch and decode the job's input; a bad input fails this job alone."""
        job = member.job
        try:
            image = prepare_image(
                open_image(self.storage.get(input_key(job.id)), self.settings),
                job.params.img_width,
                job.params.img_height,
            )
        except Exception as exc:
            log.exception("job %s: input not usable", job.id)
            self._finished(job.id, self.store.fail(job.id, f"generation failed: {_describe(exc)}"))
            return None
        return JobRun(member, job_items(job.params, image, job.seeds, job.id))

    def _deliver(self, job: Job, images: list[Image.Image], elapsed: float) -> None:
        try:
            keys = [output_key(job.id, i) for i in range(len(images))]
            encoded = [encode_jpeg(output, self.settings.jpeg_quality) for output in images]
            self._upload(keys, encoded)
            self.store.cache_results(job.id, encoded)
        except Exception as exc:
            log.exception("job %s: failed", job.id)
            self._finished(job.id, self.store.fail(job.id, f"generation failed: {_describe(exc)}"))
            return
        self.store.record_run_seconds(elapsed)
        self._finished(job.id, self.store.succeed(job.id, keys, elapsed))
        self.metrics.job_succeeded(job)
        log.info("job %s: succeeded in %.3fs (%d images)", job.id, elapsed, len(images))

    def _stopped(self, member: Member) -> None:
        """The job was canceled, or another attempt owns it: write no result."""
        current = self.store.get(member.job.id)
        if current is not None and current.cancel_requested:
            log.info("job %s: canceled while running", member.job.id)
            self._finished(member.job.id, self.store.finish_canceled(member.job.id))
        else:
            log.warning(
                "job %s: attempt %d lost its lease; another worker has the job", member.job.id, member.attempt
            )

    def _fail(self, run: JobRun, message: str) -> None:
        if run.stopped:  # canceled, or no longer this attempt's to record
            self._stopped(run.member)
        else:
            self._finished(run.member.job.id, self.store.fail(run.member.job.id, message))

    def _generate(
        self, params: GenerationParams, items: Sequence[BatchItem], on_step: StepCallback, jobs: int = 1
    ) -> list[Image.Image]:
        """All images in one pipeline call; on GPU out-of-memory, the batch is halved and
        retried (one generator per image keeps every image the same), down to one image."""
        try:
            images = self.runner.run_batch(params, items, on_step)
        except Exception as exc:
            if not _is_out_of_memory(exc) or len(items) == 1:
                raise
            _release_gpu_memory()
            half = len(items) // 2
            log.warning(
                "out of GPU memory at %d images; retrying as %d + %d", len(items), half, len(items) - half
            )
            first, second = items[:half], items[half:]
            return self._generate(params, first, on_step, min(jobs, len(first))) + self._generate(
                params, second, on_step, min(jobs, len(second))
            )
        self.store.count(pipeline_calls=1, images=len(images), pipeline_jobs=jobs)
        if len(images) != len(items):
            raise RuntimeError(f"runner returned {len(images)} images for {len(items)} samples")
        return images

    def _step_reporter(self, runs: Sequence[JobRun]) -> StepCallback:
        """Progress and lease renewal for every job of the batch. A job that must stop
        (canceled, or another attempt owns it) is marked; when none is left to run,
        :class:`StopRun` ends the pipeline call."""
        lease = self.settings.job_lease_seconds

        def report(step: int, total: int) -> None:
            for run in runs:
                if not run.stopped and self.store.progress(
                    run.member.job.id, step, total, run.member.attempt, lease
                ):
                    run.stopped = True
            if all(run.stopped for run in runs):
                raise StopRun(runs[0].member.job.id)

        return report

    def _finished(self, job_id: str, moved: bool) -> None:
        if moved and self.on_finished is not None:
            self.on_finished(job_id)

    def _upload(self, keys: list[str], blobs: list[bytes]) -> None:
        """Write all outputs; several at once when a job has several samples."""
        if len(keys) == 1:
            self.storage.put(keys[0], blobs[0], "image/jpeg")
            return
        with ThreadPoolExecutor(max_workers=len(keys)) as pool:
            for done in [
                pool.submit(self.storage.put, k, b, "image/jpeg") for k, b in zip(keys, blobs, strict=True)
            ]:
                done.result()


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _release_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
