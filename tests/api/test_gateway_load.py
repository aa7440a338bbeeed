"""The gateway under load and attack: waiting clients and slow clients cost no thread.

One gunicorn process (gevent) in front of a queue no worker reads, so every synchronous
request waits its whole ``SYNC_WAIT_SECONDS``. While hundreds of clients wait, or dozens
never finish their requests, a probe measures ``/healthz`` and another key's job poll.
"""

from __future__ import annotations

import json
import selectors
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from deploy.local import GatewayProcess
from shared.keys import KeyStore, key_id_of
from shared.pricing import job_cost_milli
from shared.schema import parse_request
from shared.settings import Settings
from tests.helpers import REFERENCE, b64, sample_image

URL = "/v1/sd1.5-img2img"
BODY = json.dumps({**REFERENCE, "image": b64(sample_image((64, 48)))}).encode()
SLOW = 1.0  # the most a probe may take


@dataclass
class Farm:
    settings: Settings
    url: str
    host: str
    port: int

    def key(self) -> str:
        secret, _ = KeyStore(self.settings).create(f"load-{time.monotonic_ns()}", 10**9)
        return secret


@pytest.fixture(scope="module")
def farm(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    settings = base_settings.replace(
        queue_name="img2img-load",
        key_prefix="t-load",
        auth_enabled=True,
        sync_wait_seconds=45,
        max_sync_waits_per_key=120,
        max_sync_waits_per_job=32,
        rate_limit_per_minute=100_000,
        read_rate_limit_per_minute=100_000,
    )
    proc = GatewayProcess(settings, tmp_path_factory.mktemp("load"))  # one process
    proc.start()
    yield Farm(settings, proc.url, "127.0.0.1", proc.port)
    proc.stop(timeout=2)  # the waits left behind by the tests would hold a graceful stop for 45 s


@dataclass
class Probe:
    """Polls ``/healthz`` and a job of another key every 0.25 s in a thread; the slowest of each."""

    farm: Farm
    slowest: dict[str, float] = field(default_factory=lambda: {"health": 0.0, "poll": 0.0})
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._headers = {"x-api-key": self.farm.key()}
        self._job = submit_async(self.farm, self._headers)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            for name, path, headers in (
                ("health", "/healthz", {}),
                ("poll", f"/v1/jobs/{self._job}", self._headers),
            ):
                started = time.monotonic()
                try:
                    status = requests.get(self.farm.url + path, headers=headers, timeout=10).status_code
                except requests.RequestException as exc:
                    self.failures.append(f"{name}: {exc}")
                    continue
                took = time.monotonic() - started
                self.slowest[name] = max(self.slowest[name], took)
                if status != 200:
                    self.failures.append(f"{name}: {status}")


def submit_async(farm: Farm, headers: dict[str, str]) -> str:
    headers = {**headers, "Prefer": "respond-async", "Content-Type": "application/json"}
    job = requests.post(farm.url + URL, data=BODY, headers=headers, timeout=10)
    assert job.status_code == 202, job.text
    return str(job.json()["id"])


def raw_request(farm: Farm, key: str, extra: dict[str, str] | None = None, body: bytes = BODY) -> bytes:
    headers = {
        "Host": f"{farm.host}:{farm.port}",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "x-api-key": key,
        **(extra or {}),
    }
    head = f"POST {URL} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode() + body


def open_clients(farm: Farm, requests_bytes: list[bytes]) -> list[socket.socket]:
    """One connection per request, each sent whole; nobody reads the answers yet."""
    clients = []
    for data in requests_bytes:
        conn = socket.create_connection((farm.host, farm.port), timeout=60)
        conn.sendall(data)
        clients.append(conn)
    return clients


def read_answer(conn: socket.socket) -> tuple[int, bytes]:
    """One whole answer on ``conn``: its status and bytes (-1 when the connection closed first)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return -1, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next((int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length")), 0)
    while len(body) < length:
        body += conn.recv(65536)
    return int(head.split(b" ", 2)[1]), head + b"\r\n\r\n" + body


def read_status(conn: socket.socket, timeout: float) -> tuple[int, bytes]:
    """The status and whole answer on ``conn`` (0 when none came within ``timeout``); closes it."""
    conn.settimeout(timeout)
    try:
        return read_answer(conn)
    except TimeoutError:
        return 0, b""
    finally:
        conn.close()


def statuses_now(clients: list[socket.socket]) -> list[tuple[int, bytes]]:
    """Each connection's answer if one has come (status 0 for those still waiting); closes them."""
    with selectors.DefaultSelector() as selector:
        for conn in clients:
            selector.register(conn, selectors.EVENT_READ)
        ready = {key.fileobj for key, _ in selector.select(timeout=0)}
    answers = []
    for conn in clients:
        if conn in ready:
            answers.append(read_status(conn, 5))
        else:
            conn.close()
            answers.append((0, b""))
    return answers


def test_64_unfinished_headers_and_32_trickling_bodies_do_not_stall_it(farm: Farm) -> None:
    key = farm.key()
    held: list[socket.socket] = []
    with Probe(farm) as probe:
        for _ in range(64):
            conn = socket.create_connection((farm.host, farm.port), timeout=10)
            conn.sendall(f"POST {URL} HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\n".encode())  # never ends
            held.append(conn)
        trickling = []
        for _ in range(32):
            conn = socket.create_connection((farm.host, farm.port), timeout=10)
            conn.sendall(raw_request(farm, key)[: -len(BODY)] + BODY[:10])
            trickling.append(conn)
        held += trickling
        deadline = time.monotonic() + 20
        sent = 10
        while time.monotonic() < deadline:
            for conn in trickling:
                conn.sendall(BODY[sent : sent + 1])  # one byte a second
            sent += 1
            time.sleep(1)
    for conn in held:
        conn.close()
    assert probe.failures == []
    assert max(probe.slowest.values()) < SLOW, probe.slowest


def test_100_sync_waits_on_one_job_and_the_per_job_bound(farm: Farm) -> None:
    """100 plain Segmind clients attach to one job through one Idempotency-Key (one job paid
    for): 32 wait, the rest are 429 at once, naming the job (the key's bound is 120). With
    ``Prefer: wait`` they get the job (202) instead. Health and another key's polls stay fast."""
    key = farm.key()
    once = {"Idempotency-Key": f"load-{time.monotonic_ns()}"}
    job_id = submit_async(farm, {"x-api-key": key, **once})
    with Probe(farm) as probe:
        clients = open_clients(farm, [raw_request(farm, key, once)] * 100)
        time.sleep(5)
        answers = statuses_now(clients)
        limited = [data for status, data in answers if status == 429]
        waiting = [status for status, _ in answers if status == 0]  # still waiting after 5 s
        assert (len(limited), len(waiting)) == (100 - 32, 32), sorted(status for status, _ in answers)
        assert all(job_id.encode() in data and b"Retry-After" in data for data in limited)
        with_prefer = open_clients(farm, [raw_request(farm, key, {**once, "Prefer": "wait=30"})])
        assert read_status(with_prefer[0], 10)[0] == 202
        time.sleep(2)
    assert probe.failures == []
    assert max(probe.slowest.values()) < SLOW, probe.slowest


def test_500_sync_waits_from_many_keys_and_the_per_key_bound(farm: Farm) -> None:
    """500 clients of 25 keys wait at once (20 each, under the bound of 120); a key beyond its
    120 waits is 429 before anything is submitted (nothing charged); probes stay fast."""
    keys = [farm.key() for _ in range(25)]
    with Probe(farm) as probe:
        clients = open_clients(farm, [raw_request(farm, keys[i % 25]) for i in range(500)])
        time.sleep(8)  # every one of them submitted and waiting
        greedy = farm.key()
        mine = open_clients(farm, [raw_request(farm, greedy)] * 125)
        time.sleep(5)
        statuses = [status for status, _ in statuses_now(mine)]
        assert statuses.count(429) == 5 and statuses.count(0) == 120, statuses
        charged = 10**9 - KeyStore(farm.settings).balance(key_id_of(greedy) or "")
        answered = [status for status, _ in statuses_now(clients)]
    assert answered.count(0) == 500, sorted(answered)[-5:]  # all still waiting: none dropped
    assert probe.failures == []
    assert max(probe.slowest.values()) < SLOW, probe.slowest
    params = parse_request(json.loads(BODY), farm.settings).params
    assert charged == 120 * job_cost_milli(params, farm.settings)  # the 5 refused cost nothing


def test_a_stopping_gateway_finishes_waits_and_closes_idle_connections(farm: Farm, tmp_path: Path) -> None:
    """SIGTERM: a client waiting for its job still gets its answer (here the 202 when its
    wait ends), while a kept-alive idle connection does not hold the process: it exits as
    soon as the wait is answered, not after the 30 s keep-alive."""
    settings = farm.settings.replace(sync_wait_seconds=3)
    gateway = GatewayProcess(settings, tmp_path)
    gateway.start()
    try:
        key = KeyStore(settings).create(f"stop-{time.monotonic_ns()}", 10**9)[0]
        live = Farm(settings, gateway.url, "127.0.0.1", gateway.port)
        idle = socket.create_connection((live.host, live.port), timeout=10)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(idle)[0] == 200  # the connection stays open, kept alive
        (waiting,) = open_clients(live, [raw_request(live, key)])
        time.sleep(1)
        started = time.monotonic()
        gateway.signal(signal.SIGTERM)
        status, _ = read_status(waiting, 10)
        gateway.proc.wait(15)  # type: ignore[union-attr]
        took = time.monotonic() - started
    finally:
        gateway.stop()
    assert status == 202
    assert took < 6, took
    assert idle.recv(1) == b""  # closed by the gateway
    idle.close()
