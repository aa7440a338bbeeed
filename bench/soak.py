"""Soak under faults: clients submit for a while as workers are killed and restarted.

Starts Redis, S3, two workers and the gateway on loopback (tiny model), then runs
``--clients`` threads that each submit a request, wait for its result (polling when the
sync wait runs out) and submit the next, for ``--minutes``. Every ``--kill-every``
seconds one worker is killed with SIGKILL (pool and all) and a new one started. At the
end it waits for every accepted job to end and prints:

- submitted, succeeded, failed: accepted jobs and how they ended;
- lost: accepted jobs that never ended (must be 0);
- duplicated: job runs completed beyond one per succeeded job (must be 0);
- p50/p95 latency from submit to result, and the number of kills.

    python bench/soak.py [--clients 4] [--minutes 2] [--kill-every 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import signal
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
from deploy.local import Farm, WorkerProcess, local_farm  # noqa: E402
from shared.jobstore import JobStore  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.helpers import reference_body  # noqa: E402
from worker.models import ensure_tiny_model  # noqa: E402

TERMINAL = ("succeeded", "failed", "canceled")


class Soak:
    def __init__(self, farm: Farm, clients: int, seconds: float, kill_every: float, workdir: Path) -> None:
        self.farm = farm
        self.clients = clients
        self.seconds = seconds
        self.kill_every = kill_every
        self.workdir = workdir
        self.lock = threading.Lock()
        self.accepted: dict[str, float] = {}
        self.latencies: list[float] = []
        self.refused = 0
        self.kills = 0
        self.replacements: list[WorkerProcess] = []
        self.stop = threading.Event()

    def client(self, index: int) -> None:
        http = requests.Session()
        body = reference_body(num_inference_steps=20, strength=0.5, base64=True)
        n = 0
        while not self.stop.is_set():
            n += 1
            body["seed"] = index * 1_000_000 + n
            started = time.monotonic()
            try:
                reply = http.post(
                    f"{self.farm.url}/v1/sd1.5-img2img", json=body, headers={"Prefer": "wait=20"}, timeout=60
                )
            except requests.RequestException:
                with self.lock:
                    self.refused += 1
                continue
            if reply.status_code not in (200, 202, 500):
                with self.lock:
                    self.refused += 1
                continue
            job_id = reply.headers["x-job-id"]
            with self.lock:
                self.accepted[job_id] = started
            status = "succeeded" if reply.status_code == 200 else self.poll(http, job_id)
            if status == "succeeded":
                with self.lock:
                    self.latencies.append(time.monotonic() - started)

    def poll(self, http: requests.Session, job_id: str) -> str:
        while not self.stop.is_set():
            status = str(http.get(f"{self.farm.url}/v1/jobs/{job_id}", timeout=10).json()["status"])
            if status in TERMINAL:
                return status
            time.sleep(0.1)
        return "unknown"

    def killer(self) -> None:
        generation = len(self.farm.workers)
        store = JobStore(self.farm.settings)
        while not self.stop.wait(self.kill_every):
            victim = self.farm.workers.pop(0)
            victim.signal(signal.SIGKILL)
            self.kills += 1
            replacement = WorkerProcess(self.farm.settings, self.workdir, name=f"worker{generation}")
            self.replacements.append(replacement)
            generation += 1
            before = store.ready_workers(max_age=3600)
            replacement.start()
            replacement.wait_ready(store, timeout=300, before=before)
            self.farm.workers.append(replacement)

    def run(self) -> dict[str, Any]:
        store = JobStore(self.farm.settings)
        # Jobs carried by completed pipeline calls (a batched call carries several).
        runs_before = store.stats().get("pipeline_jobs", 0)
        threads = [threading.Thread(target=self.client, args=(i,)) for i in range(self.clients)]
        threads.append(threading.Thread(target=self.killer))
        for thread in threads:
            thread.start()
        time.sleep(self.seconds)
        self.stop.set()
        for thread in threads:
            thread.join()
        # Every accepted job must end; give the farm time to finish what is queued.
        deadline = time.monotonic() + 120 + self.farm.settings.job_lease_seconds
        pending = set(self.accepted)
        outcomes: dict[str, str] = {}
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                job = store.get(job_id)
                if job is not None and job.status.terminal:
                    outcomes[job_id] = job.status.value
                    pending.discard(job_id)
            time.sleep(0.2)
        for worker in self.replacements:
            worker.stop()
        succeeded = sum(1 for status in outcomes.values() if status == "succeeded")
        runs = store.stats().get("pipeline_jobs", 0) - runs_before
        return {
            "clients": self.clients,
            "seconds": self.seconds,
            "kill_every_seconds": self.kill_every,
            "kills": self.kills,
            "submitted": len(self.accepted),
            "succeeded": succeeded,
            "failed": sum(1 for status in outcomes.values() if status != "succeeded"),
            "lost": len(pending),
            "duplicated": max(0, runs - succeeded),
            "refused_requests": self.refused,
            "latency_p50_s": percentile(self.latencies, 50),
            "latency_p95_s": percentile(self.latencies, 95),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--kill-every", type=float, default=15.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = ensure_tiny_model(ROOT / "var" / "models" / "tiny")
    settings = Settings(
        device="cpu",
        torch_threads=1,
        model_dir=str(model),
        auth_enabled=False,
        job_lease_seconds=3.0,
        sweep_interval_seconds=1.0,
        worker_heartbeat_seconds=1.0,
    )
    with tempfile.TemporaryDirectory() as tmp, local_farm(settings, Path(tmp), workers=2, threads=16) as farm:
        result = Soak(farm, args.clients, args.minutes * 60, args.kill_every, Path(tmp) / "log").run()
    out = sys.stdout
    out.write(
        "\nsoak: "
        + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
    )
    out.write("\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
