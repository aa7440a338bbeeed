"""One settings object, read from the environment once at start and passed down.

Modules never read ``os.environ`` themselves: the app factory and the worker entry
build a :class:`Settings` with :meth:`Settings.from_env` and hand it on.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class SettingsError(ValueError):
    """A setting in the environment has a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    """Every knob of the service, gateway and worker alike.

    The environment variable of each field is its name in upper case (``redis_url`` is
    ``REDIS_URL``); :data:`ENV_NAMES` lists them all.
    """

    # Broker and job store.
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue_name: str = "img2img"
    key_prefix: str = "img2img"
    job_ttl_seconds: int = 24 * 3600

    # S3-compatible storage (AWS, MinIO, ...). An empty endpoint means AWS itself.
    s3_endpoint_url: str = ""
    s3_bucket: str = "img2img"
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    s3_create_bucket: bool = True

    # Request limits and waiting.
    allowed_sizes: tuple[int, ...] = (512, 768)
    sync_wait_seconds: float = 120.0
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_prompt_chars: int = 2000
    jpeg_quality: int = 90
    result_cache_seconds: int = 120

    # Worker.
    model_id: str = ""
    model_dir: str = "var/models/tiny"
    device: str = "auto"
    dtype: str = "auto"
    torch_threads: int = 0
    runner: str = "worker.runner:DiffusersRunner"
    task_soft_time_limit: int = 300
    task_time_limit: int = 360
    visibility_timeout: int = 900
    worker_heartbeat_seconds: float = 5.0
    load_timeout_seconds: float = 900.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``), then apply ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, raw, type(getattr(_DEFAULTS, f.name)))
        values.update(overrides)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse combinations that would break the delivery guarantees."""
        if not self.allowed_sizes:
            raise SettingsError("ALLOWED_SIZES must name at least one size")
        for size in self.allowed_sizes:
            if size <= 0 or size % 8:
                raise SettingsError(f"ALLOWED_SIZES: {size} is not a positive multiple of 8")
        if self.task_soft_time_limit >= self.task_time_limit:
            raise SettingsError("TASK_SOFT_TIME_LIMIT must be below TASK_TIME_LIMIT")
        if self.visibility_timeout <= self.task_time_limit:
            raise SettingsError("VISIBILITY_TIMEOUT must be longer than TASK_TIME_LIMIT")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise SettingsError("DEVICE must be auto, cpu, cuda or cuda:N")
        if self.dtype not in ("auto", "float16", "float32", "bfloat16"):
            raise SettingsError("DTYPE must be auto, float16, bfloat16 or float32")

    @property
    def model_path(self) -> str:
        """What the worker passes to ``from_pretrained``: ``MODEL_ID`` or the local model."""
        return self.model_id or self.model_dir

    def to_env(self) -> dict[str, str]:
        """The environment that rebuilds these settings in another process."""
        env: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, tuple):
                text = ",".join(str(item) for item in value)
            else:
                text = str(value)
            env[f.name.upper()] = text
        return env

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and checked."""
        settings = dataclasses.replace(self, **changes)
        settings.check()
        return settings


_DEFAULTS = Settings()

ENV_NAMES: tuple[str, ...] = tuple(f.name.upper() for f in dataclasses.fields(Settings))


def _parse(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is tuple:
            return tuple(int(part) for part in raw.replace(" ", "").split(",") if part)
        return kind(raw)
    except ValueError as exc:
        raise SettingsError(f"{name.upper()}: cannot read {raw!r} as {kind.__name__}") from exc
