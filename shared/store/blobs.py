"""Images in Redis: a job's input while a worker may still want it, and its outputs until S3
holds them (then briefly, so fresh reads skip S3).

The input copy is written by the submit script, handed out by the claim and, once the worker
has stored the input in S3, left to expire; the outputs by the success script
(:mod:`shared.store.jobs`).
"""

from __future__ import annotations

from typing import cast

from shared.store.clients import Clients


class Blobs:
    def __init__(self, clients: Clients, input_ttl: int) -> None:
        self._keys = clients.keys
        self._blobs = clients.blobs
        self._input_ttl = input_ttl

    def input_stored(self, job_id: str) -> None:
        """S3 holds the input now: the Redis copy need only serve a quick retry."""
        if self._input_ttl > 0:
            self._blobs.expire(self._keys.input(job_id), self._input_ttl)
        else:
            self._blobs.delete(self._keys.input(job_id))

    def drop_input(self, job_id: str) -> None:
        """Forget the Redis copy of a job that will not run."""
        self._blobs.delete(self._keys.input(job_id))

    def result(self, job_id: str, index: int) -> bytes | None:
        """An output image while Redis keeps it: until it is uploaded, and a little after."""
        return cast(bytes | None, self._blobs.get(self._keys.result(job_id, index)))

    def results(self, job_id: str, count: int) -> list[bytes | None]:
        """The first ``count`` outputs as :meth:`result` gives them, in one round trip."""
        keys = [self._keys.result(job_id, index) for index in range(count)]
        return cast(list[bytes | None], self._blobs.mget(keys)) if keys else []
