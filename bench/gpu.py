"""GPU fast path benchmark: images/s, latency, UNet it/s and TFLOP/s against the device's limit.

For the reference request (DDIM, 25 steps at strength 0.75 = 18 denoising steps, guidance
10.5, so classifier-free guidance doubles the UNet batch), size by size, in stages ordered
so that the most valuable figures come first:

1. ``plain``: the plain diffusers pipeline (float16 on CUDA, float32 on CPU) at batch 1
   (one sample) and batch 4 (four samples of one request);
2. ``eager``: the worker's runner with each eager fast-path part added in turn (baseline
   SDPA, + channels_last, + fused QKV, + host timesteps), then every scheduler once on it:
   host-device synchronisations per loop iteration (on CUDA);
3. ``service``: the whole service (gateway, Redis, worker, S3 on loopback, deploy/local.py,
   eager fast path, batching on) with one client (the single-request latency), then
   saturated by concurrent clients (the headline images/s);
4. ``compiled``: the runner with torch.compile in each ``--compile-modes`` mode, cheapest
   first, with its compile and warm-up times; on the first, every scheduler once: graphs
   compiled by a request (must be 0).

Each row has images/s, p50/p95 latency, UNet it/s (denoising-loop iterations per second,
timed with CUDA events on a GPU), achieved TFLOP/s and its fraction of the peak (790
TFLOP/s, an H100's dense float16 rate as the issue states it), peak GPU memory, load and
warm-up time, and the pixel difference from the plain pipeline's image. FLOPs are counted
with torch's FlopCounterMode on the model's own architecture (meta tensors, no compute): for
SD1.5 at 512x512, 803 GFLOP per UNet sample pass, 1.1 TFLOP per VAE encode, 2.5 TFLOP per
decode, 32.5 TFLOP per reference image. The JSON is written after every row.

With ``--budget-seconds``, a stage whose estimate (:data:`ESTIMATES`, seconds on an H100 or
H200 with SD1.5) does not fit in what is left is skipped, and the report says so.

The model is the full SD1.5 architecture with random weights (worker/models.py; written
once, then reused) on CUDA and the tiny model on CPU: same code, testable anywhere.

    python bench/gpu.py [--sizes 512] [--rounds 10] [--clients 8] [--budget-seconds 480] [--json out.json]
    python bench/gpu.py --smoke --json out.json    # tiny model, 512 only, a few rounds
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import requests  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline  # noqa: E402
from diffusers import UNet2DConditionModel as UNet  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench.stats import percentile  # noqa: E402
from deploy.local import local_farm  # noqa: E402
from shared.images import prepare_image  # noqa: E402
from shared.schema import SCHEDULERS, GenerationParams  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.helpers import REFERENCE, reference_body, sample_image  # noqa: E402
from worker import fastpath  # noqa: E402
from worker.models import write_pipeline  # noqa: E402
from worker.runner import DiffusersRunner  # noqa: E402

PEAK_TFLOPS = 790.0
CPU_THREADS = 1
SWITCHES = ("sdpa_attention", "channels_last", "fuse_qkv", "host_timesteps", "torch_compile")
# Each eager variant adds one part to the one before (stage 4 adds torch.compile).
VARIANTS: tuple[tuple[str, str], ...] = (
    ("baseline (SDPA)", "sdpa_attention"),
    ("+ channels_last", "channels_last"),
    ("+ fused QKV", "fuse_qkv"),
    ("+ host timesteps", "host_timesteps"),
)
AUDIT_STEPS = (20, 0.2)  # num_inference_steps, strength: 4 denoising steps per scheduler
STAGES = ("plain", "eager", "service", "compiled")
# Seconds a stage takes for one size on an H100 or H200 with SD1.5 at 512x512 (loads,
# compiles and warm-ups included; about twice that at 768): what --budget-seconds plans with.
ESTIMATES: dict[str, float] = {"plain": 45.0, "eager": 75.0, "service": 100.0}
COMPILE_ESTIMATES: dict[str, float] = {
    "default": 120.0,
    "reduce-overhead": 150.0,
    "max-autotune-no-cudagraphs": 360.0,
    "max-autotune": 420.0,
}
# The service's targets on a GPU, at 512x512 with the reference request.
TARGET_IMAGES_PER_S = 12.0
TARGET_LATENCY_MS = 250.0


class StepClock:
    """Marks the end of every denoising-loop iteration: CUDA events on a GPU, wall time on CPU."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()  # queued on the stream: no synchronisation
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def rate(self) -> float | None:
        """Loop iterations per second between the first and the last mark."""
        if len(self.marks) < 2:
            return None
        if self.cuda:
            torch.cuda.synchronize()
            seconds = self.marks[0].elapsed_time(self.marks[-1]) / 1000
        else:
            seconds = self.marks[-1] - self.marks[0]
        return (len(self.marks) - 1) / seconds if seconds > 0 else None


class Bench:
    """One run: options, device, the rows measured so far, written out after every row."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cuda = torch.cuda.is_available()
        self.dtype = torch.float16 if self.cuda else torch.float32
        self.arch = args.arch or ("sd15" if self.cuda else "tiny")
        default_dir = "sd15-random" if self.arch == "sd15" else "tiny"
        self.model = write_pipeline(self.arch, args.model or ROOT / "var" / "models" / default_dir)
        if not self.cuda:
            torch.set_num_threads(CPU_THREADS)
        self.report: dict[str, Any] = {
            "bench": "gpu",
            "smoke": bool(args.smoke),
            "device": torch.cuda.get_device_name() if self.cuda else f"cpu ({platform.machine()})",
            "cuda": self.cuda,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "arch": self.arch,
            "model": str(self.model),
            "dtype": str(self.dtype).removeprefix("torch."),
            "peak_tflops": args.peak_tflops,
            "request": dict(REFERENCE),
            "denoising_steps": self.params(args.sizes[0]).denoising_steps,
            "flops": {},
            "rows": [],
            "schedulers": {},
            "skipped": [],
            "targets": {},
        }
        self.plain_images: dict[int, Image.Image] = {}
        self.started = time.monotonic()

    # -- helpers -------------------------------------------------------------------------

    def params(self, size: int, **changes: Any) -> GenerationParams:
        values = {**REFERENCE, "img_width": size, "img_height": size, **changes}
        return GenerationParams.from_dict(values)

    def image(self, size: int) -> Image.Image:
        return prepare_image(Image.open(io.BytesIO(sample_image())), size, size)

    def settings(self, **changes: Any) -> Settings:
        base = Settings(
            model_dir=str(self.model),
            device="cuda" if self.cuda else "cpu",
            torch_threads=0 if self.cuda else CPU_THREADS,
            warmup_images=(1,),
            load_timeout_seconds=3600.0,
        )
        if self.args.compile_backend:
            base = base.replace(compile_backend=self.args.compile_backend)
        return base.replace(**changes)

    def flops_per_image(self, size: int) -> float:
        return float(self.report["flops"][str(size)]["per_image"])

    def add(self, row: dict[str, Any]) -> None:
        self.report["rows"].append(row)
        self.save()
        sys.stdout.write(f"  {format_row(row)}\n")
        sys.stdout.flush()

    def save(self) -> None:
        if self.args.json:
            self.args.json.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.args.json.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.report, indent=2))
            os.replace(tmp, self.args.json)

    def row(
        self,
        section: str,
        name: str,
        size: int,
        latencies: list[float],
        images: int,
        wall: float,
        **extra: Any,
    ) -> dict[str, Any]:
        images_per_s = images / wall
        tflops = self.flops_per_image(size) * images_per_s / 1e12
        return {
            "section": section,
            "name": name,
            "size": f"{size}x{size}",
            "requests": len(latencies),
            "images": images,
            "images_per_s": images_per_s,
            "p50_ms": percentile(latencies, 50) * 1000,
            "p95_ms": percentile(latencies, 95) * 1000,
            "mean_ms": statistics.fmean(latencies) * 1000,
            "tflops": tflops,
            "peak_fraction": tflops / self.args.peak_tflops,
            **extra,
        }

    def release(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def difference(self, size: int, image: Image.Image) -> dict[str, float | None]:
        """Pixel difference (uint8) between ``image`` and the plain pipeline's at ``size``."""
        plain = self.plain_images.get(size)
        if plain is None:
            return {"max_abs_diff": None, "mean_abs_diff": None}
        diff = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(plain, dtype=np.int16))
        return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}

    def timed(self, call: Callable[[StepClock], Image.Image]) -> tuple[dict[str, Any], Image.Image]:
        """``warmup`` calls (the first one timed alone), then ``rounds`` measured calls."""
        first = None
        output = None
        for _ in range(self.args.warmup):
            started = time.perf_counter()
            call(StepClock(self.cuda))
            first = first if first is not None else time.perf_counter() - started
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        latencies: list[float] = []
        rates: list[float] = []
        graphs = fastpath.graphs_compiled()
        for _ in range(self.args.rounds):
            clock = StepClock(self.cuda)
            started = time.perf_counter()
            output = call(clock)
            if self.cuda:
                torch.cuda.synchronize()
            latencies.append(time.perf_counter() - started)
            rate = clock.rate()
            if rate is not None:
                rates.append(rate)
        if output is None:
            raise ValueError("--rounds must be at least 1")
        timing = {
            "latencies": latencies,
            "unet_it_per_s": statistics.median(rates) if rates else None,
            "first_call_ms": None if first is None else first * 1000,
            "graphs_compiled_in_rounds": fastpath.graphs_compiled() - graphs,
            "gpu_mem_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if self.cuda else None,
        }
        return timing, output

    # -- sections ------------------------------------------------------------------------

    def count_flops(self, size: int) -> None:
        """UNet, VAE encode and decode FLOPs of this model at ``size``, on meta tensors."""
        unet_config = UNet.load_config(self.model, subfolder="unet")
        vae_config = AutoencoderKL.load_config(self.model, subfolder="vae")
        with torch.device("meta"):
            unet = UNet.from_config(unet_config)
            vae = AutoencoderKL.from_config(vae_config)
            latent = torch.empty(1, 4, size // 8, size // 8)
            pixels = torch.empty(1, 3, size, size)
            hidden = torch.empty(1, 77, unet.config.cross_attention_dim)
            timestep = torch.tensor(500.0)
        # The classic processor's matmuls are counted on every backend (SDPA kernels are not).
        unet.set_attn_processor(AttnProcessor())
        vae.set_attn_processor(AttnProcessor())
        counts = {}
        for name, fn in (
            ("unet_sample_pass", lambda: unet(latent, timestep, encoder_hidden_states=hidden)),
            ("vae_encode", lambda: vae.encode(pixels)),
            ("vae_decode", lambda: vae.decode(latent)),
        ):
            with FlopCounterMode(display=False) as counter:
                fn()
            counts[name] = counter.get_total_flops()
        params = self.params(size)
        passes = params.denoising_steps * (2 if params.guidance_scale > 1 else 1)
        counts["per_image"] = (
            passes * counts["unet_sample_pass"] + counts["vae_encode"] + counts["vae_decode"]
        )
        self.report["flops"][str(size)] = counts

    def plain_pipeline(self, size: int) -> None:
        """(1) A bare diffusers pipeline, as a user would call it, at batch 1 and 4.

        Calls run on one dedicated thread, as the runner's do, so both meet the same
        threading (CPU thread pools, CUDA streams) and differ only in the fast path.
        """
        device_thread = ThreadPoolExecutor(1, thread_name_prefix="plain")
        if not self.cuda:  # thread pool sizes are per thread, as the runner sets them
            device_thread.submit(torch.set_num_threads, CPU_THREADS).result()
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
            self.model, dtype=self.dtype, safety_checker=None, requires_safety_checker=False
        ).to("cuda" if self.cuda else "cpu")
        pipe.set_progress_bar_config(disable=True)
        device = "cuda" if self.cuda else "cpu"
        params = self.params(size)
        image = self.image(size)

        def call(clock: StepClock, batch: int) -> Image.Image:
            def step_end(_pipe: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                clock.mark()
                return kwargs

            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
            with torch.inference_mode():
                result = pipe(
                    prompt=params.prompt,
                    negative_prompt=params.negative_prompt,
                    image=image,
                    strength=params.strength,
                    num_inference_steps=params.num_inference_steps,
                    guidance_scale=params.guidance_scale,
                    num_images_per_prompt=batch,
                    generator=[torch.Generator(device).manual_seed(params.seed + i) for i in range(batch)],
                    callback_on_step_end=step_end,
                )
            first: Image.Image = result.images[0]
            return first

        for batch in (1, 4):
            timing, output = self.timed(lambda clock, b=batch: device_thread.submit(call, clock, b).result())
            if batch == 1:
                self.plain_images[size] = output
            latencies = timing.pop("latencies")
            name = "plain diffusers" if batch == 1 else f"plain diffusers x{batch}"
            self.add(
                self.row("pipeline", name, size, latencies, batch * len(latencies), sum(latencies), **timing)
            )
        device_thread.shutdown()

    def runner_row(self, name: str, size: int, settings: Settings, audit: str | None = None) -> None:
        """Load a runner with ``settings``, time the reference request on it, and (with
        ``audit``: syncs or graphs) run every scheduler once on it."""
        params = self.params(size)
        image = self.image(size)
        runner = DiffusersRunner(settings)
        graphs = fastpath.graphs_compiled()
        runner.load()
        load = {
            "load_s": runner.load_seconds,
            "warmup_s": runner.warmup_seconds,
            "graphs_compiled_at_load": fastpath.graphs_compiled() - graphs,
            "fast_path": runner.fast.describe(),
        }

        def call(clock: StepClock, runner: DiffusersRunner = runner) -> Image.Image:
            return runner.run(params, image, [params.seed], lambda _step, _total: clock.mark())[0]

        timing, output = self.timed(call)
        latencies = timing.pop("latencies")
        load.update(self.difference(size, output))
        self.add(self.row("runner", name, size, latencies, len(latencies), sum(latencies), **load, **timing))
        if audit is not None:
            self.audit_schedulers(runner, size, audit)
        runner.close()
        del runner
        self.release()

    def eager_variants(self, size: int, audit: bool) -> None:
        """(2) The worker's runner, one eager fast-path part added at a time."""
        switches = dict.fromkeys(SWITCHES, "off")
        for i, (name, switch) in enumerate(VARIANTS):
            switches[switch] = "on"
            settings = self.settings(allowed_sizes=(size,), warmup="basic", **switches)
            last = i == len(VARIANTS) - 1
            self.runner_row(name, size, settings, audit="syncs" if audit and last else None)

    def compiled_variant(self, size: int, mode: str, audit: bool) -> None:
        """(4) The runner with every part and torch.compile in ``mode``, warmed up for one sample."""
        settings = self.settings(
            allowed_sizes=(size,), warmup="cfg", compile_mode=mode, **dict.fromkeys(SWITCHES, "on")
        )
        self.runner_row(f"+ torch.compile {mode}", size, settings, audit="graphs" if audit else None)
        torch._dynamo.reset()  # the next mode or size compiles its own graphs

    def audit_schedulers(self, runner: DiffusersRunner, size: int, what: str) -> None:
        """Every scheduler once on ``runner``: in-loop syncs (``syncs``, on the eager fast
        path) or graphs a request compiles (``graphs``, on a compiled runner)."""
        steps, strength = AUDIT_STEPS
        image = self.image(size)
        for name in SCHEDULERS:
            params = self.params(size, scheduler=name, num_inference_steps=steps, strength=strength)
            graphs = fastpath.graphs_compiled()
            calls = [0]

            def on_step(_step: int, _total: int, calls: list[int] = calls) -> None:
                calls[0] += 1
                if self.cuda and calls[0] == 1:
                    torch.cuda.set_sync_debug_mode("warn")  # from the second iteration on
                if self.cuda and calls[0] == runner.pipe.num_timesteps:
                    torch.cuda.set_sync_debug_mode("default")

            started = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    runner.run(params, image, [params.seed], on_step)
                finally:
                    if self.cuda:
                        torch.cuda.set_sync_debug_mode("default")
            elapsed = time.perf_counter() - started
            syncs = sum("synchroniz" in str(w.message) for w in caught)
            entry = self.report["schedulers"].setdefault(
                name, {"loop_iterations": calls[0], "loop_syncs_per_iteration": None, "new_graphs": None}
            )
            if what == "graphs":
                entry["new_graphs"] = fastpath.graphs_compiled() - graphs
                entry["compiled_ms"] = elapsed * 1000
            else:
                entry["loop_syncs_per_iteration"] = syncs / max(1, calls[0] - 1) if self.cuda else None
                entry["ms"] = elapsed * 1000
        self.save()

    def service(self, size: int) -> None:
        """(3) The whole farm on loopback: one client, then ``clients`` at once (batching on)."""
        # Without API keys: the figure is the service's path, not key bookkeeping. The eager
        # fast path: a compiled worker warms up every batch batching can build, which takes
        # longer than a lent device's minutes (stage 4 measures compile on the runner).
        settings = self.settings(allowed_sizes=(size,), torch_compile="off", auth_enabled=False)
        body = reference_body(img_width=size, img_height=size)
        with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
            started = time.perf_counter()
            with local_farm(settings, Path(tmp)) as farm:
                startup = time.perf_counter() - started
                local = threading.local()

                def post() -> tuple[float, float]:
                    if not hasattr(local, "http"):
                        local.http = requests.Session()
                    begun = time.perf_counter()
                    reply = local.http.post(f"{farm.url}/v1/sd1.5-img2img", json=body, timeout=600)
                    elapsed = time.perf_counter() - begun
                    reply.raise_for_status()
                    return elapsed, float(reply.headers.get("x-generation-time", "nan"))

                for _ in range(self.args.warmup):
                    post()
                one = [post() for _ in range(self.args.service_rounds)]
                latencies = [e for e, _ in one]
                self.add(
                    self.row(
                        "service",
                        "1 client",
                        size,
                        latencies,
                        len(latencies),
                        sum(latencies),
                        worker_startup_s=startup,
                        generation_p50_ms=percentile([g for _, g in one], 50) * 1000,
                    )
                )
                clients = self.args.clients
                total = clients * self.args.service_rounds
                begun = time.perf_counter()
                with ThreadPoolExecutor(clients) as pool:
                    many = list(pool.map(lambda _: post(), range(total)))
                wall = time.perf_counter() - begun
                self.add(
                    self.row(
                        "service",
                        f"{clients} clients",
                        size,
                        [e for e, _ in many],
                        total,
                        wall,
                        worker_startup_s=startup,
                        generation_p50_ms=percentile([g for _, g in many], 50) * 1000,
                    )
                )

    def fits(self, stage: str, size: int, estimate: float) -> bool:
        """Whether ``stage`` at ``size`` fits in the budget; a skip is reported."""
        budget = self.args.budget_seconds
        if budget is None:
            return True
        left = budget - (time.monotonic() - self.started)
        if estimate <= left:
            return True
        sys.stdout.write(f"  skipped {stage} at {size}: needs about {estimate:.0f} s, {left:.0f} s left\n")
        self.report["skipped"].append({"stage": stage, "size": size, "estimate_s": estimate, "left_s": left})
        self.save()
        return False

    def run(self) -> dict[str, Any]:
        args = self.args
        self.started = time.monotonic()
        sys.stdout.write(
            f"GPU fast path bench: {self.report['device']}, {self.arch} model, {self.report['dtype']}, "
            f"sizes {args.sizes}, {args.rounds} rounds, stages {', '.join(args.stages)}\n"
        )
        for size in args.sizes:
            self.count_flops(size)
        self.save()
        # Size by size, stage by stage: a run cut short has every figure it finished.
        for i, size in enumerate(args.sizes):
            scale = (size / 512) ** 2
            for stage in args.stages:
                if stage == "compiled":
                    for j, mode in enumerate(args.compile_modes):
                        if self.fits(f"compiled {mode}", size, COMPILE_ESTIMATES.get(mode, 600.0) * scale):
                            self.compiled_variant(size, mode, audit=i == 0 and j == 0)
                    continue
                if not self.fits(stage, size, ESTIMATES[stage] * scale):
                    continue
                if stage == "plain":
                    self.plain_pipeline(size)
                    self.release()
                elif stage == "eager":
                    self.eager_variants(size, audit=i == 0)
                elif stage == "service":
                    self.service(size)
        self.report["targets"] = targets(self.report)
        self.report["seconds"] = time.monotonic() - self.started
        self.save()
        return self.report


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """The service's figures at 512x512 against its targets (None where not measured)."""
    rows = [r for r in report["rows"] if r["section"] == "service" and r["size"] == "512x512"]
    one = next((r for r in rows if r["name"] == "1 client"), None)
    saturated = max((r["images_per_s"] for r in rows if r["name"] != "1 client"), default=None)
    latency = None if one is None else one["p50_ms"]
    return {
        "images_per_s": {"target": TARGET_IMAGES_PER_S, "measured": saturated},
        "latency_p50_ms": {"target": TARGET_LATENCY_MS, "measured": latency},
        "met": None
        if saturated is None or latency is None
        else saturated >= TARGET_IMAGES_PER_S and latency <= TARGET_LATENCY_MS,
    }


def format_row(row: dict[str, Any]) -> str:
    def num(key: str, fmt: str) -> str:
        value = row.get(key)
        return format(value, fmt) if isinstance(value, int | float) else "-".rjust(len(format(0, fmt)))

    return (
        f"{row['section']:8} {row['name']:26} {row['size']:>9} {num('images_per_s', '8.2f')} "
        f"{num('p50_ms', '9.1f')} {num('p95_ms', '9.1f')} {num('unet_it_per_s', '8.1f')} "
        f"{num('tflops', '8.2f')} {(row['peak_fraction'] * 100):6.2f}% {num('gpu_mem_peak_mib', '8.0f')} "
        f"{num('warmup_s', '7.1f')}"
    )


HEADER = (
    f"{'section':8} {'name':26} {'size':>9} {'img/s':>8} {'p50 ms':>9} {'p95 ms':>9} {'UNet it/s':>8} "
    f"{'TFLOP/s':>8} {'of peak':>7} {'mem MiB':>8} {'warm s':>7}"
)


def print_table(report: dict[str, Any]) -> None:
    out = sys.stdout
    out.write(f"\n{report['device']}, {report['arch']} model, {report['dtype']}, reference request ")
    out.write(
        f"({report['denoising_steps']} denoising steps, CFG), peak {report['peak_tflops']:.0f} TFLOP/s\n"
    )
    for size, counts in report["flops"].items():
        out.write(
            f"FLOPs at {size}x{size}: UNet {counts['unet_sample_pass'] / 1e9:.1f} G per sample pass, "
            f"VAE encode {counts['vae_encode'] / 1e12:.3f} T, decode {counts['vae_decode'] / 1e12:.3f} T, "
            f"{counts['per_image'] / 1e12:.2f} T per image\n"
        )
    out.write(HEADER + "\n")
    for row in sorted(
        report["rows"], key=lambda r: (r["size"], ["pipeline", "runner", "service"].index(r["section"]))
    ):
        out.write(format_row(row) + "\n")
    if report["schedulers"]:
        out.write(
            "\nschedulers: graphs a request compiled (compiled runner), syncs per loop iteration (eager)\n"
        )
        for name, audit in report["schedulers"].items():
            graphs, syncs = audit["new_graphs"], audit["loop_syncs_per_iteration"]
            shown = ("-" if graphs is None else str(graphs), "-" if syncs is None else f"{syncs:.2f}")
            out.write(f"  {name:14} {shown[0]:>3}  {shown[1]}\n")
    for skip in report["skipped"]:
        out.write(f"skipped {skip['stage']} at {skip['size']}: about {skip['estimate_s']:.0f} s needed, ")
        out.write(f"{skip['left_s']:.0f} s left\n")
    goal = report.get("targets") or {}
    if goal and goal["met"] is not None:
        rate, latency = goal["images_per_s"]["measured"], goal["latency_p50_ms"]["measured"]
        out.write(
            f"targets at 512x512: {rate:.2f} img/s (>= {TARGET_IMAGES_PER_S:.0f}), "
            f"p50 {latency:.1f} ms (<= {TARGET_LATENCY_MS:.0f}): {'met' if goal['met'] else 'not met'}\n"
        )


def markdown(report: dict[str, Any]) -> str:
    """README's GPU table from a report: one row per measured row, then the targets."""
    lines = [
        f"{report['device']}, torch {report['torch']}, diffusers {report['diffusers']}, {report['arch']} "
        f"({report['dtype']}), reference request ({report['denoising_steps']} denoising steps, CFG)",
        "",
        "| stage | variant | size | img/s | p50 ms | p95 ms | UNet it/s | TFLOP/s | of peak | GPU MiB "
        "| load s | warm-up s | max/mean px diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def num(row: dict[str, Any], key: str, fmt: str) -> str:
        value = row.get(key)
        return format(value, fmt) if isinstance(value, int | float) else "-"

    for row in report["rows"]:
        diff = (
            "-"
            if row.get("max_abs_diff") is None
            else f"{row['max_abs_diff']:.0f} / {row['mean_abs_diff']:.3f}"
        )
        cells = [
            row["section"],
            row["name"],
            row["size"],
            num(row, "images_per_s", ".2f"),
            num(row, "p50_ms", ".1f"),
            num(row, "p95_ms", ".1f"),
            num(row, "unet_it_per_s", ".1f"),
            num(row, "tflops", ".1f"),
            f"{row['peak_fraction'] * 100:.1f}%",
            num(row, "gpu_mem_peak_mib", ".0f"),
            num(row, "load_s", ".1f"),
            num(row, "warmup_s", ".1f"),
            diff,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for skip in report.get("skipped", []):
        lines.append(
            f"\nSkipped: {skip['stage']} at {skip['size']} (about {skip['estimate_s']:.0f} s needed)."
        )
    goal = report.get("targets") or {}
    if goal.get("met") is not None:
        lines.append(
            f"\nTargets at 512x512: {goal['images_per_s']['measured']:.2f} img/s saturated (>= "
            f"{TARGET_IMAGES_PER_S:.0f}), {goal['latency_p50_ms']['measured']:.1f} ms p50 for one request "
            f"(<= {TARGET_LATENCY_MS:.0f}): {'met' if goal['met'] else 'not met'}."
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory (written when missing)")
    parser.add_argument("--arch", choices=("tiny", "sd15"), help="default: sd15 on CUDA, tiny on CPU")
    parser.add_argument("--sizes", default="512", help="square sizes, comma-separated")
    parser.add_argument("--stages", default=",".join(STAGES), help="stages to run, in this order")
    parser.add_argument(
        "--compile-modes", default="default,reduce-overhead", help="COMPILE_MODEs of stage 4, cheapest first"
    )
    parser.add_argument("--budget-seconds", type=float, help="skip a stage that would not fit in this")
    parser.add_argument("--rounds", type=int, default=10, help="measured calls per row")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured calls before each row")
    parser.add_argument("--service-rounds", type=int, default=10, help="requests per client")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients at saturation")
    parser.add_argument("--compile-backend", help="COMPILE_BACKEND (default inductor)")
    parser.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS)
    parser.add_argument(
        "--skip-service", action="store_true", help="leave out stage 3 (no redis-server here)"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny model, 512 only, 1 round, 2 clients")
    parser.add_argument("--json", type=Path, help="write the results here (after every row)")
    parser.add_argument("--markdown", type=Path, help="print README's table from this report and stop")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s]
    args.stages = [s for s in str(args.stages).split(",") if s and not (s == "service" and args.skip_service)]
    if unknown := set(args.stages) - set(STAGES):
        parser.error(f"unknown stages: {', '.join(sorted(unknown))}")
    args.compile_modes = [m for m in str(args.compile_modes).split(",") if m]
    if args.smoke:
        args.arch = args.arch or "tiny"
        args.sizes = args.sizes[:1]
        args.rounds, args.warmup, args.service_rounds, args.clients = 1, 1, 1, 2
        args.compile_modes = args.compile_modes[:1]
        if not torch.cuda.is_available():
            # Inductor's C++ build of even the tiny model takes minutes on a small CPU; the
            # eager backend still captures every graph with dynamo, guards and all.
            args.compile_backend = args.compile_backend or "eager"
    return args


@contextmanager
def quiet_progress() -> Iterator[None]:
    """Silence the loading bars of diffusers and transformers; the bench prints its own lines."""
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers.utils.logging.enable_progress_bar()
        transformers.utils.logging.enable_progress_bar()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown(json.loads(args.markdown.read_text())))
        return
    with quiet_progress():
        report = Bench(args).run()
    print_table(report)


if __name__ == "__main__":
    main()
