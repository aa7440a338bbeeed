"""The service's image equals a direct diffusers call on the same model and generators."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline
from flask.testing import FlaskClient

from shared.images import encode_image, prepare_image
from shared.settings import Settings
from tests.conftest import TORCH_THREADS
from tests.helpers import REFERENCE, jpeg_pixels, reference_body, sample_image


def test_service_image_equals_direct_pipeline_call(
    client: FlaskClient, settings: Settings, tiny_model: Path
) -> None:
    reply = client.post("/v1/sd1.5-img2img", json=reference_body(samples=2, base64=True))
    assert reply.status_code == 200
    served = reply.get_json()["images"]

    torch.set_num_threads(TORCH_THREADS)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        tiny_model, dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    from PIL import Image

    image = prepare_image(Image.open(io.BytesIO(sample_image())), 512, 512)
    seed = REFERENCE["seed"]
    direct = pipe(
        prompt=REFERENCE["prompt"],
        negative_prompt=REFERENCE["negative_prompt"],
        image=image,
        strength=REFERENCE["strength"],
        num_inference_steps=REFERENCE["num_inference_steps"],
        guidance_scale=REFERENCE["guidance_scale"],
        num_images_per_prompt=2,
        generator=[torch.Generator("cpu").manual_seed(seed + i) for i in range(2)],
    ).images

    import base64

    for served_b64, ours in zip(served, direct, strict=True):
        expected = np.asarray(jpeg_pixels(encode_image(ours, "jpeg", settings.jpeg_quality)))
        got = np.asarray(jpeg_pixels(base64.b64decode(served_b64)))
        assert np.array_equal(got, expected)
