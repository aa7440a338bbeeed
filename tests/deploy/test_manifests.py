"""The deployment files parse, and say what the code expects (no Docker engine or cluster here)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import ENV_NAMES, Settings
from tests.deploy.files import (
    DEPLOY,
    K8S,
    ROOT,
    arg_defaults,
    compose,
    container,
    copied,
    dockerfile,
    entry_argv,
    env_assignments,
    instructions,
    k8s,
    k8s_documents,
    queue_option,
)

DEFAULTS = Settings()

# Environment variables of the app's containers that are not settings, and who reads them.
NOT_SETTINGS = {
    "HF_HOME": "huggingface_hub: where downloaded weights are cached",
    "PROMETHEUS_MULTIPROC_DIR": "prometheus_client: counters shared by gunicorn processes",
    "CUDA_VISIBLE_DEVICES": "CUDA: the GPU a worker process sees",
    "PATH": "the image's virtual environment",
    "PYTHONUNBUFFERED": "Python: logs leave at once",
    "REDIS_PASSWORD": "redis-server's --requirepass (the farm reads it inside REDIS_URL)",
    "REDISCLI_AUTH": "redis-cli in Redis's probe",
    "TORCHINDUCTOR_CACHE_DIR": "torch.compile: where compiled kernels are cached",
    "TRITON_CACHE_DIR": "Triton: where built kernels are cached",
}
TORCH_FAMILY = {"torch", "torchvision", "diffusers", "transformers", "accelerate", "safetensors", "xformers"}


# -- reading the files ---------------------------------------------------------


def requirement_lines(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-r "):
            lines.append(normalize(line))
    return lines


def normalize(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name, requirement
    return name.group(0).lower().replace("_", "-") + requirement[name.end() :].replace(" ", "")


def package(requirement: str) -> str:
    return re.split(r"[\[<>=!~;]", requirement, maxsplit=1)[0]


def pyproject() -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data


# -- every file parses -----------------------------------------------------------------


def test_every_yaml_file_parses() -> None:
    paths = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert DEPLOY / "compose.yaml" in paths and len(list(K8S.glob("*.yaml"))) >= 8
    for path in paths:
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        assert docs, f"{path} is empty"
    json.loads((DEPLOY / "grafana" / "img2img-dashboard.json").read_text())


def test_kustomization_lists_every_manifest_and_each_is_an_object() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    for doc in k8s_documents():
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"]["name"]


# -- GPUs -------------------------------------------------------------------------------


def test_compose_worker_reserves_one_gpu_and_scales() -> None:
    worker = compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # --scale worker=N: nothing that only one container may have.
    assert "container_name" not in worker and "ports" not in worker


def test_k8s_worker_requests_one_gpu() -> None:
    resources = container(k8s("Deployment", "img2img-worker"))["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) == 1
    assert int(resources["requests"]["nvidia.com/gpu"]) == 1


# -- the queue: one name everywhere ----------------------------------------------------


def test_keda_scales_workers_on_the_job_stores_counts() -> None:
    """KEDA reads desired_workers from the gateway's /ops/scaling (shared/scaling.py), with
    OPS_TOKEN from the Secret, and takes it as the replica count (target 1)."""
    scaled = k8s("ScaledObject", "img2img-worker")
    worker = k8s("Deployment", "img2img-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] == 0 and scaled["spec"]["maxReplicaCount"] >= 50
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "metrics-api"
    meta = trigger["metadata"]
    service = k8s("Service", "img2img-gateway")
    assert meta["url"] == f"http://{service['metadata']['name']}.img2img.svc.cluster.local/ops/scaling"
    assert (meta["valueLocation"], meta["targetValue"], meta["authMode"]) == (
        "desired_workers",
        "1",
        "bearer",
    )
    auth = k8s("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "token", "name": "img2img-secrets", "key": "OPS_TOKEN"}
    ]
    assert "OPS_TOKEN" in k8s("Secret", "img2img-secrets")["stringData"]


def test_compose_and_images_consume_the_configured_queue() -> None:
    services = compose()["services"]
    for name in ("gateway", "worker", "worker-cpu", "workers-multigpu"):
        assert services[name]["environment"]["QUEUE_NAME"] == DEFAULTS.queue_name
    cpu = services["worker-cpu"]
    cpu_command = shlex.split(cpu["command"][-1])
    cpu_argv = entry_argv(cpu_command[cpu_command.index("exec") + 1 :], cpu["environment"])
    assert queue_option(cpu_argv) == DEFAULTS.queue_name
    (cmd,) = instructions("worker.Dockerfile", "CMD")
    image_env = env_assignments("worker.Dockerfile")
    assert image_env["QUEUE_NAME"] == DEFAULTS.queue_name
    assert queue_option(entry_argv(json.loads(cmd), image_env)) == DEFAULTS.queue_name
    # The compose GPU workers run the image's command with the compose environment.
    assert "command" not in services["worker"]
    assert queue_option(entry_argv(json.loads(cmd), services["worker"]["environment"])) == DEFAULTS.queue_name


def test_webhook_worker_consumes_the_webhook_queue() -> None:
    notifier = compose()["services"]["notifier"]
    assert queue_option(entry_argv(notifier["command"], notifier["environment"])) == DEFAULTS.webhook_queue
    assert notifier["environment"]["WEBHOOK_QUEUE"] == DEFAULTS.webhook_queue
    deployment = container(k8s("Deployment", "img2img-notifier"))
    config = k8s("ConfigMap", "img2img-config")["data"]
    assert queue_option(entry_argv(deployment["command"], config)) == DEFAULTS.webhook_queue
    assert config["WEBHOOK_QUEUE"] == DEFAULTS.webhook_queue
    # It runs from the gateway image, which has its code and no torch.
    assert notifier["image"] == compose()["services"]["gateway"]["image"]
    assert deployment["image"] == container(k8s("Deployment", "img2img-gateway"))["image"]
    assert "worker/notify_main.py" in " ".join(instructions("gateway.Dockerfile", "COPY"))


# -- images ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gateway.Dockerfile", "worker.Dockerfile"])
def test_every_file_an_image_copies_exists_and_passes_its_dockerignore(name: str) -> None:
    allowed = [
        line[1:]
        for line in (DEPLOY / f"{name}.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    sources = copied(name)
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert any(source == a or source.startswith(a.rstrip("/") + "/") for a in allowed), source


def test_gateway_image_requirements_are_the_base_dependencies_without_torch() -> None:
    lines = requirement_lines(DEPLOY / "requirements-gateway.txt")
    assert not {package(line) for line in lines} & TORCH_FAMILY
    assert sorted(lines) == sorted(normalize(dep) for dep in pyproject()["project"]["dependencies"])
    runs = " ".join(instructions("gateway.Dockerfile", "RUN"))
    assert "requirements-gateway.txt" in runs
    assert not any("torch" in rest for _, rest in dockerfile("gateway.Dockerfile"))


def test_worker_image_installs_the_worker_extra_and_the_make_torch_pin() -> None:
    lines = requirement_lines(DEPLOY / "requirements-worker.txt")
    extra = [normalize(dep) for dep in pyproject()["project"]["optional-dependencies"]["worker"]]
    assert sorted(lines) == sorted(dep for dep in extra if package(dep) != "torch")
    assert "-r requirements-gateway.txt" in (DEPLOY / "requirements-worker.txt").read_text()
    pin = re.search(r"^TORCH \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert pin and arg_defaults("worker.Dockerfile")["TORCH_VERSION"] == pin.group(1)


def test_worker_image_runs_on_cuda_with_a_weights_volume() -> None:
    args = arg_defaults("worker.Dockerfile")
    assert args["BASE_IMAGE"].startswith("nvidia/cuda:") and "-runtime-" in args["BASE_IMAGE"]
    env = env_assignments("worker.Dockerfile")
    assert env["MODEL_ID"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert json.loads(instructions("worker.Dockerfile", "VOLUME")[0]) == [env["HF_HOME"]]
    assert compose()["services"]["worker"]["volumes"] == [f"hf-cache:{env['HF_HOME']}"]


@pytest.mark.parametrize("name", ["gateway.Dockerfile", "worker.Dockerfile"])
def test_images_run_as_a_user_with_a_healthcheck(name: str) -> None:
    (user,) = instructions(name, "USER")
    assert user.split(":")[0] not in ("root", "0")
    (health,) = instructions(name, "HEALTHCHECK")
    assert " CMD " in f" {health} "


# -- compose wiring ----------------------------------------------------------------------


def test_compose_redis_keeps_an_append_only_file() -> None:
    command = compose()["services"]["redis"]["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options == {"--appendonly": "yes", "--appendfsync": "everysec", "--maxmemory-policy": "noeviction"}
    assert compose()["services"]["redis"]["volumes"] == ["redis-data:/data"]


def test_compose_creates_the_bucket_the_app_uses_before_the_app_starts() -> None:
    services = compose()["services"]
    init = " ".join(services["minio-init"]["command"])
    assert f"mc mb --ignore-existing farm/{services['gateway']['environment']['S3_BUCKET']}" in init
    for name in ("gateway", "worker", "worker-cpu", "workers-multigpu"):
        assert services[name]["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "minio-init": {"condition": "service_completed_successfully"},
        }
    for name, service in services.items():
        if name not in ("minio-init", "prometheus"):
            assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name


def test_compose_cpu_profile_runs_the_tiny_model_on_cpu() -> None:
    cpu = compose()["services"]["worker-cpu"]
    assert cpu["profiles"] == ["cpu"]
    env = cpu["environment"]
    assert env["DEVICE"] == "cpu" and env["MODEL_ID"] == ""
    assert f"python -m worker.models tiny --out {env['MODEL_DIR']}" in cpu["command"][-1]
    assert "deploy" not in cpu


def test_k8s_worker_readiness_is_the_loaded_model_and_drains_jobs() -> None:
    worker = k8s("Deployment", "img2img-worker")
    probe = container(worker)["readinessProbe"]["exec"]["command"]
    assert probe == ["python", "-m", "worker.health"]
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(k8s("ConfigMap", "img2img-config")["data"]["TASK_TIME_LIMIT"])


def test_k8s_gateway_autoscales_and_stays_ready_with_zero_workers() -> None:
    gateway = k8s("Deployment", "img2img-gateway")
    hpa = k8s("HorizontalPodAutoscaler", "img2img-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "img2img-gateway",
    }
    # /readyz fails without workers; KEDA may scale them to zero.
    assert container(gateway)["readinessProbe"]["httpGet"]["path"] == "/healthz"
    service = k8s("Service", "img2img-gateway")
    assert service["spec"]["selector"] == gateway["spec"]["selector"]["matchLabels"]


def test_k8s_redis_keeps_an_append_only_file() -> None:
    redis = container(k8s("StatefulSet", "redis"))
    options = dict(zip(redis["args"][0::2], redis["args"][1::2], strict=True))
    assert options["--appendonly"] == "yes" and options["--appendfsync"] == "everysec"


# -- environment variable names ----------------------------------------------------------


def app_environment_names() -> Iterator[tuple[str, str]]:
    """``(where, NAME)`` for every variable the app's containers get."""
    for name, service in compose()["services"].items():
        if str(service.get("image", "")).startswith("img2img-"):
            for key in service.get("environment", {}):
                yield f"compose {name}", key
    config_maps = {d["metadata"]["name"]: d for d in k8s_documents() if d["kind"] in ("ConfigMap", "Secret")}
    for doc in k8s_documents():
        if doc["kind"] not in ("Deployment", "StatefulSet") or doc["metadata"]["name"] == "redis":
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            for item in c.get("env", []):
                yield f"k8s {doc['metadata']['name']}", item["name"]
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef") or source.get("secretRef")
                data = config_maps[ref["name"]]
                for key in {**data.get("data", {}), **data.get("stringData", {})}:
                    yield f"k8s {ref['name']}", key
    for name in ("gateway.Dockerfile", "worker.Dockerfile"):
        for key in env_assignments(name):
            yield name, key
        declared = set(arg_defaults(name))
        for cmd in instructions(name, "CMD") + instructions(name, "HEALTHCHECK"):
            for key in re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", cmd):
                if key not in declared:
                    yield name, key


def test_every_app_environment_variable_is_a_setting() -> None:
    names = list(app_environment_names())
    assert len(names) > 40
    unknown = sorted(
        {(where, key) for where, key in names if key not in ENV_NAMES and key not in NOT_SETTINGS}
    )
    assert not unknown


# -- dashboard ----------------------------------------------------------------------------


def test_dashboard_queries_metrics_the_code_exports() -> None:
    sources = "".join((ROOT / path).read_text() for path in ("api/metrics.py", "worker/metrics.py"))
    exported = set()
    for base in re.findall(r'"(img2img_[a-z0-9_]+)"', sources):
        exported |= {base, f"{base}_total", f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    # Farm-wide histograms are named from shared.metrics' histogram names.
    from shared.metrics import HISTOGRAMS

    for name in HISTOGRAMS:
        exported |= {f"img2img_{name}_bucket", f"img2img_{name}_sum", f"img2img_{name}_count"}
    dashboard = json.loads((DEPLOY / "grafana" / "img2img-dashboard.json").read_text())
    used = {
        metric
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for metric in re.findall(r"img2img_[a-z0-9_]+", target["expr"])
    }
    assert used and used <= exported, used - exported
