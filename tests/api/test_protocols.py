"""The web UI and OpenAI translations, key sources and error shapes, without a farm."""

from __future__ import annotations

import base64

import pytest
from flask import Flask
from werkzeug.datastructures import MultiDict

from api.a1111_fields import SAMPLERS, to_native
from api.auth import presented_key
from api.errors import openai_error
from api.openai_images import to_native as openai_to_native
from api.protocols import Protocol, keyed, protocol_of
from shared.errors import InvalidInput, JobFailed, NotEnoughCredits, RateLimited, Unauthorized, Unavailable
from shared.schema import SCHEDULERS, parse_request
from shared.settings import Settings

# What webuiapi 0.9 sends for api.img2img(images=[...], prompt=...) with its defaults.
WEBUIAPI_DEFAULTS = {
    "init_images": ["data:image/png;base64,AAAA"],
    "resize_mode": 0,
    "denoising_strength": 0.75,
    "mask_blur": 4,
    "inpainting_fill": 0,
    "inpaint_full_res": True,
    "inpaint_full_res_padding": 0,
    "inpainting_mask_invert": 0,
    "initial_noise_multiplier": 1,
    "prompt": "a cat",
    "styles": [],
    "seed": -1,
    "subseed": -1,
    "subseed_strength": 0,
    "seed_resize_from_h": 0,
    "seed_resize_from_w": 0,
    "batch_size": 1,
    "n_iter": 1,
    "steps": 20,
    "cfg_scale": 7.0,
    "image_cfg_scale": 1.5,
    "width": 512,
    "height": 512,
    "restore_faces": False,
    "tiling": False,
    "do_not_save_samples": False,
    "do_not_save_grid": False,
    "negative_prompt": "",
    "eta": 1.0,
    "s_churn": 0,
    "s_tmax": 0,
    "s_tmin": 0,
    "s_noise": 1,
    "override_settings": {},
    "override_settings_restore_afterwards": True,
    "sampler_name": "Euler a",
    "scheduler": "automatic",
    "sampler_index": "Euler a",
    "include_init_images": False,
    "script_name": None,
    "script_args": [],
    "send_images": True,
    "save_images": False,
    "alwayson_scripts": {},
}


def test_the_web_ui_clients_defaults_translate_to_the_farms_request() -> None:
    translated = to_native(WEBUIAPI_DEFAULTS)
    assert translated.body == {
        "image": "data:image/png;base64,AAAA",
        "prompt": "a cat",
        "negative_prompt": "",
        "samples": 1,
        "scheduler": "Euler a",
        "num_inference_steps": 20,
        "guidance_scale": 7.0,
        "strength": 0.75,
        "seed": -1,
        "img_width": 512,
        "img_height": 512,
        "base64": True,
    }
    params = parse_request(translated.body, Settings()).params
    assert params.scheduler == "Euler a" and params.samples == 1


def test_every_sampler_runs_a_farm_scheduler_and_sampler_name_wins() -> None:
    assert {sampler.scheduler for sampler in SAMPLERS} == set(SCHEDULERS)
    body = {**WEBUIAPI_DEFAULTS, "sampler_name": "DPM++ 2M", "sampler_index": "DDIM", "eta": None}
    assert to_native(body).body["scheduler"] == "DPM Multi"
    fallback = {**WEBUIAPI_DEFAULTS, "sampler_name": None, "sampler_index": "PLMS", "eta": None}
    assert to_native(fallback).sampler.name == "PLMS"
    karras = to_native({**WEBUIAPI_DEFAULTS, "sampler_name": "DPM2 a", "scheduler": "Karras"})
    assert karras.sampler.name == "DPM2 a Karras" and karras.schedule_type == "karras"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"mask": "AAAA"}, "mask"),
        ({"mask_blur": 8}, "mask_blur"),
        ({"alwayson_scripts": {"ControlNet": {"args": []}}}, "alwayson_scripts"),
        ({"seed_resize_from_h": 256}, "seed_resize_from_h"),
        ({"s_churn": 0.5}, "s_churn"),
        ({"include_init_images": True}, "include_init_images"),
        ({"init_images": []}, "init_images"),
        ({"init_images": "AAAA"}, "init_images"),
        ({"batch_size": 0}, "batch_size"),
        ({"n_iter": 5}, "batch_size"),
        ({"sampler_name": 3}, "sampler_name"),
        ({"scheduler": "exponential"}, "scheduler"),
        ({"eta": "1"}, "eta"),
        ({"send_images": "yes"}, "send_images"),
    ],
)
def test_what_the_farm_cannot_honour_names_its_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        to_native({**WEBUIAPI_DEFAULTS, **change})
    assert refused.value.field == field and refused.value.status_code == 400


def test_a_negative_seed_is_random_and_samples_multiply() -> None:
    translated = to_native({**WEBUIAPI_DEFAULTS, "seed": -7, "batch_size": 2, "n_iter": 2})
    assert translated.body["seed"] == -1 and translated.body["samples"] == 4


def test_openai_form_translation_and_defaults() -> None:
    body, response_format = openai_to_native(MultiDict({"prompt": "a cat", "model": "gpt-image-1"}))
    assert response_format == "b64_json"
    assert body == {
        "prompt": "a cat",
        "samples": 1,
        "img_width": 512,
        "img_height": 512,
        "strength": 0.75,
        "base64": True,
    }
    form = MultiDict(
        {"prompt": "x", "n": "3", "size": "512x768", "response_format": "url", "seed": "9", "strength": "0.4"}
    )
    body, response_format = openai_to_native(form)
    assert (body["samples"], body["img_width"], body["img_height"], body["seed"], body["strength"]) == (
        3,
        512,
        768,
        9,
        0.4,
    )
    assert response_format == "url"


@pytest.mark.parametrize(
    ("form", "param"),
    [
        ({"n": "two"}, "n"),
        ({"n": "5"}, "n"),
        ({"size": "256x256"}, "size"),
        ({"stream": "true"}, "stream"),
        ({"quality": "high"}, "quality"),
        ({"input_fidelity": "high"}, "input_fidelity"),
        ({"response_format": "png"}, "response_format"),
        ({"seed": "1.5"}, "seed"),
        ({"temperature": "1"}, "temperature"),
    ],
)
def test_openai_fields_the_farm_cannot_honour(form: dict[str, str], param: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        openai_to_native(MultiDict({"prompt": "x", **form}))
    assert refused.value.field == param


def test_protocols_by_path() -> None:
    assert protocol_of("/v1/images/edits") is Protocol.OPENAI
    assert protocol_of("/sdapi/v1/img2img") is Protocol.A1111
    assert protocol_of("/v1/sd1.5-img2img") is Protocol.SEGMIND
    assert protocol_of("/v2/requests/x") is Protocol.SEGMIND
    assert protocol_of("/metrics") is Protocol.NONE
    assert keyed("/sdapi/v1/samplers") and keyed("/v1/images/edits") and not keyed("/healthz")


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"x-api-key": "k1"}, "k1"),
        ({"Authorization": "Bearer k2"}, "k2"),
        ({"Authorization": "bearer  k3 "}, "k3"),
        ({"Authorization": "Basic " + base64.b64encode(b"anyone:k4").decode()}, "k4"),
        ({"Authorization": "Basic " + base64.b64encode(b":k:5").decode()}, "k:5"),
        ({"Authorization": "Basic !!!"}, ""),
        ({"Authorization": "Digest x"}, ""),
        ({}, ""),
    ],
)
def test_a_key_is_read_from_each_place_clients_put_it(headers: dict[str, str], key: str) -> None:
    with Flask(__name__).test_request_context(headers=headers):
        assert presented_key() == key


def test_openai_errors_say_whether_to_retry() -> None:
    body, status, retry = openai_error(InvalidInput("n", "must be between 1 and 4"))
    assert (status, retry) == (400, False) and body.error.param == "n" and body.error.code == "invalid_value"
    _, status, retry = openai_error(RateLimited("slow down", 3))
    assert (status, retry) == (429, True)
    body, status, retry = openai_error(NotEnoughCredits("no credits", "0.000", "1.000"))
    assert (status, retry, body.error.type) == (429, False, "insufficient_quota")
    body, status, retry = openai_error(JobFailed("boom", "j1"))
    assert (status, retry, body.error.code) == (500, False, "generation_failed")
    assert openai_error(Unavailable("down"))[1:] == (503, True)
    assert openai_error(Unauthorized("who"))[0].error.code == "invalid_api_key"
