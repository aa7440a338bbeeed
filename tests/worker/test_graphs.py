"""Compiled graphs as a GPU farm runs them, emulated on the CPU: the warm-up leaves no batch to
compile, and outputs that a CUDA graph overwrites on its next call never reach a job."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.images import prepare_image
from shared.schema import REFERENCE_REQUEST, SCHEDULERS, GenerationParams
from shared.settings import Settings
from tests.fixtures.graphs import STATIC_OUTPUTS
from tests.helpers import sample_image
from worker import fastpath
from worker.runner import DiffusersRunner
from worker.runs import BatchItem, job_items

SIZE = 128
BATCH_MAX_IMAGES = 5  # above one job's 4 samples: batches that only batching builds
MAX_PIXEL_DIFF = 2  # eager replay of the captured graph against the plain modules


def settings(model: Path, **changes: object) -> Settings:
    return Settings(
        model_dir=str(model),
        device="cpu",
        torch_threads=1,
        allowed_sizes=(SIZE,),
        batch_max_images=BATCH_MAX_IMAGES,
    ).replace(**changes)


def params(guidance: float, scheduler: str = "DDIM", samples: int = 1) -> GenerationParams:
    return GenerationParams.from_dict(
        {
            **REFERENCE_REQUEST,
            "img_width": SIZE,
            "img_height": SIZE,
            "num_inference_steps": 20,
            "strength": 0.3,  # 6 denoising steps: PNDM's multistep history fills up
            "guidance_scale": guidance,
            "scheduler": scheduler,
            "samples": samples,
        }
    )


def image() -> Image.Image:
    return prepare_image(Image.open(io.BytesIO(sample_image())), SIZE, SIZE)


@pytest.fixture(scope="module")
def graphed(tiny_model: Path) -> Iterator[DiffusersRunner]:
    """A runner whose UNet and VAE are compiled to graphs that overwrite their outputs on
    every call, as CUDA graphs do, warmed up over every batch it can run."""
    runner = DiffusersRunner(
        settings(tiny_model, torch_compile="on", compile_backend=STATIC_OUTPUTS, warmup="full")
    )
    runner.load()
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def plain(tiny_model: Path) -> Iterator[DiffusersRunner]:
    runner = DiffusersRunner(settings(tiny_model, warmup="off"))
    runner.load()
    yield runner
    runner.close()


def batch(images: int, guidance: float) -> tuple[GenerationParams, list[BatchItem]]:
    """``images`` images in jobs of at most 4 samples, as batching builds them."""
    job = params(guidance)
    items = [
        item
        for first in range(0, images, 4)
        for item in job_items(job, image(), range(first, min(first + 4, images)), job=f"job{first}")
    ]
    return job, items


def test_after_the_warm_up_no_batch_compiles(graphed: DiffusersRunner) -> None:
    assert graphed.call_sizes == tuple(range(1, BATCH_MAX_IMAGES + 1))
    loaded = fastpath.graphs_compiled()
    for images in range(1, BATCH_MAX_IMAGES + 1):
        for guidance in (7.5, 1.0):  # classifier-free guidance doubles the UNet's batch
            job, items = batch(images, guidance)
            output = graphed.run_batch(job, items, lambda step, total: None)
            assert len(output.images) == images and [c.images for c in output.calls] == [images]
            assert fastpath.graphs_compiled() == loaded, f"{images} images, guidance {guidance} compiled"


@pytest.mark.parametrize("guidance", [7.5, 1.0], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_makes_the_plain_images_when_graphs_reuse_their_outputs(
    graphed: DiffusersRunner, plain: DiffusersRunner, scheduler: str, guidance: float
) -> None:
    job = params(guidance, scheduler, samples=2)
    got = graphed.run(job, image(), [7, 8], lambda step, total: None)
    expected = plain.run(job, image(), [7, 8], lambda step, total: None)
    for ours, theirs in zip(got, expected, strict=True):
        diff = np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(theirs, dtype=np.int16))
        assert diff.max() <= MAX_PIXEL_DIFF, f"{scheduler}: max pixel difference {diff.max()}"


def test_the_emulated_graph_does_overwrite_its_outputs() -> None:
    """The fixture itself: what a test above relies on."""
    double = torch.compile(lambda x: x * 2, backend=STATIC_OUTPUTS, dynamic=False)
    first = double(torch.ones(2))
    double(torch.full((2,), 3.0))
    assert first.tolist() == [6.0, 6.0]
    owned = fastpath.owned_outputs(double)
    kept = owned(torch.ones(2))
    owned(torch.full((2,), 3.0))
    assert kept.tolist() == [2.0, 2.0]
