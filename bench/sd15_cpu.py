"""The full-size SD1.5 architecture through the whole service on the CPU: real shapes, real
memory and a real load, end to end, before a GPU does the same.

    make bench-sd15-cpu        # = python bench/sd15_cpu.py [--steps 20] [--strength 0.1]

1. Writes the SD1.5 architecture with random weights (``python -m worker.models sd15``,
   reused when present) to ``var/models/sd15-random``.
2. Starts the farm on loopback (deploy/local.py: Redis, S3, one worker, the gateway) with that
   model on the CPU, and sends one reference-shaped request at 512x512 with few denoising
   steps (20 steps x strength 0.1 = 2, with classifier-free guidance): the answer must be a
   512x512 JPEG. Prints the worker's load time, the request's time and the worker's peak
   memory.
3. Loads the same model in a runner in this process and times one call of the same request
   by phase: VAE encode, each UNet step, VAE decode.

Opt-in (minutes on a small CPU); not part of ``make test``.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from deploy.local import local_farm  # noqa: E402
from shared.images import prepare_image  # noqa: E402
from shared.schema import REFERENCE_REQUEST, GenerationParams  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.store import JobStore  # noqa: E402
from tests.helpers import reference_body, sample_image  # noqa: E402
from worker.models import write_pipeline  # noqa: E402
from worker.runner import DiffusersRunner  # noqa: E402

SIZE = 512
_LOADED = re.compile(r"loaded .* in ([0-9.]+)s, warm-up ([0-9.]+)s")


def farm_settings(model: Path) -> Settings:
    """The CPU farm for one long request: nothing times out, no warm-up at 768."""
    return Settings(
        model_dir=str(model),
        device="cpu",
        allowed_sizes=(SIZE,),
        warmup="off",
        auth_enabled=False,
        sync_wait_seconds=1800,
        task_soft_time_limit=1800,
        task_time_limit=1900,
        visibility_timeout=2000,
        job_lease_seconds=900,
        load_timeout_seconds=1800,
    )


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident memory (VmHWM), while it runs."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else None


def through_the_service(model: Path, steps: int, strength: float) -> dict[str, Any]:
    settings = farm_settings(model)
    body = reference_body(num_inference_steps=steps, strength=strength, base64=False)
    with tempfile.TemporaryDirectory(prefix="sd15-cpu-") as tmp:
        started = time.perf_counter()
        with local_farm(settings, Path(tmp), workers=1) as farm:
            startup = time.perf_counter() - started
            begun = time.perf_counter()
            reply = requests.post(f"{farm.url}/v1/sd1.5-img2img", json=body, timeout=3600)
            request_s = time.perf_counter() - begun
            reply.raise_for_status()
            image = Image.open(io.BytesIO(reply.content))
            if image.format != "JPEG" or image.size != (SIZE, SIZE):
                raise RuntimeError(f"expected a {SIZE}x{SIZE} JPEG, got {image.format} {image.size}")
            job = JobStore(farm.settings).jobs.get(reply.headers["x-job-id"])
            pool_pid = int(str(job.worker if job else "").rsplit(":", 1)[1])
            memory = peak_rss_mib(pool_pid)
            loaded = _LOADED.search(farm.workers[0].log_file.read_text())
    return {
        "farm_startup_s": startup,
        "worker_load_s": float(loaded.group(1)) if loaded else None,
        "request_s": request_s,
        "generation_s": float(reply.headers["x-generation-time"]),
        "worker_peak_rss_mib": memory,
        "image": f"{image.format} {image.size[0]}x{image.size[1]}",
    }


def by_phase(model: Path, steps: int, strength: float) -> dict[str, Any]:
    """One call on a runner in this process, timed by forward hooks on each module."""
    runner = DiffusersRunner(farm_settings(model))
    started = time.perf_counter()
    runner.load()
    load_s = time.perf_counter() - started
    pipe = runner.pipe
    phases: dict[str, list[float]] = {"vae_encode": [], "unet_step": [], "vae_decode": []}

    def clock(name: str, module: torch.nn.Module) -> None:
        began: list[float] = []

        def before(_module: Any, _args: Any) -> None:
            began.append(time.perf_counter())

        def after(_module: Any, _args: Any, _output: Any) -> None:
            phases[name].append(time.perf_counter() - began.pop())

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    clock("vae_encode", pipe.vae.encoder)
    clock("unet_step", pipe.unet)
    clock("vae_decode", pipe.vae.decoder)
    params = GenerationParams.from_dict(
        {
            **REFERENCE_REQUEST,
            "num_inference_steps": steps,
            "strength": strength,
            "img_width": SIZE,
            "img_height": SIZE,
        }
    )
    image = prepare_image(Image.open(io.BytesIO(sample_image())), SIZE, SIZE)
    begun = time.perf_counter()
    runner.run(params, image, [params.seed], lambda _step, _total: None)
    call_s = time.perf_counter() - begun
    runner.close()
    return {
        "runner_load_s": load_s,
        "call_s": call_s,
        "denoising_steps": params.denoising_steps,
        **{f"{name}_s": [round(t, 3) for t in times] for name, times in phases.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "var" / "models" / "sd15-random")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strength", type=float, default=0.1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    out = sys.stdout
    started = time.perf_counter()
    model = write_pipeline("sd15", args.model)
    result: dict[str, Any] = {"model": str(model), "write_or_reuse_s": time.perf_counter() - started}
    out.write(f"model: {model} ({result['write_or_reuse_s']:.1f} s to write or find)\n")
    stages: list[tuple[str, Callable[[Path, int, float], dict[str, Any]]]] = [
        ("service", through_the_service),
        ("phases", by_phase),
    ]
    for name, stage in stages:
        result[name] = stage(model, args.steps, args.strength)
        out.write(f"{name}: {json.dumps(result[name])}\n")
        out.flush()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
