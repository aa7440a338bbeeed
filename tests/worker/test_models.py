"""The model tools: a tiny random model that loads like real weights, and the SD1.5 architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline

from worker.models import build_text_encoder, build_tokenizer, build_unet, build_vae, write_pipeline


def test_tiny_model_loads_through_from_pretrained(tiny_model: Path) -> None:
    index = json.loads((tiny_model / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionImg2ImgPipeline"
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        tiny_model, safety_checker=None, requires_safety_checker=False
    )
    assert pipe.vae_scale_factor == 8
    assert pipe.unet.config.sample_size == 64
    ids = pipe.tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77


def test_existing_model_is_reused(tiny_model: Path) -> None:
    marker = (tiny_model / "model_index.json").stat().st_mtime_ns
    assert write_pipeline("tiny", tiny_model) == tiny_model.resolve()
    assert (tiny_model / "model_index.json").stat().st_mtime_ns == marker


def test_unknown_arch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown arch"):
        write_pipeline("sdxl", tmp_path / "x")


def test_sd15_architecture_has_sd15_parameter_counts(tmp_path: Path) -> None:
    """Built on the meta device: the real shapes without allocating 4 GB."""
    tokenizer = build_tokenizer(tmp_path)
    with torch.device("meta"):
        counts = {
            "unet": sum(p.numel() for p in build_unet("sd15").parameters()),
            "vae": sum(p.numel() for p in build_vae("sd15").parameters()),
            "text": sum(p.numel() for p in build_text_encoder("sd15", tokenizer).parameters()),
        }
    assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text": 123_060_480}
