"""The job record and its statuses."""

from __future__ import annotations

import enum
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from shared.schema import OUTPUT_EXTENSIONS, OUTPUT_MEDIA_TYPES, GenerationParams


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


def shape_key(params: GenerationParams) -> str:
    """What jobs must share to run in one pipeline call (prompts and seeds may differ).

    A missing negative prompt is the empty one (diffusers encodes ``None`` as ``""``), so it
    is not part of the shape.
    """
    return (
        f"{params.img_width}x{params.img_height}:{params.num_inference_steps}:{params.strength!r}"
        f":{params.guidance_scale!r}:{params.scheduler}"
    )


# Job ids are uuid4 hex: exactly this shape, so a crafted id never reaches a Redis key.
JOB_ID_SHAPE = re.compile(r"[0-9a-f]{32}")


def new_job_id() -> str:
    return uuid.uuid4().hex


def is_job_id(text: str) -> bool:
    return JOB_ID_SHAPE.fullmatch(text) is not None


def input_key(job_id: str) -> str:
    return f"jobs/{job_id}/input"


def output_key(job_id: str, index: int, output_format: str = "jpeg") -> str:
    return f"jobs/{job_id}/{index}.{OUTPUT_EXTENSIONS[output_format]}"


def output_media_type(key: str) -> str:
    """The media type of an output, from its object name (:func:`output_key`)."""
    extension = key.rsplit(".", 1)[-1]
    formats = {ext: fmt for fmt, ext in OUTPUT_EXTENSIONS.items()}
    return OUTPUT_MEDIA_TYPES[formats.get(extension, "jpeg")]


@dataclass(frozen=True)
class Job:
    """A job as stored in Redis. Times are Unix seconds; ``None`` until they happen."""

    id: str
    status: JobStatus
    params: GenerationParams
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    seeds: tuple[int, ...] = ()
    outputs: tuple[str, ...] = ()
    error: str | None = None
    progress_step: int = 0
    progress_total: int = 0
    generation_time: float | None = None
    worker: str | None = None
    attempts: int = 0
    webhook: str | None = None
    cancel_requested: bool = False
    owner: str = ""
    cost_milli: int = 0
    refunded: bool = False
    batch_id: str | None = None
    batch_started_at: float | None = None

    @classmethod
    def from_hash(cls, data: Mapping[str, str]) -> Job:
        """Read the Redis hash written by :class:`shared.store.jobs.Jobs`."""
        return cls(
            id=data["id"],
            status=JobStatus(data["status"]),
            params=GenerationParams.from_dict(json.loads(data["params"])),
            created_at=float(data["created_at"]),
            started_at=_opt_float(data.get("started_at")),
            finished_at=_opt_float(data.get("finished_at")),
            seeds=tuple(json.loads(data.get("seeds") or "[]")),
            outputs=tuple(json.loads(data.get("outputs") or "[]")),
            error=data.get("error") or None,
            progress_step=int(data.get("progress_step") or 0),
            progress_total=int(data.get("progress_total") or 0),
            generation_time=_opt_float(data.get("generation_time")),
            worker=data.get("worker") or None,
            attempts=int(data.get("attempts") or 0),
            webhook=data.get("webhook") or None,
            cancel_requested=data.get("cancel_requested") == "1",
            owner=data.get("owner", ""),
            cost_milli=int(data.get("cost") or 0),
            refunded=data.get("refunded") == "1",
            batch_id=data.get("batch_id") or None,
            batch_started_at=_opt_float(data.get("batch_started_at")),
        )

    @property
    def queue_seconds(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.created_at

    @property
    def run_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


def _opt_float(raw: str | None) -> float | None:
    return None if raw in (None, "") else float(raw)
