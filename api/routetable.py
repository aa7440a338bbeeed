"""What the gateway serves, once: every operation with its parameters and every answer it gives.

This module is long because it is one table: every operation of every protocol the gateway speaks,
read top to bottom like the document it becomes.

A test fails when a Flask route is missing from :data:`ROUTES` (or the table names one that
does not exist). Answers name their bodies by typed view (:mod:`api.views`,
:class:`shared.jobview.JobView`), so the document states what the code sends;
:mod:`api.openapi` turns the table into the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from api.a1111_fields import EMPTY_LISTS
from api.views import (
    A1111Img2ImgResult,
    A1111Progress,
    ErrorBody,
    Health,
    Img2ImgResult,
    OpenAIError,
    OpenAIImagesResponse,
    Readiness,
    V2Result,
    V2Status,
    V2Submitted,
)
from shared.jobview import JobView
from shared.schema import OUTPUT_MEDIA_TYPES, REFERENCE_REQUEST
from shared.views import Schema, View, ref

# An 8x8 PNG, so that the examples in the document are requests the gateway accepts.
EXAMPLE_IMAGE = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mPUqDjBgA0wMeAAg1MCABznAXiY7kjRAAAAAElFTkSuQmCC"
)
EXAMPLE_REQUEST: dict[str, Any] = {"image": EXAMPLE_IMAGE, **REFERENCE_REQUEST}
API_KEY = "ApiKey"
BEARER = "Bearer"
BASIC = "Basic"

# A body: a plain schema, a view, or any of several views.
Body = Schema | type[View] | tuple[type[View], ...]


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
    content: tuple[tuple[str, Body], ...] = ()  # (media type, body)
    headers: tuple[str, ...] = ()  # names of entries in HEADERS

    def to_openapi(self) -> Schema:
        reply: Schema = {"description": self.description}
        if self.headers:
            reply["headers"] = {name: {"$ref": f"#/components/headers/{name}"} for name in self.headers}
        if self.content:
            reply["content"] = {media: {"schema": _body_schema(body)} for media, body in self.content}
        return reply

    def views(self) -> Iterator[type[View]]:
        """The views of this answer's bodies."""
        for _, body in self.content:
            if isinstance(body, tuple):
                yield from body
            elif isinstance(body, type):
                yield body


def _body_schema(body: Body) -> Schema:
    if isinstance(body, tuple):
        return {"anyOf": [ref(view.schema_name()) for view in body]}
    if isinstance(body, type):
        return ref(body.schema_name())
    return body


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
    body: str | None = None  # a schema in components
    body_media: str = "application/json"
    example: dict[str, Any] | None = None  # of the body; EXAMPLE_REQUEST for the native one
    secured: bool = False  # needs an API key (x-api-key) when AUTH_ENABLED
    description: str = ""

    def to_openapi(self, auth: bool = True) -> Schema:
        """This operation's OpenAPI object; ``auth``: whether keys are required (``AUTH_ENABLED``)."""
        operation: Schema = {"operationId": self.operation_id, "summary": self.summary, "tags": [self.tag]}
        if self.description:
            operation["description"] = self.description
        if self.secured and auth:
            operation["security"] = [{API_KEY: []}, {BEARER: []}, {BASIC: []}]
        if self.parameters:
            operation["parameters"] = [param.to_openapi() for param in self.parameters]
        if self.body is not None:
            media: Schema = {"schema": ref(self.body)}
            example = self.example if self.example is not None else EXAMPLE_REQUEST
            if self.body_media == "application/json":
                media["example"] = example
            operation["requestBody"] = {"required": True, "content": {self.body_media: media}}
        replies = sorted(self.replies, key=lambda reply: reply.status)
        operation["responses"] = {str(reply.status): reply.to_openapi() for reply in replies}
        return operation


def json_reply(
    status: int, description: str, body: type[View] | tuple[type[View], ...], headers: tuple[str, ...] = ()
) -> Reply:
    return Reply(status, description, (("application/json", body),), headers)


def error(status: int, description: str, headers: tuple[str, ...] = ()) -> Reply:
    return json_reply(status, description, ErrorBody, headers)


JOB_HEADERS = ("x-job-id", "x-request-id", "Location")
IMAGE_BODIES: tuple[tuple[str, Body], ...] = tuple(
    (media, {"type": "string", "contentMediaType": media}) for media in OUTPUT_MEDIA_TYPES.values()
)
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

GATEWAY_TIMEOUT = error(
    504, "The job is still going after `SYNC_WAIT_SECONDS` (`job_id`): it goes on; poll `/v1/jobs/{job_id}`."
)
# Protocols whose answer is the result: the submit errors, and the job's own end.
RESULT_ERRORS = (*SUBMIT_ERRORS, GATEWAY_TIMEOUT)
A1111_LIST = Reply(200, "A list.", (("application/json", {"type": "array"}),))
A1111_OBJECT = Reply(200, "An object.", (("application/json", {"type": "object"}),))
A1111_EXAMPLE: dict[str, Any] = {
    "init_images": [EXAMPLE_IMAGE],
    "prompt": REFERENCE_REQUEST["prompt"],
    "negative_prompt": REFERENCE_REQUEST["negative_prompt"],
    "sampler_name": "Euler a",
    "steps": 20,
    "cfg_scale": 7,
    "denoising_strength": 0.75,
    "seed": 1234,
    "batch_size": 2,
    "width": 512,
    "height": 512,
}
SHOULD_NOT_RETRY = ("x-should-retry",)
OPENAI_ERRORS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (400, "Bad input: `param` names the form field.", SHOULD_NOT_RETRY),
    (401, "Missing, unknown or revoked key (`Authorization: Bearer`).", SHOULD_NOT_RETRY),
    (404, "No such path.", SHOULD_NOT_RETRY),
    (405, "The path exists but not with this method.", ("Allow", *SHOULD_NOT_RETRY)),
    (413, "The body or the image is over its limit.", SHOULD_NOT_RETRY),
    (415, "The image is not JPEG, PNG or WebP.", SHOULD_NOT_RETRY),
    (422, "An `Idempotency-Key` was reused with a different body.", SHOULD_NOT_RETRY),
    (
        429,
        "Rate limit (`rate_limit_exceeded`, retry after `Retry-After`) "
        "or no credits left (`insufficient_quota`, not retried).",
        ("Retry-After", *SHOULD_NOT_RETRY),
    ),
    (500, "Generation failed (`generation_failed`): not retried.", SHOULD_NOT_RETRY),
    (
        503,
        "Redis, S3 or the queue is unavailable; retry after `Retry-After`.",
        ("Retry-After", *SHOULD_NOT_RETRY),
    ),
    (504, "The job is still going after `SYNC_WAIT_SECONDS`; it goes on.", SHOULD_NOT_RETRY),
)


def openai_error(status: int, description: str, headers: tuple[str, ...]) -> Reply:
    return json_reply(status, description, OpenAIError, headers)


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
                "The result: the raw image (in `output_format`) when `base64` is false, else JSON "
                "with base64 images.",
                (*IMAGE_BODIES, ("application/json", Img2ImgResult)),
                (*JOB_HEADERS, "x-seed-value", "x-generation-time", "x-cost", "x-remaining-credits"),
            ),
            json_reply(
                202, "Accepted, not finished within the wait budget: poll `Location`.", JobView, JOB_HEADERS
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
        (json_reply(200, "The job.", JobView, JOB_HEADERS), UNAVAILABLE, *KEYED),
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
            json_reply(200, "Canceled.", JobView, JOB_HEADERS),
            json_reply(202, "Running: it stops at its next step.", JobView, JOB_HEADERS),
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
                "The image, in the job's `output_format`.",
                IMAGE_BODIES,
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
        (json_reply(200, "Queued.", V2Submitted), *SUBMIT_ERRORS),
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
            json_reply(200, "QUEUED, PROCESSING or COMPLETED.", V2Status),
            json_reply(422, "FAILED (canceled jobs too), with `error`.", V2Status),
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
            json_reply(200, "The result once COMPLETED; the status body before.", (V2Result, V2Status)),
            json_reply(422, "FAILED (canceled jobs too), with `error`.", V2Status),
            UNAVAILABLE,
            *KEYED,
        ),
        parameters=(REQUEST_ID,),
        secured=True,
    ),
    Operation(
        "POST",
        "/sdapi/v1/img2img",
        "a1111Img2img",
        "Transform an image (AUTOMATIC1111 web UI API); waits for the result",
        "a1111",
        (
            json_reply(200, "The images, the request and `info`.", A1111Img2ImgResult, JOB_HEADERS),
            *RESULT_ERRORS,
        ),
        parameters=(IDEMPOTENCY_KEY,),
        body="A1111Img2ImgRequest",
        secured=True,
        example=A1111_EXAMPLE,
        description="Fields the farm cannot honour are a 400 naming them; see the README's table.",
    ),
    Operation(
        "POST",
        "/sdapi/v1/txt2img",
        "a1111Txt2img",
        "Not served: the farm transforms images (400 pointing at img2img)",
        "a1111",
        (BAD_INPUT, *KEYED),
        secured=True,
    ),
    Operation(
        "GET",
        "/sdapi/v1/progress",
        "a1111Progress",
        "Progress of this key's latest job",
        "a1111",
        (json_reply(200, "The latest job's progress (zeros before the first).", A1111Progress), *KEYED),
        secured=True,
    ),
    Operation(
        "POST",
        "/sdapi/v1/interrupt",
        "a1111Interrupt",
        "Cancel this key's latest job if it has not ended",
        "a1111",
        (Reply(200, "Done (null).", (("application/json", {"type": "null"}),)), *KEYED),
        secured=True,
    ),
    Operation(
        "GET",
        "/sdapi/v1/options",
        "a1111Options",
        "The web UI options clients read (checkpoint, formats, eta)",
        "a1111",
        (Reply(200, "The options.", (("application/json", {"type": "object"}),)), *KEYED),
        secured=True,
    ),
    Operation(
        "POST",
        "/sdapi/v1/options",
        "a1111SetOptions",
        "Accepts options that already hold (e.g. the farm's own checkpoint); others are a 400",
        "a1111",
        (Reply(200, "Nothing changed (null).", (("application/json", {"type": "null"}),)), BAD_INPUT, *KEYED),
        secured=True,
    ),
    *(
        Operation(
            "GET",
            f"/sdapi/v1/{path}",
            f"a1111Get{name}",
            summary,
            "a1111",
            (A1111_LIST, *KEYED),
            secured=True,
        )
        for path, name, summary in (
            ("samplers", "Samplers", "Sampler names and the farm scheduler behind each (`aliases`)"),
            ("schedulers", "Schedulers", "Schedule types: automatic, karras"),
            ("sd-models", "Models", "The farm's model"),
        )
    ),
    *(
        Operation(
            "GET",
            f"/sdapi/v1/{path}",
            f"a1111Get{name}",
            summary,
            "a1111",
            (A1111_OBJECT, *KEYED),
            secured=True,
        )
        for path, name, summary in (
            ("scripts", "Scripts", "No scripts: empty txt2img and img2img lists"),
            ("cmd-flags", "CmdFlags", "The flags a web UI would have been started with"),
            ("embeddings", "Embeddings", "No textual inversions"),
        )
    ),
    *(
        Operation(
            "GET",
            f"/sdapi/v1/{path}",
            "a1111Get" + "".join(part.capitalize() for part in path.split("-")),
            f"Empty: no {path.replace('-', ' ')} on this farm",
            "a1111",
            (A1111_LIST, *KEYED),
            secured=True,
        )
        for path in EMPTY_LISTS
    ),
    Operation(
        "POST",
        "/v1/images/edits",
        "openaiImageEdit",
        "Transform an image (OpenAI Images API, multipart); waits for the result",
        "openai",
        (
            json_reply(200, "The images, base64 JPEG or URLs.", OpenAIImagesResponse, JOB_HEADERS),
            *(openai_error(status, text, headers) for status, text, headers in OPENAI_ERRORS),
        ),
        parameters=(IDEMPOTENCY_KEY,),
        body="OpenAIImageEditRequest",
        body_media="multipart/form-data",
        secured=True,
        description="Errors are in OpenAI's shape; a failed generation carries `x-should-retry: false`.",
    ),
    Operation(
        "GET",
        "/",
        "playground",
        "The playground: try a request in a browser (its scripts and styles are under /static)",
        "operations",
        (Reply(200, "The page.", (("text/html", {"type": "string"}),)), *COMMON),
    ),
    Operation(
        "GET",
        "/ops",
        "opsPage",
        "The operator page (only with `OPS_TOKEN` set; 404 otherwise)",
        "operations",
        (Reply(200, "The page.", (("text/html", {"type": "string"}),)), *COMMON),
    ),
    Operation(
        "GET",
        "/ops/data",
        "opsData",
        "What the operator page shows: queues, ready workers, jobs by status, recent failures, counters",
        "operations",
        (
            Reply(200, "The farm as the store knows it.", (("application/json", {"type": "object"}),)),
            error(401, "Without `Authorization: Bearer <OPS_TOKEN>`."),
            *COMMON,
        ),
    ),
    Operation(
        "GET",
        "/ops/scaling",
        "opsScaling",
        "What the worker autoscaler reads: queued and running jobs, busy and ready workers, "
        "and desired_workers = busy workers + ceil(queued / SCALE_JOBS_PER_WORKER)",
        "operations",
        (
            Reply(200, "The counts and the desired count.", (("application/json", {"type": "object"}),)),
            error(401, "Without `Authorization: Bearer <OPS_TOKEN>`."),
            *COMMON,
        ),
    ),
    Operation(
        "GET",
        "/healthz",
        "healthz",
        "The gateway is alive",
        "operations",
        (json_reply(200, "Alive.", Health), *COMMON),
    ),
    Operation(
        "GET",
        "/readyz",
        "readyz",
        "Redis and S3 reachable and at least one worker has loaded its model",
        "operations",
        (json_reply(200, "Ready.", Readiness), json_reply(503, "Not ready.", Readiness), *COMMON),
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
    "x-should-retry": {
        "description": "`false` where retrying cannot help (OpenAI's SDKs then do not retry).",
        "schema": {"type": "string", "enum": ["true", "false"]},
    },
    "x-cost": {"description": "Credits the job cost (with keys on).", "schema": {"type": "string"}},
    "x-remaining-credits": {
        "description": "The key's balance after this request.",
        "schema": {"type": "string"},
    },
}
