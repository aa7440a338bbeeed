"""The gateway's submit rate and its waiting clients, with no worker (jobs stay queued).

Starts Redis, the S3 server and the gunicorn gateway on loopback, keys on, and no worker:

1. **Submit rate**, for 1, 2 and 4 gateway processes: ``--connections`` (64) kept-alive
   connections post the reference request (a 512x512 PNG) with ``Prefer: respond-async``
   for ``--seconds``; submits/s, p50/p99 latency, and the CPU milliseconds per submit of
   each process (gateway, Redis, S3 server), read from ``/proc`` before and after.
2. **Waiting clients**, one gateway process: N synchronous clients (up to 2,000) submit and
   wait at once (each on its own job, keys spread under the per-key bound) while a probe
   measures ``/healthz`` and another key's job poll; p50/max of each.

The load generator is asyncio over raw sockets (a fraction of a millisecond per request),
so its own CPU, on the same cores, weighs little on the figures.

    python bench/submit.py [--seconds 10] [--connections 64] [--gateways 1,2,4]
                           [--waiters 500,1000,2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import requests  # noqa: E402

from bench.stats import percentile  # noqa: E402
from deploy.local import GatewayProcess, RedisServer, S3Server  # noqa: E402
from shared.keys import KeyStore  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.store import JobStore  # noqa: E402
from tests.helpers import reference_body  # noqa: E402

URL = "/v1/sd1.5-img2img"
BODY = json.dumps(reference_body()).encode()


@dataclass
class Stack:
    settings: Settings
    redis: RedisServer
    s3: S3Server
    gateway: GatewayProcess

    def processes(self) -> dict[str, list[psutil.Process]]:
        master = psutil.Process(self.gateway.pid)
        return {
            "gateway": [master, *master.children(recursive=True)],
            "redis": [psutil.Process(self.redis.pid)],
            "s3": [psutil.Process(self.s3.pid)],
        }

    def key(self, name: str) -> str:
        secret, _ = KeyStore(self.settings).create(name, 10**12)
        return secret


@contextmanager
def stack(base: Settings, workdir: Path, gateways: int) -> Iterator[Stack]:
    redis, s3 = RedisServer(workdir / "redis"), S3Server(workdir / "s3")
    redis.start()
    s3.start()
    settings = base.replace(
        redis_url=redis.url, s3_endpoint_url=s3.url, s3_access_key_id="local", s3_secret_access_key="local"
    )
    gateway = GatewayProcess(settings, workdir / "log", workers=gateways)
    try:
        gateway.start()
        requests.get(gateway.url + "/healthz", timeout=30)
        yield Stack(settings, redis, s3, gateway)
    finally:
        gateway.stop()
        s3.stop()
        redis.stop()


def cpu_seconds(procs: dict[str, list[psutil.Process]]) -> dict[str, float]:
    total = {}
    for name, members in procs.items():
        seconds = 0.0
        for proc in members:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            seconds += times.user + times.system
        total[name] = seconds
    return total


def request_bytes(port: int, headers: dict[str, str]) -> bytes:
    head = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json", "Content-Length": str(len(BODY))}
    lines = "".join(f"{k}: {v}\r\n" for k, v in {**head, **headers}.items())
    return f"POST {URL} HTTP/1.1\r\n{lines}\r\n".encode() + BODY


async def read_answer(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return status


async def submit_load(
    port: int, key: str, connections: int, seconds: float
) -> tuple[list[float], dict[int, int]]:
    data = request_bytes(port, {"x-api-key": key, "Prefer": "respond-async"})
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds

    async def one_connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                writer.write(data)
                status = await read_answer(reader)
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return latencies, statuses


def submit_rate(base: Settings, gateways: int, connections: int, seconds: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp, stack(base, Path(tmp), gateways) as farm:
        key = farm.key("bench-submit")
        asyncio.run(submit_load(farm.gateway.port, key, connections, 1.0))  # warm every process
        procs = farm.processes()
        before = cpu_seconds(procs)
        started = time.monotonic()
        latencies, statuses = asyncio.run(submit_load(farm.gateway.port, key, connections, seconds))
        took = time.monotonic() - started
        after = cpu_seconds(procs)
        children = psutil.Process(farm.gateway.pid).children()
        split = sorted(round(sum(child.cpu_times()[:2]), 1) for child in children)
    accepted = statuses.get(202, 0)
    return {
        "gateways": gateways,
        "submits_per_s": accepted / took,
        "statuses": statuses,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "cpu_ms_per_submit": {name: (after[name] - before[name]) * 1000 / max(accepted, 1) for name in after},
        "gateway_process_cpu_s": split,
    }


async def hold_waiters(
    port: int, keys: list[str], n: int, probe_seconds: float, probe: Probe, store: JobStore
) -> dict[str, int]:
    """Open ``n`` synchronous submits (100 every 0.75 s, under the submit rate) and keep them
    all waiting while ``probe`` runs."""
    opened = []
    for i in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes(port, {"x-api-key": keys[i % len(keys)]}))
        opened.append((reader, writer))
        if i % 100 == 99:
            await asyncio.sleep(0.75)
    deadline = time.monotonic() + 300
    while store.counters.all().get("jobs_queued", 0) < n + 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)  # until every client's job is recorded and its wait begun
    await asyncio.sleep(1)
    await asyncio.to_thread(probe.run, probe_seconds)
    reads = [asyncio.ensure_future(read_answer(reader)) for reader, _ in opened]
    done, pending = await asyncio.wait(reads, timeout=1.0)  # answers already in: ended early
    early: dict[str, int] = {}
    for task in done:
        status = str(task.result()) if task.exception() is None else "closed"
        early[status] = early.get(status, 0) + 1
    for task in pending:
        task.cancel()
    for _, writer in opened:
        writer.close()
    return early


@dataclass
class Probe:
    url: str
    key: str
    job: str

    def run(self, seconds: float) -> None:
        self.health: list[float] = []
        self.poll: list[float] = []
        deadline = time.monotonic() + seconds
        with requests.Session() as session:
            while time.monotonic() < deadline:
                for series, path, headers in (
                    (self.health, "/healthz", {}),
                    (self.poll, f"/v1/jobs/{self.job}", {"x-api-key": self.key}),
                ):
                    started = time.perf_counter()
                    session.get(self.url + path, headers=headers, timeout=30).raise_for_status()
                    series.append(time.perf_counter() - started)
                time.sleep(0.1)


def waiting_clients(base: Settings, n: int, probe_seconds: float) -> dict[str, object]:
    # Room for the waiting clients and the probe (GATEWAY_CONNECTIONS bounds a process's clients).
    settings = base.replace(sync_wait_seconds=600, max_sync_waits_per_key=256, gateway_connections=n + 100)
    with tempfile.TemporaryDirectory() as tmp, stack(settings, Path(tmp), 1) as farm:
        keys = [farm.key(f"bench-wait-{i}") for i in range(n // 50 + 1)]  # under the per-key bounds
        probe_key = farm.key("bench-probe")
        queued = requests.post(
            farm.gateway.url + URL, data=BODY, timeout=30,
            headers={"x-api-key": probe_key, "Prefer": "respond-async", "Content-Type": "application/json"},
        )  # fmt: skip
        probe = Probe(farm.gateway.url, probe_key, queued.json()["id"])
        started = time.monotonic()
        store = JobStore(farm.settings)
        early = asyncio.run(hold_waiters(farm.gateway.port, keys, n, probe_seconds, probe, store))
        took = time.monotonic() - started
    return {
        "waiting": n,
        "seconds": took,
        "answered_early": early,
        "health_p50_ms": percentile(probe.health, 50) * 1000,
        "health_max_ms": max(probe.health) * 1000,
        "poll_p50_ms": percentile(probe.poll, 50) * 1000,
        "poll_max_ms": max(probe.poll) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--gateways", default="1,2,4")
    parser.add_argument("--waiters", default="500,1000,2000")
    parser.add_argument("--probe-seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    base = Settings.from_env().replace(
        queue_name="bench-submit-unserved",
        auth_enabled=True,
        rate_limit_per_minute=10**7,
        read_rate_limit_per_minute=10**7,
        max_queue_depth=10**7,
        max_decodes_per_key=64,
    )
    results: dict[str, list[dict[str, object]]] = {"submit": [], "waiting": []}
    print(f"submit rate: {args.connections} connections, {args.seconds:.0f} s, no worker")
    print(f"{'gateways':>8} {'submits/s':>10} {'p50 ms':>8} {'p99 ms':>8}   CPU ms per submit")
    for gateways in (int(g) for g in args.gateways.split(",") if g):
        row = submit_rate(base, gateways, args.connections, args.seconds)
        results["submit"].append(row)
        cpu = row["cpu_ms_per_submit"]
        assert isinstance(cpu, dict)
        shares = "  ".join(f"{name} {value:.2f}" for name, value in cpu.items())
        rate, p50, p99 = row["submits_per_s"], row["p50_ms"], row["p99_ms"]
        split = row["gateway_process_cpu_s"]
        print(f"{gateways:>8} {rate:>10.1f} {p50:>8.1f} {p99:>8.1f}   {shares}  (CPU s per process: {split})")
    print(f"\nwaiting clients (one gateway process), probe every 0.1 s for {args.probe_seconds:.0f} s")
    print(f"{'waiting':>8} {'health p50':>11} {'health max':>11} {'poll p50':>9} {'poll max':>9}  (ms)")
    for n in (int(w) for w in args.waiters.split(",") if w):
        row = waiting_clients(base, n, args.probe_seconds)
        results["waiting"].append(row)
        print(
            f"{n:>8} {row['health_p50_ms']:>11.1f} {row['health_max_ms']:>11.1f} "
            f"{row['poll_p50_ms']:>9.1f} {row['poll_max_ms']:>9.1f}  answered early: {row['answered_early']}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
