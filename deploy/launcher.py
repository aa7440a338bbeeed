"""One Celery worker process per GPU on this host: ``python -m deploy.launcher``.

GPUs are found, in this order, from ``CUDA_VISIBLE_DEVICES`` (when it is set, nothing else
is asked and torch is not imported), from ``nvidia-smi -L`` (MIG instances count as GPUs)
and from ``torch.cuda.device_count()``. ``--workers N --device cpu`` runs N CPU workers.

Worker i sees only its GPU (``CUDA_VISIBLE_DEVICES``), is named ``gpu{id}@{host}`` and,
when ``WORKER_METRICS_PORT`` is set, serves its metrics on that port + i. A worker that
exits is started again after a pause that doubles with each quick failure (``--backoff``
up to ``--max-backoff``). SIGTERM or SIGINT stops them all: SIGTERM to each worker's main
process only (Celery's warm shutdown lets the running job finish in the pool process; a
SIGTERM to the whole group would kill that process mid-job), up to ``--stop-timeout``
seconds, then SIGKILL. Workers get SIGTERM when the launcher dies, even by SIGKILL
(``PR_SET_PDEATHSIG``): a killed launcher leaves no orphan holding a GPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy.processes import ManagedProcess, service_env, worker_argv
from shared.settings import Settings

log = logging.getLogger(__name__)

_GPU_LINE = re.compile(r"^GPU (\d+):")
_MIG_LINE = re.compile(r"^\s+MIG .*\(UUID: (MIG-[^)\s]+)\)")


class LaunchError(RuntimeError):
    """The launcher cannot start: no GPU found, no model, bad arguments."""


# -- finding GPUs -------------------------------------------------------------


def parse_nvidia_smi(listing: str) -> list[str]:
    """Device ids from ``nvidia-smi -L``: GPU indices, or the MIG UUIDs of a split GPU."""
    devices: list[tuple[str, list[str]]] = []
    for line in listing.splitlines():
        gpu = _GPU_LINE.match(line)
        if gpu:
            devices.append((gpu.group(1), []))
            continue
        mig = _MIG_LINE.match(line)
        if mig and devices:
            devices[-1][1].append(mig.group(1))
    ids: list[str] = []
    for index, migs in devices:
        ids.extend(migs or [index])
    return ids


def nvidia_smi_listing() -> str | None:
    """``nvidia-smi -L`` output, or None without the tool or a driver."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    try:
        result = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("nvidia-smi -L failed: %s", exc)
        return None
    return result.stdout if result.returncode == 0 else None


def torch_device_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    count: int = torch.cuda.device_count()
    return count


def detect_gpus(
    environ: Mapping[str, str],
    listing: Callable[[], str | None] = nvidia_smi_listing,
    device_count: Callable[[], int] = torch_device_count,
) -> list[str]:
    """The ids of the GPUs this host may use, one worker each."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids: list[str] = []
        for part in visible.split(","):
            part = part.strip()
            if not part or part.startswith("-"):  # CUDA ignores everything from an invalid id on
                break
            ids.append(part)
        return ids
    text = listing()
    if text is not None:
        return parse_nvidia_smi(text)
    return [str(index) for index in range(device_count())]


# -- planning workers ----------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """One worker process to run: its name and what its environment adds."""

    name: str
    env: dict[str, str]


def plan_slots(settings: Settings, gpus: Sequence[str], workers: int | None, device: str) -> list[Slot]:
    """Slots for ``gpus`` (``device`` cuda/auto) or ``workers`` CPU workers (``device`` cpu)."""
    if device == "cpu":
        count = 1 if workers is None else workers
        if count < 1:
            raise LaunchError("--workers must be at least 1")
        slots = [Slot(f"cpu{i}", {"DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": ""}) for i in range(count)]
    else:
        if not gpus:
            raise LaunchError("no GPU found; for CPU workers use --device cpu --workers N")
        chosen = list(gpus) if workers is None else list(gpus)[:workers]
        # Each process sees one GPU as cuda:0, so DEVICE=cuda:N would point past it.
        cuda = "cuda" if settings.device.startswith("cuda") or settings.device == "auto" else settings.device
        # Named after the GPU index when there is one (gpu2 runs on GPU 2), else numbered.
        by_index = all(gpu.isdigit() for gpu in chosen)
        slots = [
            Slot(f"gpu{gpu if by_index else i}", {"DEVICE": cuda, "CUDA_VISIBLE_DEVICES": gpu})
            for i, gpu in enumerate(chosen)
        ]
    if settings.worker_metrics_port > 0:
        for i, slot in enumerate(slots):
            slot.env["WORKER_METRICS_PORT"] = str(settings.worker_metrics_port + i)
    return slots


# -- supervising them -----------------------------------------------------------


def worker_process(settings: Settings, slot: Slot, log_dir: Path | None) -> ManagedProcess:
    """The slot's worker (deploy.processes' command line), logging to ``log_dir`` or to stdout."""
    log_file = None if log_dir is None else log_dir / f"{slot.name}.log"
    return ManagedProcess(
        slot.name,
        worker_argv(settings, slot.name),
        log_file,
        service_env(settings, slot.env),
        die_with_parent=True,  # a killed launcher leaves no orphan worker holding a GPU
    )


@dataclass(frozen=True)
class Backoff:
    """Pause before restarting a worker that died: doubles with each quick failure."""

    initial: float = 1.0
    maximum: float = 60.0
    stable_after: float = 60.0  # a worker that ran this long counts its failures anew

    def delay(self, failures: int) -> float:
        return float(min(self.maximum, self.initial * 2 ** max(failures - 1, 0)))


@dataclass
class _Supervised:
    process: ManagedProcess
    started_at: float = 0.0
    failures: int = 0
    restarts: int = 0
    restart_at: float | None = None
    pids: list[int] = field(default_factory=list)


class Launcher:
    """Starts the slots' workers, keeps them running and stops them together."""

    def __init__(
        self,
        settings: Settings,
        slots: Sequence[Slot],
        log_dir: Path | None,
        backoff: Backoff | None = None,
        stop_timeout: float | None = None,
    ) -> None:
        self.backoff = backoff or Backoff()
        # Long enough for a running job to end under Celery's warm shutdown.
        self.stop_timeout = settings.task_time_limit + 30.0 if stop_timeout is None else stop_timeout
        self.workers = [_Supervised(worker_process(settings, slot, log_dir)) for slot in slots]

    def start(self) -> None:
        for worker in self.workers:
            self._start(worker)

    def _start(self, worker: _Supervised) -> None:
        worker.process.start()
        worker.started_at = time.monotonic()
        worker.restart_at = None
        worker.pids.append(worker.process.pid)

    def check(self) -> None:
        """Notice dead workers and start them again once their pause is over."""
        now = time.monotonic()
        for worker in self.workers:
            if worker.restart_at is not None:
                if now >= worker.restart_at:
                    worker.restarts += 1
                    log.info("%s: restarting (restart %d)", worker.process.name, worker.restarts)
                    self._start(worker)
                continue
            if worker.process.alive():
                continue
            code = worker.process.proc.returncode if worker.process.proc else None
            worker.process.stop(timeout=1.0)  # reap it and whatever it left in its group
            ran = now - worker.started_at
            worker.failures = 1 if ran >= self.backoff.stable_after else worker.failures + 1
            pause = self.backoff.delay(worker.failures)
            worker.restart_at = now + pause
            log.warning(
                "%s: exited with %s after %.1fs; restarting in %.1fs (logs: %s)",
                worker.process.name,
                code,
                ran,
                pause,
                worker.process.log_file or "stdout",
            )

    def run(self, stop: threading.Event, poll: float = 0.5) -> None:
        """Start, supervise until ``stop`` is set, then stop every worker."""
        try:
            self.start()
            log.info("started %d workers: %s", len(self.workers), ", ".join(self.names))
            while not stop.wait(poll):
                self.check()
        finally:
            self.shutdown()

    @property
    def names(self) -> list[str]:
        return [worker.process.name for worker in self.workers]

    def shutdown(self) -> None:
        """SIGTERM to every worker's main process (its warm shutdown lets the running job
        finish), wait for them together, SIGKILL what is left."""
        running = [w.process for w in self.workers if w.process.alive()]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + self.stop_timeout
        while any(p.alive() for p in running) and time.monotonic() < deadline:
            time.sleep(0.1)
        for process in running:
            if process.alive():
                log.warning("%s: still running after %.0fs; killing it", process.name, self.stop_timeout)
        for worker in self.workers:
            worker.process.stop(timeout=0.5)  # SIGKILL to a straggler's group, then reap
        log.info("all workers stopped")


# -- command line -----------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run one img2img worker per GPU on this host.")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--workers", type=int, default=None, help="CPU workers, or at most this many GPUs")
    parser.add_argument(
        "--log-dir", default="var/log", help="one log file per worker there; '-': all to stdout"
    )
    parser.add_argument("--stop-timeout", type=float, default=None, help="default: TASK_TIME_LIMIT + 30")
    parser.add_argument("--backoff", type=float, default=1.0, help="first restart pause (seconds)")
    parser.add_argument("--max-backoff", type=float, default=60.0, help="longest restart pause (seconds)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = Settings.from_env(env)
    try:
        if not settings.model_id and not (Path(settings.model_dir) / "model_index.json").exists():
            raise LaunchError(
                f"no model at {settings.model_dir}: set MODEL_ID, or write the tiny one with "
                f"python -m worker.models tiny --out {settings.model_dir}"
            )
        gpus = [] if args.device == "cpu" else detect_gpus(env)
        slots = plan_slots(settings, gpus, args.workers, args.device)
    except LaunchError as exc:
        log.error("%s", exc)
        return 2
    launcher = Launcher(
        settings,
        slots,
        None if args.log_dir == "-" else Path(args.log_dir),
        Backoff(initial=args.backoff, maximum=args.max_backoff),
        args.stop_timeout,
    )
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("%s: stopping the workers", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    launcher.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
