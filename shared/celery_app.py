"""The Celery application both sides build from settings.

The gateway only sends tasks by name (it never imports worker code); the worker
registers the task on the same configuration.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from shared.settings import Settings

RUN_JOB_TASK = "img2img.run_job"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Delivery settings: a job is acknowledged only after it ran, and requeued if its worker dies."""
    return {
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        # Unacknowledged messages come back after this; it must exceed the hard time limit.
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout},
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        # A broker blip must not kill the pool process that holds the model (and its
        # compiled graphs): the running job goes on, and its final transition is fenced.
        # Its late acknowledgement is lost with the old connection, so the message comes
        # back after the visibility timeout, and its claim finds the job finished.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # SIGTERM (warm shutdown) lets the running job finish. On a cold shutdown (SIGQUIT,
        # or a second SIGTERM/SIGINT) keep running it this long before requeueing it; an
        # idle worker stops at once.
        "worker_soft_shutdown_timeout": settings.worker_soft_shutdown_seconds,
        "worker_enable_soft_shutdown_on_idle": False,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "task_ignore_result": True,
        "task_default_queue": settings.queue_name,
        "task_routes": {RUN_JOB_TASK: {"queue": settings.queue_name}},
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_send_task_events": False,
    }


def make_celery(settings: Settings) -> Celery:
    app = Celery("img2img", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app
