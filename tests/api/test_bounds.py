"""Every field bound: one request just inside (accepted) and one just outside (400) each limit.

The gateway here enqueues onto a queue no worker reads and answers at once
(``Prefer: respond-async``), so accepted requests cost no generation.
"""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from shared.settings import Settings
from tests.helpers import reference_body

URL = "/v1/sd1.5-img2img"

INSIDE = [
    ("samples", 1),
    ("samples", 4),
    ("num_inference_steps", 20),
    ("num_inference_steps", 100),
    ("guidance_scale", 0.1),
    ("guidance_scale", 25),
    ("strength", 0.1),
    ("strength", 1),
    ("seed", -1),
    ("seed", 0),
    ("seed", 2**63 - 1),
    ("img_width", 512),
    ("img_width", 768),
    ("img_height", 512),
    ("img_height", 768),
    ("prompt", "x"),
    ("prompt", "p" * 2000),
    ("negative_prompt", "n" * 2000),
    ("negative_prompt", None),
    ("base64", True),
    ("base64", False),
]
OUTSIDE = [
    ("samples", 0),
    ("samples", 5),
    ("num_inference_steps", 19),
    ("num_inference_steps", 101),
    ("guidance_scale", 0.09),
    ("guidance_scale", 25.01),
    ("strength", 0.09),
    ("strength", 1.01),
    ("seed", -2),
    ("seed", 2**63),
    ("img_width", 511),
    ("img_width", 1024),
    ("img_height", 256),
    ("img_height", 769),
    ("prompt", ""),
    ("prompt", "   "),
    ("prompt", "p" * 2001),
    ("negative_prompt", "n" * 2001),
]


@pytest.fixture(scope="module")
def unserved(base_settings: Settings) -> Flask:
    from api.app import create_app

    return create_app(base_settings.replace(queue_name="img2img-unserved", key_prefix="t-unserved"))


@pytest.mark.parametrize(("field", "value"), INSIDE)
def test_just_inside_is_accepted(unserved: Flask, field: str, value: object) -> None:
    client: FlaskClient = unserved.test_client()
    reply = client.post(URL, json=reference_body(**{field: value}), headers={"Prefer": "respond-async"})
    assert reply.status_code == 202, reply.get_data(as_text=True)
    job = reply.get_json()
    assert job["status"] == "queued"
    if value is not None and field != "seed":
        assert job["parameters"][field] == value


@pytest.mark.parametrize(("field", "value"), OUTSIDE)
def test_just_outside_is_refused(unserved: Flask, field: str, value: object) -> None:
    client: FlaskClient = unserved.test_client()
    reply = client.post(URL, json=reference_body(**{field: value}), headers={"Prefer": "respond-async"})
    assert reply.status_code == 400, reply.get_data(as_text=True)
    body = reply.get_json()
    assert body["field"] == field
    assert body["error"].startswith(f"{field}:")
