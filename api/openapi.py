"""The OpenAPI 3.1 document of the gateway, generated from the shared schema and one route table.

:data:`ROUTES` lists every operation the gateway serves, once; a test fails when a Flask
route is missing from it (or the table names one that does not exist). The request body
comes from :func:`shared.schema.fields`, so every field, default, range and enum in the
document is the one the gateway enforces. The served document (``GET /openapi.json``)
uses the running settings; the committed copy (``api/openapi.json``) uses the defaults:

    python -m api.openapi --write     # or: make openapi
    python -m api.openapi --check     # exit 1 when the committed copy is stale
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.images import MIME_TYPES
from shared.schema import REFERENCE_REQUEST, FieldSpec, fields
from shared.settings import Settings

API_VERSION = "1.0.0"
COMMITTED = Path(__file__).with_name("openapi.json")
Schema = dict[str, Any]

# An 8x8 PNG, so that the examples in the document are requests the gateway accepts.
EXAMPLE_IMAGE = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mPUqDjBgA0wMeAAg1MCABznAXiY7kjRAAAAAElFTkSuQmCC"
)
EXAMPLE_REQUEST: dict[str, Any] = {"image": EXAMPLE_IMAGE, **REFERENCE_REQUEST}


# -- the route table ---------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A path, query or header parameter."""

    name: str
    location: str  # "path", "query" or "header"
    schema: Schema
    description: str
    required: bool = False

    def to_openapi(self) -> Schema:
        return {
            "name": self.name,
            "in": self.location,
            "required": self.required or self.location == "path",
            "description": self.description,
            "schema": self.schema,
        }


@dataclass(frozen=True)
class Reply:
    """One documented answer: status, media types (each with a schema) and response headers."""

    status: int
    description: str
    content: tuple[tuple[str, Schema], ...] = ()
    headers: tuple[str, ...] = ()  # names of entries in HEADERS

    def to_openapi(self) -> Schema:
        reply: Schema = {"description": self.description}
        if self.headers:
            reply["headers"] = {name: {"$ref": f"#/components/headers/{name}"} for name in self.headers}
        if self.content:
            reply["content"] = {media: {"schema": schema} for media, schema in self.content}
        return reply


@dataclass(frozen=True)
class Operation:
    """One method on one path: what it takes and every answer it can give."""

    method: str
    path: str  # OpenAPI template: /v1/jobs/{job_id}
    operation_id: str
    summary: str
    tag: str
    replies: tuple[Reply, ...]
    parameters: tuple[Param, ...] = ()
    body: str | None = None  # a schema in components, sent as application/json
    secured: bool = False  # needs an API key (x-api-key) when AUTH_ENABLED
    description: str = ""
    extra: Schema = field(default_factory=dict)  # any other OpenAPI keys of the operation

    def to_openapi(self, auth: bool = True) -> Schema:
        """This operation's OpenAPI object; ``auth``: whether keys are required (``AUTH_ENABLED``)."""
        operation: Schema = {"operationId": self.operation_id, "summary": self.summary, "tags": [self.tag]}
        if self.description:
            operation["description"] = self.description
        if self.secured and auth:
            operation["security"] = [{API_KEY: []}]
        if self.parameters:
            operation["parameters"] = [param.to_openapi() for param in self.parameters]
        if self.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": ref(self.body), "example": EXAMPLE_REQUEST},
                },
            }
        replies = sorted(self.replies, key=lambda reply: reply.status)
        operation["responses"] = {str(reply.status): reply.to_openapi() for reply in replies}
        operation.update(self.extra)
        return operation


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def json_reply(status: int, description: str, schema: str, headers: tuple[str, ...] = ()) -> Reply:
    return Reply(status, description, (("application/json", ref(schema)),), headers)


def error(status: int, description: str, headers: tuple[str, ...] = ()) -> Reply:
    return json_reply(status, description, "Error", headers)


JOB_HEADERS = ("x-job-id", "x-request-id", "Location")
BAD_INPUT = error(
    400, "Bad input: the body is not a JSON object, or a field (named in `field`) breaks its rule."
)
NOT_FOUND = error(404, "No such path, job or image.")
WRONG_METHOD = error(405, "The path exists but not with this method.", ("Allow",))
TOO_LARGE = error(
    413, "The body (`MAX_CONTENT_LENGTH`), the image bytes or its pixel count is over its limit."
)
UNSUPPORTED = error(415, "The image is not JPEG, PNG or WebP (the message lists them).")
UNPROCESSABLE = error(
    422,
    "The image URL could not be fetched (unreachable, timed out, an HTTP error from the image server), "
    "or an `Idempotency-Key` was reused with a different body.",
)
SERVER_FAULT = error(500, "Generation failed (`job_id` names the job) or an unexpected server fault.")
UNAVAILABLE = error(
    503, "Redis, S3 or the queue is unavailable; try again after `Retry-After`.", ("Retry-After",)
)
UNAUTHORIZED = error(401, "Missing, unknown or revoked API key (`x-api-key`).")
RATE_LIMITED = error(
    429, "The key's requests per minute are used up; retry after `Retry-After`.", ("Retry-After",)
)
NO_CREDITS = error(406, "The key's balance does not cover the job (`balance`, `cost`).")

# Answers every operation can give, and every operation that needs a key.
COMMON = (NOT_FOUND, WRONG_METHOD, SERVER_FAULT)
KEYED = (UNAUTHORIZED, RATE_LIMITED, *COMMON)
SUBMIT_ERRORS = (BAD_INPUT, NO_CREDITS, TOO_LARGE, UNSUPPORTED, UNPROCESSABLE, UNAVAILABLE, *KEYED)
API_KEY = "ApiKey"

JOB_ID = Param("job_id", "path", {"type": "string", "minLength": 1}, "Job id (`x-job-id` of the submission).")
REQUEST_ID = Param(
    "request_id", "path", {"type": "string", "minLength": 1}, "Request id from the v2 submission."
)
IMAGE_INDEX = Param("index", "path", {"type": "integer", "minimum": 0}, "Output index, 0 to samples - 1.")
PREFER = Param(
    "Prefer",
    "header",
    {"type": "string"},
    "RFC 7240: `respond-async` answers 202 at once; `wait=N` waits at most N seconds (capped by "
    "`SYNC_WAIT_SECONDS`), then answers 202. Other preferences are ignored.",
)
IDEMPOTENCY_KEY = Param(
    "Idempotency-Key",
    "header",
    {"type": "string", "minLength": 1, "maxLength": 255},
    "The same key with the same body returns the job accepted first; with another body, 422.",
)

ROUTES: tuple[Operation, ...] = (
    Operation(
        "POST",
        "/v1/sd1.5-img2img",
        "img2img",
        "Transform an image (Segmind-compatible); waits for the result",
        "img2img",
        (
            Reply(
                200,
                "The result: raw JPEG when `base64` is false, else JSON with base64 JPEGs.",
                (
                    ("image/jpeg", {"type": "string", "contentMediaType": "image/jpeg"}),
                    ("application/json", ref("Img2ImgResult")),
                ),
                (*JOB_HEADERS, "x-seed-value", "x-generation-time", "x-cost", "x-remaining-credits"),
            ),
            json_reply(
                202, "Accepted, not finished within the wait budget: poll `Location`.", "Job", JOB_HEADERS
            ),
            *SUBMIT_ERRORS,
        ),
        parameters=(PREFER, IDEMPOTENCY_KEY),
        body="Img2ImgRequest",
        secured=True,
    ),
    Operation(
        "GET",
        "/v1/jobs/{job_id}",
        "getJob",
        "A job's status, progress, parameters, seeds and outputs",
        "jobs",
        (json_reply(200, "The job.", "Job", JOB_HEADERS), UNAVAILABLE, *KEYED),
        parameters=(JOB_ID,),
        secured=True,
    ),
    Operation(
        "POST",
        "/v1/jobs/{job_id}/cancel",
        "cancelJob",
        "Cancel a job: a queued job never runs, a running one stops at its next step",
        "jobs",
        (
            json_reply(200, "Canceled.", "Job", JOB_HEADERS),
            json_reply(202, "Running: it stops at its next step.", "Job", JOB_HEADERS),
            error(409, "The job has already ended."),
            UNAVAILABLE,
            *KEYED,
        ),
        parameters=(JOB_ID,),
        secured=True,
    ),
    Operation(
        "GET",
        "/v1/jobs/{job_id}/images/{index}",
        "getJobImage",
        "One output image of a job",
        "jobs",
        (
            Reply(
                200,
                "The JPEG.",
                (("image/jpeg", {"type": "string", "contentMediaType": "image/jpeg"}),),
                JOB_HEADERS,
            ),
            UNAVAILABLE,
            *KEYED,
        ),
        parameters=(JOB_ID, IMAGE_INDEX),
        secured=True,
    ),
    Operation(
        "POST",
        "/v2/sd1.5-img2img",
        "v2Submit",
        "Queue a transformation (Segmind's v2 protocol); answers at once",
        "v2",
        (json_reply(200, "Queued.", "V2Submitted"), *SUBMIT_ERRORS),
        parameters=(IDEMPOTENCY_KEY,),
        body="Img2ImgRequest",
        secured=True,
    ),
    Operation(
        "GET",
        "/v2/requests/{request_id}/status",
        "v2Status",
        "Status of a v2 request",
        "v2",
        (
            json_reply(200, "QUEUED, PROCESSING or COMPLETED.", "V2Status"),
            json_reply(422, "FAILED (canceled jobs too), with `error`.", "V2Status"),
            UNAVAILABLE,
            *KEYED,
        ),
        parameters=(REQUEST_ID,),
        secured=True,
    ),
    Operation(
        "GET",
        "/v2/requests/{request_id}",
        "v2Result",
        "Result of a v2 request",
        "v2",
        (
            json_reply(200, "The result once COMPLETED; the status body before.", "V2Result"),
            json_reply(422, "FAILED (canceled jobs too), with `error`.", "V2Status"),
            UNAVAILABLE,
            *KEYED,
        ),
        parameters=(REQUEST_ID,),
        secured=True,
    ),
    Operation(
        "GET",
        "/healthz",
        "healthz",
        "The gateway is alive",
        "operations",
        (json_reply(200, "Alive.", "Health"), *COMMON),
    ),
    Operation(
        "GET",
        "/readyz",
        "readyz",
        "Redis and S3 reachable and at least one worker has loaded its model",
        "operations",
        (json_reply(200, "Ready.", "Readiness"), json_reply(503, "Not ready.", "Readiness"), *COMMON),
    ),
    Operation(
        "GET",
        "/metrics",
        "metrics",
        "Prometheus metrics",
        "operations",
        (Reply(200, "Prometheus text format.", (("text/plain", {"type": "string"}),)), *COMMON),
    ),
    Operation(
        "GET",
        "/openapi.json",
        "openapi",
        "This document",
        "operations",
        (Reply(200, "The OpenAPI document.", (("application/json", {"type": "object"}),)), *COMMON),
    ),
)

HEADERS: dict[str, Schema] = {
    "x-job-id": {"description": "The job's id.", "schema": {"type": "string"}},
    "x-request-id": {"description": "Same as `x-job-id`.", "schema": {"type": "string"}},
    "Location": {"description": "The job: `/v1/jobs/{job_id}`.", "schema": {"type": "string"}},
    "x-seed-value": {"description": "Seed of the first image.", "schema": {"type": "string"}},
    "x-generation-time": {"description": "Seconds spent in the pipeline.", "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "string"}},
    "Allow": {"description": "Methods the path serves.", "schema": {"type": "string"}},
    "x-cost": {"description": "Credits the job cost (with keys on).", "schema": {"type": "string"}},
    "x-remaining-credits": {
        "description": "The key's balance after this request.",
        "schema": {"type": "string"},
    },
}


# -- schemas -----------------------------------------------------------------------------


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


def _nullable(kind: str) -> Schema:
    return {"type": [kind, "null"]}


def parameters_schema(settings: Settings) -> Schema:
    specs = [spec for spec in fields(settings) if spec.name not in ("image", "webhook")]
    properties: Schema = {}
    for spec in specs:
        schema = field_schema(spec)
        schema.pop("default", None)
        properties[spec.name] = schema
    return {
        "type": "object",
        "description": "The request's parameters as the job runs them (a random seed already drawn).",
        "properties": properties,
    }


def schemas(settings: Settings) -> dict[str, Schema]:
    job_statuses = ["queued", "running", "succeeded", "failed", "canceled"]
    v2_statuses = ["QUEUED", "PROCESSING", "COMPLETED", "FAILED"]
    url_list = {"type": "array", "items": {"type": "string"}}
    return {
        "Img2ImgRequest": request_schema(settings),
        "GenerationParameters": parameters_schema(settings),
        "Img2ImgResult": {
            "type": "object",
            "required": ["image", "images", "seeds", "job_id"],
            "properties": {
                "image": {"type": "string", "description": "The first image, base64 JPEG."},
                "images": {"type": "array", "items": {"type": "string"}, "description": "Every image."},
                "seeds": {"type": "array", "items": {"type": "integer"}},
                "job_id": {"type": "string"},
            },
        },
        "Job": {
            "type": "object",
            "required": ["id", "status", "progress", "created_at", "parameters", "seeds", "outputs"],
            "properties": {
                "id": {"type": "string"},
                "status": {"type": "string", "enum": job_statuses},
                "progress": {
                    "type": "object",
                    "required": ["step", "total"],
                    "properties": {"step": {"type": "integer"}, "total": {"type": "integer"}},
                },
                "queue_position": {**_nullable("integer"), "description": "Jobs ahead, while queued."},
                "eta_seconds": {**_nullable("number"), "description": "Estimated wait, while queued."},
                "created_at": {"type": "number", "description": "Unix seconds."},
                "started_at": _nullable("number"),
                "finished_at": _nullable("number"),
                "parameters": ref("GenerationParameters"),
                "seeds": {"type": "array", "items": {"type": "integer"}},
                "outputs": {**url_list, "description": "Absolute URLs of the output images."},
                "generation_time": _nullable("number"),
                "error": _nullable("string"),
                "cancel_requested": {"type": "boolean"},
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string", "description": "What went wrong; starts with the field's name."},
                "field": {"type": "string", "description": "The request field at fault (bad input only)."},
                "job_id": {"type": "string", "description": "The failed job (generation failures only)."},
                "balance": {"type": "string", "description": "The key's credits (406 only)."},
                "cost": {"type": "string", "description": "What the job would cost (406 only)."},
            },
        },
        "V2Submitted": {
            "type": "object",
            "required": ["request_id", "status", "status_url", "response_url", "poll_url"],
            "properties": {
                "request_id": {"type": "string"},
                "status": {"type": "string", "enum": v2_statuses},
                "status_url": {"type": "string"},
                "response_url": {"type": "string"},
                "poll_url": {"type": "string"},
            },
        },
        "V2Status": {
            "type": "object",
            "required": ["request_id", "status"],
            "properties": {
                "request_id": {"type": "string"},
                "status": {"type": "string", "enum": v2_statuses},
                "error": {"type": "string"},
            },
        },
        "V2Result": {
            "type": "object",
            "required": ["request_id", "status"],
            "properties": {
                "request_id": {"type": "string"},
                "status": {"type": "string", "enum": v2_statuses},
                "output": {"type": "string"},
                "outputs": url_list,
                "seeds": {"type": "array", "items": {"type": "integer"}},
                "metrics": {"type": "object", "additionalProperties": _nullable("number")},
                "error": {"type": "string"},
            },
        },
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
        "Readiness": {
            "type": "object",
            "required": ["status", "checks"],
            "properties": {
                "status": {"type": "string", "enum": ["ready", "not ready"]},
                "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
            },
        },
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
