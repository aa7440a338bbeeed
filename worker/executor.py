"""One job, start to end: load it, fetch its input, run, store outputs, record the result."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

from shared.images import encode_jpeg, open_image, prepare_image
from shared.jobs import input_key, output_key
from shared.jobstore import JobStore
from shared.settings import Settings
from shared.storage import Storage
from worker.runner import Runner

log = logging.getLogger(__name__)


class JobExecutor:
    """Runs jobs on a loaded runner; the task layer stays a thin call into :meth:`execute`."""

    def __init__(
        self, settings: Settings, store: JobStore, storage: Storage, runner: Runner, name: str
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.runner = runner
        self.name = name

    def execute(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job is None:
            log.warning("job %s: unknown or expired, dropping the message", job_id)
            return
        if not self.store.start(job_id, self.name):
            log.info("job %s: is %s, not running it", job_id, job.status.value)
            return
        params = job.params
        try:
            image = prepare_image(
                open_image(self.storage.get(input_key(job_id)), self.settings),
                params.img_width,
                params.img_height,
            )
            started = time.monotonic()
            images = self.runner.run(
                params, image, job.seeds, lambda step, total: self.store.progress(job_id, step, total)
            )
            elapsed = time.monotonic() - started
            self.store.count(pipeline_calls=1, images=len(images))
            if len(images) != len(job.seeds):
                raise RuntimeError(f"runner returned {len(images)} images for {len(job.seeds)} samples")
            keys = [output_key(job_id, i) for i in range(len(images))]
            encoded = [encode_jpeg(output, self.settings.jpeg_quality) for output in images]
            self._upload(keys, encoded)
            self.store.cache_results(job_id, encoded)
        except Exception as exc:
            log.exception("job %s: failed", job_id)
            self.store.fail(job_id, f"generation failed: {_describe(exc)}")
            return
        self.store.succeed(job_id, keys, elapsed)
        log.info("job %s: succeeded in %.3fs (%d images)", job_id, elapsed, len(images))

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


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
