"""The AUTOMATIC1111 web UI API (``/sdapi/v1``) over the farm's jobs.

``POST /sdapi/v1/img2img`` is translated to the farm's request (:mod:`api.a1111_fields`)
and runs as any job does: same checks, prices, credits, rate limits, batching and
idempotency, and the job shows up in ``/v1/jobs/{id}``. It answers once the job ends, as the
web UI does; its clients treat anything but 200 as an error. The GETs its clients call
around a generation (samplers, models, options, progress, scripts, ...) answer from what
the farm knows, at once.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from flask import Blueprint, Response, jsonify

from api.a1111_fields import EMPTY_LISTS, NATIVE_NAMES, SAMPLERS, SCHEDULE_TYPES, Translated, to_native
from api.auth import current_owner
from api.context import service
from api.protocols import A1111_PREFIX
from api.routes import with_job_headers
from api.submit import (
    accept_checked,
    json_body,
    renamed_fields,
    synchronous,
    wait_for_result,
)
from api.views import A1111Img2ImgResult, A1111Progress, A1111ProgressState, respond
from shared.errors import InvalidInput
from shared.jobs import Job, JobStatus
from shared.schema import parse_request
from shared.settings import Settings

bp = Blueprint("a1111", __name__, url_prefix=A1111_PREFIX)


def model_name(settings: Settings) -> str:
    """The model's name as the web UI shows checkpoints: the last part of its id or folder."""
    return settings.model_path.rstrip("/").rsplit("/", 1)[-1] or "model"


@bp.post("/img2img")
def img2img() -> Response:
    svc = service()
    body = json_body()
    translated = to_native(body)  # its errors already name the web UI's fields
    with synchronous(svc):
        with renamed_fields(NATIVE_NAMES):
            checked = parse_request(translated.body, svc.settings)
            job = accept_checked(svc, checked)
        job, cached = wait_for_result(svc, job)
    images = svc.images(job, cached=cached) if translated.send_images else []
    assert isinstance(body, dict)  # to_native refused anything else
    result = A1111Img2ImgResult(
        images=tuple(base64.b64encode(data).decode("ascii") for data in images),
        parameters={**body, "init_images": None, "mask": None},
        info=json.dumps(info(job, translated, svc.settings)),
    )
    return with_job_headers(respond(result), job)


def info(job: Job, translated: Translated, settings: Settings) -> dict[str, Any]:
    """The ``info`` the web UI sends back (as a JSON string), for the job as it ran."""
    params = job.params
    name = model_name(settings)
    negative = params.negative_prompt or ""
    fields = {
        "Steps": params.num_inference_steps,
        "Sampler": translated.sampler.name,
        "Schedule type": translated.schedule_type.capitalize(),
        "CFG scale": params.guidance_scale,
        "Size": f"{params.img_width}x{params.img_height}",
        "Model": name,
        "Denoising strength": params.strength,
    }
    infotexts = []
    for seed in job.seeds:
        text = ", ".join(f"{key}: {value}" for key, value in {**fields, "Seed": seed}.items())
        infotexts.append(f"{params.prompt}\nNegative prompt: {negative}\n{text}")
    samples = len(job.seeds)
    return {
        "prompt": params.prompt,
        "all_prompts": [params.prompt] * samples,
        "negative_prompt": negative,
        "all_negative_prompts": [negative] * samples,
        "seed": job.seeds[0],
        "all_seeds": list(job.seeds),
        "subseed": -1,
        "all_subseeds": [-1] * samples,
        "subseed_strength": 0,
        "width": params.img_width,
        "height": params.img_height,
        "sampler_name": translated.sampler.name,
        "scheduler": translated.schedule_type,
        "cfg_scale": params.guidance_scale,
        "steps": params.num_inference_steps,
        "denoising_strength": params.strength,
        "batch_size": translated.batch_size,
        "n_iter": translated.n_iter,
        "restore_faces": False,
        "sd_model_name": name,
        "sd_model_hash": None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "styles": [],
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.gmtime(job.created_at)),
        "job_id": job.id,
        "version": "img2img-farm",
    }


@bp.post("/txt2img")
def txt2img() -> Response:
    raise InvalidInput("init_images", "this farm transforms images: send them to /sdapi/v1/img2img")


@bp.get("/samplers")
def samplers() -> Response:
    return jsonify(
        [
            {"name": sampler.name, "aliases": [sampler.scheduler], "options": {"exact": str(sampler.exact)}}
            for sampler in SAMPLERS
        ]
    )


@bp.get("/schedulers")
def schedulers() -> Response:
    return jsonify(
        [
            {
                "name": name,
                "label": name.capitalize(),
                "aliases": None,
                "default_rho": -1,
                "need_inner_model": False,
            }
            for name in SCHEDULE_TYPES
        ]
    )


@bp.get("/sd-models")
def sd_models() -> Response:
    settings = service().settings
    name = model_name(settings)
    return jsonify(
        [
            {
                "title": name,
                "model_name": name,
                "hash": None,
                "sha256": None,
                "filename": settings.model_path,
                "config": None,
            }
        ]
    )


@bp.get("/options")
def options() -> Response:
    return jsonify(_options(service().settings))


@bp.post("/options")
def set_options() -> Response:
    """Accepts settings that are already so (clients set the checkpoint before they generate)."""
    body = json_body()
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    current = _options(service().settings)
    for key, value in body.items():
        if current.get(key, object()) != value:
            raise InvalidInput(key, f"cannot be changed on this farm (it is {current.get(key)!r})")
    return jsonify(None)


def _options(settings: Settings) -> dict[str, Any]:
    name = model_name(settings)
    return {
        "sd_model_checkpoint": name,
        "sd_checkpoint_hash": None,
        "sd_vae": "Automatic",
        "samples_format": "jpg",
        "CLIP_stop_at_last_layers": 1,
        "eta_ddim": 0.0,
        "eta_ancestral": 1.0,
        "img2img_fix_steps": False,
    }


@bp.get("/progress")
def progress() -> Response:
    """This key's latest job: its progress and, while queued, its estimated wait."""
    svc = service()
    job = svc.latest(current_owner())
    if job is None:
        state = A1111ProgressState("", 0, 0, "0", False, False, 0, 0)
        return respond(A1111Progress(0.0, 0.0, state, None, None))
    fraction = 1.0 if job.status.terminal else job.progress_step / max(job.progress_total, 1)
    eta = 0.0
    if job.status is JobStatus.QUEUED:
        eta = svc.queue_estimate(job.id)[1] or 0.0
    state = A1111ProgressState(
        job=job.id,
        job_count=0 if job.status.terminal else 1,
        job_no=0,
        job_timestamp=time.strftime("%Y%m%d%H%M%S", time.gmtime(job.created_at)),
        skipped=False,
        interrupted=job.status is JobStatus.CANCELED,
        sampling_step=job.progress_step,
        sampling_steps=job.progress_total,
    )
    return respond(A1111Progress(round(fraction, 4), eta, state, None, job.status.value))


@bp.post("/interrupt")
def interrupt() -> Response:
    """Stops this key's latest job if it has not ended (the web UI's Interrupt button)."""
    svc = service()
    job = svc.latest(current_owner())
    if job is not None and not job.status.terminal:
        svc.cancel(job.id, current_owner())
    return jsonify(None)


@bp.get("/scripts")
def scripts() -> Response:
    return jsonify({"txt2img": [], "img2img": []})


@bp.get("/cmd-flags")
def cmd_flags() -> Response:
    return jsonify({"api": True, "nowebui": True, "listen": True, "api_auth": None})


@bp.get("/embeddings")
def embeddings() -> Response:
    return jsonify({"loaded": {}, "skipped": {}})


def _empty() -> Response:
    return jsonify([])


for _path in EMPTY_LISTS:
    bp.add_url_rule(f"/{_path}", f"empty_{_path.replace('-', '_')}", _empty, methods=["GET"])
