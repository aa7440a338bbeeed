"""The two Redis clients of the store: text for records, bytes for images."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from shared.settings import Settings
from shared.store.keys import RedisKeys

# A blocking read never waits longer than this in one call, so a dead connection shows.
BLOCK_SLICE_SECONDS = 5.0


@dataclass(frozen=True)
class Clients:
    """What every part of the store shares: its key names and its connection pools."""

    keys: RedisKeys
    text: redis.Redis  # decoded responses: records, sets, counters
    blobs: redis.Redis  # raw bytes: images, and scripts that return them

    @classmethod
    def connect(cls, settings: Settings, client: redis.Redis | None = None) -> Clients:
        text = client or redis.Redis.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_timeout=BLOCK_SLICE_SECONDS + 5,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        blobs = redis.Redis.from_url(
            settings.redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
        )
        return cls(RedisKeys(settings.key_prefix), text, blobs)
