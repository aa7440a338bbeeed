"""Fakes for the unit tier: where a test checks the gateway's own behaviour (validation,
error mapping, routing), not Redis's or S3's, it runs against these instead of servers."""

from __future__ import annotations

from flask import Flask

from api.app import create_app
from api.service import JobService
from shared.errors import NotFound
from shared.settings import Settings
from shared.store import JobStore

# Nothing listens here: a test that reaches Redis after all fails at once, loudly.
UNREACHABLE_REDIS = "redis://127.0.0.1:9/0"


class FakeStorage:
    """S3 as a dict: what the gateway writes, it reads back."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def ensure_bucket(self) -> None:
        return None

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.objects[key] = data

    def get(self, key: str) -> bytes:
        if key not in self.objects:
            raise NotFound(f"no object {key}")
        return self.objects[key]

    def ping(self) -> bool:
        return True


def offline_app(settings: Settings | None = None) -> Flask:
    """The gateway with no Redis, no S3 and no worker behind it (keys off): every answer it
    gives comes from the gateway's own checks before a job is recorded."""
    settings = (settings or Settings()).replace(redis_url=UNREACHABLE_REDIS, auth_enabled=False)
    service = JobService(settings, store=JobStore(settings), storage=FakeStorage())  # type: ignore[arg-type]
    return create_app(settings, service)
