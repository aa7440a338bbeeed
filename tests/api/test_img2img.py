"""The synchronous path end to end: gateway app, real Redis, a Celery worker process, S3."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image

from shared.schema import SCHEDULERS
from shared.settings import Settings
from shared.store import JobStore
from tests.helpers import b64, jpeg_pixels, reference_body

URL = "/v1/sd1.5-img2img"


def pipeline_calls(settings: Settings) -> int:
    return JobStore(settings).counters.all().get("pipeline_calls", 0)


def test_reference_request_returns_a_512_jpeg(client: FlaskClient) -> None:
    reply = client.post(URL, json=reference_body())
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert reply.mimetype == "image/jpeg"
    image = jpeg_pixels(reply.data)
    assert image.size == (512, 512)
    assert reply.headers["x-seed-value"] == "98877465625"
    assert float(reply.headers["x-generation-time"]) > 0
    job_id = reply.headers["x-job-id"]
    assert reply.headers["Location"] == f"/v1/jobs/{job_id}"

    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded"
    assert job["progress"] == {"step": 18, "total": 18}
    assert "image" not in job["parameters"]
    assert client.get(job["outputs"][0]).data == reply.data


def test_base64_true_returns_the_json_shape(client: FlaskClient) -> None:
    reply = client.post(URL, json=reference_body(base64=True, img_width=768, img_height=512))
    assert reply.status_code == 200
    body = reply.get_json()
    assert set(body) == {"image", "images", "seeds", "job_id"}
    assert body["images"] == [body["image"]]
    assert body["seeds"] == [98877465625]
    assert body["job_id"] == reply.headers["x-job-id"]
    assert jpeg_pixels(base64.b64decode(body["image"])).size == (768, 512)


def test_four_samples_are_four_images_from_one_pipeline_call(client: FlaskClient, settings: Settings) -> None:
    before = pipeline_calls(settings)
    reply = client.post(URL, json=reference_body(base64=True, samples=4, seed=7))
    assert reply.status_code == 200
    body = reply.get_json()
    assert body["seeds"] == [7, 8, 9, 10]
    pixels = [np.asarray(jpeg_pixels(base64.b64decode(item))) for item in body["images"]]
    assert len(pixels) == 4
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(pixels[i], pixels[j])
    assert pipeline_calls(settings) == before + 1


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_makes_an_image(client: FlaskClient, scheduler: str) -> None:
    reply = client.post(URL, json=reference_body(scheduler=scheduler, num_inference_steps=20, strength=0.5))
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert jpeg_pixels(reply.data).size == (512, 512)


def test_same_seed_gives_the_same_pixels(client: FlaskClient) -> None:
    first = client.post(URL, json=reference_body(seed=1234))
    second = client.post(URL, json=reference_body(seed=1234))
    other = client.post(URL, json=reference_body(seed=1235))
    assert first.status_code == second.status_code == other.status_code == 200
    assert np.array_equal(np.asarray(jpeg_pixels(first.data)), np.asarray(jpeg_pixels(second.data)))
    assert not np.array_equal(np.asarray(jpeg_pixels(first.data)), np.asarray(jpeg_pixels(other.data)))


def test_random_seed_is_reported_and_reproduces_the_image(client: FlaskClient) -> None:
    drawn = client.post(URL, json=reference_body(seed=-1))
    assert drawn.status_code == 200
    seed = int(drawn.headers["x-seed-value"])
    assert 0 <= seed < 2**63
    again = client.post(URL, json=reference_body(seed=seed))
    assert again.headers["x-seed-value"] == str(seed)
    assert np.array_equal(np.asarray(jpeg_pixels(drawn.data)), np.asarray(jpeg_pixels(again.data)))


def test_data_uri_and_jpeg_input_are_accepted(client: FlaskClient) -> None:
    from tests.helpers import sample_image

    uri = "data:image/jpeg;base64," + b64(sample_image((300, 200), fmt="JPEG"))
    reply = client.post(URL, json=reference_body(image=uri))
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert jpeg_pixels(reply.data).size == (512, 512)


def test_grayscale_input_is_converted(client: FlaskClient) -> None:
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 90).save(buffer, format="PNG")
    reply = client.post(URL, json=reference_body(image=b64(buffer.getvalue())))
    assert reply.status_code == 200
