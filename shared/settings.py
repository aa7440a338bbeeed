"""One settings object, read from the environment once at start and passed down.

Modules never read ``os.environ`` themselves: the app factory and the worker entry
build a :class:`Settings` with :meth:`Settings.from_env` and hand it on.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

from shared.schema import MAX_SAMPLES

Switch = Literal["auto", "on", "off"]
DType = Literal["auto", "float16", "bfloat16", "float32"]
CompileMode = Literal["auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
Warmup = Literal["auto", "full", "cfg", "basic", "off"]
Environment = Literal["development", "production"]


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
    # Synchronous waits one gateway process holds at once per key and per job (api/syncwaits.py).
    max_sync_waits_per_key: int = 256
    max_sync_waits_per_job: int = 32
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    # The gateway decodes inputs within these bounds per process (api/decodes.py).
    decode_budget_pixels: int = 2 * 4096 * 4096
    max_decodes_per_key: int = 4
    max_prompt_chars: int = 2000
    jpeg_quality: int = 90
    # Absolute URLs: PUBLIC_URL (required in production), else the request's host, with
    # forwarded headers believed only from TRUSTED_PROXIES (api/proxies.py).
    environment: Environment = "development"
    public_url: str = ""
    trusted_proxies: str = ""
    # The operator page (/ops) answers only with this token (Bearer); unset: the page is off.
    ops_token: str = ""
    idempotency_ttl_seconds: int = 24 * 3600

    # Webhooks, delivered by a separate worker (never the GPU worker).
    webhook_queue: str = "img2img-webhooks"
    webhook_secret: str = ""
    webhook_max_attempts: int = 5
    webhook_backoff_seconds: float = 2.0
    webhook_timeout_seconds: float = 10.0
    webhook_allow: str = ""
    result_cache_seconds: int = 120
    # Inputs travel through Redis (the gateway writes nothing to S3); once the worker has
    # stored the input in S3 the Redis copy lives this long (0: dropped at once).
    input_cache_seconds: int = 300

    # Image URLs in the ``image`` field (shared/fetch.py).
    image_url_enabled: bool = True
    image_url_public: bool = True
    image_url_allow: str = ""
    image_url_connect_timeout: float = 5.0
    image_url_timeout: float = 20.0
    image_url_max_redirects: int = 3

    # Keys, credits and limits.
    auth_enabled: bool = True
    price_per_job: float = 0.0
    price_per_step: float = 0.01
    rate_limit_per_minute: int = 120
    # Reads (polls, images, listings) have their own window per key (api/auth.py).
    read_rate_limit_per_minute: int = 1200
    max_queue_depth: int = 1000
    # Waiting jobs per worker the autoscaler aims at (shared/scaling.py, /ops/scaling).
    scale_jobs_per_worker: int = 2

    # Worker.
    model_id: str = ""
    model_dir: str = "var/models/tiny"
    device: str = "auto"
    dtype: DType = "auto"
    torch_threads: int = 0
    runner: str = "worker.runner:DiffusersRunner"
    task_soft_time_limit: int = 300
    task_time_limit: int = 360
    visibility_timeout: int = 900
    worker_heartbeat_seconds: float = 5.0
    worker_soft_shutdown_seconds: float = 60.0
    job_lease_seconds: float = 30.0
    max_job_attempts: int = 3
    sweep_interval_seconds: float = 5.0
    # A queued job whose message is in neither the queue nor a worker this long after it was
    # sent (or last seen there) is sent again (worker/sweeper.py).
    orphan_after_seconds: float = 30.0
    queued_deadline_seconds: int = 6 * 3600
    # A worker whose model is not loaded (and warm) this long after it started exits non-zero.
    load_timeout_seconds: float = 900.0
    # Cross-request batching (worker/batching.py): queued jobs of one shape share a pipeline
    # call of at most this many images; a job waits at most BATCH_WAIT_MS for partners.
    batch_max_images: int = 8
    batch_wait_ms: int = 30
    # Prometheus endpoint of each worker process (0: off); the launcher gives worker i port + i.
    worker_metrics_port: int = 0

    # Worker fast path (worker/fastpath.py). Switches take auto, on or off; auto means on for
    # CUDA and off on CPU, except SDPA attention, which auto turns on everywhere.
    sdpa_attention: Switch = "auto"
    channels_last: Switch = "auto"
    fuse_qkv: Switch = "auto"
    host_timesteps: Switch = "auto"
    torch_compile: Switch = "auto"
    compile_mode: CompileMode = "auto"  # auto: max-autotune on CUDA, default on CPU
    compile_backend: str = "inductor"
    warmup: Warmup = "auto"  # auto: full when compiling, basic otherwise
    # Images per pipeline call a compiled warm-up covers (empty: every count up to the
    # largest call); calls are cut to these sizes so that no request compiles.
    warmup_images: tuple[int, ...] = ()

    # Gateway under gunicorn's gevent worker (deploy/gunicorn.conf.py): each process holds up
    # to GATEWAY_CONNECTIONS clients at once, waiting ones included (a greenlet each).
    gateway_workers: int = 2
    gateway_connections: int = 2000

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
        return cls(**values)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse values outside a setting's choices, and combinations that would break the
        delivery guarantees; run however the settings are built."""
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
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise SettingsError(f"{name.upper()} must be one of {', '.join(choices)}")
        if not self.compile_backend:
            raise SettingsError("COMPILE_BACKEND must name a torch.compile backend")
        if not all(1 <= n <= self.largest_call for n in self.warmup_images):
            raise SettingsError("WARMUP_IMAGES must list image counts between 1 and the largest call")
        if self.image_url_connect_timeout <= 0 or self.image_url_timeout <= 0:
            raise SettingsError("IMAGE_URL_CONNECT_TIMEOUT and IMAGE_URL_TIMEOUT must be positive")
        if self.orphan_after_seconds <= 0 or self.load_timeout_seconds <= 0:
            raise SettingsError("ORPHAN_AFTER_SECONDS and LOAD_TIMEOUT_SECONDS must be positive")
        if self.batch_max_images < 1:
            raise SettingsError("BATCH_MAX_IMAGES must be at least 1 (1 turns batching off)")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise SettingsError("BATCH_WAIT_MS must be between 0 and 10000")
        if self.environment == "production":
            placeholders = [name.upper() for name in _SECRETS if PLACEHOLDER in getattr(self, name)]
            if placeholders:
                raise SettingsError(
                    f"{', '.join(placeholders)} still hold the placeholder {PLACEHOLDER!r}: set real secrets "
                    "(ENVIRONMENT=production refuses them)"
                )
        if self.public_url and not _PUBLIC_URL.match(self.public_url):
            raise SettingsError(
                "PUBLIC_URL must be an http(s) URL with no query, e.g. https://img.example.com"
            )
        for proxy in filter(None, (part.strip() for part in self.trusted_proxies.split(","))):
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError as exc:
                raise SettingsError(f"TRUSTED_PROXIES: {exc}") from exc
        if min(self.max_sync_waits_per_key, self.max_sync_waits_per_job, self.gateway_connections) < 1:
            raise SettingsError(
                "MAX_SYNC_WAITS_PER_KEY, MAX_SYNC_WAITS_PER_JOB and GATEWAY_CONNECTIONS must be positive"
            )
        if self.scale_jobs_per_worker < 1:
            raise SettingsError("SCALE_JOBS_PER_WORKER must be at least 1")
        if self.decode_budget_pixels < 1 or self.max_decodes_per_key < 1:
            raise SettingsError("DECODE_BUDGET_PIXELS and MAX_DECODES_PER_KEY must be at least 1")
        if self.image_url_max_redirects < 0:
            raise SettingsError("IMAGE_URL_MAX_REDIRECTS must not be negative")

    @property
    def largest_call(self) -> int:
        """The most images one pipeline call can hold: a full batch, or one job's samples."""
        return max(self.batch_max_images, MAX_SAMPLES)

    @property
    def worker_fresh_seconds(self) -> float:
        """How recent a worker's heartbeat must be for it to count as ready."""
        return self.worker_heartbeat_seconds * 3

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
        return dataclasses.replace(self, **changes)


# The secret value the deployment files ship with; production refuses to start with it.
PLACEHOLDER = "change-me"
_SECRETS = ("s3_secret_access_key", "s3_access_key_id", "webhook_secret", "ops_token", "redis_url")

_PUBLIC_URL = re.compile(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", re.ASCII)

# The settings typed as a choice (``Literal``) and their choices.
_CHOICES: dict[str, tuple[str, ...]] = {
    name: get_args(hint) for name, hint in get_type_hints(Settings).items() if get_origin(hint) is Literal
}

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
