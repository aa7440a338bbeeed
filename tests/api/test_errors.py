"""Bad input is a 4xx JSON error naming the field; a worker fault is a clear error."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.fakes import offline_app
from tests.helpers import b64, jpeg_pixels, reference_body

URL = "/v1/sd1.5-img2img"


@pytest.fixture(scope="module")
def offline() -> FlaskClient:
    """The gateway alone: these requests are refused before any job is recorded."""
    return offline_app().test_client()


def assert_field_error(reply, field: str, status: int = 400) -> str:  # type: ignore[no-untyped-def]
    assert reply.status_code == status, reply.get_data(as_text=True)
    assert reply.mimetype == "application/json"
    body = reply.get_json()
    assert body["field"] == field
    assert body["error"].startswith(f"{field}:")
    return str(body["error"])


@pytest.mark.parametrize(
    ("image", "status"),
    [
        ("not base64 at all!", 400),
        ("aGVsbG8=x", 400),
        (b64(b"definitely not an image, just some bytes"), 415),
        ("", 400),
        ("ftp://example.com/cat.png", 400),
    ],
)
def test_bad_image_field(offline: FlaskClient, image: str, status: int) -> None:
    assert_field_error(offline.post(URL, json=reference_body(image=image)), "image", status)


def test_data_uri_type_must_match_the_image(offline: FlaskClient) -> None:
    from tests.helpers import sample_image

    uri = "data:image/jpeg;base64," + b64(sample_image(fmt="PNG"))
    message = assert_field_error(offline.post(URL, json=reference_body(image=uri)), "image")
    assert "JPEG" in message and "PNG" in message


def test_truncated_image(client: FlaskClient) -> None:
    from tests.helpers import sample_image

    data = sample_image(fmt="JPEG")
    assert_field_error(client.post(URL, json=reference_body(image=b64(data[: len(data) // 2]))), "image")


def test_missing_prompt(offline: FlaskClient) -> None:
    body = reference_body()
    del body["prompt"]
    assert "required" in assert_field_error(offline.post(URL, json=body), "prompt")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("samples", "2"),
        ("samples", 1.5),
        ("samples", True),
        ("prompt", 42),
        ("guidance_scale", "high"),
        ("base64", "false"),
        ("seed", [1]),
        ("scheduler", {"name": "DDIM"}),
    ],
)
def test_wrong_json_type(offline: FlaskClient, field: str, value: object) -> None:
    assert "must be" in assert_field_error(offline.post(URL, json=reference_body(**{field: value})), field)


def test_unknown_scheduler_names_the_allowed_values(offline: FlaskClient) -> None:
    reply = offline.post(URL, json=reference_body(scheduler="Karras Magic"))
    message = assert_field_error(reply, "scheduler")
    for name in ("DDIM", "DPM Multi", "Euler a", "UniPC"):
        assert name in message


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"', b""])
def test_body_that_is_not_a_json_object(offline: FlaskClient, raw: bytes) -> None:
    reply = offline.post(URL, data=raw, content_type="application/json")
    assert_field_error(reply, "body")


def test_unknown_path_and_wrong_method_are_json(client: FlaskClient) -> None:
    missing = client.get("/v1/nope")
    assert missing.status_code == 404
    assert missing.get_json() == {"error": "not found"}
    wrong = client.get(URL)
    assert wrong.status_code == 405
    assert wrong.get_json() == {"error": "method not allowed"}
    assert "POST" in wrong.headers["Allow"]
    assert client.get("/v1/jobs/0123456789abcdef").status_code == 404


def test_worker_exception_is_a_clear_error_and_the_next_job_succeeds(faulty_farm: Flask) -> None:
    client = faulty_farm.test_client()
    failed = client.post(URL, json=reference_body(prompt="a castle [fail]"))
    assert failed.status_code == 500
    body = failed.get_json()
    assert "injected fault: the GPU caught fire" in body["error"]
    job = client.get(f"/v1/jobs/{body['job_id']}").get_json()
    assert job["status"] == "failed"
    assert job["error"] == body["error"]

    ok = client.post(URL, json=reference_body(prompt="a castle"))
    assert ok.status_code == 200
    assert jpeg_pixels(ok.data).size == (512, 512)
