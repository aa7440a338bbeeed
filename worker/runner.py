"""The model runner: loads the pipeline once per process and runs many jobs on it.

A runner's lifecycle is explicit: ``load()`` once (the worker reports ready only after
it returns), then ``run()`` for each job. Another runner can be named with the
``RUNNER`` setting (``module:Class``) as long as it has the same two methods.
"""

from __future__ import annotations

import importlib
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (
    StableDiffusionImg2ImgPipeline,
)
from PIL import Image

from shared.schema import GenerationParams
from shared.settings import Settings
from worker.schedulers import make_scheduler

log = logging.getLogger(__name__)

# Diffusers warns whenever num_images_per_prompt > 1 meets a single init image, which is
# exactly how one job's samples share one batch; the duplication it warns about is intended.
warnings.filterwarnings("ignore", message=r"You have passed \d+ text prompts", category=FutureWarning)

StepCallback = Callable[[int, int], None]


class Runner(Protocol):
    def load(self) -> None: ...

    def run(
        self,
        params: GenerationParams,
        image: Image.Image,
        seeds: Sequence[int],
        on_step: StepCallback,
    ) -> list[Image.Image]: ...


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtype: torch.dtype = getattr(torch, setting)
    return dtype


class DiffusersRunner:
    """``StableDiffusionImg2ImgPipeline`` on one device; all samples of a job in one call."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self._pipe: StableDiffusionImg2ImgPipeline | None = None
        self._scheduler_config: Any = None

    @property
    def pipe(self) -> StableDiffusionImg2ImgPipeline:
        if self._pipe is None:
            raise RuntimeError("the runner is not loaded")
        return self._pipe

    def load(self) -> None:
        started = time.monotonic()
        if self.settings.torch_threads > 0:
            torch.set_num_threads(self.settings.torch_threads)
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
            self.settings.model_path,
            dtype=self.dtype,
            safety_checker=None,
            requires_safety_checker=False,
        )
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)  # type: ignore[no-untyped-call]
        self._scheduler_config = pipe.scheduler.config
        self._pipe = pipe
        self._warm_up()
        log.info(
            "loaded %s on %s (%s) in %.1fs",
            self.settings.model_path,
            self.device,
            self.dtype,
            time.monotonic() - started,
        )

    def _warm_up(self) -> None:
        """One short call per allowed square size, so the first job pays no one-time set-up."""
        for size in self.settings.allowed_sizes:
            image = Image.new("RGB", (size, size), (127, 127, 127))
            with torch.inference_mode():
                self.pipe(
                    prompt="warm-up",
                    image=image,
                    strength=0.5,
                    num_inference_steps=2,
                    generator=self.generators([0]),
                    output_type="pil",
                )

    def generators(self, seeds: Sequence[int]) -> list[torch.Generator]:
        """One generator per sample, so sample i is reproducible alone with seed + i."""
        return [torch.Generator(device=self.device).manual_seed(seed) for seed in seeds]

    def run(
        self,
        params: GenerationParams,
        image: Image.Image,
        seeds: Sequence[int],
        on_step: StepCallback,
    ) -> list[Image.Image]:
        pipe = self.pipe
        pipe.scheduler = make_scheduler(params.scheduler, self._scheduler_config)
        total = params.denoising_steps

        def step_end(_pipe: Any, step: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            on_step(step + 1, total)
            return kwargs

        with torch.inference_mode():
            result = pipe(
                prompt=params.prompt,
                image=image,
                strength=params.strength,
                num_inference_steps=params.num_inference_steps,
                guidance_scale=params.guidance_scale,
                negative_prompt=params.negative_prompt,
                num_images_per_prompt=len(seeds),
                generator=self.generators(seeds),
                output_type="pil",
                callback_on_step_end=step_end,
                callback_on_step_end_tensor_inputs=[],
            )
        images: list[Image.Image] = result.images
        return images


def load_runner_class(path: str) -> Callable[[Settings], Runner]:
    """Import ``module:Class`` named by the ``RUNNER`` setting."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"RUNNER must look like module:Class, got {path!r}")
    factory: Callable[[Settings], Runner] = getattr(importlib.import_module(module_name), attr)
    return factory
