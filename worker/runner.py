"""The model runner: loads the pipeline once per process and runs many jobs on it.

A runner's lifecycle is explicit: ``load()`` once (the worker reports ready only after
it returns, and it returns only after the warm-up), then ``run_batch()`` for each pipeline
call: one job's samples, or the images of several jobs of one shape (worker/batching.py).
Another runner can be named with the ``RUNNER`` setting (``module:Class``) as long as it
has the same two methods.

All device work (load, warm-up, every job) runs on one thread owned by the runner:
CUDA graphs recorded by ``torch.compile`` belong to the thread that recorded them, so the
thread that warms them up must be the one that replays them. A caller that stops
waiting (a time limit) abandons its job, which then stops at its next step.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (
    StableDiffusionImg2ImgPipeline,
)
from PIL import Image

from shared.schema import MAX_SAMPLES, GenerationParams
from shared.settings import Settings
from worker import fastpath
from worker.fastpath import FastPath
from worker.runs import BatchFailed, BatchItem, BatchOutput, Call, RunAbandoned, StepCallback, job_items
from worker.schedulers import Schedulers

log = logging.getLogger(__name__)

# Diffusers warns whenever num_images_per_prompt > 1 meets a single init image, which is
# exactly how one job's samples share one batch; the duplication it warns about is intended.
warnings.filterwarnings("ignore", message=r"You have passed \d+ text prompts", category=FutureWarning)

T = TypeVar("T")


def resolve_device(setting: str) -> torch.device:
    """The device ``DEVICE`` names. ``cuda`` (or ``cuda:N``) without a usable GPU is a load
    failure, never a silent run on the CPU: ``auto`` is the only setting that falls back."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"DEVICE={setting} but CUDA is not usable here (no GPU, or a driver older than this "
            f"torch build's CUDA {torch.version.cuda}); refusing to run on the CPU"
        )
    return device


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtype: torch.dtype = getattr(torch, setting)
    return dtype


def step_progress(iteration: int, iterations: int, total: int) -> int:
    """Denoising step reached after loop ``iteration`` (0-based) of ``iterations``.

    Second-order schedulers (Heun, DPM2) run about two loop iterations per step.
    """
    if iterations <= 0:
        return total
    return min(total, math.ceil((iteration + 1) * total / iterations))


class DiffusersRunner:
    """``StableDiffusionImg2ImgPipeline`` on one device; one call per batch of images."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.fast = FastPath.resolve(settings, self.device)
        self._pipe: StableDiffusionImg2ImgPipeline | None = None
        self._schedulers: Schedulers | None = None
        self._device_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runner")
        self._device_ident: int | None = None
        self.load_seconds = 0.0
        self.warmup_seconds = 0.0
        self.warmup_calls = 0
        # Images per call that need no compile: every count up to the largest call, unless
        # a compiled warm-up covers fewer (calls are then cut to these sizes).
        self.call_sizes = fastpath.call_sizes(settings, self.fast)
        self._graphs_after_warmup: int | None = None

    @property
    def pipe(self) -> StableDiffusionImg2ImgPipeline:
        if self._pipe is None:
            raise RuntimeError("the runner is not loaded")
        return self._pipe

    def load(self) -> None:
        self._on_device_thread(self._load)

    def close(self) -> None:
        """Drop the pipeline and stop the device thread (benchmarks load several runners)."""
        self._pipe = None
        self._device_thread.shutdown(wait=True)

    def _on_device_thread(self, fn: Callable[..., T], *args: Any) -> T:
        if threading.get_ident() == self._device_ident:
            return fn(*args)
        return self._device_thread.submit(fn, *args).result()

    def _load(self) -> None:
        self._device_ident = threading.get_ident()
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
        if pipe.unet.dtype != self.dtype:  # a diffusers release that predates ``dtype`` ignored it
            pipe = pipe.to(dtype=self.dtype)
        check_dtype(pipe, self.dtype)
        pipe.set_progress_bar_config(disable=True)  # type: ignore[no-untyped-call]
        fastpath.apply(pipe, self.fast)
        self._schedulers = Schedulers(pipe.scheduler.config)
        self._pipe = pipe
        self._warm_up()
        if self.fast.compile:
            self._graphs_after_warmup = fastpath.graphs_compiled()
        self.load_seconds = time.monotonic() - started
        log.info(
            "loaded %s on %s (%s; %s) in %.1fs, warm-up %.1fs",
            self.settings.model_path,
            self.device,
            self.dtype,
            self.fast.describe(),
            self.load_seconds,
            self.warmup_seconds,
        )

    def _warm_up(self) -> None:
        """Run every shape the service accepts (see :func:`fastpath.warmup_plan`) once now."""
        plan = fastpath.warmup_plan(self.settings.allowed_sizes, self.fast, self.call_sizes)
        if self.fast.compile:
            fastpath.allow_graphs(len(plan) + 8)
        started = time.monotonic()
        for call in plan:
            params = GenerationParams(
                prompt="warm-up",
                negative_prompt=None,
                samples=min(call.images, MAX_SAMPLES),
                scheduler="DDIM",
                num_inference_steps=call.num_inference_steps,
                guidance_scale=call.guidance_scale,
                strength=call.strength,
                seed=0,
                img_width=call.width,
                img_height=call.height,
                base64=False,
            )
            image = Image.new("RGB", (call.width, call.height), (127, 127, 127))
            # Jobs of at most MAX_SAMPLES images, as batching builds them: the VAE decodes
            # each job alone, so its batches are warmed at the sizes requests decode.
            items = [
                BatchItem(params.prompt, None, image, i, job=f"warm-up-{i // MAX_SAMPLES}")
                for i in range(call.images)
            ]
            self._generate(params, items, _no_progress, threading.Event())
        self.warmup_calls = len(plan)
        self.warmup_seconds = time.monotonic() - started

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
        """One job alone: all its samples in one call."""
        return self.run_batch(params, job_items(params, image, seeds), on_step).images

    def run_batch(
        self, params: GenerationParams, items: Sequence[BatchItem], on_step: StepCallback
    ) -> BatchOutput:
        abandoned = threading.Event()
        try:
            return self._on_device_thread(self._run_calls, params, items, on_step, abandoned)
        except BaseException:
            abandoned.set()  # the caller gave up (or the job failed): stop at the next step
            raise

    def _run_calls(
        self,
        params: GenerationParams,
        items: Sequence[BatchItem],
        on_step: StepCallback,
        abandoned: threading.Event,
    ) -> BatchOutput:
        """The batch in calls of warmed sizes; a call that runs out of GPU memory is split
        in two halves (down to one image), each retried once the failed call's memory is
        released. One generator per image keeps every image the same whichever call makes it."""
        pending = self._cut(list(items))  # next call last
        images: list[Image.Image] = []
        calls: list[Call] = []
        while pending:
            part = pending.pop()
            try:
                images += self._checked(self._generate(params, part, on_step, abandoned), part)
                calls.append(Call(len(part), len({item.job for item in part})))
                continue
            except Exception as exc:
                if not is_out_of_memory(exc) or len(part) == 1:
                    if calls:
                        raise BatchFailed(exc, calls) from exc
                    raise
            # Out of memory. Outside the except block, the failed call's frames (and the
            # tensors they hold) are gone with its traceback; collect cycles, then free.
            release_memory()
            half = len(part) // 2
            log.warning(
                "out of GPU memory at %d images; retrying as %d + %d", len(part), half, len(part) - half
            )
            pending += [part[half:], part[:half]]
        return BatchOutput(images, calls)

    def _cut(self, items: list[BatchItem]) -> list[list[BatchItem]]:
        """``items`` as calls of warmed sizes, the largest first, in reverse order (a stack)."""
        calls: list[list[BatchItem]] = []
        while items:
            size = max(n for n in self.call_sizes if n <= len(items))
            calls.append(items[:size])
            items = items[size:]
        return calls[::-1]

    def _checked(self, images: list[Image.Image], items: Sequence[BatchItem]) -> list[Image.Image]:
        if len(images) != len(items):
            raise RuntimeError(f"the pipeline returned {len(images)} images for {len(items)} samples")
        if self._graphs_after_warmup is not None and fastpath.graphs_compiled() > self._graphs_after_warmup:
            self._graphs_after_warmup = fastpath.graphs_compiled()
            log.warning("a call of %d images compiled a graph the warm-up did not cover", len(items))
        return images

    def _generate(
        self,
        params: GenerationParams,
        items: Sequence[BatchItem],
        on_step: StepCallback,
        abandoned: threading.Event,
    ) -> list[Image.Image]:
        """One pipeline call (on the device thread)."""
        pipe = self.pipe
        if self._schedulers is None:
            raise RuntimeError("the runner is not loaded")
        scheduler = self._schedulers.make(params.scheduler)
        pipe.scheduler = fastpath.prepare_scheduler(scheduler, params.scheduler, self.fast)
        total = params.denoising_steps

        # Called by the pipeline after every loop iteration. It reports plain integers and
        # never touches a tensor, so it adds no host-device synchronisation to the loop.
        def step_end(_pipe: Any, iteration: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if abandoned.is_set():
                raise RunAbandoned("the caller stopped waiting for this job")
            on_step(step_progress(iteration, pipe.num_timesteps, total), total)
            return kwargs

        # Lists, one entry per image: prompts, init images and generators. Diffusers encodes
        # a missing negative prompt as "", so "" stands in for it next to images that have one.
        negatives = [item.negative_prompt for item in items]
        with torch.inference_mode():
            result = pipe(
                prompt=[item.prompt for item in items],
                image=[item.image for item in items],
                strength=params.strength,
                num_inference_steps=params.num_inference_steps,
                guidance_scale=params.guidance_scale,
                negative_prompt=None if all(n is None for n in negatives) else [n or "" for n in negatives],
                num_images_per_prompt=1,
                generator=self.generators([item.seed for item in items]),
                output_type="latent",
                callback_on_step_end=step_end,
                callback_on_step_end_tensor_inputs=[],
            )
            return self._decode(result.images, items)

    def _decode(self, latents: torch.Tensor, items: Sequence[BatchItem]) -> list[Image.Image]:
        """Decode each job's latents in a call of their own, as the pipeline decodes a job
        alone: the VAE rounds differently at other batch sizes, and this keeps a batched
        job's images closest to its images alone."""
        pipe = self.pipe
        images: list[Image.Image] = []
        start = 0
        while start < len(items):
            end = start + 1
            while end < len(items) and items[end].job == items[start].job:
                end += 1
            scaled = latents[start:end] / pipe.vae.config.scaling_factor
            decoded = pipe.vae.decode(scaled, return_dict=False)[0]
            images += pipe.image_processor.postprocess(
                decoded, output_type="pil", do_denormalize=[True] * (end - start)
            )
            start = end
        return images


def _no_progress(_step: int, _total: int) -> None:
    return None


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def release_memory() -> None:
    """Free what a failed call left: unreachable cycles first, then CUDA's cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_dtype(pipe: StableDiffusionImg2ImgPipeline, dtype: torch.dtype) -> None:
    """Refuse a pipeline whose UNet, VAE or text encoder is not in ``dtype``."""
    for name in ("unet", "vae", "text_encoder"):
        module: torch.nn.Module = getattr(pipe, name)
        found = {p.dtype for p in module.parameters()}
        if found != {dtype}:
            raise RuntimeError(f"the {name} loaded as {sorted(map(str, found))}, not {dtype}")
