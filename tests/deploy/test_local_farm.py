"""``make run``'s farm keeps its data: after a restart, old job URLs, images, keys and balances
are still there, and the admin tool finds the farm's Redis with no flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from deploy.local import free_port, wait_until
from tests.conftest import ROOT
from tests.helpers import reference_body

pytestmark = pytest.mark.integration


def start_farm(var: Path, port: int, model: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "S3_ENDPOINT_URL", "MODEL_ID")}
    env.update(MODEL_DIR=str(model), TORCH_THREADS="2", WARMUP="off")
    with open(var.parent / "farm.log", "ab") as log:  # the child keeps its own copy
        farm = subprocess.Popen(
            [sys.executable, "-m", "deploy.local", "--var", str(var), "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_until(lambda: (var / "local-farm.json").exists(), 180, "the local farm", var.parent / "farm.log")
    return farm


def stop_farm(farm: subprocess.Popen[bytes]) -> None:
    os.killpg(farm.pid, signal.SIGTERM)
    try:
        farm.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(farm.pid, signal.SIGKILL)
        farm.wait(10)


def admin(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "api.admin", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_restarted_local_farm_serves_what_it_made_before(tmp_path: Path, tiny_model: Path) -> None:
    var, port = tmp_path / "var", free_port()
    farm = start_farm(var, port, tiny_model)
    try:
        where = json.loads((var / "local-farm.json").read_text())
        url = where["gateway_url"]
        key = (var / "api-key").read_text().strip()
        headers = {"Authorization": f"Bearer {key}"}
        made = requests.post(
            f"{url}/v1/sd1.5-img2img", json=reference_body(seed=11), headers=headers, timeout=120
        )
        assert made.status_code == 200, made.text
        job_id, balance = made.headers["x-job-id"], made.headers["x-remaining-credits"]
        # The admin tool reaches this farm's Redis (on a port chosen at start) with no flags.
        created = admin(tmp_path, "create", "--name", "second", "--credits", "5")
        second = created.splitlines()[1]  # the key, shown once
        assert "local" in admin(tmp_path, "list") and "second" in admin(tmp_path, "list")
    finally:
        stop_farm(farm)
    assert not (var / "local-farm.json").exists()

    farm = start_farm(var, port, tiny_model)
    try:
        url = json.loads((var / "local-farm.json").read_text())["gateway_url"]
        job = requests.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=30)
        assert job.status_code == 200 and job.json()["status"] == "succeeded"
        assert job.headers["x-remaining-credits"] == balance
        image = requests.get(f"{url}/v1/jobs/{job_id}/images/0", headers=headers, timeout=30)
        assert image.status_code == 200 and image.content == made.content
        assert "second" in admin(tmp_path, "list")
        assert (
            requests.get(f"{url}/v1/jobs/{job_id}", headers={"x-api-key": second}, timeout=30).status_code
            == 404
        )
    finally:
        stop_farm(farm)
