"""The fast path: switches, warm-up plan, input layout, equality with the plain pipeline,
torch.compile without recompiles, and a device thread that never hides a failure."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionImg2ImgPipeline
from diffusers.models.attention_processor import FusedAttnProcessor2_0
from PIL import Image

from shared.images import prepare_image
from shared.schema import SCHEDULERS, GenerationParams
from shared.settings import Settings, SettingsError
from tests.helpers import REFERENCE, sample_image
from worker import fastpath
from worker.fastpath import FastPath
from worker.runner import DiffusersRunner, step_progress
from worker.schedulers import make_scheduler

# The fast path against the plain pipeline, uint8 pixels, tiny model in float32 on CPU.
# Measured: max 1, mean < 0.0001 eager and with aot_eager; max 1, mean 0.002 with inductor.
MAX_PIXEL_DIFF = 2
MEAN_PIXEL_DIFF = 0.02

# One CPU thread: the images do not depend on it, and two OpenMP threads stall badly when
# the machine's cores are busy with other work.
THREADS = 1
CPU = torch.device("cpu")
CUDA = torch.device("cuda")
FAST_SWITCHES = {"channels_last": "on", "fuse_qkv": "on", "host_timesteps": "on"}


def reference_params(**changes: object) -> GenerationParams:
    return GenerationParams.from_dict({**REFERENCE, **changes})


def reference_image() -> Image.Image:
    return prepare_image(Image.open(io.BytesIO(sample_image())), 512, 512)


def seeds(samples: int) -> list[int]:
    return [int(str(REFERENCE["seed"])) + i for i in range(samples)]


def cpu_settings(model: Path, **changes: object) -> Settings:
    return Settings(model_dir=str(model), device="cpu", torch_threads=THREADS, allowed_sizes=(512,)).replace(
        **changes
    )


def assert_close(got: list[Image.Image], expected: list[Image.Image]) -> None:
    assert len(got) == len(expected)
    for ours, plain in zip(got, expected, strict=True):
        diff = np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(plain, dtype=np.int16))
        assert diff.max() <= MAX_PIXEL_DIFF, f"max pixel difference {diff.max()}"
        assert diff.mean() <= MEAN_PIXEL_DIFF, f"mean pixel difference {diff.mean()}"


@pytest.fixture(scope="module")
def plain_images(tiny_model: Path) -> Iterator[Callable[[int], list[Image.Image]]]:
    """The reference request through a bare diffusers pipeline, per sample count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        tiny_model, dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    cache: dict[int, list[Image.Image]] = {}

    def images(samples: int) -> list[Image.Image]:
        if samples not in cache:
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
            cache[samples] = pipe(
                prompt=REFERENCE["prompt"],
                negative_prompt=REFERENCE["negative_prompt"],
                image=reference_image(),
                strength=REFERENCE["strength"],
                num_inference_steps=REFERENCE["num_inference_steps"],
                guidance_scale=REFERENCE["guidance_scale"],
                num_images_per_prompt=samples,
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds(samples)],
            ).images
        return cache[samples]

    yield images
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fast_runner(tiny_model: Path) -> Iterator[DiffusersRunner]:
    """The eager fast path: channels_last, fused QKV and host timesteps, no compile."""
    runner = DiffusersRunner(cpu_settings(tiny_model, **FAST_SWITCHES))
    runner.load()
    yield runner
    runner.close()


def test_auto_turns_the_fast_path_on_for_cuda_only() -> None:
    on_cpu = FastPath.resolve(Settings(), CPU)
    assert (on_cpu.sdpa, on_cpu.channels_last, on_cpu.fuse_qkv, on_cpu.host_timesteps, on_cpu.compile) == (
        True,
        False,
        False,
        False,
        False,
    )
    assert (on_cpu.compile_mode, on_cpu.warmup) == ("default", "basic")
    on_cuda = FastPath.resolve(Settings(), CUDA)
    assert on_cuda.sdpa and on_cuda.channels_last and on_cuda.fuse_qkv and on_cuda.host_timesteps
    assert on_cuda.compile and on_cuda.cudagraphs
    assert (on_cuda.compile_mode, on_cuda.warmup) == ("max-autotune", "full")
    forced = FastPath.resolve(Settings(torch_compile="on", channels_last="on", sdpa_attention="off"), CPU)
    assert forced.compile and forced.channels_last and not forced.sdpa and forced.warmup == "full"
    assert not FastPath.resolve(Settings(torch_compile="off"), CUDA).compile


@pytest.mark.parametrize(
    "env",
    [
        {"CHANNELS_LAST": "yes"},
        {"TORCH_COMPILE": "true"},
        {"COMPILE_MODE": "fastest"},
        {"WARMUP": "some"},
        {"WARMUP_IMAGES": "0"},
        {"WARMUP_IMAGES": "1,9"},  # larger than the largest call (BATCH_MAX_IMAGES 8)
    ],
)
def test_settings_refuse_unknown_fast_path_values(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(env)


def test_full_warm_up_covers_every_call_batching_can_build() -> None:
    sizes = (512, 768)
    settings = Settings(torch_compile="on", compile_mode="default", batch_max_images=8)
    full = FastPath.resolve(settings, CPU)
    calls = fastpath.call_sizes(settings, full)
    assert calls == tuple(range(1, 9))  # every count up to BATCH_MAX_IMAGES: nothing is cut
    plan = fastpath.warmup_plan(sizes, full, calls)
    # 1..8 images with guidance (UNet batch 2..16) and without (guidance <= 1: batch 1..8).
    assert fastpath.unet_batches(plan) == {
        (w, h, b) for w in sizes for h in sizes for b in (*range(1, 9), 10, 12, 14, 16)
    }
    assert {(c.width, c.height, c.images) for c in plan if c.guidance_scale > 1} == {
        (w, h, n) for w in sizes for h in sizes for n in range(1, 9)
    }
    assert len(plan) == len({(c.width, c.height, c.images, c.guidance_scale) for c in plan}) == 48
    # Batching off: one job's samples are still one call of up to four images.
    assert fastpath.call_sizes(settings.replace(batch_max_images=1), full) == (1, 2, 3, 4)

    narrowed = settings.replace(warmup="cfg", warmup_images=(4, 2), compile_mode="auto")
    guided = FastPath.resolve(narrowed, CUDA)
    assert guided.cudagraphs
    assert fastpath.call_sizes(narrowed, guided) == (1, 2, 4)  # calls are cut to these; 1 always
    twice = fastpath.warmup_plan((512,), guided, (1,))
    assert len(twice) == 2 and twice[0] == twice[1]  # CUDA graphs are recorded on the second call
    assert fastpath.unet_batches(twice) == {(512, 512, 2)}

    eager = Settings()
    basic = fastpath.warmup_plan(sizes, FastPath.resolve(eager, CPU), (1,))
    assert [(c.width, c.height, c.images) for c in basic] == [(512, 512, 1), (768, 768, 1)]
    assert fastpath.call_sizes(eager, FastPath.resolve(eager, CPU)) == tuple(range(1, 9))
    assert fastpath.warmup_plan(sizes, FastPath.resolve(Settings(warmup="off"), CPU), (1,)) == []


def test_inputs_get_one_canonical_layout_per_shape() -> None:
    x = torch.randn(1, 4, 8, 8)
    assert fastpath.canonical(x, torch.contiguous_format) is x
    # Contiguous, yet its size-1 batch dimension carries another stride: a compiled graph
    # guards on it, so it is copied to the canonical layout.
    odd = torch.as_strided(torch.randn(1024), (1, 4, 8, 8), (999, 64, 8, 1))
    assert odd.is_contiguous()
    fixed = fastpath.canonical(odd, torch.contiguous_format)
    assert fixed.stride() == (256, 64, 8, 1) and torch.equal(fixed, odd)
    last = fastpath.canonical(x, torch.channels_last)
    assert last.stride() == (256, 1, 32, 4) and torch.equal(last, x)
    assert fastpath.canonical(last, torch.channels_last) is last
    hidden = torch.randn(2, 77, 32)
    assert fastpath.canonical(hidden, torch.channels_last) is hidden


def test_timesteps_reach_the_unet_as_float32_tensors_on_its_device() -> None:
    for t in (torch.tensor(981), torch.tensor(981.0), torch.tensor(981.0, dtype=torch.float64), 981):
        out = fastpath.device_timestep(t, CPU)
        assert out.dtype == torch.float32 and out.dim() == 0 and out.device == CPU
        assert float(out) == 981.0


def test_host_timestep_schedulers_keep_their_per_step_state_on_the_host(tiny_model: Path) -> None:
    config = PNDMScheduler.from_pretrained(tiny_model, subfolder="scheduler").config
    fast = FastPath.resolve(Settings(host_timesteps="on"), CPU)
    meta = torch.device("meta")  # stands in for the GPU: anything but the host
    latents = torch.empty(1, 4, 8, 8, device=meta)
    for name in sorted(fastpath.HOST_TIMESTEP_SCHEDULERS):
        scheduler: Any = fastpath.prepare_scheduler(make_scheduler(name, config), name, fast)
        scheduler.set_timesteps(20, device=meta)
        scheduler.add_noise(latents, latents, scheduler.timesteps[:1].to(meta))
        assert scheduler.timesteps.device.type == "cpu", name
        assert scheduler.alphas_cumprod.device.type == "cpu", name
    stock: Any = make_scheduler("DDIM", config)  # without the fast path both move
    stock.set_timesteps(20, device=meta)
    stock.add_noise(latents, latents, stock.timesteps[:1])
    assert stock.timesteps.device.type == stock.alphas_cumprod.device.type == "meta"


def test_step_progress_maps_loop_iterations_to_denoising_steps() -> None:
    assert [step_progress(i, 4, 4) for i in range(4)] == [1, 2, 3, 4]
    # Heun: 7 loop iterations for 4 steps.
    assert [step_progress(i, 7, 4) for i in range(7)] == [1, 2, 2, 3, 3, 4, 4]


def test_fast_path_matches_the_plain_pipeline(
    fast_runner: DiffusersRunner, plain_images: Callable[[int], list[Image.Image]]
) -> None:
    pipe = fast_runner.pipe
    assert all(isinstance(p, FusedAttnProcessor2_0) for p in pipe.unet.attn_processors.values())
    assert all(isinstance(p, FusedAttnProcessor2_0) for p in pipe.vae.attn_processors.values())
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    steps: list[tuple[int, int]] = []
    images = fast_runner.run(
        reference_params(samples=2), reference_image(), seeds(2), lambda s, t: steps.append((s, t))
    )
    assert steps == [(i, 18) for i in range(1, 19)]
    assert_close(images, plain_images(2))


def test_compiled_runner_compiles_only_at_load_and_never_on_a_scheduler_switch(
    tiny_model: Path, plain_images: Callable[[int], list[Image.Image]]
) -> None:
    # aot_eager: dynamo captures each graph (guards, recompiles, fullgraph) and AOTAutograd
    # traces it; inductor's C++ build would take minutes on this CPU (bench/gpu.py runs it).
    settings = cpu_settings(
        tiny_model,
        torch_compile="on",
        compile_backend="aot_eager",
        warmup="cfg",
        warmup_images=(1,),
        **FAST_SWITCHES,
    )
    runner = DiffusersRunner(settings)
    before = fastpath.graphs_compiled()
    runner.load()
    try:
        assert runner.warmup_calls == 1
        # One static graph each for the UNet (batch 2), the VAE encoder and the decoder.
        assert fastpath.graphs_compiled() - before == 3
        loaded = fastpath.graphs_compiled()
        images = runner.run(reference_params(), reference_image(), seeds(1), lambda s, t: None)
        assert fastpath.graphs_compiled() == loaded, "a request paid a compile"
        assert_close(images, plain_images(1))
        for name in SCHEDULERS:
            params = reference_params(scheduler=name, num_inference_steps=20, strength=0.1)
            runner.run(params, reference_image(), seeds(1), lambda s, t: None)
            assert fastpath.graphs_compiled() == loaded, f"{name} recompiled"
    finally:
        runner.close()


def test_the_step_callback_gets_integers_and_ends_at_the_total(fast_runner: DiffusersRunner) -> None:
    reports: list[tuple[int, int]] = []
    params = reference_params(scheduler="Heun", num_inference_steps=20, strength=0.2)
    fast_runner.run(params, reference_image(), seeds(1), lambda s, t: reports.append((s, t)))
    assert all(type(s) is int and type(t) is int for s, t in reports)
    assert len(reports) == 7  # Heun: two UNet passes per step but the first
    assert [s for s, _ in reports] == sorted(s for s, _ in reports)  # never backwards
    assert reports[-1] == (4, 4)


class Stop(Exception):
    pass


def test_a_failing_step_callback_stops_the_job_and_the_runner_goes_on(fast_runner: DiffusersRunner) -> None:
    def stop_at_two(step: int, _total: int) -> None:
        if step == 2:
            raise Stop

    params = reference_params(num_inference_steps=20, strength=0.2)
    with pytest.raises(Stop):
        fast_runner.run(params, reference_image(), seeds(1), stop_at_two)
    assert len(fast_runner.run(params, reference_image(), seeds(1), lambda s, t: None)) == 1


def test_a_caller_that_stops_waiting_abandons_its_job(fast_runner: DiffusersRunner) -> None:
    """A time limit interrupts the waiting caller; the job stops at its next step."""

    def give_up(_signum: int, _frame: FrameType | None) -> None:
        raise TimeoutError("soft time limit")

    steps: list[int] = []
    previous = signal.signal(signal.SIGUSR1, give_up)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        with pytest.raises(TimeoutError):
            long_job = reference_params(num_inference_steps=100, strength=1.0)
            fast_runner.run(long_job, reference_image(), seeds(1), lambda s, t: steps.append(s))
            time.sleep(5)  # only reached if the job finished before the signal
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    # The device thread runs jobs in order: once this one is back, the abandoned one ended.
    short = reference_params(num_inference_steps=20, strength=0.1)
    assert len(fast_runner.run(short, reference_image(), seeds(1), lambda s, t: None)) == 1
    assert 0 < len(steps) < 100
