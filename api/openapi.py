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

from api.routetable import API_KEY, EXAMPLE_IMAGE, HEADERS, ROUTES
from shared.images import MIME_TYPES
from shared.jobview import PARAMETERS_SCHEMA
from shared.schema import FieldSpec, GenerationParams, fields
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


def schemas(settings: Settings) -> dict[str, Schema]:
    """The request's schemas, then those of every view a documented answer carries."""
    views = (view for operation in ROUTES for reply in operation.replies for view in reply.views())
    return {
        "Img2ImgRequest": request_schema(settings),
        PARAMETERS_SCHEMA: parameters_schema(settings),
        **components(views),
    }


DESCRIPTION = """\
A self-hosted, Segmind-compatible Stable Diffusion 1.5 image-to-image service.

Errors are JSON `{"error": "...", "field": "..."}`; bad input is always a 4xx, never a 5xx.
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
        components["securitySchemes"] = {API_KEY: {"type": "apiKey", "in": "header", "name": "x-api-key"}}
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
