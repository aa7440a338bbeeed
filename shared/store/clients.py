"""The two Redis clients of the store: text for records, bytes for images."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from shared.settings import Settings
from shared.store.keys import RedisKeys

# A blocking read never waits longer than this in one call, so a dead connection shows.
BLOCK_SLICE_SECONDS = 5.0
_SPARE_CONNECTIONS = 100
POOL_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class Clients:
    """What every part of the store shares: its key names and its connection pools."""

    keys: RedisKeys
    text: redis.Redis  # decoded responses: records, sets, counters
    blobs: redis.Redis  # raw bytes: images, and scripts that return them

    @classmethod
    def connect(cls, settings: Settings, client: redis.Redis | None = None) -> Clients:
        text = client or connect(settings, decode=True, socket_timeout=BLOCK_SLICE_SECONDS + 5)
        blobs = connect(settings, decode=False, socket_timeout=10)
        return cls(RedisKeys(settings.key_prefix), text, blobs)


def connect(settings: Settings, decode: bool, socket_timeout: float) -> redis.Redis:
    """A client whose pool holds as many connections as a gateway process has clients (each
    waiting client blocks one in ``XREAD``), and beyond that makes a request wait
    :data:`POOL_WAIT_SECONDS` for a free one instead of failing it."""
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.gateway_connections + _SPARE_CONNECTIONS,
        timeout=POOL_WAIT_SECONDS,
        decode_responses=decode,
        socket_timeout=socket_timeout,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)
