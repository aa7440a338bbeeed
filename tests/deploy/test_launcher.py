"""``python -m deploy.launcher``: one worker per GPU (here: per CPU slot), kept running, stopped together."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.service import JobService
from deploy.launcher import (
    Backoff,
    Launcher,
    LaunchError,
    detect_gpus,
    main,
    parse_nvidia_smi,
    plan_slots,
)
from deploy.local import LOOPBACK, wait_until
from deploy.processes import service_env, worker_argv
from shared.jobs import JobStatus
from shared.schema import parse_request
from shared.settings import Settings
from shared.store import JobStore
from tests.helpers import reference_body, sample_image

ROOT = Path(__file__).resolve().parents[2]

NVIDIA_SMI = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-2222-3333-4444-555555555555)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee)
  MIG 3g.20gb     Device  0: (UUID: MIG-aaaaaaaa-0000-1111-2222-333333333333)
  MIG 3g.20gb     Device  1: (UUID: MIG-aaaaaaaa-4444-5555-6666-777777777777)
"""


def refuse() -> str | None:
    raise AssertionError("nothing else is asked when CUDA_VISIBLE_DEVICES is set")


# -- finding GPUs and planning workers ----------------------------------------------------


@pytest.mark.parametrize(
    ("visible", "expected"),
    [("0,1", ["0", "1"]), ("3", ["3"]), ("", []), ("-1", []), ("1,-1,2", ["1"]), ("GPU-abc", ["GPU-abc"])],
)
def test_cuda_visible_devices_wins(visible: str, expected: list[str]) -> None:
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": visible}, refuse, lambda: 99) == expected


def test_nvidia_smi_then_torch() -> None:
    assert detect_gpus({}, lambda: NVIDIA_SMI, lambda: 99) == [
        "0",
        "MIG-aaaaaaaa-0000-1111-2222-333333333333",
        "MIG-aaaaaaaa-4444-5555-6666-777777777777",
    ]
    assert detect_gpus({}, lambda: None, lambda: 2) == ["0", "1"]
    assert detect_gpus({}, lambda: None, lambda: 0) == []
    assert parse_nvidia_smi("No devices were found\n") == []


def test_one_slot_per_gpu_each_seeing_only_its_gpu() -> None:
    settings = Settings(device="cuda:1", worker_metrics_port=9100)
    slots = plan_slots(settings, ["2", "3", "MIG-x"], None, "auto")
    assert [s.name for s in slots] == ["gpu0", "gpu1", "gpu2"]  # numbered: a MIG id is no index
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["2", "3", "MIG-x"]
    assert {s.env["DEVICE"] for s in slots} == {"cuda"}  # each sees its GPU as cuda:0
    assert [s.env["WORKER_METRICS_PORT"] for s in slots] == ["9100", "9101", "9102"]
    assert [s.name for s in plan_slots(settings, ["0", "1", "2"], 2, "cuda")] == ["gpu0", "gpu1"]
    assert [s.name for s in plan_slots(settings, ["2", "5"], None, "cuda")] == ["gpu2", "gpu5"]


def test_cpu_slots_and_refusals() -> None:
    slots = plan_slots(Settings(), [], 3, "cpu")
    assert [s.name for s in slots] == ["cpu0", "cpu1", "cpu2"]
    assert all(s.env == {"DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": ""} for s in slots)
    with pytest.raises(LaunchError, match="no GPU"):
        plan_slots(Settings(), [], None, "auto")
    with pytest.raises(LaunchError):
        plan_slots(Settings(), [], 0, "cpu")


def test_backoff_doubles_up_to_its_maximum() -> None:
    backoff = Backoff(initial=0.5, maximum=3.0)
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_without_a_log_dir_workers_write_to_the_launchers_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    launcher = Launcher(Settings(), plan_slots(Settings(), [], 1, "cpu"), log_dir=None)
    (worker,) = launcher.workers
    process = worker.process
    assert process.log_file is None
    process.argv = [sys.executable, "-c", "print('from the worker')"]
    process.start()
    assert process.proc is not None and process.proc.wait(30) == 0
    assert "from the worker" in capfd.readouterr().out


def test_each_slot_runs_the_one_worker_command_line(tmp_path: Path) -> None:
    settings = Settings(queue_name="q-launcher", worker_metrics_port=9100)
    slots = plan_slots(settings, ["0", "1"], None, "cuda")
    launcher = Launcher(settings, slots, log_dir=tmp_path)
    for slot, worker in zip(slots, launcher.workers, strict=True):
        process = worker.process
        assert process.argv == worker_argv(settings, slot.name)
        assert process.log_file == tmp_path / f"{slot.name}.log"
        assert {key: process.env[key] for key in slot.env} == slot.env
        assert process.env["QUEUE_NAME"] == "q-launcher"


def test_refuses_to_start_without_a_model(tmp_path: Path) -> None:
    env = {"MODEL_DIR": str(tmp_path / "missing"), "CUDA_VISIBLE_DEVICES": "0"}
    assert main(["--log-dir", str(tmp_path)], env) == 2


# -- the real thing: two CPU workers ----------------------------------------------------------


def process_children() -> dict[int, list[int]]:
    """Live (not zombie) processes by parent, from /proc."""
    tree: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            tree[int(fields[1])].append(int(entry.name))
    return tree


def descendants(pid: int) -> set[int]:
    tree = process_children()
    found: set[int] = set()
    todo = list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        found.add(child)
        todo.extend(tree.get(child, []))
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def two_free_ports() -> int:
    """A port ``p`` with ``p + 1`` free too."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind((LOOPBACK, 0))
            port: int = first.getsockname()[1]
            try:
                second.bind((LOOPBACK, port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two consecutive free ports")


def worker_images(port: int) -> float:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "img2img_worker_images_total":
                return sample.value
    raise AssertionError("no img2img_worker_images_total")


def test_launcher_runs_restarts_and_stops_its_workers(isolated_settings: Settings, tmp_path: Path) -> None:
    port = two_free_ports()
    settings = isolated_settings.replace(allowed_sizes=(512,), torch_threads=1, worker_metrics_port=port)
    launcher, log_file = launch(settings, tmp_path, "log", 2, "--stop-timeout", "30", "--backoff", "0.2")
    store = JobStore(settings)
    window = settings.worker_heartbeat_seconds * 3
    seen: set[int] = set()
    try:

        def ready(count: int, besides: set[str] | None = None) -> bool:
            seen.update(descendants(launcher.pid))
            if launcher.poll() is not None:
                raise AssertionError(f"the launcher exited with {launcher.returncode}")
            return len(set(store.workers.fresh(max_age=window)) - (besides or set())) >= count

        wait_until(lambda: ready(2), 180, "two workers", log_file)
        mains = sorted(process_children()[launcher.pid])
        assert len(mains) == 2

        # Both consume the queue: four jobs at once, each worker takes some. Four shapes, so
        # that one worker cannot take them all as batching partners of its first.
        service = JobService(settings)
        service.storage.ensure_bucket()
        shapes = [{"num_inference_steps": 20, "strength": 0.1, "guidance_scale": 7.0 + i} for i in range(4)]
        jobs = [
            service.submit(parse_request(reference_body(**shape), settings).params, sample_image())
            for shape in shapes
        ]
        done = [store.waits.wait(job.id, 120) for job in jobs]
        assert [job.status for job in done] == [JobStatus.SUCCEEDED] * 4
        assert len({job.worker for job in done}) == 2
        # Each serves its own metrics, on port and port + 1.
        per_worker = [worker_images(port), worker_images(port + 1)]
        assert sum(per_worker) == 4 and min(per_worker) >= 1

        # A worker killed outright is started again, under its name, and loads its model.
        before = set(store.workers.fresh(max_age=window))
        os.kill(mains[0], signal.SIGKILL)
        wait_until(
            lambda: len(set(process_children()[launcher.pid]) - set(mains)) == 1,
            30,
            "a restarted worker",
            log_file,
        )
        wait_until(lambda: ready(1, before), 180, "the restarted worker", log_file)
        assert len(process_children()[launcher.pid]) == 2
        assert "restarting" in log_file.read_text()

        # SIGTERM stops everything it started.
        seen.update(descendants(launcher.pid))
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(60) == 0
        assert not [pid for pid in seen if running(pid)]
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(10)
        for pid in seen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def launch(
    settings: Settings, tmp_path: Path, name: str, workers: int, *options: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """``python -m deploy.launcher`` with ``workers`` CPU workers, logging under ``tmp_path``."""
    argv = [sys.executable, "-m", "deploy.launcher", "--device", "cpu", "--workers", str(workers)]
    argv += ["--log-dir", str(tmp_path / name), *options]
    log_file = tmp_path / f"{name}.log"
    with open(log_file, "wb") as out:
        launcher = subprocess.Popen(
            argv,
            env=service_env(settings),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return launcher, log_file


def start_launcher(settings: Settings, tmp_path: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    """One CPU worker under the launcher, once its worker is ready."""
    launcher, log_file = launch(settings, tmp_path, name, 1, "--stop-timeout", "60")
    store = JobStore(settings)
    window = settings.worker_heartbeat_seconds * 3
    wait_until(lambda: len(store.workers.fresh(max_age=window)) >= 1, 180, "a worker", log_file)
    return launcher, log_file


def test_a_stopped_launcher_drains_its_worker_and_a_killed_one_leaves_no_orphan(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    """SIGTERM to the launcher while its worker runs a job: the job finishes, in one attempt,
    and the launcher exits 0. SIGKILL to the launcher: its worker stops too."""
    settings = isolated_settings.replace(allowed_sizes=(512,), torch_threads=1)
    launcher, log_file = start_launcher(settings, tmp_path, "drain")
    try:
        service = JobService(settings)
        service.storage.ensure_bucket()
        long = {"num_inference_steps": 100, "strength": 1.0}
        job = service.submit(parse_request(reference_body(**long), settings).params, sample_image())
        store = JobStore(settings)
        wait_until(
            lambda: (store.jobs.get(job.id) or job).progress_step >= 2, 120, "the job running", log_file
        )
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(90) == 0
        done = store.jobs.get(job.id)
        assert done is not None and done.status is JobStatus.SUCCEEDED, done
        assert done.attempts == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)

    launcher, log_file = start_launcher(settings, tmp_path, "orphan")
    worker_pids = descendants(launcher.pid)
    assert worker_pids
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait(10)
    wait_until(
        lambda: not (worker_pids & set(process_children_all())), 60, "the orphaned worker gone", log_file
    )


def process_children_all() -> set[int]:
    return {pid for children in process_children().values() for pid in children}
