"""Soak under faults: clients submit for a while as workers are killed and restarted, or a
backlog meets a farm that starts cold.

``--scenario kills`` (the default) starts Redis, S3, two workers and the gateway on loopback
(tiny model), then runs ``--clients`` threads that each submit a request, wait for its
result (polling when the sync wait runs out) and submit the next, for ``--minutes``. Every
``--kill-every`` seconds one worker is killed with SIGKILL (pool and all) and a new one
started.

``--scenario cold-start`` starts Redis, S3 and the gateway with no worker, queues ``--jobs``
jobs of several shapes, then starts ``--workers`` workers whose load takes ``--load-seconds``
(longer than the task soft time limit, as a GPU worker's load and compile warm-up is) and
one worker that cannot load (its model path is wrong), as a farm scaled up from zero does.

At the end it waits for every accepted job to end and prints:

- submitted, succeeded, failed: accepted jobs and how they ended;
- lost: accepted jobs that never ended (must be 0);
- duplicated: job runs completed beyond one per succeeded job (must be 0);
- kills: p50/p95 latency from submit to result, and the number of kills;
- cold-start: stranded (accepted jobs that did not succeed, whether failed by a time limit,
  taken by a worker that could not run them or never ended: must be 0), seconds from the
  first worker start to the first and the last result, and the broken worker's exit status.

    python bench/soak.py [--clients 4] [--minutes 2] [--kill-every 15] [--json out.json]
    python bench/soak.py --scenario cold-start [--jobs 24] [--workers 2] [--load-seconds 8]
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
from shared.settings import Settings  # noqa: E402
from shared.store import JobStore  # noqa: E402
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
            before = store.workers.fresh(max_age=3600)
            replacement.start()
            replacement.wait_ready(store, timeout=300, before=before)
            self.farm.workers.append(replacement)

    def run(self) -> dict[str, Any]:
        store = JobStore(self.farm.settings)
        # Jobs carried by completed pipeline calls (a batched call carries several).
        runs_before = store.counters.all().get("pipeline_jobs", 0)
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
                job = store.jobs.get(job_id)
                if job is not None and job.status.terminal:
                    outcomes[job_id] = job.status.value
                    pending.discard(job_id)
            time.sleep(0.2)
        for worker in self.replacements:
            worker.stop()
        succeeded = sum(1 for status in outcomes.values() if status == "succeeded")
        runs = store.counters.all().get("pipeline_jobs", 0) - runs_before
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


class ColdStart:
    """A backlog queued before any worker runs, then slow-loading workers and a broken one."""

    SOFT_TIME_LIMIT = 3

    def __init__(self, farm: Farm, jobs: int, workers: int, load_seconds: float, workdir: Path) -> None:
        self.farm = farm
        self.jobs = jobs
        self.workers = workers
        self.load_seconds = load_seconds
        self.workdir = workdir

    def run(self) -> dict[str, Any]:
        http = requests.Session()
        store = JobStore(self.farm.settings)
        runs_before = store.counters.all().get("pipeline_jobs", 0)
        accepted: list[str] = []
        for i in range(self.jobs):
            body = reference_body(seed=i, num_inference_steps=20 + 5 * (i % 4), strength=0.2, base64=True)
            reply = http.post(
                f"{self.farm.url}/v1/sd1.5-img2img",
                json=body,
                headers={"Prefer": "respond-async"},
                timeout=30,
            )
            reply.raise_for_status()
            accepted.append(reply.headers["x-job-id"])
        slow_env = {"SLOW_LOAD_SECONDS": str(self.load_seconds)}
        broken = WorkerProcess(
            self.farm.settings.replace(model_dir=str(self.workdir / "no-such-model")),
            self.workdir,
            name="broken",
        )
        workers = [
            WorkerProcess(self.farm.settings, self.workdir, name=f"cold{i}", extra_env=slow_env)
            for i in range(self.workers)
        ]
        started = time.monotonic()
        for worker in (broken, *workers):
            worker.start()
        ended: dict[str, Any] = {}
        first_result = None
        deadline = started + self.load_seconds + 60 + 5 * self.jobs
        while len(ended) < len(accepted) and time.monotonic() < deadline:
            for job_id in accepted:
                job = store.jobs.get(job_id)
                if job_id not in ended and job is not None and job.status.terminal:
                    ended[job_id] = job
                    first_result = first_result or time.monotonic() - started
            time.sleep(0.2)
        last_result = time.monotonic() - started
        broken_exit = broken.proc.wait(60) if broken.proc is not None else None
        for worker in (broken, *workers):
            worker.stop()
        succeeded = sum(1 for job in ended.values() if job.status.value == "succeeded")
        runs = store.counters.all().get("pipeline_jobs", 0) - runs_before
        return {
            "jobs": self.jobs,
            "workers": self.workers,
            "load_seconds": self.load_seconds,
            "soft_time_limit_seconds": self.SOFT_TIME_LIMIT,
            "submitted": len(accepted),
            "succeeded": succeeded,
            "failed": len(ended) - succeeded,
            "stranded": len(accepted) - succeeded,
            "lost": len(accepted) - len(ended),
            "duplicated": max(0, runs - succeeded),
            "first_result_s": first_result,
            "last_result_s": last_result,
            "broken_worker_exit": broken_exit,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--kill-every", type=float, default=15.0)
    parser.add_argument("--scenario", choices=("kills", "cold-start"), default="kills")
    parser.add_argument("--jobs", type=int, default=24, help="cold-start: jobs queued before any worker")
    parser.add_argument("--workers", type=int, default=2, help="cold-start: workers that load slowly")
    parser.add_argument("--load-seconds", type=float, default=8.0, help="cold-start: extra load time")
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
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.scenario == "kills":
            with local_farm(settings, workdir, workers=2) as farm:
                result = Soak(farm, args.clients, args.minutes * 60, args.kill_every, workdir / "log").run()
        else:
            cold = settings.replace(
                runner="tests.fixtures.runners:SlowLoadRunner",
                task_soft_time_limit=ColdStart.SOFT_TIME_LIMIT,
                task_time_limit=60,
                visibility_timeout=120,
            )
            with local_farm(cold, workdir, workers=0) as farm:
                result = ColdStart(farm, args.jobs, args.workers, args.load_seconds, workdir / "log").run()
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
