"""The farm's command lines, and child processes with an explicit start/stop lifecycle.

This module owns how a GPU worker, the webhook worker (notifier) and the gateway are
started; everything that starts one builds its command line here:

- the images, compose and Kubernetes run ``python -m deploy.processes worker`` or
  ``... notifier``, which builds the command line below from the environment's settings
  and replaces itself (exec) with it;
- ``deploy.launcher`` (one worker per GPU) starts :func:`worker_argv` as a
  :class:`ManagedProcess` per GPU;
- ``deploy.local`` (``make run``, the tests, the benchmarks) starts the same command
  lines on loopback;
- ``deploy/gunicorn.conf.py`` (the gateway image) takes its worker class, timeouts and
  keep-alive from here, as :func:`gateway_argv` does.

It imports only the standard library and ``shared.settings``: both images carry it.
``python -m deploy.processes worker --print`` shows the command line without running it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from shared.settings import Settings

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent

WORKER_APP = "worker.main"
NOTIFIER_APP = "worker.notify_main"
NOTIFIER_THREADS = 8
GATEWAY_APP = "api.wsgi:app"
GATEWAY_WORKER_CLASS = "deploy.gateway_worker.JsonErrorGeventWorker"
GATEWAY_KEEPALIVE = 30


# -- command lines ----------------------------------------------------------------


def _celery_worker_argv(app: str, queue: str, pool: str, concurrency: int, name: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "-Q", queue, "-c", str(concurrency), "-P", pool, "-n", f"{name}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info",
    ]  # fmt: skip


def worker_argv(settings: Settings, name: str = "worker") -> list[str]:
    """A GPU worker: one prefork pool process holding one pipeline, on ``QUEUE_NAME``."""
    return _celery_worker_argv(WORKER_APP, settings.queue_name, "prefork", 1, name)


def notifier_argv(settings: Settings, name: str = "notifier", threads: int = NOTIFIER_THREADS) -> list[str]:
    """The webhook worker: a thread pool on ``WEBHOOK_QUEUE`` (no torch)."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    return _celery_worker_argv(NOTIFIER_APP, settings.webhook_queue, "threads", threads, name)


def gateway_timeout(sync_wait_seconds: float) -> int:
    """gunicorn's worker timeout: a synchronous request may legitimately wait this long."""
    return int(sync_wait_seconds) + 60


def gateway_graceful_timeout(sync_wait_seconds: float) -> int:
    """gunicorn's graceful timeout: waiting requests may finish on shutdown."""
    return int(sync_wait_seconds) + 10


def gateway_argv(settings: Settings, bind: str, workers: int | None = None) -> list[str]:
    """The gateway under gunicorn's gevent worker, every option on the command line:
    ``workers`` processes (default ``GATEWAY_WORKERS``), each holding up to
    ``GATEWAY_CONNECTIONS`` clients at once.

    The gateway image runs ``gunicorn -c deploy/gunicorn.conf.py api.wsgi:app`` instead,
    whose worker class, timeouts and keep-alive are the ones used here.
    """
    return [
        sys.executable, "-m", "gunicorn", GATEWAY_APP,
        "--bind", bind, "--workers", str(workers or settings.gateway_workers),
        "--worker-connections", str(settings.gateway_connections),
        "--worker-class", GATEWAY_WORKER_CLASS,
        "--timeout", str(gateway_timeout(settings.sync_wait_seconds)),
        "--keep-alive", str(GATEWAY_KEEPALIVE),
        "--forwarded-allow-ips", settings.trusted_proxies,
    ]  # fmt: skip


def service_env(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with ``settings`` (and ``extra``) written over it."""
    env = dict(os.environ)
    env.update(settings.to_env())
    env.update(extra or {})
    return env


# -- child processes ----------------------------------------------------------------


class ManagedProcess:
    """A child process in its own session (its process group), started and stopped explicitly.

    Its output goes to ``log_file``, or, when that is None, to this process's stdout and
    stderr (a container's log).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_file: Path | None,
        env: Mapping[str, str] | None = None,
        die_with_parent: bool = False,
    ):
        self.name = name
        self.argv = list(argv)
        self.log_file = log_file
        self.env = dict(os.environ if env is None else env)
        # On Linux, SIGTERM when this process dies (however it dies): no orphans.
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        preexec = _terminate_with_parent if self.die_with_parent and sys.platform == "linux" else None
        if self.log_file is None:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=ROOT, start_new_session=True, preexec_fn=preexec
            )
        else:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_file, "ab") as out:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=ROOT,
                    start_new_session=True,
                    preexec_fn=preexec,
                )
        log.info("%s: started pid %d", self.name, self.proc.pid)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM to the process alone, not its group: a Celery worker's main process then
        makes its warm shutdown (the pool process finishes its job) instead of the pool
        process dying mid-job from a SIGTERM of its own."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process group (a Celery worker's pool children included)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, up to ``timeout`` seconds, then SIGKILL; whatever is left in the group goes too."""
        if self.proc is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(5)
        # Children left behind in the group (pool processes) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        log.info("%s: stopped", self.name)


_PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux ``prctl``)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# -- entry of the images: python -m deploy.processes worker|notifier ------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--print", action="store_true", help="print the command line instead of running it")
    parser = argparse.ArgumentParser(
        prog="python -m deploy.processes",
        description="Run one of the farm's Celery workers, its settings read from the environment.",
    )
    roles = parser.add_subparsers(dest="role", required=True)
    worker = roles.add_parser("worker", parents=[common], help="a GPU worker on QUEUE_NAME")
    worker.add_argument("--name", default="worker", help="Celery node name before @host (default: worker)")
    notifier = roles.add_parser("notifier", parents=[common], help="the webhook worker on WEBHOOK_QUEUE")
    notifier.add_argument("--name", default="notifier", help="Celery node name before @host")
    notifier.add_argument("--threads", type=int, default=NOTIFIER_THREADS, help="deliveries at once")
    return parser.parse_args(argv)


def command_line(args: argparse.Namespace, settings: Settings) -> list[str]:
    if args.role == "worker":
        return worker_argv(settings, args.name)
    return notifier_argv(settings, args.name, args.threads)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the role's command line from the environment's settings and exec it."""
    args = parse_args(argv)
    command = command_line(args, Settings.from_env())
    if args.print:
        sys.stdout.write(shlex.join(command) + "\n")
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)  # the worker takes this process's place (and its pid)


if __name__ == "__main__":
    sys.exit(main())
