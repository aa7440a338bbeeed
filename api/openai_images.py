"""OpenAI's Images API, ``POST /v1/images/edits``, over the farm's jobs.

The official OpenAI SDKs send a multipart form; it is translated to the farm's request and
runs as any job does (checks, prices, credits, rate limits, batching, idempotency; the job
shows up in ``/v1/jobs/{id}``). The answer comes once the job ends. Errors are in OpenAI's
shape (:mod:`api.errors`); a failed generation tells the SDK not to retry it.
"""

from __future__ import annotations

import base64
from typing import Any, Final

from flask import Blueprint, Response, request
from werkzeug.datastructures import FileStorage

from api.context import base_url, service
from api.protocols import OPENAI_PREFIX
from api.routes import with_job_headers
from api.submit import accept_checked, renamed_fields, synchronous, wait_for_result
from api.views import OpenAIImage, OpenAIImagesResponse, respond
from shared.errors import InvalidInput, PayloadTooLarge
from shared.images import check_image_header
from shared.jobview import image_urls
from shared.schema import MAX_SAMPLES, parse_request
from shared.settings import Settings

bp = Blueprint("openai", __name__, url_prefix=OPENAI_PREFIX)

SIZES: Final = ("512x512", "768x768", "512x768", "768x512")
DEFAULT_SIZE: Final = "512x512"
DEFAULT_STRENGTH: Final = 0.75
RESPONSE_FORMATS: Final = ("b64_json", "url")

# Extension fields (not OpenAI's): the farm's own knobs, in the same form.
EXTENSIONS: Final[dict[str, type]] = {
    "seed": int,
    "strength": float,
    "num_inference_steps": int,
    "guidance_scale": float,
    "negative_prompt": str,
    "scheduler": str,
}
# OpenAI fields read for what they say, with the values the farm honours.
IGNORED: Final = ("model", "user", "safety_identifier")  # echoed nowhere, change nothing
NEUTRAL: Final[dict[str, tuple[tuple[str, ...], str]]] = {
    "stream": (("false",), "streaming is not supported"),
    "background": (("auto", "opaque"), "transparent backgrounds are not supported"),
    "quality": (("auto", "standard"), "only auto and standard are supported"),
    "partial_images": (("0",), "partial images need streaming, which is not supported"),
}
UNSUPPORTED: Final[dict[str, str]] = {
    "mask": "masks (inpainting) are not supported",
    "markup": "markup images are not supported",
    "input_fidelity": "input fidelity is not supported",
    "complexity": "complexity is not supported",
    "frame_count": "animations are not supported",
    "frame_duration_ms": "animations are not supported",
}

# The farm's field names in this API's words, for errors raised on the translated request.
NATIVE_NAMES: Final = {
    "samples": "n",
    "img_width": "size",
    "img_height": "size",
    "image": "image",
    "output_quality": "output_compression",
}


@bp.post("/edits")
def edits() -> Response:
    svc = service()
    image = _image(svc.settings)
    body, response_format = to_native(request.form)  # their errors already name the form's fields
    with synchronous(svc):
        with renamed_fields(NATIVE_NAMES):
            checked = parse_request(body, svc.settings, with_image=False)
            job = accept_checked(svc, checked, image)
        job, cached = wait_for_result(svc, job)
    if response_format == "url":
        data = tuple(OpenAIImage(url=url) for url in image_urls(job, base_url()))
    else:
        images = svc.images(job, cached=cached)
        data = tuple(OpenAIImage(b64_json=_b64(item)) for item in images)
    size = f"{job.params.img_width}x{job.params.img_height}"
    return with_job_headers(
        respond(OpenAIImagesResponse(int(job.created_at), data, size, job.params.output_format)), job
    )


def to_native(form: Any) -> tuple[dict[str, Any], str]:
    """The farm's request for an edits form, and the response format; 400 naming the field."""
    known = {
        "image",
        "image[]",
        "prompt",
        "n",
        "size",
        "response_format",
        "output_format",
        "output_compression",
        *EXTENSIONS,
        *IGNORED,
    }
    for field in form:
        if field in UNSUPPORTED:
            raise InvalidInput(field, UNSUPPORTED[field])
        if field in NEUTRAL:
            allowed, why = NEUTRAL[field]
            if form[field].strip().lower() not in allowed:
                raise InvalidInput(field, why)
        elif field not in known:
            raise InvalidInput(field, "unknown parameter")
    response_format = form.get("response_format") or "b64_json"
    if response_format not in RESPONSE_FORMATS:
        raise InvalidInput("response_format", f"must be one of: {', '.join(RESPONSE_FORMATS)}")
    size = form.get("size") or "auto"
    if size == "auto":
        size = DEFAULT_SIZE
    if size not in SIZES:
        raise InvalidInput("size", f"must be auto or one of: {', '.join(SIZES)}")
    width, height = (int(side) for side in size.split("x"))
    samples = _number(form, "n", int, 1)
    if isinstance(samples, int) and samples > MAX_SAMPLES:
        raise InvalidInput("n", f"must be between 1 and {MAX_SAMPLES}")
    body: dict[str, Any] = {
        "prompt": form.get("prompt"),
        "samples": samples,
        "img_width": width,
        "img_height": height,
        "strength": DEFAULT_STRENGTH,
        "base64": True,
    }
    if form.get("output_format"):
        body["output_format"] = form["output_format"]
    if form.get("output_compression"):
        body["output_quality"] = _number(form, "output_compression", int, None)
    for field, kind in EXTENSIONS.items():
        if field in form:
            body[field] = _number(form, field, kind, None) if kind is not str else form[field]
    return body, response_format


def _number(form: Any, field: str, kind: type, default: Any) -> Any:
    text = form.get(field)
    if text is None or text == "":
        return default
    try:
        return kind(text)
    except ValueError:
        raise InvalidInput(field, f"must be {'an integer' if kind is int else 'a number'}") from None


def _image(settings: Settings) -> bytes:
    """The one uploaded image, checked up to its header (its type is read from its bytes)."""
    for field in request.files:
        if field not in ("image", "image[]"):
            raise InvalidInput(field, UNSUPPORTED.get(field, "unknown parameter"))
    parts: list[FileStorage] = [*request.files.getlist("image"), *request.files.getlist("image[]")]
    if not parts:
        raise InvalidInput("image", "is required (a file part)")
    if len(parts) > 1:
        raise InvalidInput("image", "only one image is supported")
    data = parts[0].stream.read(settings.max_image_bytes + 1)
    if len(data) > settings.max_image_bytes:
        raise PayloadTooLarge("image", f"image is over {settings.max_image_bytes} bytes")
    check_image_header(data, settings)
    return data


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
