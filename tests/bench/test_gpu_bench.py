"""The GPU check rehearsed on this CPU: the kit resolves offline for the GPU machine's Python,
and bench/gpu_check.sh --smoke runs every stage of bench/gpu.py with PATH and pip restricted
to the kit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.gpu import targets as gpu_targets
from bench.gpu_kit import (
    build,
    canonical,
    check_requirements,
    device_packages,
    requirement_name,
    stand_ins,
    target_options,
)
from shared.schema import SCHEDULERS
from tests.conftest import ROOT
from tests.worker.test_fastpath import MAX_PIXEL_DIFF

# The kit is built from the package index, and the check runs the farm's processes.
pytestmark = pytest.mark.integration

EAGER = ["baseline (SDPA)", "+ channels_last", "+ fused QKV", "+ host timesteps"]
# What bench/gpu_check.sh runs besides Python and the kit's redis-server.
TOOLS = ("bash", "cat", "cut", "date", "dirname", "du", "grep", "mkdir", "sed", "tee")
# pip may look only at the kit: no configured mirror, and an index that does not answer.
OFFLINE_PIP = {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The kit as ``make gpu-kit`` builds it, fresh for this run."""
    yield build(tmp_path_factory.mktemp("gpu") / "kit", "3.12")


def test_the_kit_resolves_offline_for_the_gpu_machine(kit: Path, tmp_path: Path) -> None:
    device = device_packages()
    wheels = list((kit / "wheels").glob("*.whl"))
    carried = {canonical(w.name.split("-")[0]) for w in wheels}
    assert not carried & set(device), "the kit carries what the machine has"
    assert "torch" not in carried and not any(name.startswith("nvidia") for name in carried)
    assert (kit / "bin" / "redis-server").stat().st_size > 0
    size = sum(f.stat().st_size for f in kit.rglob("*") if f.is_file()) / 2**20
    assert size < 48, f"the kit is {size:.1f} MiB"

    stand_ins(tmp_path / "device")
    wanted = [r for r in check_requirements() if requirement_name(r) not in device]
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-index",
        "--find-links", str(kit / "wheels"), "--find-links", str(tmp_path / "device"),
        *target_options("3.12"), "--report", str(report), *wanted,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **OFFLINE_PIP})
    assert done.returncode == 0, done.stderr[-3000:]
    resolved = {
        canonical(item["metadata"]["name"]): item["download_info"]["url"]
        for item in json.loads(report.read_text())["install"]
    }
    from_kit = {name for name, url in resolved.items() if str(kit / "wheels") in url}
    assert from_kit == carried  # every wheel in the kit is needed, and nothing else is fetched
    assert set(resolved) - from_kit <= set(device)  # the rest is what the machine has


@pytest.fixture()
def offline_path(kit: Path, tmp_path: Path) -> str:
    """PATH with the kit's redis-server and the few tools the check needs, nothing else."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found is not None, tool
        (tools / tool).symlink_to(found)
    return f"{kit / 'bin'}{os.pathsep}{tools}"


def test_the_check_smoke_runs_every_stage_from_the_kit(
    kit: Path, offline_path: str, tmp_path: Path, tiny_model: Path
) -> None:
    out = tmp_path / "out"
    env = {**os.environ, **OFFLINE_PIP, "PATH": offline_path, "PYTHON": sys.executable}
    env.update(KIT=str(kit), OUT=str(out), SIZES="256")  # a quarter of the pixels: the same stages
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = (out / "check.log").read_text() if (out / "check.log").exists() else ""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + log[-3000:]
    lines = log.splitlines()
    assert "python: 3." in lines[0] and any(" torch " in line for line in lines[:12])
    assert f"redis-server: {kit / 'bin' / 'redis-server'}, Redis server v=6." in log
    assert f"--no-index --find-links {kit / 'wheels'}" in log and "--dry-run" in log
    assert "img/s" in done.stdout and "TFLOP/s" in done.stdout

    report = json.loads((out / "gpu.json").read_text())
    assert report["smoke"] is True and report["arch"] == "tiny" and report["cuda"] is False
    assert report["denoising_steps"] == 18 and report["peak_tflops"] == 790 and report["skipped"] == []
    flops = report["flops"]["256"]
    for key in ("unet_sample_pass", "vae_encode", "vae_decode"):
        assert flops[key] > 0
    assert flops["per_image"] == 36 * flops["unet_sample_pass"] + flops["vae_encode"] + flops["vae_decode"]

    rows = {(row["section"], row["name"]): row for row in report["rows"]}
    assert list(rows) == [
        ("pipeline", "plain diffusers"),
        ("pipeline", "plain diffusers x4"),
        *(("runner", name) for name in EAGER),
        ("service", "1 client"),
        ("service", "2 clients"),
        ("runner", "+ torch.compile default"),
    ]
    for row in rows.values():
        assert row["size"] == "256x256"
        for key in ("images_per_s", "p50_ms", "p95_ms", "mean_ms", "tflops", "peak_fraction"):
            assert row[key] > 0, (row["name"], key)
        assert row["p95_ms"] >= row["p50_ms"]
        if row["section"] != "service":
            assert row["unet_it_per_s"] > 0
            assert row["gpu_mem_peak_mib"] is None  # no GPU here
    assert rows[("pipeline", "plain diffusers x4")]["images"] == 4
    assert rows[("service", "2 clients")]["images"] == 2
    assert rows[("service", "1 client")]["worker_startup_s"] > 0
    for name in [*EAGER, "+ torch.compile default"]:
        row = rows[("runner", name)]
        assert row["load_s"] > 0 and row["warmup_s"] > 0
        assert row["graphs_compiled_in_rounds"] == 0
        assert row["max_abs_diff"] <= MAX_PIXEL_DIFF
    compiled = rows[("runner", "+ torch.compile default")]
    assert compiled["graphs_compiled_at_load"] == 3 and "compile=eager/default" in compiled["fast_path"]
    assert rows[("runner", "baseline (SDPA)")]["graphs_compiled_at_load"] == 0

    assert list(report["schedulers"]) == list(SCHEDULERS)
    for name, audit in report["schedulers"].items():
        assert audit["new_graphs"] == 0, name
        assert audit["loop_iterations"] >= 4 and audit["loop_syncs_per_iteration"] is None
    # The targets are stated at 512x512: a rehearsal at another size measures none of them.
    assert report["targets"]["images_per_s"]["measured"] is None and report["targets"]["met"] is None

    table = subprocess.run(
        [sys.executable, "bench/gpu.py", "--markdown", str(out / "gpu.json")],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert table.count("\n| ") == 1 + len(rows) and "| service | 2 clients | 256x256 |" in table
    assert "Targets at 512x512:" not in table

    # The same rows at 512x512 are held against the targets, and the table says how they did.
    at_512 = out / "gpu-512.json"
    service = [{**row, "size": "512x512"} for row in report["rows"] if row["section"] == "service"]
    at_512.write_text(json.dumps({**report, "rows": service, "targets": gpu_targets({"rows": service})}))
    table = subprocess.run(
        [sys.executable, "bench/gpu.py", "--markdown", str(at_512)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rate = rows[("service", "2 clients")]["images_per_s"]
    assert f"Targets at 512x512: {rate:.2f} img/s saturated (>= 12)" in table and "not met." in table


def test_a_stage_that_does_not_fit_the_budget_is_skipped_and_reported(
    tmp_path: Path, tiny_model: Path
) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, "bench/gpu.py", "--smoke", "--model", str(tiny_model), "--stages", "compiled",
         "--budget-seconds", "100", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["rows"] == []
    assert [skip["stage"] for skip in report["skipped"]] == ["compiled default"]  # about 120 s needed
    assert report["skipped"][0]["left_s"] <= 100
    assert "skipped compiled default at 512" in done.stdout
