"""One job, start to end: claim it, fetch its input, run, store outputs, record the result.

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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from shared.images import encode_jpeg, open_image, prepare_image
from shared.jobs import Job, input_key, output_key
from shared.jobstore import JobStore
from shared.schema import GenerationParams
from shared.settings import Settings
from shared.storage import Storage
from worker.metrics import WorkerMetrics
from worker.runner import Runner, StepCallback

log = logging.getLogger(__name__)


class StopRun(Exception):
    """Raised from the step callback: the job was canceled, or another attempt owns it."""


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
        self.metrics.job_started(job)
        self._run(job, claim.attempt)

    def _run(self, job: Job, attempt: int) -> None:
        params = job.params
        started = time.monotonic()
        try:
            image = prepare_image(
                open_image(self.storage.get(input_key(job.id)), self.settings),
                params.img_width,
                params.img_height,
            )
            started = time.monotonic()
            images = self._generate(params, image, job.seeds, self._step_reporter(job.id, attempt))
            elapsed = time.monotonic() - started
            self.metrics.pipeline_ran(len(images), params.denoising_steps, elapsed)
            keys = [output_key(job.id, i) for i in range(len(images))]
            encoded = [encode_jpeg(output, self.settings.jpeg_quality) for output in images]
            self._upload(keys, encoded)
            self.store.cache_results(job.id, encoded)
        except StopRun:
            current = self.store.get(job.id)
            if current is not None and current.cancel_requested:
                log.info("job %s: canceled while running", job.id)
                self._finished(job.id, self.store.finish_canceled(job.id))
            else:
                log.warning("job %s: attempt %d lost its lease; another worker has the job", job.id, attempt)
            return
        except SoftTimeLimitExceeded:
            log.error("job %s: past its soft time limit", job.id)
            message = f"the job ran past its time limit of {self.settings.task_soft_time_limit} s"
            self._finished(job.id, self.store.fail(job.id, message))
            return
        except Exception as exc:
            log.exception("job %s: failed", job.id)
            self._finished(job.id, self.store.fail(job.id, f"generation failed: {_describe(exc)}"))
            return
        self.store.record_run_seconds(time.monotonic() - started)
        self._finished(job.id, self.store.succeed(job.id, keys, elapsed))
        self.metrics.job_succeeded(job)
        log.info("job %s: succeeded in %.3fs (%d images)", job.id, elapsed, len(images))

    def _generate(
        self, params: GenerationParams, image: Image.Image, seeds: Sequence[int], on_step: StepCallback
    ) -> list[Image.Image]:
        """All samples in one pipeline call; on GPU out-of-memory, the batch is halved and
        retried (one generator per sample keeps every image the same), down to one sample."""
        try:
            images = self.runner.run(params, image, seeds, on_step)
        except Exception as exc:
            if not _is_out_of_memory(exc) or len(seeds) == 1:
                raise
            _release_gpu_memory()
            half = len(seeds) // 2
            log.warning(
                "out of GPU memory at %d samples; retrying as %d + %d", len(seeds), half, len(seeds) - half
            )
            return self._generate(params, image, seeds[:half], on_step) + self._generate(
                params, image, seeds[half:], on_step
            )
        self.store.count(pipeline_calls=1, images=len(images))
        if len(images) != len(seeds):
            raise RuntimeError(f"runner returned {len(images)} images for {len(seeds)} samples")
        return images

    def _step_reporter(self, job_id: str, attempt: int) -> StepCallback:
        """Progress and lease renewal; raises :class:`StopRun` when the job must stop."""
        lease = self.settings.job_lease_seconds

        def report(step: int, total: int) -> None:
            if self.store.progress(job_id, step, total, attempt, lease):
                raise StopRun(job_id)

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
