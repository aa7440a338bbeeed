"""Local processes of the farm: Redis, an S3 endpoint, workers and the gateway.

Used by ``make run`` (``python -m deploy.local``), by the integration tests and by the
benchmarks, so all three start the same real pieces the same way. Every process binds
to loopback, writes its log to a file and is stopped (then killed) explicitly.

Workers, the webhook worker and the gateway run the command lines of
:mod:`deploy.processes`, the ones production runs. This module is for development only:
no image ships it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from deploy.processes import (
    NOTIFIER_THREADS,
    ManagedProcess,
    gateway_argv,
    notifier_argv,
    service_env,
    worker_argv,
)
from shared.keys import KeyStore, key_id_of
from shared.local_farm import FARM_FILE, write_farm_file
from shared.pricing import to_milli
from shared.settings import Settings
from shared.store import JobStore

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class StartError(RuntimeError):
    """A local process did not come up in time; its log tail is in the message."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], timeout: float, what: str, log_file: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.05)
    tail = ""
    if log_file is not None and log_file.exists():
        tail = "\n" + "\n".join(log_file.read_text(errors="replace").splitlines()[-40:])
    raise StartError(f"{what} did not come up within {timeout:.0f}s{tail}")


class RedisServer(ManagedProcess):
    def __init__(self, workdir: Path, port: int | None = None, appendonly: bool = False):
        self.port = port or free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(self.port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
            "--appendfsync",
            "everysec",
            "--dir",
            str(workdir),
        ]
        super().__init__(f"redis:{self.port}", argv, workdir / "redis.log")

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        super().start()
        client = redis.Redis(host=LOOPBACK, port=self.port, socket_connect_timeout=1)
        wait_until(lambda: bool(client.ping()), timeout, self.name, self.log_file)
        client.close()


class S3Server(ManagedProcess):
    """moto's S3 server on loopback, reached through boto3 over HTTP like MinIO or AWS.

    moto keeps objects in memory; with ``keep`` it also writes every request it serves to
    ``workdir/recording.jsonl`` and replays that file when it starts again, so a local farm's
    inputs and outputs outlive a restart (the file grows with use: delete it to start empty).
    """

    def __init__(self, workdir: Path, port: int | None = None, keep: bool = False):
        self.port = port or free_port()
        self.recording = workdir / "recording.jsonl" if keep else None
        argv = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)]
        env = dict(os.environ)
        if self.recording is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            env.update(MOTO_ENABLE_RECORDING="true", MOTO_RECORDER_FILEPATH=str(self.recording.resolve()))
        super().__init__(f"s3:{self.port}", argv, workdir / "s3.log", env)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        super().start()

        def up() -> bool:
            with socket.create_connection((LOOPBACK, self.port), timeout=1):
                return True

        wait_until(up, timeout, self.name, self.log_file)
        if self.recording is not None and self.recording.exists() and self.recording.stat().st_size:
            replay = urllib.request.Request(f"{self.url}/moto-api/recorder/replay-recording", method="POST")
            with urllib.request.urlopen(replay, timeout=600):
                pass
            log.info("%s: replayed %s", self.name, self.recording)


class WorkerProcess(ManagedProcess):
    """A Celery worker: one pool process holding one loaded pipeline."""

    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        name: str = "worker",
        extra_env: Mapping[str, str] | None = None,
    ):
        env = service_env(settings, extra_env)
        super().__init__(name, worker_argv(settings, name), workdir / f"{name}.log", env)
        self.settings = settings

    def wait_ready(self, store: JobStore, timeout: float = 120.0, before: Sequence[str] = ()) -> None:
        """Wait until a worker not in ``before`` reports its pipeline loaded."""
        known = set(before)

        def ready() -> bool:
            if not self.alive():
                raise StartError(f"{self.name} exited")
            return bool(set(store.workers.fresh(max_age=30)) - known)

        wait_until(ready, timeout, self.name, self.log_file)


class NotifierProcess(ManagedProcess):
    """The webhook worker: a thread-pool Celery worker on the webhook queue (no torch)."""

    def __init__(
        self, settings: Settings, workdir: Path, name: str = "notifier", threads: int = NOTIFIER_THREADS
    ):
        self.log_path = workdir / f"{name}.log"
        super().__init__(name, notifier_argv(settings, name, threads), self.log_path, service_env(settings))

    def start(self, timeout: float = 30.0) -> None:
        super().start()
        wait_until(lambda: b"ready." in self.log_path.read_bytes(), timeout, self.name, self.log_path)


class GatewayProcess(ManagedProcess):
    """The gateway under gunicorn's gevent worker (``workers`` processes)."""

    def __init__(self, settings: Settings, workdir: Path, port: int | None = None, workers: int = 1):
        self.port = port or free_port()
        argv = gateway_argv(settings, f"{LOOPBACK}:{self.port}", workers)
        super().__init__(f"gateway:{self.port}", argv, workdir / "gateway.log", service_env(settings))

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        super().start()

        def up() -> bool:
            with socket.create_connection((LOOPBACK, self.port), timeout=1):
                return True

        wait_until(up, timeout, self.name, self.log_file)


@contextlib.contextmanager
def stopping(*procs: ManagedProcess) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in reversed(procs):
            proc.stop()


@dataclass
class Farm:
    """A running local farm: its settings (pointing at its own Redis and S3) and processes."""

    settings: Settings
    redis: RedisServer
    s3: S3Server
    workers: list[WorkerProcess]
    gateway: GatewayProcess | None

    @property
    def url(self) -> str:
        if self.gateway is None:
            raise RuntimeError("this farm has no gateway")
        return self.gateway.url


@contextlib.contextmanager
def local_farm(settings: Settings, workdir: Path, workers: int = 1, gateway: bool = True) -> Iterator[Farm]:
    """Redis, S3, ``workers`` workers and (optionally) a gunicorn gateway, all on loopback."""
    with contextlib.ExitStack() as stack:
        redis_server = RedisServer(workdir / "redis")
        s3 = S3Server(workdir / "s3")
        for proc in (redis_server, s3):
            stack.callback(proc.stop)
            proc.start()
        settings = settings.replace(
            redis_url=redis_server.url,
            s3_endpoint_url=s3.url,
            s3_access_key_id="local",
            s3_secret_access_key="local",
        )
        farm = Farm(settings, redis_server, s3, [], None)
        store = JobStore(settings)
        for i in range(workers):
            worker = WorkerProcess(settings, workdir / "log", name=f"worker{i}")
            stack.callback(worker.stop)
            before = store.workers.fresh(max_age=3600)
            worker.start()
            worker.wait_ready(store, timeout=settings.load_timeout_seconds, before=before)
            farm.workers.append(worker)
        notifier = NotifierProcess(settings, workdir / "log")
        stack.callback(notifier.stop)
        notifier.start()
        if gateway:
            farm.gateway = GatewayProcess(settings, workdir / "log")
            stack.callback(farm.gateway.stop)
            farm.gateway.start()
        yield farm


def main(argv: Sequence[str] | None = None) -> None:
    """Run the whole farm on this machine until interrupted (``make run``)."""
    parser = argparse.ArgumentParser(description="Run the img2img farm locally.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--var", type=Path, default=Path("var"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    signal.signal(signal.SIGTERM, _interrupt)
    base = Settings.from_env()
    procs: list[ManagedProcess] = []
    overrides: dict[str, object] = {}
    if not os.environ.get("REDIS_URL"):
        redis_server = RedisServer(args.var / "redis", appendonly=True)
        procs.append(redis_server)
        overrides["redis_url"] = redis_server.url
    if not base.s3_endpoint_url:
        s3 = S3Server(args.var / "s3", keep=True)
        procs.append(s3)
        overrides.update(s3_endpoint_url=s3.url, s3_access_key_id="local", s3_secret_access_key="local")
    if not base.webhook_secret:
        overrides["webhook_secret"] = secrets.token_hex(16)
        log.info("webhooks are signed with a fresh local secret: %s", overrides["webhook_secret"])
    settings = base.replace(**overrides)
    if not settings.model_id:
        from worker.models import ensure_tiny_model

        ensure_tiny_model(Path(settings.model_dir))
    worker = WorkerProcess(settings, args.var / "log")
    notifier = NotifierProcess(settings, args.var / "log")
    gateway = GatewayProcess(settings, args.var / "log", port=args.port)
    with stopping(*procs, worker, notifier, gateway), contextlib.suppress(KeyboardInterrupt):
        for proc in procs:
            proc.start()
        worker.start()
        notifier.start()
        worker.wait_ready(JobStore(settings), timeout=settings.load_timeout_seconds)
        api_key = local_api_key(settings, args.var) if settings.auth_enabled else None
        gateway.start()
        farm_file = write_farm_file(args.var / FARM_FILE.name, settings, gateway.url)
        try:
            _print_ready(gateway.url, api_key)
            while all(p.alive() for p in (*procs, worker, notifier, gateway)):
                time.sleep(1)
            log.error("a process exited; stopping the farm (logs in %s)", args.var)
        finally:
            farm_file.unlink(missing_ok=True)


def local_api_key(settings: Settings, var: Path) -> str:
    """The key ``make run`` prints: ``IMG2IMG_API_KEY`` when set, else the one kept in
    ``var/api-key`` (created with a large balance on first use)."""
    keys = KeyStore(settings)
    saved = var / "api-key"
    key = os.environ.get("IMG2IMG_API_KEY") or (saved.read_text().strip() if saved.exists() else "")
    key_id = key_id_of(key) if key else None
    if key and key_id is None:
        raise SystemExit("IMG2IMG_API_KEY must look like i2i_<8 hex>_<secret>")
    if key_id is not None and keys.authenticate(key) is not None:
        return key
    if key_id is not None and keys.get(key_id) is None:
        keys.create("local", to_milli(_LOCAL_CREDITS), key=key)
    else:
        key, _ = keys.create("local", to_milli(_LOCAL_CREDITS))
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(key + "\n")
    saved.chmod(0o600)
    return key


_LOCAL_CREDITS = 100_000.0


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _print_ready(url: str, api_key: str | None) -> None:
    key_header = f"-H 'x-api-key: {api_key}' " if api_key else ""
    example = (
        f'img=$({sys.executable} -c "import base64,io;from PIL import Image;b=io.BytesIO();'
        f"Image.new('RGB',(512,512),'teal').save(b,'PNG');print(base64.b64encode(b.getvalue()).decode())\")\n"
        f"curl -s {url}/v1/sd1.5-img2img -H 'Content-Type: application/json' {key_header}-o out.jpg \\\n"
        f'  -d \'{{"image": "\'$img\'", "prompt": "A fantasy landscape, trending on artstation", '
        f'"num_inference_steps": 25, "strength": 0.75, "base64": false}}\''
    )
    key_line = f"API key: {api_key}\n" if api_key else "API keys are off (AUTH_ENABLED=false)\n"
    sys.stdout.write(f"\nimg2img farm is ready on {url}\n{key_line}Try:\n{example}\n\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
