"""API keys, credit balances and rate limits, in Redis.

A key looks like ``i2i_<id>_<secret>``: ``id`` (8 hex characters) names the key in lists
and logs; ``secret`` (32 random bytes) is never stored. Redis keeps only SHA-256 of the
whole key, compared in constant time. Balances are integer millicredits changed only by
Lua scripts, so a balance never goes below zero however many requests race.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from shared.settings import Settings

KEY_PREFIX = "i2i_"

# KEYS: key hash. ARGV: cost. Returns {1, new balance} or {0, balance}; {-1, 0} if revoked/missing.
_CHARGE = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'revoked') == '1' then
  return {-1, 0}
end
local balance = tonumber(redis.call('HGET', KEYS[1], 'balance'))
local cost = tonumber(ARGV[1])
if balance < cost then return {0, balance} end
return {1, redis.call('HINCRBY', KEYS[1], 'balance', -cost)}
"""

# KEYS: rate window counter. ARGV: window seconds. Returns the count in this window.
_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


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
class Charge:
    accepted: bool
    balance_milli: int


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
        self._prefix = settings.key_prefix
        self._redis = client or redis.Redis.from_url(
            settings.redis_url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5
        )
        self._charge = self._redis.register_script(_CHARGE)
        self._hit = self._redis.register_script(_HIT)

    def _key(self, key_id: str) -> str:
        return f"{self._prefix}:apikey:{key_id}"

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
        self._redis.sadd(f"{self._prefix}:apikeys", key_id)
        return key, ApiKey.from_hash(fields)

    def get(self, key_id: str) -> ApiKey | None:
        data = cast(dict[str, str], self._redis.hgetall(self._key(key_id)))
        return ApiKey.from_hash(data) if data.get("hash") else None

    def list(self) -> list[ApiKey]:
        ids = sorted(cast(set[str], self._redis.smembers(f"{self._prefix}:apikeys")))
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
        """The key's record when ``key`` is valid and not revoked; compared in constant time."""
        key_id = key_id_of(key)
        if key_id is None:
            return None
        data = cast(dict[str, str], self._redis.hgetall(self._key(key_id)))
        stored = data.get("hash", "")
        if not hmac.compare_digest(stored.encode(), digest(key).encode()) or not stored:
            return None
        record = ApiKey.from_hash(data)
        return None if record.revoked else record

    def balance(self, key_id: str) -> int:
        return int(cast(str, self._redis.hget(self._key(key_id), "balance") or "0"))

    def charge(self, key_id: str, cost_milli: int) -> Charge:
        status, balance = self._charge(keys=[self._key(key_id)], args=[cost_milli])
        return Charge(accepted=int(status) == 1, balance_milli=int(balance))

    def refund(self, key_id: str, amount_milli: int) -> int:
        return int(self._redis.hincrby(self._key(key_id), "balance", amount_milli))

    def hit(self, key_id: str, window_seconds: int = 60) -> tuple[int, int]:
        """Count a request in the key's current window: (count so far, seconds left)."""
        now = time.time()
        window = int(now // window_seconds)
        count = int(self._hit(keys=[f"{self._prefix}:rate:{key_id}:{window}"], args=[window_seconds + 1]))
        left = max(1, int((window + 1) * window_seconds - now + 0.999))
        return count, left
