"""Farm-wide locks that lapse by themselves (one sweep per interval, one re-send per lease)."""

from __future__ import annotations

from shared.store.clients import Clients


class Locks:
    def __init__(self, clients: Clients) -> None:
        self._keys = clients.keys
        self._text = clients.text

    def try_take(self, name: str, seconds: float) -> bool:
        """Take lock ``name`` for ``seconds`` unless someone holds it; True when taken."""
        return bool(self._text.set(self._keys.lock(name), "1", nx=True, px=int(seconds * 1000)))
