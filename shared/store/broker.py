"""What the broker holds for a queue: the job ids of the run-job messages waiting in it, or
delivered to a worker and not yet acknowledged.

This reads kombu's Redis transport as it lays messages out: a queue is one list per
priority step (``queue``, and ``queue`` + ``\\x06\\x16`` + step for the steps above 0), each
element a JSON message whose body is base64 JSON ``[args, kwargs, embed]`` (Celery's
message protocol 2); messages delivered to a worker and not yet acknowledged sit in the
``unacked`` hash as ``[message, exchange, routing key]``. Lists are read in slices and the
hash is scanned, so a deep queue never holds Redis up for long; a message moving between
the two while they are read may be missed, which costs at most one duplicate message.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from typing import Any, cast

import redis

log = logging.getLogger(__name__)

PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED_KEY = "unacked"

_SLICE = 500


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that hold ``queue``'s waiting messages, one per priority step."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]


class BrokerQueues:
    """The broker's queues, read through the store's Redis client."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def in_flight(self, queue: str, task: str) -> set[str]:
        """First arguments (job ids) of ``task`` messages waiting in ``queue`` or unacknowledged."""
        client = self._client
        ids = {job for raw in _waiting(client, queue) if (job := first_argument(json.loads(raw), task))}
        for _tag, raw in client.hscan_iter(UNACKED_KEY, count=_SLICE):
            delivered = json.loads(raw)
            if isinstance(delivered, list) and delivered and (job := first_argument(delivered[0], task)):
                ids.add(job)
        return ids

    def depth(self, queue: str) -> int:
        """Messages waiting in ``queue`` (not those a worker holds)."""
        pipe = self._client.pipeline(transaction=False)
        for name in queue_keys(queue):
            pipe.llen(name)
        return sum(int(length) for length in pipe.execute())


def _waiting(client: redis.Redis, queue: str) -> Iterator[str]:
    for key in queue_keys(queue):
        start = 0
        while True:
            chunk = cast(list[str], client.lrange(key, start, start + _SLICE - 1))
            yield from chunk
            if len(chunk) < _SLICE:
                break
            start += _SLICE


def first_argument(message: Any, task: str) -> str | None:
    """The first positional argument of a ``task`` message, or None for any other message."""
    try:
        if message["headers"]["task"] != task:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        log.debug("not a %s message: %s", task, exc)
        return None
    return str(args[0]) if isinstance(args, list) and args else None
