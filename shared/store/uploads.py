"""Succeeded jobs whose outputs S3 does not hold yet.

The success script puts a job in the uploads set with a deadline; the worker takes it out
once S3 holds the outputs. A job still there past its deadline (the upload failed, or its
worker died) is handed out again by the sweeper, and the claim gives it to a worker as an
upload, done from the images kept in Redis.
"""

from __future__ import annotations

import time
from typing import cast

from shared.store.clients import Clients


class Uploads:
    def __init__(self, clients: Clients, result_ttl: int) -> None:
        self._keys = clients.keys
        self._text = clients.text
        self._blobs = clients.blobs
        self._result_ttl = result_ttl

    def done(self, job_id: str, count: int) -> None:
        """S3 holds the job's ``count`` outputs: Redis keeps them only as a short cache."""
        pipe = self._blobs.pipeline(transaction=False)
        pipe.hdel(self._keys.job(job_id), "upload_pending")
        pipe.zrem(self._keys.uploads, job_id)
        for index in range(count):
            if self._result_ttl > 0:
                pipe.expire(self._keys.result(job_id, index), self._result_ttl)
            else:
                pipe.delete(self._keys.result(job_id, index))
        pipe.execute()

    def retry_in(self, job_id: str, seconds: float) -> None:
        """Hand the upload out again (:meth:`lapsed`) in ``seconds``."""
        self._text.zadd(self._keys.uploads, {job_id: time.time() + seconds}, xx=True)

    def forget(self, job_id: str) -> None:
        """Drop a pending upload that can no longer be done (the job has expired)."""
        self._text.zrem(self._keys.uploads, job_id)

    def lapsed(self) -> list[str]:
        """Succeeded jobs whose outputs are not in S3 past their upload deadline."""
        return cast(list[str], self._text.zrangebyscore(self._keys.uploads, "-inf", time.time()))

    def pending(self) -> int:
        return int(self._text.zcard(self._keys.uploads))
