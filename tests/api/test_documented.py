"""Real answers match the OpenAPI document the gateway serves, and name no undocumented field.

With API keys off and on, requests go through the test client of a real gateway (the main
farm with its worker, and an idle one whose queue no worker reads, so its jobs stay queued).
Every answer's status and media type must be documented for its operation, and every JSON
body must validate against the schema the served document declares for that route and
status, with ``additionalProperties: false`` added to each object schema that says nothing
about extra properties: a field the document does not name fails.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from PIL import Image
from werkzeug.test import TestResponse

from api.app import create_app
from deploy.local import WorkerProcess
from shared.keys import KeyStore
from shared.settings import Settings
from tests.helpers import b64, reference_body, sample_image

URL = "/v1/sd1.5-img2img"
V2_URL = "/v2/sd1.5-img2img"
ASYNC = {"Prefer": "respond-async"}
LONG = {"num_inference_steps": 100, "strength": 1.0}
SMALL = b64(sample_image((64, 64)))
IDLE_MAX_IMAGE_BYTES = 32 * 1024
CREDITS = 1_000_000_000


def strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object schema that allows
    extra properties by saying nothing about them."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    tightened = {key: strict(value) for key, value in schema.items()}
    if (schema.get("type") == "object" or "properties" in schema) and "additionalProperties" not in schema:
        tightened["additionalProperties"] = False
    return tightened


def template_pattern(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$")


@dataclass
class Checked:
    """A gateway client that checks each answer against the document the gateway serves."""

    client: FlaskClient
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        document = self.client.get("/openapi.json").get_json()
        self.paths: dict[str, dict[str, Any]] = document["paths"]
        self.components = strict(document["components"])

    def call(self, method: str, path: str, **kwargs: Any) -> TestResponse:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        reply = self.client.open(path, method=method, headers=headers, **kwargs)
        self.check(method, path, reply)
        return reply

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> TestResponse:
        return self.call("POST", path, **kwargs)

    def check(self, method: str, path: str, reply: TestResponse) -> None:
        template, item = self.path_item(path)
        operation = item.get(method.lower())
        if operation is None:  # a known path with another method: any operation's 405
            assert reply.status_code == 405, (method, path, reply.status_code)
            operation = next(iter(item.values()))
        where = f"{method} {template} -> {reply.status_code}"
        documented = operation["responses"].get(str(reply.status_code))
        assert documented is not None, f"{where}: status not documented ({reply.get_data(as_text=True)})"
        content = documented.get("content", {})
        assert reply.mimetype in content, f"{where}: {reply.mimetype} not documented"
        if reply.mimetype == "application/json":
            self.validate(where, content["application/json"]["schema"], reply.get_json())

    def path_item(self, path: str) -> tuple[str, dict[str, Any]]:
        for template, item in self.paths.items():
            if template_pattern(template).match(path):
                return template, item
        raise AssertionError(f"{path}: no such path in the document")

    def validate(self, where: str, schema: dict[str, Any], body: Any) -> None:
        # The components ride along, so the document's "#/components/..." references resolve.
        rooted = {**strict(schema), "components": self.components}
        error = best_match(Draft202012Validator(rooted).iter_errors(body))
        assert error is None, f"{where}: {error.message} at {list(error.absolute_path)} in {body}"


@dataclass
class Farm:
    """The gateways one mode of the test talks to."""

    keyed: bool
    live: Checked  # the main farm: its worker runs the jobs
    idle: Checked  # no worker reads its queue: its jobs stay queued
    idle_settings: Settings

    def key(self, credits_milli: int = CREDITS, rate_limit: int = 0) -> dict[str, str]:
        """Headers with a new key on the idle farm (none with keys off)."""
        if not self.keyed:
            return {}
        key, _ = KeyStore(self.idle_settings).create(f"doc-{time.monotonic_ns()}", credits_milli, rate_limit)
        return {"x-api-key": key}


@pytest.fixture(scope="module", params=["keys-off", "keys-on"])
def farm(request: pytest.FixtureRequest, settings: Settings, worker: WorkerProcess) -> Iterator[Farm]:
    keyed = request.param == "keys-on"
    live_settings = settings.replace(auth_enabled=keyed, rate_limit_per_minute=1000)
    idle_settings = live_settings.replace(
        queue_name=f"img2img-doc-idle-{request.param}",
        key_prefix=f"t-doc-idle-{request.param}",
        max_image_bytes=IDLE_MAX_IMAGE_BYTES,
    )
    live = Checked(create_app(live_settings).test_client())
    farm = Farm(keyed, live, Checked(create_app(idle_settings).test_client()), idle_settings)
    if keyed:
        key, _ = KeyStore(live_settings).create("doc-live", CREDITS)
        farm.live.headers["x-api-key"] = key
        farm.idle.headers.update(farm.key())
    yield farm


def poll(checked: Checked, path: str, until: Any, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = checked.get(path).get_json()
        if until(body):
            return dict(body)
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached the expected state")


def ended(job: dict[str, Any]) -> bool:
    return job["status"] in ("succeeded", "failed", "canceled")


def test_sync_submits(farm: Farm) -> None:
    reply = farm.live.post(URL, json=reference_body(base64=True, samples=2))
    assert reply.status_code == 200
    assert len(reply.get_json()["images"]) == 2
    raw = farm.live.post(URL, json=reference_body())
    assert raw.status_code == 200 and raw.mimetype == "image/jpeg"


def test_async_submit_and_the_job_as_it_runs(farm: Farm) -> None:
    reply = farm.live.post(URL, json=reference_body(), headers=ASYNC)
    assert reply.status_code == 202
    assert ("cost" in reply.get_json()) == farm.keyed
    job = poll(farm.live, reply.headers["Location"], ended)
    assert job["status"] == "succeeded"
    assert ("refunded" in job) == farm.keyed
    assert farm.live.get(urlsplit(job["outputs"][0]).path).status_code == 200
    assert farm.live.post(f"{reply.headers['Location']}/cancel").status_code == 409
    assert farm.live.get("/v1/jobs/nope").status_code == 404
    assert farm.live.get(f"{reply.headers['Location']}/images/9").status_code == 404


def test_a_queued_job_and_its_cancel(farm: Farm) -> None:
    reply = farm.idle.post(URL, json=reference_body(image=SMALL), headers=ASYNC)
    assert reply.status_code == 202
    queued = farm.idle.get(reply.headers["Location"])
    assert queued.get_json()["status"] == "queued"
    assert queued.get_json()["queue_position"] is not None
    canceled = farm.idle.post(f"{reply.headers['Location']}/cancel")
    assert canceled.status_code == 200 and canceled.get_json()["status"] == "canceled"
    assert canceled.get_json().get("refunded", True) is True


def test_a_running_job_and_its_cancel(farm: Farm) -> None:
    location = farm.live.post(URL, json=reference_body(**LONG), headers=ASYNC).headers["Location"]
    poll(farm.live, location, lambda job: job["progress"]["step"] >= 2 or ended(job))
    reply = farm.live.post(f"{location}/cancel")
    assert reply.status_code in (200, 202, 409)
    if reply.status_code == 202:
        assert reply.get_json()["cancel_requested"] is True
    assert poll(farm.live, location, ended)["status"] in ("canceled", "succeeded")


def test_v2_submit_status_and_result(farm: Farm) -> None:
    submitted = farm.live.post(V2_URL, json=reference_body()).get_json()
    status = poll(farm.live, urlsplit(submitted["status_url"]).path, lambda s: s["status"] == "COMPLETED")
    assert status == {"request_id": submitted["request_id"], "status": "COMPLETED"}
    result = farm.live.get(urlsplit(submitted["response_url"]).path)
    assert result.status_code == 200 and result.get_json()["status"] == "COMPLETED"


def test_v2_queued_and_failed(farm: Farm) -> None:
    submitted = farm.idle.post(V2_URL, json=reference_body(image=SMALL)).get_json()
    status_path = urlsplit(submitted["status_url"]).path
    result_path = urlsplit(submitted["response_url"]).path
    assert farm.idle.get(status_path).get_json()["status"] == "QUEUED"
    assert farm.idle.get(result_path).get_json() == {
        "request_id": submitted["request_id"],
        "status": "QUEUED",
    }
    assert farm.idle.post(f"/v1/jobs/{submitted['request_id']}/cancel").status_code == 200
    failed = farm.idle.get(status_path)
    assert failed.status_code == 422 and failed.get_json()["status"] == "FAILED"
    assert farm.idle.get(result_path).status_code == 422
    assert farm.idle.get("/v2/requests/nope/status").status_code == 404


def gif() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    return b64(buffer.getvalue())


def test_error_bodies(farm: Farm) -> None:
    idle = farm.idle
    bad = idle.post(URL, json=reference_body(image=SMALL, samples=9))
    assert bad.status_code == 400 and bad.get_json()["field"] == "samples"
    assert idle.post(URL, data=b"not json", content_type="application/json").status_code == 400
    assert idle.post(V2_URL, json={"prompt": "no image"}).status_code == 400
    big = "A" * (IDLE_MAX_IMAGE_BYTES * 2)
    assert idle.post(URL, json=reference_body(image=big)).status_code == 413
    assert idle.post(URL, json=reference_body(image=gif())).status_code == 415
    once = {"Idempotency-Key": f"doc-{time.monotonic_ns()}", **ASYNC}
    assert idle.post(URL, json=reference_body(image=SMALL), headers=once).status_code == 202
    assert idle.post(URL, json=reference_body(image=SMALL, seed=1), headers=once).status_code == 422
    assert idle.get("/v1/jobs/nope").status_code == 404
    assert idle.call("DELETE", "/v1/jobs/nope").status_code == 405
    if farm.keyed:
        assert idle.post(URL, json=reference_body(image=SMALL), headers={"x-api-key": ""}).status_code == 401
        broke = idle.post(URL, json=reference_body(image=SMALL), headers=farm.key(credits_milli=0))
        assert broke.status_code == 406 and {"balance", "cost"} <= set(broke.get_json())
        limited = farm.key(rate_limit=1)
        assert idle.post(URL, json={}, headers=limited).status_code == 400
        assert idle.post(URL, json={}, headers=limited).status_code == 429


def test_failed_jobs(faulty_farm: Flask) -> None:
    """A job whose run fails: 500 naming the job for a sync submit, FAILED (422) in v2."""
    checked = Checked(faulty_farm.test_client())
    failed = checked.post(URL, json=reference_body(prompt="boom [fail]", base64=True))
    assert failed.status_code == 500 and "job_id" in failed.get_json()
    submitted = checked.post(V2_URL, json=reference_body(prompt="boom [fail]")).get_json()
    status = poll(checked, urlsplit(submitted["status_url"]).path, lambda s: s["status"] == "FAILED")
    assert "injected fault" in status["error"]
    assert checked.get(urlsplit(submitted["response_url"]).path).status_code == 422


def test_health_and_readiness(farm: Farm) -> None:
    assert farm.live.get("/healthz").status_code == 200
    assert farm.live.get("/readyz").status_code == 200
    assert farm.idle.get("/readyz").status_code == 503  # no worker serves the idle farm's prefix


def test_the_checker_refuses_an_undocumented_field(farm: Farm) -> None:
    with pytest.raises(AssertionError, match="Additional properties"):
        farm.live.validate("GET /healthz", {"$ref": "#/components/schemas/Health"}, {"status": "ok", "x": 1})
    job_ref = {"$ref": "#/components/schemas/Job"}
    with pytest.raises(AssertionError, match="required property"):
        farm.live.validate("GET /v1/jobs/{job_id}", job_ref, {"id": "x"})
