"""``deploy.processes``: one command line per process kind, the same in every place that starts one."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.local import wait_until
from deploy.processes import (
    GATEWAY_APP,
    ManagedProcess,
    gateway_argv,
    gateway_graceful_timeout,
    gateway_timeout,
    notifier_argv,
    service_env,
    worker_argv,
)
from shared.settings import Settings
from tests.deploy.files import (
    DEPLOY,
    ROOT,
    compose,
    container,
    copied,
    entry_argv,
    instructions,
    k8s,
    k8s_documents,
)

PYTHON_M = [sys.executable, "-m"]


# -- the command lines ---------------------------------------------------------------


def test_worker_command_line() -> None:
    argv = worker_argv(Settings(queue_name="q1"), "gpu3")
    assert argv == [
        *PYTHON_M, "celery", "-A", "worker.main", "worker", "-Q", "q1", "-c", "1", "-P", "prefork",
        "-n", "gpu3@%h", "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info",
    ]  # fmt: skip
    assert worker_argv(Settings())[worker_argv(Settings()).index("-n") + 1] == "worker@%h"


def test_notifier_command_line() -> None:
    argv = notifier_argv(Settings(webhook_queue="hooks"), "n1", threads=3)
    assert argv == [
        *PYTHON_M, "celery", "-A", "worker.notify_main", "worker", "-Q", "hooks", "-c", "3", "-P", "threads",
        "-n", "n1@%h", "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="threads"):
        notifier_argv(Settings(), threads=0)


def test_gateway_command_line_and_its_timeouts() -> None:
    settings = Settings(sync_wait_seconds=45.5, trusted_proxies="10.0.0.0/8")
    argv = gateway_argv(settings, "127.0.0.1:8123", workers=2)
    assert argv[:4] == [*PYTHON_M, "gunicorn", GATEWAY_APP]
    options = dict(zip(argv[4::2], argv[5::2], strict=True))
    assert options == {
        "--bind": "127.0.0.1:8123",
        "--workers": "2",
        "--worker-connections": "2000",
        "--worker-class": "deploy.gateway_worker.JsonErrorGeventWorker",
        "--timeout": "105",
        "--keep-alive": "30",
        "--forwarded-allow-ips": "10.0.0.0/8",
    }
    assert gateway_timeout(120) == 180 and gateway_graceful_timeout(120) == 130


def gunicorn_config(args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[str | None, Any]:
    """The application and settings gunicorn itself makes of ``gunicorn ARGS``."""
    from gunicorn.app.wsgiapp import WSGIApplication

    monkeypatch.delenv("GUNICORN_CMD_ARGS", raising=False)
    monkeypatch.setattr(sys, "argv", ["gunicorn", *args])
    monkeypatch.chdir(ROOT)
    app = WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]")
    return app.app_uri, app.cfg


def test_gateway_image_and_local_gateway_run_gunicorn_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's ``gunicorn -c deploy/gunicorn.conf.py`` and ``gateway_argv`` agree on every
    option both set: gunicorn reads them, settings from the environment as in a container."""
    settings = Settings(sync_wait_seconds=33, gateway_workers=3, gateway_connections=700)
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    (cmd,) = instructions("gateway.Dockerfile", "CMD")
    image = json.loads(cmd)
    assert image[0] == "gunicorn"
    image_app, image_cfg = gunicorn_config(image[1:], monkeypatch)
    local = gateway_argv(settings, "127.0.0.1:8123")
    assert local[: len(PYTHON_M) + 1] == [*PYTHON_M, "gunicorn"]
    local_app, local_cfg = gunicorn_config(local[len(PYTHON_M) + 1 :], monkeypatch)
    assert image_app == local_app == GATEWAY_APP
    for option in ("worker_class_str", "timeout", "keepalive", "workers", "worker_connections"):
        assert getattr(image_cfg, option) == getattr(local_cfg, option), option
    assert (
        image_cfg.timeout == gateway_timeout(33)
        and image_cfg.workers == 3
        and image_cfg.worker_connections == 700
    )
    assert image_cfg.graceful_timeout == gateway_graceful_timeout(33)


# -- python -m deploy.processes ------------------------------------------------------------


def test_entry_prints_the_command_line_it_runs() -> None:
    env = {**os.environ, "QUEUE_NAME": "q-print", "WEBHOOK_QUEUE": "hooks-print"}
    for args, argv in (
        (["worker", "--name", "gpu7"], worker_argv(Settings(queue_name="q-print"), "gpu7")),
        (["notifier", "--threads", "2"], notifier_argv(Settings(webhook_queue="hooks-print"), threads=2)),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "deploy.processes", *args, "--print"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert result.stdout == shlex.join(argv) + "\n"


def test_entry_execs_the_notifier_in_its_place(isolated_settings: Settings, tmp_path: Path) -> None:
    """The container's main process becomes the Celery worker: same pid, SIGTERM stops it."""
    entry = ManagedProcess(
        "entry",
        [sys.executable, "-m", "deploy.processes", "notifier", "--threads", "2", "--name", "entry"],
        tmp_path / "entry.log",
        service_env(isolated_settings),
    )
    entry.start()
    try:
        log_file = tmp_path / "entry.log"
        wait_until(lambda: b"ready." in log_file.read_bytes(), 60, "the notifier", log_file)
        cmdline = Path(f"/proc/{entry.pid}/cmdline").read_bytes().split(b"\0")
        assert b"celery" in cmdline and b"worker.notify_main" in cmdline
        assert isolated_settings.webhook_queue.encode() in cmdline
        entry.signal(signal.SIGTERM)
        assert entry.proc is not None and entry.proc.wait(30) == 0
    finally:
        entry.stop()


# -- every deployment file runs them ------------------------------------------------------


def commands() -> Iterator[tuple[str, list[str]]]:
    """``(where, argv)`` for every command a deployment file gives the app's containers."""
    for name, service in compose()["services"].items():
        if "command" in service and str(service.get("image", "")).startswith("img2img-"):
            command = service["command"]
            yield f"compose {name}", shlex.split(command) if isinstance(command, str) else command
    for doc in k8s_documents():
        if doc["kind"] in ("Deployment", "StatefulSet") and doc["metadata"]["name"] != "redis":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                yield f"k8s {doc['metadata']['name']}", [*c.get("command", []), *c.get("args", [])]
    for name in ("gateway.Dockerfile", "worker.Dockerfile"):
        for cmd in instructions(name, "CMD"):
            yield name, json.loads(cmd)


def test_no_deployment_file_spells_a_celery_worker_command_line() -> None:
    """Workers and the notifier start through ``python -m deploy.processes`` (or the launcher)."""
    found = list(commands())
    assert len(found) >= 7
    for where, argv in found:
        assert "celery" not in " ".join(argv), f"{where}: {argv}"


def test_every_entry_in_the_deployment_files_builds_the_expected_command() -> None:
    services = compose()["services"]
    config = k8s("ConfigMap", "img2img-config")["data"]
    (worker_cmd,) = instructions("worker.Dockerfile", "CMD")
    cpu = shlex.split(services["worker-cpu"]["command"][-1])
    expected = {
        "worker image": (json.loads(worker_cmd), {}, worker_argv(Settings(), "worker")),
        "compose worker-cpu": (cpu[cpu.index("exec") + 1 :], {}, worker_argv(Settings(), "cpu")),
        "k8s worker": (
            container(k8s("Deployment", "img2img-worker"))["command"],
            config,
            worker_argv(Settings()),
        ),
        "compose notifier": (services["notifier"]["command"], {}, notifier_argv(Settings(), "notifier", 8)),
        "k8s notifier": (
            container(k8s("Deployment", "img2img-notifier"))["command"],
            config,
            notifier_argv(Settings(), "notifier", 8),
        ),
    }
    for where, (command, environ, argv) in expected.items():
        assert entry_argv(command, environ) == argv, where
    # The compose healthcheck pings the notifier by the node name the entry gives it.
    notifier = entry_argv(services["notifier"]["command"], {})
    name = notifier[notifier.index("-n") + 1].removesuffix("@%h")
    assert f"-d {name}@$$HOSTNAME " in services["notifier"]["healthcheck"]["test"][1]
    # The multi-GPU service and systemd run the launcher, which runs worker_argv per GPU.
    assert services["workers-multigpu"]["command"][:3] == ["python", "-m", "deploy.launcher"]
    unit = (DEPLOY / "systemd" / "img2img-workers.service").read_text()
    assert "-m deploy.launcher " in unit


# -- what the images carry --------------------------------------------------------------------


def project_files_imported(code: str) -> set[str]:
    """Files of this repository that ``python -c CODE`` imports, relative to the root (a
    virtual environment inside the checkout holds installed packages, not the project's)."""
    report = (
        "; import sys, json, pathlib; root = pathlib.Path.cwd().resolve(); files = []\n"
        "for m in list(sys.modules.values()):\n"
        "    f = getattr(m, '__file__', None)\n"
        "    p = pathlib.Path(f).resolve() if f else None\n"
        "    if p and p.is_relative_to(root) and 'site-packages' not in p.parts:\n"
        "        files.append(str(p.relative_to(root)))\n"
        "print(json.dumps(files))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code + report],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    ("image", "code", "runs"),
    [
        (
            "gateway.Dockerfile",
            "import runpy, api.app, worker.notify_main, deploy.processes; "
            "runpy.run_path('deploy/gunicorn.conf.py')",
            {"deploy/gunicorn.conf.py", "deploy/processes.py", "worker/notify_main.py", "api/app.py"},
        ),
        (
            "worker.Dockerfile",
            "import deploy.processes, deploy.launcher, worker.health",
            {"deploy/processes.py", "deploy/launcher.py", "worker/health.py"},
        ),
    ],
)
def test_images_copy_every_module_they_run(image: str, code: str, runs: set[str]) -> None:
    """Every file of this repository that the image's processes load is in the image."""
    imported = project_files_imported(code)
    assert runs - {"deploy/gunicorn.conf.py"} <= imported  # loaded by path, not imported
    sources = copied(image)
    for path in sorted(imported | runs):
        assert any(path == s or path.startswith(s.rstrip("/") + "/") for s in sources), f"{image}: {path}"


def test_the_worker_image_has_no_development_harness() -> None:
    assert not any(source.startswith("deploy/local") for source in copied("worker.Dockerfile"))
    assert "!deploy/local.py" not in (DEPLOY / "worker.Dockerfile.dockerignore").read_text()
    code = "import sys, deploy.launcher, deploy.processes; assert 'deploy.local' not in sys.modules"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
