"""How each job's webhook delivery ended, kept on the job so it is delivered to completion once."""

from __future__ import annotations

from typing import cast

from shared.store.clients import Clients
from shared.store.scripts import Script


class WebhookStates:
    def __init__(self, clients: Clients) -> None:
        self._keys = clients.keys
        self._text = clients.text
        self._set = Script(clients.text, "webhook_state")

    def get(self, job_id: str) -> str | None:
        return cast(str | None, self._text.hget(self._keys.job(job_id), "webhook_state"))

    def set(self, job_id: str, state: str) -> None:
        """``delivered`` or ``failed: ...``, once; a job that has expired meanwhile stays gone."""
        self._set(keys={"job": self._keys.job(job_id)}, args={"state": state})
