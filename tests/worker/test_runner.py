"""The runner's own lifecycle on the CPU: dtype as the setting says, calls cut to warmed
sizes, and an out-of-memory split that frees the failed call before its halves run."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image

from shared.images import prepare_image
from shared.schema import REFERENCE_REQUEST, GenerationParams
from shared.settings import Settings
from tests.fixtures.runners import OutOfMemoryRunner
from tests.helpers import sample_image
from worker.runner import DiffusersRunner
from worker.runs import BatchFailed, BatchItem, job_items

SIZE = 128


def cpu_settings(model: Path, **changes: object) -> Settings:
    return Settings(
        model_dir=str(model), device="cpu", torch_threads=1, allowed_sizes=(SIZE,), warmup="off"
    ).replace(**changes)


def items(prompt: str, count: int) -> tuple[GenerationParams, list[BatchItem]]:
    params = GenerationParams.from_dict(
        {
            **REFERENCE_REQUEST,
            "prompt": prompt,
            "img_width": SIZE,
            "img_height": SIZE,
            "num_inference_steps": 20,
            "strength": 0.1,
            "samples": count,
        }
    )
    image = prepare_image(Image.open(io.BytesIO(sample_image())), SIZE, SIZE)
    return params, job_items(params, image, range(count), job="j")


def test_modules_load_in_the_dtype_the_setting_names(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also with a diffusers release that ignores ``dtype`` (it predates the argument)."""
    original = StableDiffusionImg2ImgPipeline.from_pretrained

    def ignores_dtype(*args: Any, **kwargs: Any) -> Any:
        kwargs.pop("dtype", None)
        return original(*args, **kwargs)

    monkeypatch.setattr(StableDiffusionImg2ImgPipeline, "from_pretrained", ignores_dtype)
    runner = DiffusersRunner(cpu_settings(tiny_model, dtype="bfloat16"))
    runner.load()
    try:
        for module in (runner.pipe.unet, runner.pipe.vae, runner.pipe.text_encoder):
            assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    finally:
        runner.close()


def test_calls_are_cut_to_the_sizes_a_narrowed_warm_up_compiled(tiny_model: Path) -> None:
    settings = cpu_settings(tiny_model, torch_compile="on", warmup="cfg", warmup_images=(4, 2))
    runner = DiffusersRunner(settings)  # not loaded: only its plan of calls is read
    assert runner.call_sizes == (1, 2, 4)
    _, seven = items("a lake", 4)
    seven += items("a lake", 3)[1]
    assert [len(call) for call in runner._cut(seven)[::-1]] == [4, 2, 1]
    assert [len(call) for call in DiffusersRunner(cpu_settings(tiny_model))._cut(seven)] == [7]


@pytest.fixture(scope="module")
def oom_runner(tiny_model: Path) -> Iterator[OutOfMemoryRunner]:
    runner = OutOfMemoryRunner(cpu_settings(tiny_model))
    runner.load()
    yield runner
    runner.close()


def test_an_out_of_memory_split_frees_the_failed_call_before_its_halves_run(
    oom_runner: OutOfMemoryRunner,
) -> None:
    params, batch = items("a forest [oom>1]", 4)
    output = oom_runner.run_batch(params, batch, lambda step, total: None)
    assert len(output.images) == 4
    assert [call.images for call in output.calls] == [1, 1, 1, 1]  # 4 -> 2 + 2 -> 1 + 1 + 1 + 1
    assert len(oom_runner.failed_tensors) == 3
    assert oom_runner.alive_at_start == [0] * 7, "a failed call's tensors outlived it"
    alone = oom_runner.run_batch(params, batch[2:3], lambda step, total: None).images
    assert alone[0].tobytes() == output.images[2].tobytes()  # the same image either way


def test_out_of_memory_at_one_image_fails_with_the_calls_that_ran(oom_runner: OutOfMemoryRunner) -> None:
    params, alone = items("a forest [oom>0]", 1)
    with pytest.raises(torch.cuda.OutOfMemoryError):  # nothing ran: the failure itself
        oom_runner.run_batch(params, alone, lambda step, total: None)
    _, fits = items("a forest", 1)
    with pytest.raises(BatchFailed) as failed:  # 2 -> 1 (ran) + 1 (out of memory at one image)
        oom_runner.run_batch(params, fits + alone, lambda step, total: None)
    assert isinstance(failed.value.__cause__, torch.cuda.OutOfMemoryError)
    assert [(call.images, call.jobs) for call in failed.value.calls] == [(1, 1)]


def test_cuda_without_a_usable_gpu_is_a_load_failure_never_a_cpu_run() -> None:
    from worker.runner import resolve_device

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
        return
    for setting in ("cuda", "cuda:0"):
        with pytest.raises(RuntimeError, match="refusing to run on the CPU"):
            resolve_device(setting)
