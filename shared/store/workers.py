"""Worker heartbeats: which worker processes have loaded their model and are alive."""

from __future__ import annotations

import time
from typing import cast

from shared.store.clients import Clients


class Workers:
    def __init__(self, clients: Clients) -> None:
        self._keys = clients.keys
        self._text = clients.text

    def ready(self, name: str, forget_after: float) -> None:
        """A heartbeat of worker ``name``; workers silent for ``forget_after`` seconds (killed
        processes that never said goodbye) leave the set."""
        now = time.time()
        pipe = self._text.pipeline(transaction=False)
        pipe.zadd(self._keys.workers, {name: now})
        pipe.zremrangebyscore(self._keys.workers, "-inf", now - forget_after)
        pipe.execute()

    def gone(self, name: str) -> None:
        self._text.zrem(self._keys.workers, name)

    def heartbeats(self, max_age: float) -> list[tuple[str, float]]:
        """Ready workers and their last heartbeat (Unix seconds), most recent first."""
        since = time.time() - max_age
        beats = self._text.zrevrangebyscore(self._keys.workers, "+inf", since, withscores=True)
        return [(str(name), float(beat)) for name, beat in cast(list[tuple[str, float]], beats)]

    def fresh(self, max_age: float) -> list[str]:
        """Workers whose last heartbeat is at most ``max_age`` seconds old."""
        return cast(list[str], self._text.zrangebyscore(self._keys.workers, time.time() - max_age, "+inf"))
