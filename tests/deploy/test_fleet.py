"""The Kubernetes files as the operator of a 50-GPU farm needs them: autoscalers own the
counts, rollouts fit at GPU capacity, GPU workers never run on the CPU, compile caches outlive
pods, Redis is bounded, guarded and guaranteed, placeholders are refused."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from deploy.processes import gateway_graceful_timeout
from shared.settings import PLACEHOLDER, Settings, SettingsError
from tests.deploy.files import DEPLOY, compose, container, instructions, k8s, k8s_documents


def quantity_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", value).groups()  # type: ignore[union-attr]
    scale = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "kb": 10**3, "mb": 2**20, "gb": 2**30}
    return int(number) * scale[unit]


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container(deployment).get("env", [])}


def test_autoscaled_deployments_leave_the_count_to_their_autoscaler() -> None:
    targets = [d["spec"]["scaleTargetRef"]["name"] for d in k8s_documents()
               if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]  # fmt: skip
    assert sorted(targets) == ["img2img-gateway", "img2img-worker"]
    for name in targets:
        assert "replicas" not in k8s("Deployment", name)["spec"], name


def test_worker_rollouts_need_no_spare_gpu_and_outlast_the_startup_allowance() -> None:
    worker = k8s("Deployment", "img2img-worker")
    spec = worker["spec"]
    rolling = spec["strategy"]["rollingUpdate"]
    assert rolling["maxSurge"] == 0 and rolling["maxUnavailable"] not in (0, "0", "0%")
    probe = container(worker)["startupProbe"]
    startup = probe.get("initialDelaySeconds", 0) + probe["periodSeconds"] * probe["failureThreshold"]
    drain = spec["template"]["spec"]["terminationGracePeriodSeconds"]
    assert spec["progressDeadlineSeconds"] > startup + drain


def test_gpu_workers_say_cuda_and_keep_their_compile_caches_on_the_volume() -> None:
    worker = k8s("Deployment", "img2img-worker")
    env = env_of(worker)
    assert env["DEVICE"] == "cuda"
    (mount,) = container(worker)["volumeMounts"]
    for name in ("HF_HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        assert env[name].startswith(mount["mountPath"] + "/"), name


def test_redis_is_bounded_guarded_and_guaranteed() -> None:
    redis = k8s("StatefulSet", "redis")
    box = container(redis)
    args = box["args"]
    option = dict(zip(args[::2], args[1::2], strict=True))
    limit = quantity_bytes(box["resources"]["limits"]["memory"])
    assert option["--maxmemory-policy"] == "noeviction"
    assert quantity_bytes(option["--maxmemory"]) <= 0.8 * limit  # room for the AOF rewrite
    assert box["resources"]["requests"] == box["resources"]["limits"]  # Guaranteed QoS
    assert option["--requirepass"] == "$(REDIS_PASSWORD)"
    (password,) = [e for e in box["env"] if e["name"] == "REDIS_PASSWORD"]
    assert password["valueFrom"]["secretKeyRef"] == {"name": "img2img-secrets", "key": "REDIS_PASSWORD"}
    secret = k8s("Secret", "img2img-secrets")["stringData"]
    assert f":{secret['REDIS_PASSWORD']}@" in secret["REDIS_URL"]
    policy = k8s("NetworkPolicy", "redis")["spec"]
    assert policy["podSelector"]["matchLabels"] == redis["spec"]["selector"]["matchLabels"]
    assert policy["policyTypes"] == ["Ingress"] and len(policy["ingress"]) == 1


def test_every_long_lived_pod_has_a_disruption_budget() -> None:
    budgets = {
        d["metadata"]["name"]: d["spec"] for d in k8s_documents() if d["kind"] == "PodDisruptionBudget"
    }
    assert budgets["redis"]["minAvailable"] == 1
    assert budgets["img2img-gateway"]["minAvailable"] == 1
    assert budgets["img2img-worker"]["maxUnavailable"] == "10%"


def test_production_refuses_the_shipped_placeholder_secrets() -> None:
    config = k8s("ConfigMap", "img2img-config")["data"]
    secret = k8s("Secret", "img2img-secrets")["stringData"]
    assert config["ENVIRONMENT"] == "production"
    with pytest.raises(SettingsError, match="REDIS_URL") as refused:
        Settings.from_env({**config, **secret})
    for name in ("S3_SECRET_ACCESS_KEY", "S3_ACCESS_KEY_ID", "WEBHOOK_SECRET", "OPS_TOKEN"):
        assert name in str(refused.value)
    real = {name: value.replace(PLACEHOLDER, "s3cr3t-value") for name, value in secret.items()}
    assert Settings.from_env({**config, **real}).redis_url == "redis://:s3cr3t-value@redis:6379/0"
    Settings.from_env({**secret, "ENVIRONMENT": "development"})  # development takes them


def test_the_worker_image_can_compile() -> None:
    """torch.compile's Triton builds a C module at the first kernel launch: the worker image
    installs a C compiler, the C library's headers and Python's headers."""
    packages: set[str] = set()
    for rest in instructions("worker.Dockerfile", "RUN"):
        if "apt-get install" in rest:
            packages |= set(rest.split("apt-get install", 1)[1].split("&&")[0].split())
    assert {"gcc", "libc6-dev", "python3-dev"} <= packages, packages


def test_compose_lets_waiting_clients_finish_and_scrapes_every_worker() -> None:
    gateway = compose()["services"]["gateway"]
    grace = int(gateway["stop_grace_period"].rstrip("s"))
    assert grace > gateway_graceful_timeout(Settings().sync_wait_seconds)
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    targets = jobs["img2img-workers-multigpu"]["static_configs"][0]["targets"]
    assert targets[0] == "workers-multigpu:9100" and len(targets) == 8


def test_the_systemd_unit_owns_its_directories_and_stops_restarting_a_broken_launcher() -> None:
    unit = {}
    for line in (DEPLOY / "systemd" / "img2img-workers.service").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            unit.setdefault(key.strip(), []).append(value.strip())
    assert unit["StateDirectory"] == ["img2img"] and unit["LogsDirectory"] == ["img2img"]
    assert int(unit["StartLimitBurst"][0]) > 1 and int(unit["StartLimitIntervalSec"][0]) > 0
    env = dict(item.split("=", 1) for item in unit["Environment"])
    for name in ("HF_HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        assert env[name].startswith("/var/lib/img2img/"), name  # the StateDirectory
    assert "--log-dir /var/log/img2img" in unit["ExecStart"][0]  # the LogsDirectory
