"""How many input images a gateway process decodes at once, in all and per key.

A job's input is decoded once the job is queued (:meth:`api.service.JobService.submit`).
Each decode is admitted by :class:`DecodeGate` first; a refused one takes its job back
(failed, refunded) and the client gets the answer below:

- per key, at most ``MAX_DECODES_PER_KEY`` at once in this process; one more waits up to
  :data:`KEY_WAIT_SECONDS` for one of them to end, then is a 429 with ``Retry-After``
  (with keys off there is no per-key bound);
- in all, at most ``DECODE_BUDGET_PIXELS`` pixels (by the images' headers) are being
  decoded at once; a decode that does not fit waits up to :data:`BUDGET_WAIT_SECONDS` for
  others to end, then is a 503 with ``Retry-After``. One image always fits an idle process.

The bound holds the gateway's memory and CPU whatever the images declare: a flood of
large images queues behind the budget instead of decoding all at once, and one key's
flood waits behind its own slots while other keys' images go on.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

from shared.errors import RateLimited, Unavailable

KEY_WAIT_SECONDS: Final = 5.0
BUDGET_WAIT_SECONDS: Final = 10.0
_RETRY_SECONDS: Final = 1


class DecodeGate:
    """Admits decodes within a pixel budget and a per-key limit. Thread-safe."""

    def __init__(
        self,
        budget_pixels: int,
        per_key: int,
        key_wait: float = KEY_WAIT_SECONDS,
        budget_wait: float = BUDGET_WAIT_SECONDS,
    ) -> None:
        self._budget = budget_pixels
        self._per_key = per_key
        self._key_wait = key_wait
        self._budget_wait = budget_wait
        self._changed = threading.Condition()
        self._pixels = 0
        self._by_key: Counter[str] = Counter()

    @property
    def pixels_in_flight(self) -> int:
        return self._pixels

    @contextmanager
    def admit(self, key: str | None, pixels: int) -> Iterator[None]:
        """Hold a decode of ``pixels`` for ``key`` (None: keys are off) while the block runs."""
        with self._changed:
            if key is not None:
                if not self._wait_for(lambda: self._by_key[key] < self._per_key, self._key_wait):
                    raise RateLimited(
                        f"at most {self._per_key} images of one key are checked at once; retry",
                        retry_after=_RETRY_SECONDS,
                    )
                self._by_key[key] += 1
            fits = lambda: not self._pixels or self._pixels + pixels <= self._budget  # noqa: E731
            if not self._wait_for(fits, self._budget_wait):
                self._release_key(key)
                raise Unavailable("the gateway is busy checking images; retry", _RETRY_SECONDS)
            self._pixels += pixels
        try:
            yield
        finally:
            with self._changed:
                self._pixels -= pixels
                self._release_key(key)
                self._changed.notify_all()

    def _wait_for(self, admitted: Callable[[], bool], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not admitted():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.wait(left)
        return True

    def _release_key(self, key: str | None) -> None:
        if key is None:
            return
        self._by_key[key] -= 1
        if not self._by_key[key]:
            del self._by_key[key]
