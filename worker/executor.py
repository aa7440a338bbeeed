"""One job, start to end: claim it, fetch its input, run, record the result, store outputs.

A claimed job takes queued partners of its shape into the same pipeline call
(worker/batching.py); each job of the batch keeps its own lease, progress and result.

Delivery is at least once (acks late, requeue on worker loss); effects are once:
- a job runs only after :meth:`~shared.store.jobs.Jobs.claim` hands it to this worker (queued, or
  running with a lapsed lease because its worker died), so a redelivered message for a
  running or finished job does nothing;
- progress renews the lease at every step and tells the run when this attempt no longer
  owns the job (worker/progress.py); the final transition checks the attempt again;
- outputs go to deterministic keys and status changes are idempotent Lua scripts, so a
  repeated write or transition changes nothing.

Latency: the input comes from its Redis copy (S3 only when that has expired), and a job
is marked succeeded with its images in Redis before they are written to S3, so a waiting
client is answered without any S3 round trip. The gateway writes nothing to S3: the worker
stores the input (``jobs/{id}/input``) in the background once it has claimed the job, and only
then lets the Redis copy expire (``INPUT_CACHE_SECONDS``). The upload follows at once; if it fails or
the worker dies first, the job stays in the uploads set and the sweeper hands it out
again, and the images stay in Redis until S3 holds them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, assert_never

import redis
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from shared.errors import Unavailable
from shared.images import encode_image, open_image, prepare_image
from shared.jobs import Job, input_key, output_key, output_media_type
from shared.schema import GenerationParams
from shared.settings import Settings
from shared.storage import Storage
from shared.store import ClaimOutcome, JobStore
from worker.batching import Member, collect_partners
from worker.metrics import WorkerMetrics
from worker.progress import Batch, ProgressWriter, StopRun
from worker.runs import BatchFailed, BatchItem, Call, Runner, job_items

log = logging.getLogger(__name__)


@dataclass
class JobRun:
    """A job of the current pipeline call: its images' items, and whether it must stop."""

    member: Member
    items: list[BatchItem]
    stopped: bool = False

    @property
    def job_id(self) -> str:
        return self.member.job.id

    @property
    def attempt(self) -> int:
        return self.member.attempt


@dataclass(frozen=True)
class Delivered:
    """A job marked succeeded whose images are still to be written to S3."""

    job: Job
    keys: list[str]
    images: list[bytes]
    finished_at: float


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
        self.progress = ProgressWriter(store)
        self._inputs = ThreadPoolExecutor(max_workers=2, thread_name_prefix="input-upload")

    def close(self) -> None:
        """Stop the progress thread and finish the input uploads (the process is stopping)."""
        self.progress.close()
        self._inputs.shutdown(wait=True)

    def execute(self, job_id: str) -> None:
        claim = self.store.jobs.claim(
            job_id, self.name, self.settings.job_lease_seconds, self.settings.max_job_attempts
        )
        match claim.outcome:
            case ClaimOutcome.STARTED:
                pass
            case ClaimOutcome.UPLOAD:
                self._retry_upload(job_id)
                return
            case ClaimOutcome.EXHAUSTED:
                log.error("job %s: failed after %d starts that each lost their worker", job_id, claim.attempt)
                self._ended(job_id)
                return
            case ClaimOutcome.MISSING:
                log.info("job %s: not run, its record has expired", job_id)
                return
            case ClaimOutcome.BUSY | ClaimOutcome.SUCCEEDED | ClaimOutcome.FAILED | ClaimOutcome.CANCELED:
                log.info("job %s: not run here (%s)", job_id, claim.outcome.value)
                return
            case _:
                assert_never(claim.outcome)
        if claim.job is None:
            raise RuntimeError(f"job {job_id}: started without its record")
        if claim.attempt > 1:
            log.warning("job %s: taking over, attempt %d", job_id, claim.attempt)
        first = Member(claim.job, claim.attempt, claim.image)
        self._run([first, *collect_partners(self.settings, self.store, first, self.name, claim.queued)])

    def _run(self, members: list[Member]) -> None:
        """One pipeline call for all ``members`` (jobs of one shape), results back to each.

        Waiting clients come first: every job is marked succeeded (images in Redis) before
        any S3 write, and counters and metrics are written last."""
        runs = [run for run in map(self._prepare, members) if run is not None]
        if not runs:
            return
        params = runs[0].member.job.params
        items = [item for run in runs for item in run.items]
        batch = Batch(uuid.uuid4().hex, [m.job.id for m in members])
        lease = self.settings.job_lease_seconds
        started = time.monotonic()
        try:
            with self.progress.call(runs, lease, batch) as progress:
                output = self.runner.run_batch(params, items, progress.report)
        except Exception as exc:  # noqa: BLE001 - StopRun and time limits too; _abandon logs it
            cause = exc.__cause__ if isinstance(exc, BatchFailed) else exc
            self._abandon(runs, cause if isinstance(cause, Exception) else exc)
            if isinstance(exc, BatchFailed) and exc.calls:  # calls of a split batch that ran first
                self.store.counters.add(
                    **self._count_calls(runs, exc.calls, params, time.monotonic() - started)
                )
            self._record(runs, [], 0.0)
            return
        elapsed = time.monotonic() - started
        outputs = output.images
        counters = self._count_calls(runs, output.calls, params, elapsed)
        delivered: list[Delivered] = []
        offset = 0
        for run in runs:
            images = outputs[offset : offset + len(run.items)]
            offset += len(run.items)
            if run.stopped:
                self._stopped(run.member)
                continue
            # The call's counters ride on the first success, so they are current when it is seen.
            done = self._deliver(run, images, elapsed, None if delivered else counters)
            if done is not None:
                delivered.append(done)
        if not delivered:
            self.store.counters.add(**counters)
        for done in delivered:
            self._upload(done.job.id, done.keys, done.images)
        self._record(runs, delivered, elapsed)

    def _abandon(self, runs: Sequence[JobRun], exc: Exception) -> None:
        """End every job of a call that did not finish: stopped, past its time limit, or failed."""
        if isinstance(exc, StopRun):
            for run in runs:
                self._stopped(run.member)
            return
        if isinstance(exc, SoftTimeLimitExceeded):
            message = f"the job ran past its time limit of {self.settings.task_soft_time_limit} s"
        else:
            message = _failure(exc)
        for run in runs:
            log.error("job %s: %s", run.job_id, message, exc_info=exc)
            self._fail(run, message)

    def _count_calls(
        self,
        runs: Sequence[JobRun],
        calls: Sequence[Call],
        params: GenerationParams,
        elapsed: float,
    ) -> dict[str, int]:
        """This worker's metrics of the call, and the farm-wide counters it adds to."""
        images = sum(call.images for call in calls)
        self.metrics.pipeline_ran(images, params.denoising_steps, elapsed)
        self.metrics.batch_ran(images, len(runs))
        return {
            "pipeline_calls": len(calls),
            "images": images,
            "pipeline_jobs": sum(call.jobs for call in calls),
            "batched_jobs": len(runs) if len(runs) > 1 else 0,
        }

    def _record(self, runs: Sequence[JobRun], delivered: Sequence[Delivered], elapsed: float) -> None:
        """Latency metrics (queue wait included: each job's start time is in its record), run
        time and webhooks, once the clients have their images: none of these Redis writes
        stands between a claim and its pipeline call, or between a result and its client."""
        for run in runs:
            self.metrics.job_started(run.member.job)
        if delivered:
            self.store.counters.record_run_seconds(elapsed)
        for done in delivered:
            self.metrics.job_succeeded(done.job, done.finished_at)
            self._ended(done.job.id)
            log.info("job %s: succeeded in %.3fs (%d images)", done.job.id, elapsed, len(done.images))

    def _prepare(self, member: Member) -> JobRun | None:
        """Decode the job's input (its Redis copy, from the claim); a bad input fails this job alone."""
        job = member.job
        data = member.image
        try:
            if data is None:  # the Redis copy has expired: S3 has the input
                data = self.storage.get(input_key(job.id))
            else:
                self._inputs.submit(self._store_input, job.id, data)
            params = job.params
            image = prepare_image(open_image(data, self.settings), params.img_width, params.img_height)
        except Exception as exc:
            log.exception("job %s: input not usable", job.id)
            if self.store.jobs.fail(job.id, member.attempt, _failure(exc)):
                self._ended(job.id)
            return None
        return JobRun(member, job_items(job.params, image, job.seeds, job.id))

    def _deliver(
        self, run: JobRun, images: list[Image.Image], elapsed: float, counters: dict[str, int] | None
    ) -> Delivered | None:
        """Encode the images and mark the job succeeded with them; None if it is not ours."""
        job = run.member.job
        params = job.params
        keys = [output_key(job.id, i, params.output_format) for i in range(len(images))]
        try:
            encoded = [encode_image(output, params.output_format, params.output_quality) for output in images]
        except Exception as exc:
            log.exception("job %s: failed", job.id)
            moved = self._settle(job.id, self.store.jobs.fail, job.id, run.attempt, _failure(exc))
            if moved:
                self._ended(job.id)
            return None
        upload_deadline = self.settings.job_lease_seconds
        moved = self._settle(
            job.id,
            self.store.jobs.succeed,
            job.id,
            run.attempt,
            keys,
            encoded,
            elapsed,
            upload_deadline,
            counters,
        )
        if moved:
            return Delivered(job, keys, encoded, time.time())
        if moved is not None:
            self._stopped(run.member)  # canceled, or taken over, during the last step
        return None

    def _settle(self, job_id: str, transition: Callable[..., bool], *args: Any) -> bool | None:
        """A final transition that rides out a Redis blip (a restart, a failover): it is tried
        again for up to ``JOB_LEASE_SECONDS``, which is safe because every transition is fenced
        by its attempt and idempotent. None if Redis stays away: the job is left running, its
        lease lapses and the sweeper runs it again."""
        deadline = time.monotonic() + self.settings.job_lease_seconds
        pause = 0.1
        while True:
            try:
                return transition(*args)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() + pause > deadline:
                    log.error(
                        "job %s: Redis unreachable, its result is left to a later attempt: %s", job_id, exc
                    )
                    return None
                log.warning(
                    "job %s: Redis unreachable (%s); recording the result again in %.1f s", job_id, exc, pause
                )
                time.sleep(pause)
                pause = min(2 * pause, 2.0)

    def _upload(self, job_id: str, keys: list[str], images: Sequence[bytes]) -> None:
        """Write a succeeded job's outputs to S3; on failure, leave them for a later try."""
        try:
            self._put_all(keys, images)
        except Unavailable as exc:
            retry = self.settings.job_lease_seconds
            log.warning("job %s: outputs not written to S3 (%s); trying again in %.0f s", job_id, exc, retry)
            self.store.uploads.retry_in(job_id, retry)
            return
        self.store.uploads.done(job_id, len(keys))

    def _retry_upload(self, job_id: str) -> None:
        """Finish the S3 write of a succeeded job whose first upload failed or was cut off."""
        job = self.store.jobs.get(job_id)
        if job is None:
            self.store.uploads.forget(job_id)
            return
        images = self.store.blobs.results(job_id, len(job.outputs))
        kept = [image for image in images if image is not None]
        if len(kept) != len(images):
            log.error("job %s: outputs left Redis before S3 had them", job_id)
            self.store.uploads.done(job_id, 0)
            return
        log.info("job %s: writing its outputs to S3 again", job_id)
        self._upload(job_id, list(job.outputs), kept)

    def _stopped(self, member: Member) -> None:
        """The job was canceled, or another attempt owns it: write no result."""
        current = self.store.jobs.get(member.job.id)
        if current is not None and current.cancel_requested:
            log.info("job %s: canceled while running", member.job.id)
            moved = self._settle(
                member.job.id, self.store.jobs.finish_canceled, member.job.id, member.attempt
            )
            if moved:
                self._ended(member.job.id)
        else:
            log.warning(
                "job %s: attempt %d lost its lease; another worker has the job", member.job.id, member.attempt
            )

    def _fail(self, run: JobRun, message: str) -> None:
        if run.stopped:  # canceled, or no longer this attempt's to record
            self._stopped(run.member)
        else:
            moved = self._settle(run.job_id, self.store.jobs.fail, run.job_id, run.attempt, message)
            if moved:
                self._ended(run.job_id)

    def _store_input(self, job_id: str, data: bytes) -> None:
        """Write the input to S3, then let its Redis copy expire; on failure the copy stays
        (it lives as long as the job), so a retry still finds it."""
        try:
            self.storage.put(input_key(job_id), data, "application/octet-stream")
            self.store.blobs.input_stored(job_id)
        except Exception:  # best effort beside the run: the Redis copy stays
            log.warning("job %s: input not stored in S3; its Redis copy stays", job_id, exc_info=True)

    def _ended(self, job_id: str) -> None:
        """This worker moved the job to a final state: hand it on (its webhook)."""
        if self.on_finished is not None:
            self.on_finished(job_id)

    def _put_all(self, keys: Sequence[str], blobs: Sequence[bytes]) -> None:
        """Write all outputs; several at once when a job has several samples."""
        if len(keys) == 1:
            self.storage.put(keys[0], blobs[0], output_media_type(keys[0]))
            return
        with ThreadPoolExecutor(max_workers=len(keys)) as pool:
            for done in [
                pool.submit(self.storage.put, k, b, output_media_type(k))
                for k, b in zip(keys, blobs, strict=True)
            ]:
                done.result()


def _failure(exc: Exception) -> str:
    """The error a client sees for a job whose generation raised ``exc``."""
    return f"generation failed: {_describe(exc)}"


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
