"""Cross-request batching: throughput and latency with batching off and on, in one run.

Starts Redis, an S3 server, one worker and the gunicorn gateway on loopback (tiny model on
CPU, or ``--model`` on ``--device``), twice: once with ``BATCH_MAX_IMAGES=1`` (off) and once
with ``--max-images`` (on). Each time ``--clients`` threads each send ``--requests``
synchronous single-image requests of one shape, one after another, all at once. Prints, for
each mode, images per second, p50/p95 latency from submit to result, pipeline calls and
mean jobs per call.

    python bench/batching.py [--clients 8] [--requests 3] [--steps 20] [--strength 0.5]
                             [--max-images 8] [--wait-ms 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from bench.stats import percentile  # noqa: E402
from deploy.local import Farm, local_farm  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.store import JobStore  # noqa: E402
from tests.helpers import reference_body  # noqa: E402
from worker.models import ensure_tiny_model  # noqa: E402


def load(farm: Farm, clients: int, per_client: int, body: dict[str, Any]) -> dict[str, Any]:
    """``clients`` threads, each sending ``per_client`` sync requests back to back."""
    store = JobStore(farm.settings)
    before = store.counters.all()
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(index: int) -> None:
        http = requests.Session()
        start.wait()
        for n in range(per_client):
            began = time.monotonic()
            reply = http.post(
                f"{farm.url}/v1/sd1.5-img2img", json={**body, "seed": index * 1000 + n}, timeout=600
            )
            with lock:
                if reply.status_code == 200:
                    latencies.append(time.monotonic() - began)
                else:
                    errors.append(f"{reply.status_code}: {reply.text[:200]}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - began
    after = store.counters.all()
    calls = after.get("pipeline_calls", 0) - before.get("pipeline_calls", 0)
    jobs = after.get("pipeline_jobs", 0) - before.get("pipeline_jobs", 0)
    return {
        "images": len(latencies),
        "errors": len(errors),
        "seconds": seconds,
        "images_per_second": len(latencies) / seconds,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "pipeline_calls": calls,
        "jobs_per_call": jobs / calls if calls else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--max-images", type=int, default=8)
    parser.add_argument("--wait-ms", type=int, default=30)
    parser.add_argument("--model", default="", help="MODEL_ID or a local path (default: the tiny model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = args.model or str(ensure_tiny_model(ROOT / "var" / "models" / "tiny"))
    base = Settings(
        device=args.device,
        torch_threads=args.threads,
        model_dir=model,
        allowed_sizes=(args.size,),
        auth_enabled=False,
        sync_wait_seconds=600,
        batch_wait_ms=args.wait_ms,
        worker_heartbeat_seconds=1.0,
    )
    body = reference_body(
        num_inference_steps=args.steps, strength=args.strength, img_width=args.size, img_height=args.size
    )
    results: dict[str, Any] = {"clients": args.clients, "requests_per_client": args.requests}
    for mode, max_images in (("off", 1), ("on", args.max_images)):
        settings = base.replace(batch_max_images=max_images)
        with tempfile.TemporaryDirectory() as tmp, local_farm(settings, Path(tmp)) as farm:
            load(farm, 1, 1, body)  # first request after load pays one-off costs
            results[mode] = load(farm, args.clients, args.requests, body)
        row = results[mode]
        sys.stdout.write(
            f"batching {mode:>3} (max {max_images} images): {row['images_per_second']:.3f} images/s, "
            f"p50 {row['latency_p50_s']:.2f} s, p95 {row['latency_p95_s']:.2f} s, "
            f"{row['pipeline_calls']} pipeline calls, {row['jobs_per_call']:.2f} jobs/call, "
            f"{row['errors']} errors\n"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
