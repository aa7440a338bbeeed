"""What a run is made of: the images of a pipeline call, the calls that ran, and the runner's
two-method protocol (any ``RUNNER`` class provides it)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from shared.schema import GenerationParams
from shared.settings import Settings

StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class BatchItem:
    """One image of a pipeline call: its job's prompts and init image, and its own seed.

    Consecutive items with the same ``job`` are decoded together, as the job alone would be.
    """

    prompt: str
    negative_prompt: str | None
    image: Image.Image
    seed: int
    job: str = ""


def job_items(
    params: GenerationParams, image: Image.Image, seeds: Iterable[int], job: str = ""
) -> list[BatchItem]:
    """The items of one job: its prompt and image once per sample, seed + i for sample i."""
    return [BatchItem(params.prompt, params.negative_prompt, image, seed, job) for seed in seeds]


@dataclass(frozen=True)
class Call:
    """A pipeline call that ran: its images and the jobs they belong to."""

    images: int
    jobs: int


@dataclass(frozen=True)
class BatchOutput:
    """The images of a batch, one per item, and the pipeline calls that made them: one,
    unless the batch was cut to warmed sizes or split after running out of memory."""

    images: list[Image.Image]
    calls: list[Call]


class BatchFailed(Exception):
    """A batch that failed after some of its calls ran (``calls``); the failure is ``__cause__``.
    A batch that fails before any call finished raises the failure itself."""

    def __init__(self, cause: BaseException, calls: Sequence[Call]) -> None:
        super().__init__(str(cause))
        self.calls = list(calls)


class Runner(Protocol):
    def load(self) -> None: ...

    def run_batch(
        self, params: GenerationParams, items: Sequence[BatchItem], on_step: StepCallback
    ) -> BatchOutput:
        """Pipeline calls with the shape of ``params`` (size, steps, strength, scheduler,
        guidance); prompts, images and seeds come from ``items``, one output per item.
        Raises :class:`BatchFailed` when a call fails after others ran."""
        ...


class RunAbandoned(RuntimeError):
    """Stops a job whose caller no longer waits for it."""


def load_runner_class(path: str) -> Callable[[Settings], Runner]:
    """Import ``module:Class`` named by the ``RUNNER`` setting."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"RUNNER must look like module:Class, got {path!r}")
    factory: Callable[[Settings], Runner] = getattr(importlib.import_module(module_name), attr)
    return factory
