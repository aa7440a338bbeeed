"""The img2img request schema, shared by gateway and worker.

Each field of the public contract is declared once in :data:`FIELDS` with its type,
default, range or enum; :func:`parse_request` checks a decoded JSON body against it and
raises :class:`~shared.errors.InvalidInput` naming the first field that breaks its rule.
Unknown fields are ignored, as Segmind's endpoint does; ``null`` means "use the default".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from shared.errors import InvalidInput

if TYPE_CHECKING:
    from shared.settings import Settings

# Most samples one request may ask for: the largest batch a single job makes.
MAX_SAMPLES = 4

SCHEDULERS: tuple[str, ...] = (
    "DDIM",
    "DPM Multi",
    "DPM Single",
    "Euler a",
    "Euler",
    "Heun",
    "DPM2 a Karras",
    "DPM2 Karras",
    "LMS",
    "PNDM",
    "DDPM",
    "UniPC",
)

# Segmind's published example request (without its image), used in docs, tests and benchmarks.
REFERENCE_REQUEST: dict[str, Any] = {
    "samples": 1,
    "prompt": "A fantasy landscape, trending on artstation, mystical sky",
    "negative_prompt": "nude, disfigured, blurry",
    "scheduler": "DDIM",
    "num_inference_steps": 25,
    "guidance_scale": 10.5,
    "strength": 0.75,
    "seed": 98877465625,
    "img_width": 512,
    "img_height": 512,
    "base64": False,
}

# Formats an output image may be written in, each with its media type and file extension.
OutputFormat = Literal["jpeg", "png", "webp"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = get_args(OutputFormat)
OUTPUT_MEDIA_TYPES: dict[str, str] = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
OUTPUT_EXTENSIONS: dict[str, str] = {"jpeg": "jpg", "png": "png", "webp": "webp"}

MAX_SEED = 2**63 - 1
MAX_URL_CHARS = 2048
RANDOM_SEED = -1


@dataclass(frozen=True)
class FieldSpec:
    """One body field: JSON type, default (``None`` with ``required``), bounds or enum."""

    name: str
    kind: str  # "string", "integer", "number" or "boolean"
    description: str
    required: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[Any, ...] | None = None


def fields(settings: Settings) -> tuple[FieldSpec, ...]:
    """The body fields of ``POST /v1/sd1.5-img2img``; sizes and limits come from settings."""
    sizes = tuple(sorted(settings.allowed_sizes))
    default_size = 512 if 512 in sizes else sizes[0]
    return (
        FieldSpec("image", "string", "Input image: base64 (raw or data URI).", required=True),
        FieldSpec("prompt", "string", "What to draw.", required=True, maximum=settings.max_prompt_chars),
        FieldSpec("negative_prompt", "string", "What to avoid.", maximum=settings.max_prompt_chars),
        FieldSpec(
            "samples", "integer", "Images to make in one batch.", default=1, minimum=1, maximum=MAX_SAMPLES
        ),
        FieldSpec("scheduler", "string", "Sampler.", default="DDIM", enum=SCHEDULERS),
        FieldSpec(
            "num_inference_steps",
            "integer",
            "Scheduler steps before strength is applied.",
            default=20,
            minimum=20,
            maximum=100,
        ),
        FieldSpec(
            "guidance_scale",
            "number",
            "Classifier-free guidance scale.",
            default=7.5,
            minimum=0.1,
            maximum=25,
        ),
        FieldSpec(
            "strength",
            "number",
            "How far to move from the input (1 = ignore it).",
            default=1.0,
            minimum=0.1,
            maximum=1,
        ),
        FieldSpec(
            "seed",
            "integer",
            "-1 draws a random seed; sample i uses seed + i.",
            default=RANDOM_SEED,
            minimum=RANDOM_SEED,
            maximum=MAX_SEED,
        ),
        FieldSpec("img_width", "integer", "Output width.", default=default_size, enum=sizes),
        FieldSpec("img_height", "integer", "Output height.", default=default_size, enum=sizes),
        FieldSpec(
            "base64",
            "boolean",
            "true: JSON with base64 images; false: raw image/jpeg.",
            default=True,
        ),
        FieldSpec(
            "output_format",
            "string",
            "Format of the output images (content types, data and object names follow).",
            default="jpeg",
            enum=OUTPUT_FORMATS,
        ),
        FieldSpec(
            "output_quality",
            "integer",
            "Quality of jpeg and webp outputs (png is lossless and ignores it).",
            default=settings.jpeg_quality,
            minimum=1,
            maximum=100,
        ),
        FieldSpec(
            "webhook",
            "string",
            "URL that receives the signed job document when the job ends.",
            maximum=MAX_URL_CHARS,
        ),
    )


@dataclass(frozen=True)
class GenerationParams:
    """Everything a worker needs besides the image; stored with the job."""

    prompt: str
    negative_prompt: str | None
    samples: int
    scheduler: str
    num_inference_steps: int
    guidance_scale: float
    strength: float
    seed: int
    img_width: int
    img_height: int
    base64: bool
    output_format: OutputFormat = "jpeg"
    output_quality: int = 90

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationParams:
        """The parameters of a stored job; fields newer than the record take their defaults."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})

    @property
    def media_type(self) -> str:
        return OUTPUT_MEDIA_TYPES[self.output_format]

    @property
    def denoising_steps(self) -> int:
        """Steps diffusers actually runs: ``int(num_inference_steps * strength)``."""
        return min(int(self.num_inference_steps * self.strength), self.num_inference_steps)


@dataclass(frozen=True)
class Img2ImgRequest:
    """A checked request: the raw image field plus the generation parameters."""

    image: str
    params: GenerationParams
    webhook: str | None = None


def parse_request(body: Any, settings: Settings, with_image: bool = True) -> Img2ImgRequest:
    """Check ``body`` (decoded JSON) against the schema; raise ``InvalidInput`` on the first fault.
    ``with_image`` False: the image comes in another part of the request (``image`` is then
    empty)."""
    if not isinstance(body, Mapping):
        raise InvalidInput("body", "must be a JSON object")
    values: dict[str, Any] = {"image": ""}
    for spec in fields(settings):
        if spec.name != "image" or with_image:
            values[spec.name] = _check_field(spec, body.get(spec.name), spec.name in body)
    image = values.pop("image")
    webhook = values.pop("webhook")
    return Img2ImgRequest(image=image, params=GenerationParams(**values), webhook=webhook)


def _check_field(spec: FieldSpec, value: Any, present: bool) -> Any:
    if not present or value is None:
        if spec.required:
            raise InvalidInput(spec.name, "is required")
        return spec.default
    value = _check_type(spec, value)
    if spec.enum is not None and value not in spec.enum:
        allowed = ", ".join(str(item) for item in spec.enum)
        raise InvalidInput(spec.name, f"must be one of: {allowed} (got {value!r})")
    if spec.kind == "string":
        _check_string(spec, value)
    elif spec.kind in ("integer", "number"):
        _check_range(spec, value)
    return value


def _check_type(spec: FieldSpec, value: Any) -> Any:
    if spec.kind == "string" and isinstance(value, str):
        return value
    if spec.kind == "boolean" and isinstance(value, bool):
        return value
    if spec.kind == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if spec.kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InvalidInput(spec.name, "must be a finite number")
        return float(value)
    raise InvalidInput(spec.name, f"must be {_ARTICLE[spec.kind]} (got {_json_type(value)})")


def _check_string(spec: FieldSpec, value: str) -> None:
    if spec.required and not value.strip():
        raise InvalidInput(spec.name, "must not be empty")
    if spec.maximum is not None and len(value) > spec.maximum:
        raise InvalidInput(spec.name, f"must be at most {int(spec.maximum)} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate (JSON allows "\ud800"; tokenizers do not)
        raise InvalidInput(spec.name, "must be valid Unicode text") from exc


def _check_range(spec: FieldSpec, value: float) -> None:
    if spec.minimum is not None and value < spec.minimum:
        raise InvalidInput(spec.name, f"must be between {_fmt(spec.minimum)} and {_fmt(spec.maximum)}")
    if spec.maximum is not None and value > spec.maximum:
        raise InvalidInput(spec.name, f"must be between {_fmt(spec.minimum)} and {_fmt(spec.maximum)}")


_ARTICLE = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "a boolean"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _fmt(bound: float | None) -> str:
    if bound is None:
        return "unbounded"
    return str(int(bound)) if float(bound).is_integer() else str(bound)
