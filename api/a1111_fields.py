"""The AUTOMATIC1111 web UI's img2img body, translated to the farm's request.

:func:`to_native` turns a ``/sdapi/v1/img2img`` body into the body of
``POST /v1/sd1.5-img2img`` (so one schema checks both), refusing what the farm cannot do:
a field the web UI would act on but the farm would not is a 400 naming it, never dropped.
Fields the web UI's clients send on every call at their neutral values (no mask, no
scripts, no subseed, ...) are accepted at exactly those values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from shared.errors import InvalidInput
from shared.schema import MAX_SAMPLES, RANDOM_SEED


@dataclass(frozen=True)
class Sampler:
    """A web UI sampler name and the farm scheduler that runs it."""

    name: str
    scheduler: str
    exact: bool  # False: the farm's scheduler differs in a documented way
    note: str = ""

    @property
    def ancestral(self) -> bool:
        return self.name in ("Euler a", "DPM2 a", "DPM2 a Karras")


SAMPLERS: Final[tuple[Sampler, ...]] = (
    Sampler("DDIM", "DDIM", True),
    Sampler("PLMS", "PNDM", True, "diffusers' PNDM without its Runge-Kutta warm-up is PLMS"),
    Sampler("UniPC", "UniPC", True),
    Sampler("Euler a", "Euler a", True),
    Sampler("Euler", "Euler", True),
    Sampler("Heun", "Heun", True),
    Sampler("LMS", "LMS", True),
    Sampler("DPM2", "DPM2 Karras", False, "runs with Karras sigmas"),
    Sampler("DPM2 a", "DPM2 a Karras", False, "runs with Karras sigmas"),
    Sampler("DPM2 Karras", "DPM2 Karras", True),
    Sampler("DPM2 a Karras", "DPM2 a Karras", True),
    Sampler("DPM++ 2M", "DPM Multi", True, "diffusers' DPMSolverMultistep, second order"),
    Sampler("DPM++ 2S a", "DPM Single", False, "DPMSolverSinglestep: second order, not ancestral"),
    Sampler("DDPM", "DDPM", True),
)
SAMPLER_BY_NAME: Final = {sampler.name.lower(): sampler for sampler in SAMPLERS}
DEFAULT_SAMPLER: Final = "Euler a"
# The web UI's schedule types: "automatic" (the sampler's own); "karras" where the farm's
# scheduler has Karras sigmas.
SCHEDULE_TYPES: Final = ("automatic", "karras")

# Lists the web UI serves that are empty on this farm (no extensions, upscalers, LoRAs, ...).
EMPTY_LISTS: Final = (
    "sd-vae",
    "upscalers",
    "latent-upscale-modes",
    "loras",
    "hypernetworks",
    "face-restorers",
    "realesrgan-models",
    "prompt-styles",
    "script-info",
    "extensions",
)

# The farm's field names in the web UI's words, for errors raised on the translated body.
NATIVE_NAMES: Final = {
    "image": "init_images",
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "samples": "batch_size",
    "scheduler": "sampler_name",
    "num_inference_steps": "steps",
    "guidance_scale": "cfg_scale",
    "strength": "denoising_strength",
    "seed": "seed",
    "img_width": "width",
    "img_height": "height",
}


def _absent(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _one_of(*neutral: Any) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return value is None or value in neutral

    return check


def _false(value: Any) -> bool:
    return value is None or value is False or value == 0


# Fields the farm cannot act on, each with the values at which it has no effect. Anything
# else is a 400 naming the field.
NEUTRAL: Final[dict[str, tuple[Callable[[Any], bool], str]]] = {
    "mask": (_absent, "masks and inpainting are not supported"),
    "latent_mask": (_absent, "masks and inpainting are not supported"),
    "mask_blur": (_one_of(4), "inpainting is not supported (send 4 or leave it out)"),
    "mask_blur_x": (_one_of(4), "inpainting is not supported (send 4 or leave it out)"),
    "mask_blur_y": (_one_of(4), "inpainting is not supported (send 4 or leave it out)"),
    "mask_round": (_one_of(True), "inpainting is not supported"),
    "inpainting_fill": (_one_of(0), "inpainting is not supported (send 0 or leave it out)"),
    "inpaint_full_res": (_one_of(True, 1), "inpainting is not supported (send true or leave it out)"),
    "inpaint_full_res_padding": (_one_of(0), "inpainting is not supported (send 0 or leave it out)"),
    "inpainting_mask_invert": (_one_of(0), "inpainting is not supported (send 0 or leave it out)"),
    "resize_mode": (_one_of(0), "only 0 (just resize: stretch to width x height) is supported"),
    "script_name": (_absent, "scripts are not supported"),
    "script_args": (_absent, "scripts are not supported"),
    "alwayson_scripts": (_absent, "scripts and extensions are not supported"),
    "styles": (_absent, "prompt styles are not supported"),
    "override_settings": (_absent, "settings cannot be overridden on this farm"),
    "subseed_strength": (_one_of(0), "variation seeds (subseeds) are not supported"),
    "seed_resize_from_h": (_one_of(0, -1), "seed resizing is not supported"),
    "seed_resize_from_w": (_one_of(0, -1), "seed resizing is not supported"),
    "restore_faces": (_false, "face restoration is not supported"),
    "tiling": (_false, "tiling is not supported"),
    "include_init_images": (_false, "the init image is not sent back"),
    "initial_noise_multiplier": (_one_of(1), "only 1 is supported"),
    "s_churn": (_one_of(0), "sampler noise settings are not supported"),
    "s_tmin": (_one_of(0), "sampler noise settings are not supported"),
    "s_tmax": (_one_of(0, math.inf), "sampler noise settings are not supported"),
    "s_noise": (_one_of(1), "sampler noise settings are not supported"),
    "s_min_uncond": (_one_of(0), "sampler noise settings are not supported"),
    "refiner_checkpoint": (_absent, "refiner models are not supported"),
    "refiner_switch_at": (_one_of(0), "refiner models are not supported"),
    "firstpass_image": (_absent, "only init_images is read"),
    "enable_hr": (_false, "hires fix is a txt2img feature"),
}


@dataclass(frozen=True)
class Translated:
    """A web UI body as the farm's request, with what the answer reports back."""

    body: dict[str, Any]
    sampler: Sampler
    schedule_type: str
    batch_size: int
    n_iter: int
    send_images: bool


def to_native(body: Any) -> Translated:
    """The farm's request for a web UI img2img body; 400 naming the first field it cannot honour."""
    if not isinstance(body, Mapping):
        raise InvalidInput("body", "must be a JSON object")
    for field, (neutral, why) in NEUTRAL.items():
        if field in body and not neutral(body[field]):
            raise InvalidInput(field, why)
    sampler, schedule_type = _sampler(body)
    _check_eta(body.get("eta"), sampler)
    batch_size = _count(body, "batch_size")
    n_iter = _count(body, "n_iter")
    if batch_size * n_iter > MAX_SAMPLES:
        raise InvalidInput("batch_size", f"batch_size x n_iter must be at most {MAX_SAMPLES}")
    native: dict[str, Any] = {
        "image": _init_image(body.get("init_images")),
        "prompt": body.get("prompt"),
        "negative_prompt": body.get("negative_prompt"),
        "samples": batch_size * n_iter,
        "scheduler": sampler.scheduler,
        "num_inference_steps": body.get("steps", 20),
        "guidance_scale": body.get("cfg_scale", 7.0),
        "strength": body.get("denoising_strength", 0.75),
        "seed": _seed(body.get("seed")),
        "img_width": body.get("width", 512),
        "img_height": body.get("height", 512),
        "base64": True,
    }
    send_images = body.get("send_images", True)
    if not isinstance(send_images, bool):
        raise InvalidInput("send_images", "must be a boolean")
    return Translated(native, sampler, schedule_type, batch_size, n_iter, send_images)


def _sampler(body: Mapping[str, Any]) -> tuple[Sampler, str]:
    """``sampler_name`` (it wins over ``sampler_index``) and ``scheduler``, the schedule type."""
    field = "sampler_name" if body.get("sampler_name") not in (None, "") else "sampler_index"
    name = body.get(field) or DEFAULT_SAMPLER
    if not isinstance(name, str):
        raise InvalidInput(field, "must be a string")
    schedule_type = body.get("scheduler") or "automatic"
    if not isinstance(schedule_type, str) or schedule_type.lower() not in SCHEDULE_TYPES:
        raise InvalidInput("scheduler", f"must be one of: {', '.join(SCHEDULE_TYPES)}")
    schedule_type = schedule_type.lower()
    sampler = SAMPLER_BY_NAME.get(name.strip().lower())
    if sampler is None:
        known = ", ".join(sampler.name for sampler in SAMPLERS)
        raise InvalidInput(field, f"{name!r} is not a sampler this farm runs; one of: {known}")
    if schedule_type == "karras":
        karras = SAMPLER_BY_NAME.get(f"{sampler.name.removesuffix(' Karras')} karras".lower())
        if karras is None:
            raise InvalidInput("scheduler", f"karras applies to DPM2 and DPM2 a here, not {sampler.name}")
        sampler = karras
    return sampler, schedule_type


def _check_eta(eta: Any, sampler: Sampler) -> None:
    """``eta`` acts on DDIM (the farm runs 0) and the ancestral samplers (1); others ignore it,
    as in the web UI."""
    if eta is None:
        return
    if isinstance(eta, bool) or not isinstance(eta, int | float):
        raise InvalidInput("eta", "must be a number")
    if sampler.scheduler == "DDIM" and eta != 0:
        raise InvalidInput("eta", "DDIM runs with eta 0 here (send 0 or leave it out)")
    if sampler.ancestral and eta != 1:
        raise InvalidInput("eta", f"{sampler.name} runs with eta 1 here (send 1 or leave it out)")


def _count(body: Mapping[str, Any], field: str) -> int:
    value = body.get(field, 1)
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(field, "must be a positive integer")
    return value


def _init_image(images: Any) -> Any:
    if not isinstance(images, list) or not images:
        raise InvalidInput("init_images", "must be a list holding one image (base64 or data URI)")
    if len(images) > 1:
        raise InvalidInput("init_images", "only one init image is supported")
    return images[0]


def _seed(seed: Any) -> Any:
    """The web UI's random seed is any negative number, the farm's is -1."""
    if isinstance(seed, int) and not isinstance(seed, bool) and seed < 0:
        return RANDOM_SEED
    return seed
