from __future__ import annotations

import pytest

from shared.celery_app import celery_config
from shared.settings import ENV_NAMES, Settings, SettingsError


def test_reads_the_environment() -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://r:1/2",
            "ALLOWED_SIZES": "512, 640",
            "S3_CREATE_BUCKET": "false",
            "SYNC_WAIT_SECONDS": "2.5",
            "MODEL_ID": "org/sd15",
        }
    )
    assert settings.redis_url == "redis://r:1/2"
    assert settings.allowed_sizes == (512, 640)
    assert settings.s3_create_bucket is False
    assert settings.sync_wait_seconds == 2.5
    assert settings.model_path == "org/sd15"


def test_round_trips_through_the_environment() -> None:
    settings = Settings(queue_name="q", allowed_sizes=(512,), s3_create_bucket=False, jpeg_quality=80)
    assert Settings.from_env(settings.to_env()) == settings
    assert set(settings.to_env()) == set(ENV_NAMES)


@pytest.mark.parametrize(
    "env",
    [
        {"SAMPLES": "x", "TASK_TIME_LIMIT": "ten"},
        {"TASK_SOFT_TIME_LIMIT": "400", "TASK_TIME_LIMIT": "300"},
        {"VISIBILITY_TIMEOUT": "100"},
        {"ALLOWED_SIZES": "500"},
        {"DEVICE": "tpu"},
        {"S3_CREATE_BUCKET": "maybe"},
    ],
)
def test_refuses_unusable_values(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(env)


def test_celery_delivery_settings() -> None:
    settings = Settings(task_soft_time_limit=100, task_time_limit=120, visibility_timeout=600)
    conf = celery_config(settings)
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_soft_time_limit"] == 100
    assert conf["task_time_limit"] == 120
    assert conf["broker_transport_options"]["visibility_timeout"] == 600 > conf["task_time_limit"]


@pytest.mark.parametrize(
    "changes",
    [{"dtype": "float8"}, {"torch_compile": "yes"}, {"compile_mode": "fastest"}, {"warmup": "some"}],
)
def test_choices_are_checked_however_settings_are_built(changes: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings(**changes)  # type: ignore[arg-type]
    with pytest.raises(SettingsError):
        Settings().replace(**changes)
    with pytest.raises(SettingsError):
        Settings.from_env({name.upper(): value for name, value in changes.items()})
