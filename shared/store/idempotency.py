"""Idempotency keys: a key binds a submit's body to one job for ``IDEMPOTENCY_TTL_SECONDS``.

The gateway binds the key to a new job id before it records the job, and the submit script
records the job only while the key is still bound to it (:meth:`shared.store.jobs.Jobs.submit`),
so at most one job is ever recorded per key, however requests race or retry.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.store.clients import Clients
from shared.store.scripts import Script


@dataclass(frozen=True)
class Idempotency:
    """An idempotency key (already scoped to its owner) and the body fingerprint bound to it."""

    key: str
    fingerprint: str

    def value(self, job_id: str) -> str:
        """What the key holds while it is bound to ``job_id``."""
        return f"{self.fingerprint} {job_id}"


class IdempotencyKeys:
    def __init__(self, clients: Clients) -> None:
        self._keys = clients.keys
        self._claim = Script(clients.text, "idempotency_claim")
        self._swap = Script(clients.text, "idempotency_swap")

    def claim(self, idempotency: Idempotency, job_id: str, ttl: int) -> tuple[str, str]:
        """Bind the key to ``job_id`` unless already bound; return the (fingerprint, job id) bound."""
        fingerprint, job = self._claim(
            keys={"idempotency": self._keys.idempotency(idempotency.key)},
            args={"fingerprint": idempotency.fingerprint, "job_id": job_id, "ttl": ttl},
        )
        return str(fingerprint), str(job)

    def release(self, idempotency: Idempotency, job_id: str) -> None:
        """Free the key if ``job_id`` holds it (its submission was refused before it was queued)."""
        self._swap(
            keys={"idempotency": self._keys.idempotency(idempotency.key)},
            args={"expected": idempotency.value(job_id), "new": ""},
        )

    def rebind(self, idempotency: Idempotency, old_job: str, new_job: str) -> bool:
        """Bind the key to ``new_job`` if it is still bound to ``old_job`` (a job that was never
        recorded); the submit of ``old_job`` is then refused, so one job at most is recorded."""
        return bool(
            self._swap(
                keys={"idempotency": self._keys.idempotency(idempotency.key)},
                args={"expected": idempotency.value(old_job), "new": idempotency.value(new_job)},
            )
        )
