from __future__ import annotations

import pytest

from shared.errors import InvalidInput
from shared.schema import SCHEDULERS, GenerationParams, fields, parse_request
from shared.settings import Settings

SETTINGS = Settings()


def test_defaults_follow_the_contract() -> None:
    checked = parse_request({"image": "x", "prompt": "a cat"}, SETTINGS)
    params = checked.params
    assert checked.image == "x"
    assert (params.samples, params.scheduler, params.num_inference_steps) == (1, "DDIM", 20)
    assert (params.guidance_scale, params.strength, params.seed) == (7.5, 1.0, -1)
    assert (params.img_width, params.img_height, params.base64) == (512, 512, True)
    assert params.negative_prompt is None
    assert (params.output_format, params.output_quality, params.media_type) == ("jpeg", 90, "image/jpeg")


def test_a_job_stored_before_output_formats_reads_as_jpeg() -> None:
    stored = parse_request({"image": "x", "prompt": "a cat"}, SETTINGS).params.to_dict()
    del stored["output_format"], stored["output_quality"]
    params = GenerationParams.from_dict(stored)
    assert (params.output_format, params.output_quality) == ("jpeg", 90)


def test_every_field_of_the_design_table_is_declared() -> None:
    names = [spec.name for spec in fields(SETTINGS)]
    assert names == [
        "image",
        "prompt",
        "negative_prompt",
        "samples",
        "scheduler",
        "num_inference_steps",
        "guidance_scale",
        "strength",
        "seed",
        "img_width",
        "img_height",
        "base64",
        "output_format",
        "output_quality",
        "webhook",
    ]
    assert len(SCHEDULERS) == 12


def test_unknown_fields_are_ignored_and_null_means_default() -> None:
    params = parse_request(
        {"image": "x", "prompt": "p", "samples": None, "safety_checker": True}, SETTINGS
    ).params
    assert params.samples == 1


def test_denoising_steps_follow_diffusers() -> None:
    params = parse_request(
        {"image": "x", "prompt": "p", "num_inference_steps": 25, "strength": 0.75}, SETTINGS
    ).params
    assert params.denoising_steps == 18


def test_allowed_sizes_come_from_settings() -> None:
    settings = Settings(allowed_sizes=(256, 512, 1024))
    assert parse_request({"image": "x", "prompt": "p", "img_width": 1024}, settings).params.img_width == 1024
    with pytest.raises(InvalidInput) as err:
        parse_request({"image": "x", "prompt": "p", "img_width": 768}, settings)
    assert err.value.field == "img_width"
    assert "256, 512, 1024" in err.value.message


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_numbers_are_refused(value: float) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_request({"image": "x", "prompt": "p", "guidance_scale": value}, SETTINGS)
    assert err.value.field == "guidance_scale"


def test_integral_number_for_a_float_field_is_accepted() -> None:
    assert (
        parse_request({"image": "x", "prompt": "p", "guidance_scale": 8}, SETTINGS).params.guidance_scale
        == 8.0
    )
