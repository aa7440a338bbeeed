"""Batching candidates: the ids of queued jobs of each shape, in the order they came.

Every submit appends its job to its shape's list (:meth:`shared.store.jobs.Jobs.submit`) and
every claim removes it; a worker that claimed a job takes partners from the list of its
shape (worker/batching.py).
"""

from __future__ import annotations

from typing import cast

from shared.store.clients import Clients


class ShapeLists:
    def __init__(self, clients: Clients) -> None:
        self._keys = clients.keys
        self._text = clients.text

    def next(self, shape: str, timeout: float) -> str | None:
        """The oldest job id submitted with ``shape`` that no batch has taken yet, waiting
        up to ``timeout`` seconds for one (0: do not wait). The id may name a job that has
        run already (its own message ran it); the caller's claim tells."""
        key = self._keys.shape(shape)
        if timeout <= 0:
            return cast(str | None, self._text.lpop(key))
        reply = cast(tuple[str, str] | None, self._text.blpop([key], timeout=timeout))
        return None if reply is None else reply[1]

    def put_back(self, shape: str, job_id: str) -> None:
        """Put back an id taken by :meth:`next` that did not fit the batch: first in line."""
        self._text.lpush(self._keys.shape(shape), job_id)
