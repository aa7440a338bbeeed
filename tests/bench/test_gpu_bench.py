"""bench/gpu.py in its smallest mode: tiny model, 512x512, one round, the whole service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from shared.schema import SCHEDULERS
from tests.conftest import ROOT
from tests.worker.test_fastpath import MAX_PIXEL_DIFF

VARIANTS = ["baseline (SDPA)", "+ channels_last", "+ fused QKV", "+ host timesteps", "+ torch.compile"]


def test_smoke_run_reports_every_figure(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, "bench/gpu.py", "--smoke", "--model", str(tiny_model), "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "img/s" in done.stdout and "TFLOP/s" in done.stdout
    report = json.loads(out.read_text())

    assert report["smoke"] is True and report["arch"] == "tiny" and report["cuda"] is False
    assert report["denoising_steps"] == 18 and report["peak_tflops"] == 790
    flops = report["flops"]["512"]
    for key in ("unet_sample_pass", "vae_encode", "vae_decode"):
        assert flops[key] > 0
    assert flops["per_image"] == 36 * flops["unet_sample_pass"] + flops["vae_encode"] + flops["vae_decode"]

    rows = {(row["section"], row["name"]): row for row in report["rows"]}
    assert list(rows) == [
        ("pipeline", "plain diffusers"),
        *(("runner", name) for name in VARIANTS),
        ("service", "1 client"),
        ("service", "2 clients"),
    ]
    for row in rows.values():
        assert row["size"] == "512x512"
        for key in ("images_per_s", "p50_ms", "p95_ms", "mean_ms", "tflops", "peak_fraction"):
            assert row[key] > 0, (row["name"], key)
        assert row["p95_ms"] >= row["p50_ms"]
        if row["section"] != "service":
            assert row["unet_it_per_s"] > 0
            assert row["gpu_mem_peak_mib"] is None  # no GPU here
    assert rows[("service", "2 clients")]["images"] == 2
    assert rows[("service", "1 client")]["worker_startup_s"] > 0

    for name in VARIANTS:
        row = rows[("runner", name)]
        assert row["load_s"] > 0 and row["warmup_s"] > 0
        assert row["graphs_compiled_in_rounds"] == 0
        assert row["max_abs_diff"] <= MAX_PIXEL_DIFF
    compiled = rows[("runner", "+ torch.compile")]
    assert compiled["graphs_compiled_at_load"] == 3 and "compile=eager/default" in compiled["fast_path"]
    assert rows[("runner", "baseline (SDPA)")]["graphs_compiled_at_load"] == 0

    assert list(report["schedulers"]) == list(SCHEDULERS)
    for name, audit in report["schedulers"].items():
        assert audit["new_graphs"] == 0, name
        assert audit["loop_iterations"] >= 4 and audit["loop_syncs_per_iteration"] is None
