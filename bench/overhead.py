"""What the service adds to a request: sync requests through the whole farm vs the bare pipeline.

Starts Redis, an S3 server, one worker and the gunicorn gateway on loopback, then
alternates, round by round, one reference request through the service and one bare
``StableDiffusionImg2ImgPipeline`` call in this process on the same tiny model and
parameters (both with the same torch thread count), so drift hits both alike.

It prints p50/p95 of each and their difference, the difference within each round (a
service call and the bare call right after it, so slow drift cancels), and the
per-request overhead measured directly: end-to-end latency minus the pipeline time the
worker reports in ``x-generation-time``. The pipeline's own run-to-run spread (tens of
ms) weighs on the first two; the direct figure is free of it but leaves out what the
worker does inside that time besides the pipeline call (progress, scheduler, threads).

The client is the standard library's ``http.client`` on a kept-alive connection, so the
figures hold what the service adds, not what a client library adds: ``--client requests``
measures through ``requests`` instead, which on a 2-core machine adds about 1.7 ms per
call on its own (in the client, before the request leaves and after the answer is in).

    python bench/overhead.py [--rounds 40] [--client http.client|requests] [--json out.json]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import torch  # noqa: E402
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline  # noqa: E402
from PIL import Image  # noqa: E402

from bench.stats import percentile  # noqa: E402
from deploy.local import local_farm  # noqa: E402
from shared.images import prepare_image  # noqa: E402
from shared.keys import KeyStore  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.helpers import REFERENCE, reference_body, sample_image  # noqa: E402
from worker.models import ensure_tiny_model  # noqa: E402

THREADS = 2


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 50) * 1000,
        "p95_ms": percentile(values, 95) * 1000,
        "mean_ms": statistics.fmean(values) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--client", choices=("http.client", "requests"), default="http.client")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    model = ensure_tiny_model(ROOT / "var" / "models" / "tiny")
    torch.set_num_threads(THREADS)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        model, dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    image = prepare_image(Image.open(io.BytesIO(sample_image())), 512, 512)

    def bare_call() -> float:
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        started = time.perf_counter()
        with torch.inference_mode():
            pipe(
                prompt=REFERENCE["prompt"],
                negative_prompt=REFERENCE["negative_prompt"],
                image=image,
                strength=REFERENCE["strength"],
                num_inference_steps=REFERENCE["num_inference_steps"],
                guidance_scale=REFERENCE["guidance_scale"],
                generator=[torch.Generator("cpu").manual_seed(REFERENCE["seed"])],
            )
        return time.perf_counter() - started

    settings = Settings(device="cpu", torch_threads=THREADS, model_dir=str(model))
    body = reference_body()
    path = "/v1/sd1.5-img2img"
    service, bare, overhead, paired = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp, local_farm(settings, Path(tmp)) as farm:
        key, _ = KeyStore(farm.settings).create("bench", 10**12)
        # The overhead includes key checks, rate limit and charge.
        headers = {"x-api-key": key, "Content-Type": "application/json"}
        host, port = farm.url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        session = requests.Session()

        def service_call() -> tuple[float, float]:
            started = time.perf_counter()
            if args.client == "requests":
                reply = session.post(farm.url + path, json=body, headers=headers, timeout=120)
                elapsed = time.perf_counter() - started
                reply.raise_for_status()
                return elapsed, float(reply.headers["x-generation-time"])
            connection.request("POST", path, body=json.dumps(body), headers=headers)
            answer = connection.getresponse()
            answer.read()
            elapsed = time.perf_counter() - started
            if answer.status != 200:
                raise RuntimeError(f"the service answered {answer.status}")
            return elapsed, float(answer.headers["x-generation-time"])

        for _ in range(args.warmup):
            service_call()
            bare_call()
        for _ in range(args.rounds):
            elapsed, generation = service_call()
            service.append(elapsed)
            overhead.append(elapsed - generation)
            bare.append(bare_call())
            paired.append(elapsed - bare[-1])

    result = {
        "rounds": args.rounds,
        "client": args.client,
        "request": {k: v for k, v in REFERENCE.items()},
        "service": summary(service),
        "bare_pipeline": summary(bare),
        "difference_p50_ms": (percentile(service, 50) - percentile(bare, 50)) * 1000,
        "difference_p95_ms": (percentile(service, 95) - percentile(bare, 95)) * 1000,
        "difference_within_rounds": summary(paired),
        "overhead_beyond_worker_pipeline": summary(overhead),
    }
    rows = [
        ("service (end to end)", result["service"]),
        ("bare pipeline call", result["bare_pipeline"]),
        ("service - bare, same round", result["difference_within_rounds"]),
        ("e2e - worker pipeline time", result["overhead_beyond_worker_pipeline"]),
    ]
    out = sys.stdout
    out.write(
        f"\nsync overhead, tiny model, reference request, {args.rounds} rounds, {THREADS} torch threads, "
        f"client {args.client}\n"
    )
    out.write(f"{'':30} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9}\n")
    for name, stats in rows:
        out.write(f"{name:30} {stats['p50_ms']:9.1f} {stats['p95_ms']:9.1f} {stats['mean_ms']:9.1f}\n")
    out.write(
        f"difference service - bare: p50 {result['difference_p50_ms']:+.1f} ms, "
        f"p95 {result['difference_p95_ms']:+.1f} ms\n"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
