"""GPU fast path benchmark: images/s, latency, UNet it/s and TFLOP/s against the device's limit.

For the reference request (DDIM, 25 steps at strength 0.75 = 18 denoising steps, guidance
10.5, so classifier-free guidance doubles the UNet batch) at each size, in one run:

(a) the plain diffusers pipeline (float16 on CUDA, float32 on CPU);
(b) the worker's runner with each fast-path part added in turn: baseline (SDPA),
    + channels_last, + fused QKV, + host timesteps, + torch.compile (with its warm-up);
    then every scheduler once on the compiled runner: graphs compiled (must be 0) and,
    on CUDA, host-device synchronisations per loop iteration;
(c) the whole service (gateway, Redis, worker, S3 on loopback, deploy/local.py) with one
    client, then saturated by concurrent clients.

Each row has images/s, p50/p95 latency, UNet it/s (denoising-loop iterations per second,
timed with CUDA events on a GPU), achieved TFLOP/s and its fraction of the peak (790
TFLOP/s, an H100's dense float16 rate as the issue states it), peak GPU memory, load and
warm-up time. FLOPs are counted with torch's FlopCounterMode on the model's own
architecture (meta tensors, no compute): for SD1.5 at 512x512, 803 GFLOP per UNet sample
pass, 1.1 TFLOP per VAE encode, 2.5 TFLOP per decode, 32.5 TFLOP per reference image.

The model is the full SD1.5 architecture with random weights (worker/models.py; written
once, then reused) on CUDA and the tiny model on CPU: same code, testable anywhere.

    python bench/gpu.py [--sizes 512,768] [--rounds 10] [--clients 8] [--json out.json]
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
# Each variant adds one part to the one before.
VARIANTS: tuple[tuple[str, str], ...] = (
    ("baseline (SDPA)", "sdpa_attention"),
    ("+ channels_last", "channels_last"),
    ("+ fused QKV", "fuse_qkv"),
    ("+ host timesteps", "host_timesteps"),
    ("+ torch.compile", "torch_compile"),
)
AUDIT_STEPS = (20, 0.2)  # num_inference_steps, strength: 4 denoising steps per scheduler


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
        }
        self.plain_images: dict[int, Image.Image] = {}

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
        if self.args.compile_mode:
            base = base.replace(compile_mode=self.args.compile_mode)
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
        """(a) A bare diffusers pipeline, as a user would call it.

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

        def call(clock: StepClock) -> Image.Image:
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
                    generator=[torch.Generator(device).manual_seed(params.seed)],
                    callback_on_step_end=step_end,
                )
            first: Image.Image = result.images[0]
            return first

        timing, output = self.timed(lambda clock: device_thread.submit(call, clock).result())
        device_thread.shutdown()
        self.plain_images[size] = output
        latencies = timing.pop("latencies")
        self.add(
            self.row("pipeline", "plain diffusers", size, latencies, len(latencies), sum(latencies), **timing)
        )

    def runner_variants(self, size: int, audit: bool) -> None:
        """(b) The worker's runner, one fast-path part added at a time."""
        switches = dict.fromkeys(SWITCHES, "off")
        params = self.params(size)
        image = self.image(size)
        for name, switch in VARIANTS:
            switches[switch] = "on"
            compiling = switches["torch_compile"] == "on"
            settings = self.settings(
                allowed_sizes=(size,), warmup="cfg" if compiling else "basic", **switches
            )
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
            self.add(
                self.row("runner", name, size, latencies, len(latencies), sum(latencies), **load, **timing)
            )
            if audit and compiling:
                self.audit_schedulers(runner, size)
            runner.close()
            del runner
            self.release()
        torch._dynamo.reset()  # the next size's runner compiles its own graphs

    def audit_schedulers(self, runner: DiffusersRunner, size: int) -> None:
        """Every scheduler once on the compiled runner: new graphs and in-loop syncs."""
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
            self.report["schedulers"][name] = {
                "loop_iterations": calls[0],
                "new_graphs": fastpath.graphs_compiled() - graphs,
                "loop_syncs_per_iteration": syncs / max(1, calls[0] - 1) if self.cuda else None,
                "ms": elapsed * 1000,
            }
        self.save()

    def service(self, size: int) -> None:
        """(c) The whole farm on loopback: one client, then ``clients`` at once."""
        # Without API keys: the figure is the service's path, not key bookkeeping.
        settings = self.settings(allowed_sizes=(size,), warmup="cfg", auth_enabled=False)
        body = reference_body(img_width=size, img_height=size)
        with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
            started = time.perf_counter()
            with local_farm(settings, Path(tmp), threads=max(8, 2 * self.args.clients)) as farm:
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

    def run(self) -> dict[str, Any]:
        args = self.args
        sys.stdout.write(
            f"GPU fast path bench: {self.report['device']}, {self.arch} model, {self.report['dtype']}, "
            f"sizes {args.sizes}, {args.rounds} rounds\n"
        )
        for size in args.sizes:
            self.count_flops(size)
        self.save()
        # Size by size, so that a run cut short still has every figure of the first size.
        for i, size in enumerate(args.sizes):
            if not args.skip_pipeline:
                self.plain_pipeline(size)
                self.release()
            if not args.skip_runner:
                self.runner_variants(size, audit=i == 0)
            if not args.skip_service:
                self.service(size)
        return self.report


def format_row(row: dict[str, Any]) -> str:
    def num(key: str, fmt: str) -> str:
        value = row.get(key)
        return format(value, fmt) if isinstance(value, int | float) else "-".rjust(len(format(0, fmt)))

    return (
        f"{row['section']:8} {row['name']:18} {row['size']:>9} {num('images_per_s', '8.2f')} "
        f"{num('p50_ms', '9.1f')} {num('p95_ms', '9.1f')} {num('unet_it_per_s', '8.1f')} "
        f"{num('tflops', '8.2f')} {(row['peak_fraction'] * 100):6.2f}% {num('gpu_mem_peak_mib', '8.0f')} "
        f"{num('warmup_s', '7.1f')}"
    )


HEADER = (
    f"{'section':8} {'name':18} {'size':>9} {'img/s':>8} {'p50 ms':>9} {'p95 ms':>9} {'UNet it/s':>8} "
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
        out.write("\nschedulers on the compiled runner: new graphs, syncs per loop iteration\n")
        for name, audit in report["schedulers"].items():
            syncs = audit["loop_syncs_per_iteration"]
            out.write(f"  {name:14} {audit['new_graphs']:3d}  {'-' if syncs is None else f'{syncs:.2f}'}\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory (written when missing)")
    parser.add_argument("--arch", choices=("tiny", "sd15"), help="default: sd15 on CUDA, tiny on CPU")
    parser.add_argument("--sizes", default="512,768", help="square sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=10, help="measured calls per row")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured calls before each row")
    parser.add_argument("--service-rounds", type=int, default=10, help="requests per client")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients at saturation")
    parser.add_argument("--compile-mode", help="COMPILE_MODE for the compiled variant and the service")
    parser.add_argument("--compile-backend", help="COMPILE_BACKEND (default inductor)")
    parser.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS)
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--skip-runner", action="store_true")
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 512 only, 1 round, 2 clients")
    parser.add_argument("--json", type=Path, help="write the results here (after every row)")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s]
    if args.smoke:
        args.arch = args.arch or "tiny"
        args.sizes = args.sizes[:1] if args.sizes != [512, 768] else [512]
        args.rounds, args.warmup, args.service_rounds, args.clients = 1, 1, 1, 2
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
    with quiet_progress():
        report = Bench(args).run()
    print_table(report)


if __name__ == "__main__":
    main()
