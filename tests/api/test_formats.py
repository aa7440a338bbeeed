"""Output formats on every route: the native API raw and base64, v2, jobs, images, the web
UI API and OpenAI's edits; content types and S3 object names follow the format."""

from __future__ import annotations

import base64
import io
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from api.context import service_of
from tests.api.test_jobs import finished, poll
from tests.api.test_v2 import poll_status
from tests.helpers import b64, reference_body, sample_image

QUICK = {"num_inference_steps": 20, "strength": 0.25, "seed": 7}
MEDIA = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def stored(app: Flask, job_id: str) -> list[str]:
    storage = service_of(app).storage
    listing = storage._client.list_objects_v2(
        Bucket=service_of(app).settings.s3_bucket, Prefix=f"jobs/{job_id}/"
    )
    return sorted(item["Key"] for item in listing.get("Contents", []) if not item["Key"].endswith("/input"))


@pytest.mark.parametrize("output_format", ["jpeg", "png", "webp"])
def test_v1_raw_answer_job_image_and_object_follow_the_format(
    client: FlaskClient, app: Flask, output_format: str
) -> None:
    reply = client.post("/v1/sd1.5-img2img", json=reference_body(output_format=output_format, **QUICK))
    assert reply.status_code == 200 and reply.mimetype == MEDIA[output_format]
    assert opened(reply.data).format == PIL_FORMAT[output_format]
    job_id = reply.headers["x-job-id"]
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["parameters"]["output_format"] == output_format
    image = client.get(f"/v1/jobs/{job_id}/images/0")
    assert image.mimetype == MEDIA[output_format] and image.data == reply.data
    extension = {"jpeg": "jpg"}.get(output_format, output_format)
    assert poll_objects(app, job_id) == [f"jobs/{job_id}/0.{extension}"]
    head = service_of(app).storage._client.head_object(
        Bucket=service_of(app).settings.s3_bucket, Key=f"jobs/{job_id}/0.{extension}"
    )
    assert head["ContentType"] == MEDIA[output_format]


def poll_objects(app: Flask, job_id: str) -> list[str]:
    """The job's outputs in S3 (written just after the job is marked succeeded)."""
    deadline = time.monotonic() + 30
    while not (keys := stored(app, job_id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return keys


def test_v1_base64_answer_carries_every_image_in_the_format(client: FlaskClient) -> None:
    reply = client.post(
        "/v1/sd1.5-img2img", json=reference_body(base64=True, samples=2, output_format="webp", **QUICK)
    )
    assert reply.status_code == 200
    images = [opened(base64.b64decode(item)) for item in reply.get_json()["images"]]
    assert [image.format for image in images] == ["WEBP", "WEBP"]


def test_quality_changes_the_lossy_formats(client: FlaskClient) -> None:
    sizes = {}
    for quality in (10, 95):
        reply = client.post("/v1/sd1.5-img2img", json=reference_body(output_quality=quality, **QUICK))
        assert reply.status_code == 200
        sizes[quality] = len(reply.data)
    assert sizes[10] < sizes[95]


def test_async_job_and_v2_result_point_at_images_in_the_format(client: FlaskClient) -> None:
    accepted = client.post(
        "/v1/sd1.5-img2img",
        json=reference_body(output_format="png", **QUICK),
        headers={"Prefer": "respond-async"},
    )
    assert accepted.status_code == 202
    job = poll(client, accepted.get_json()["id"], finished)
    assert job["outputs"][0].endswith("/images/0")
    assert client.get(urlsplit(job["outputs"][0]).path).mimetype == "image/png"

    submitted = client.post(
        "/v2/sd1.5-img2img", json=reference_body(output_format="webp", **QUICK)
    ).get_json()
    status, _ = poll_status(client, submitted["status_url"])
    assert status == 200
    result = client.get(urlsplit(submitted["response_url"]).path).get_json()
    image = client.get(urlsplit(result["output"]).path)
    assert image.mimetype == "image/webp" and opened(image.data).format == "WEBP"


def test_the_web_ui_and_openai_routes_take_the_format(client: FlaskClient) -> None:
    web_ui: dict[str, Any] = {
        "init_images": [b64(sample_image())],
        "prompt": "a boat",
        "steps": 20,
        "seed": 3,
    }
    reply = client.post("/sdapi/v1/img2img", json=web_ui)
    assert reply.status_code == 200
    assert opened(base64.b64decode(reply.get_json()["images"][0])).format == "JPEG"  # the farm's default

    form = {"prompt": "a boat", "output_format": "png", "image": (io.BytesIO(sample_image()), "in.png")}
    reply = client.post("/v1/images/edits", data=form, content_type="multipart/form-data")
    assert reply.status_code == 200, reply.get_data()[:300]
    body = reply.get_json()
    assert body["output_format"] == "png"
    assert opened(base64.b64decode(body["data"][0]["b64_json"])).format == "PNG"
    bad = client.post(
        "/v1/images/edits",
        data={"prompt": "a boat", "output_compression": "0", "image": (io.BytesIO(sample_image()), "in.png")},
        content_type="multipart/form-data",
    )
    assert bad.status_code == 400 and bad.get_json()["error"]["param"] == "output_compression"


@pytest.mark.parametrize(
    ("change", "field"),
    [({"output_format": "gif"}, "output_format"), ({"output_quality": 0}, "output_quality")],
)
def test_bad_formats_and_qualities_are_400(client: FlaskClient, change: dict[str, Any], field: str) -> None:
    reply = client.post("/v1/sd1.5-img2img", json=reference_body(**change))
    assert reply.status_code == 400 and reply.get_json()["field"] == field
