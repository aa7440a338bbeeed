"""The OpenAPI 3.1 document of the gateway, built from the shared schema, the route table and the views.

The request body comes from :func:`shared.schema.fields`, so every field, default, range
and enum in the document is the one the gateway enforces; the operations come from
:data:`api.routetable.ROUTES`, and every response body's schema from the typed view that
builds it (:mod:`api.views`, :class:`shared.jobview.JobView`). The served document
(``GET /openapi.json``) uses the running settings; the committed copy (``api/openapi.json``)
uses the defaults:

    python -m api.openapi --write     # or: make openapi
    python -m api.openapi --check     # exit 1 when the committed copy is stale
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from api.a1111_fields import DEFAULT_SAMPLER, NATIVE_NAMES, SAMPLERS, SCHEDULE_TYPES
from api.openai_images import DEFAULT_STRENGTH, EXTENSIONS, RESPONSE_FORMATS, SIZES
from api.routetable import API_KEY, BASIC, BEARER, EXAMPLE_IMAGE, HEADERS, ROUTES
from shared.images import MIME_TYPES
from shared.jobview import PARAMETERS_SCHEMA
from shared.schema import MAX_SAMPLES, FieldSpec, GenerationParams, fields
from shared.settings import Settings
from shared.views import Schema, components

API_VERSION = "1.0.0"
COMMITTED = Path(__file__).with_name("openapi.json")


def field_schema(spec: FieldSpec) -> Schema:
    """JSON Schema of one body field; optional fields also take ``null`` (= the default)."""
    schema: Schema = {"type": spec.kind if spec.required else [spec.kind, "null"]}
    schema["description"] = spec.description
    if spec.default is not None:
        schema["default"] = spec.default
    if spec.enum is not None:
        schema["enum"] = [*spec.enum] if spec.required else [*spec.enum, None]
    if spec.kind == "string":
        if spec.required:
            schema["minLength"] = 1
            schema["pattern"] = r"\S"
        if spec.maximum is not None:
            schema["maxLength"] = int(spec.maximum)
    elif spec.kind in ("integer", "number"):
        if spec.minimum is not None:
            schema["minimum"] = spec.minimum
        if spec.maximum is not None:
            schema["maximum"] = spec.maximum
    return schema


def request_schema(settings: Settings) -> Schema:
    specs = fields(settings)
    properties = {spec.name: field_schema(spec) for spec in specs}
    image = properties["image"]
    image["description"] = (
        "The input image: base64 (standard alphabet, padded, no whitespace), a "
        f"`data:{{{','.join(sorted(MIME_TYPES.values()))}}};base64,` URI whose type matches the image, or "
        "an http(s) URL fetched under the image URL rules (public addresses or the allow-list, "
        f"`IMAGE_URL_TIMEOUT`, at most `IMAGE_URL_MAX_REDIRECTS` redirects). JPEG, PNG or WebP, at most "
        f"{settings.max_image_bytes} bytes and {settings.max_image_pixels} pixels; EXIF orientation is "
        "applied, the image is converted to RGB and stretched to img_width x img_height."
    )
    image["examples"] = [EXAMPLE_IMAGE]
    return {
        "type": "object",
        "description": "Unknown fields are ignored; `null` means the field's default.",
        "required": [spec.name for spec in specs if spec.required],
        "properties": properties,
        "additionalProperties": True,
    }


def parameters_schema(settings: Settings) -> Schema:
    """A job's ``parameters``: every field of :class:`GenerationParams` (what the job body
    sends), under its request field's rule; only a field whose default is none is nullable."""
    specs = {spec.name: spec for spec in fields(settings)}
    properties: Schema = {}
    for item in dataclasses.fields(GenerationParams):
        spec = specs[item.name]
        schema = field_schema(spec)
        schema.pop("default", None)
        if spec.default is not None:
            schema["type"] = spec.kind
            if spec.enum is not None:
                schema["enum"] = list(spec.enum)
        properties[item.name] = schema
    return {
        "type": "object",
        "description": "The request's parameters as the job runs them (a random seed already drawn).",
        "required": list(properties),
        "properties": properties,
    }


def a1111_request_schema(settings: Settings) -> Schema:
    """The web UI's img2img body: the fields the farm reads, under the farm's rules."""
    native = {spec.name: field_schema(spec) for spec in fields(settings)}
    properties: Schema = {
        "init_images": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": {"type": "string"},
            "description": "One image: base64 or a data URI (as the native `image` field).",
        },
        **{NATIVE_NAMES[name]: native[name] for name in NATIVE_NAMES if name not in ("image", "samples")},
        "sampler_name": {
            "type": ["string", "null"],
            "enum": [sampler.name for sampler in SAMPLERS] + [None],
            "default": DEFAULT_SAMPLER,
            "description": "Wins over `sampler_index`; the README maps each to the farm's scheduler.",
        },
        "scheduler": {"type": ["string", "null"], "enum": [*SCHEDULE_TYPES, None], "default": "automatic"},
        "batch_size": {"type": ["integer", "null"], "minimum": 1, "default": 1},
        "n_iter": {"type": ["integer", "null"], "minimum": 1, "default": 1},
        "send_images": {"type": ["boolean", "null"], "default": True},
    }
    for name, default in (("steps", 20), ("cfg_scale", 7.0), ("denoising_strength", 0.75), ("seed", -1)):
        properties[name] = {**properties[name], "default": default}
    return {
        "type": "object",
        "description": (
            "batch_size x n_iter images, at most 4. Fields the farm cannot honour (masks, scripts, "
            "styles, subseeds, face restoration, tiling, resize modes but 0, ...) are a 400 naming "
            "them unless they hold their neutral value; other fields are ignored."
        ),
        "required": ["init_images", "prompt"],
        "properties": properties,
        "additionalProperties": True,
    }


def openai_request_schema(settings: Settings) -> Schema:
    """OpenAI's edits form, with the farm's extension fields."""
    native = {spec.name: field_schema(spec) for spec in fields(settings)}
    specs = {spec.name: spec for spec in fields(settings)}
    extensions = {name: {**native[name], "type": specs[name].kind} for name in EXTENSIONS}
    for schema in extensions.values():
        if "enum" in schema:
            schema["enum"] = [value for value in schema["enum"] if value is not None]
    extensions["strength"] = {**extensions["strength"], "default": DEFAULT_STRENGTH}
    return {
        "type": "object",
        "description": "A multipart form. Unknown fields are a 400 naming them.",
        "required": ["image", "prompt"],
        "properties": {
            "image": {"type": "string", "contentMediaType": "application/octet-stream"},
            "prompt": {**native["prompt"], "type": "string"},
            "n": {"type": "integer", "minimum": 1, "maximum": MAX_SAMPLES, "default": 1},
            "size": {"type": "string", "enum": ["auto", *SIZES], "default": "auto"},
            "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "b64_json"},
            "model": {"type": "string", "description": "Ignored."},
            **extensions,
        },
    }


def schemas(settings: Settings) -> dict[str, Schema]:
    """The request's schemas, then those of every view a documented answer carries."""
    views = (view for operation in ROUTES for reply in operation.replies for view in reply.views())
    return {
        "Img2ImgRequest": request_schema(settings),
        "A1111Img2ImgRequest": a1111_request_schema(settings),
        "OpenAIImageEditRequest": openai_request_schema(settings),
        PARAMETERS_SCHEMA: parameters_schema(settings),
        **components(views),
    }


DESCRIPTION = """\
A self-hosted, Segmind-compatible Stable Diffusion 1.5 image-to-image service.

Errors are JSON `{"error": "...", "field": "..."}` (under `/v1/images`, OpenAI's
`{"error": {"message", "type", "param", "code"}}`); bad input is always a 4xx, never a 5xx.
Besides its own API the gateway speaks the AUTOMATIC1111 web UI API (`/sdapi/v1`) and
OpenAI's image edits (`/v1/images/edits`); keys go in `x-api-key`, `Authorization: Bearer`
or HTTP Basic (the key as the password).
An unknown path answers 404 and a known path with another method 405 (with `Allow`).
Image URLs are fetched only from public addresses (or the operator's allow-list): a refused
URL is 400, a fetch that fails or times out 422, an image over the byte limit 413.
"""


def build_document(settings: Settings) -> dict[str, Any]:
    """The whole document for ``settings``: sizes, limits and enums come from them, and the
    key requirement appears only when ``AUTH_ENABLED``."""
    paths: dict[str, dict[str, Any]] = {}
    for operation in ROUTES:
        paths.setdefault(operation.path, {})[operation.method.lower()] = operation.to_openapi(
            settings.auth_enabled
        )
    components: dict[str, Any] = {"schemas": schemas(settings), "headers": HEADERS}
    if settings.auth_enabled:
        components["securitySchemes"] = {
            API_KEY: {"type": "apiKey", "in": "header", "name": "x-api-key"},
            BEARER: {"type": "http", "scheme": "bearer", "description": "The API key as the token."},
            BASIC: {
                "type": "http",
                "scheme": "basic",
                "description": "Any user name, the API key as the password.",
            },
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "img2img farm", "version": API_VERSION, "description": DESCRIPTION},
        "tags": [{"name": name} for name in dict.fromkeys(op.tag for op in ROUTES)],
        "paths": paths,
        "components": components,
    }


@functools.lru_cache(maxsize=8)
def document_json(settings: Settings) -> str:
    """The document as served and committed: indented JSON with a final newline."""
    return json.dumps(build_document(settings), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print, write or check the committed OpenAPI document.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write {COMMITTED.name} beside this module")
    group.add_argument("--check", action="store_true", help=f"exit 1 when {COMMITTED.name} is stale")
    args = parser.parse_args(argv)
    # The committed document describes the defaults, whatever this shell's environment says.
    text = document_json(Settings())
    if args.write:
        COMMITTED.write_text(text, encoding="utf-8")
        return 0
    if args.check:
        current = COMMITTED.read_text(encoding="utf-8") if COMMITTED.exists() else ""
        if current != text:
            sys.stderr.write(f"{COMMITTED} is stale; run: python -m api.openapi --write\n")
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
