"""API keys, credit balances and rate limits, in Redis.

A key looks like ``i2i_<id>_<secret>``: ``id`` (8 hex characters) names the key in lists
and logs; ``secret`` (32 random bytes) is never stored. Redis keeps only SHA-256 of the
whole key; a presented key is checked by comparing digests inside Redis (how long a
comparison takes can tell about the stored digest, never about the secret, which the
digest does not give away). Balances are integer millicredits; a job's charge is taken
by the script that records the job (:meth:`shared.store.jobs.Jobs.submit`), which never
lets a balance go below zero however many requests race.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from shared.settings import Settings
from shared.store.clients import connect
from shared.store.keys import RedisKeys
from shared.store.scripts import Script

KEY_PREFIX = "i2i_"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    balance_milli: int
    rate_limit: int  # requests per minute; 0 means the default
    revoked: bool
    created_at: float

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> ApiKey:
        return cls(
            id=data["id"],
            name=data.get("name", ""),
            balance_milli=int(data.get("balance", "0")),
            rate_limit=int(data.get("rate_limit", "0")),
            revoked=data.get("revoked") == "1",
            created_at=float(data.get("created_at", "0")),
        )


@dataclass(frozen=True)
class Admission:
    """An authenticated request: its key, and its place in the key's rate-limit window."""

    key: ApiKey
    count: int  # requests of this key in the current window, this one included
    retry_after: int  # seconds until the window ends


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The id part of a well-formed key, else None."""
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = key[len(KEY_PREFIX) :].partition("_")
    if not sep or len(key_id) != 8 or not secret:
        return None
    return key_id


class KeyStore:
    """Keys, balances and rate-limit windows. Thread-safe."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self._keys = RedisKeys(settings.key_prefix)
        self._redis = client or connect(settings, decode=True, socket_timeout=10)
        self._authenticate = Script(self._redis, "authenticate")

    def _key(self, key_id: str) -> str:
        return self._keys.apikey(key_id)

    # -- administration -------------------------------------------------------

    def create(
        self, name: str, balance_milli: int, rate_limit: int = 0, key: str | None = None
    ) -> tuple[str, ApiKey]:
        """A new key (or ``key`` itself, when importing one); the secret is returned only here."""
        if key is None:
            key = f"{KEY_PREFIX}{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"
        key_id = key_id_of(key)
        if key_id is None:
            raise ValueError(f"an API key looks like {KEY_PREFIX}<8 hex>_<secret>")
        fields = {
            "id": key_id,
            "name": name,
            "hash": digest(key),
            "balance": str(balance_milli),
            "rate_limit": str(rate_limit),
            "revoked": "0",
            "created_at": repr(time.time()),
        }
        if not self._redis.hsetnx(self._key(key_id), "id", key_id):
            raise ValueError(f"key {key_id} already exists")
        self._redis.hset(self._key(key_id), mapping=cast(dict[Any, Any], fields))
        self._redis.sadd(self._keys.apikeys, key_id)
        return key, ApiKey.from_hash(fields)

    def get(self, key_id: str) -> ApiKey | None:
        data = cast(dict[str, str], self._redis.hgetall(self._key(key_id)))
        return ApiKey.from_hash(data) if data.get("hash") else None

    def list(self) -> list[ApiKey]:
        ids = sorted(cast(set[str], self._redis.smembers(self._keys.apikeys)))
        return [key for key in (self.get(key_id) for key_id in ids) if key is not None]

    def add_credits(self, key_id: str, amount_milli: int) -> int:
        if self.get(key_id) is None:
            raise KeyError(key_id)
        return int(self._redis.hincrby(self._key(key_id), "balance", amount_milli))

    def set_rate_limit(self, key_id: str, per_minute: int) -> None:
        if self.get(key_id) is None:
            raise KeyError(key_id)
        self._redis.hset(self._key(key_id), "rate_limit", str(per_minute))

    def revoke(self, key_id: str) -> None:
        if self.get(key_id) is None:
            raise KeyError(key_id)
        self._redis.hset(self._key(key_id), "revoked", "1")

    def stored_form(self, key_id: str) -> dict[str, str]:
        """Everything Redis holds for a key (for audits and tests)."""
        return cast(dict[str, str], self._redis.hgetall(self._key(key_id)))

    # -- requests -------------------------------------------------------------

    def authenticate(self, key: str) -> ApiKey | None:
        """The key's record when ``key`` is valid and not revoked (no request is counted)."""
        admission = self._check(key, 0)
        return admission.key if admission is not None else None

    def admit(self, key: str, window_seconds: int = 60, reads: bool = False) -> Admission | None:
        """Authenticate ``key`` and count a request in its rate-limit window (its reads'
        window with ``reads``), in one round trip; None (and nothing counted) when the key
        is not valid or revoked."""
        return self._check(key, window_seconds, reads)

    def _check(self, key: str, window_seconds: int, reads: bool = False) -> Admission | None:
        key_id = key_id_of(key)
        if key_id is None:
            return None
        now = time.time()
        window = int(now // window_seconds) if window_seconds else 0
        reply = self._authenticate(
            keys={"apikey": self._key(key_id), "window": self._keys.rate_window(key_id, window, reads)},
            args={"digest": digest(key), "window_seconds": window_seconds},
        )
        if not reply:
            return None
        count, fields = reply
        data = dict(zip(fields[::2], fields[1::2], strict=True))
        left = max(1, int((window + 1) * window_seconds - now + 0.999)) if window_seconds else 0
        return Admission(ApiKey.from_hash(data), int(count), left)

    def balance(self, key_id: str) -> int:
        return int(cast(str, self._redis.hget(self._key(key_id), "balance") or "0"))
