"""Crafted job ids never reach Redis (404, no error logged), and no request can grow the
metrics' label sets: unknown methods and paths are counted under fixed labels."""

from __future__ import annotations

import logging
import random
import string

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from shared.settings import Settings
from tests.helpers import reference_body


@pytest.fixture(scope="module")
def job_id(app: Flask) -> str:
    """A real job's id: its events stream, input and results exist under keys next to it."""
    reply = app.test_client().post("/v1/sd1.5-img2img", json=reference_body())
    assert reply.status_code == 200
    return str(reply.headers["x-job-id"])


CRAFTED = (":events", ":input", ":result:0", "%3Aevents", "%3Ainput", ":params")
ROUTES = (
    ("GET", "/v1/jobs/{}"),
    ("GET", "/v1/jobs/{}/images/0"),
    ("POST", "/v1/jobs/{}/cancel"),
    ("GET", "/v2/requests/{}/status"),
    ("GET", "/v2/requests/{}"),
)


@pytest.mark.parametrize("suffix", CRAFTED)
@pytest.mark.parametrize(("method", "route"), ROUTES)
def test_crafted_job_ids_are_404_before_the_store(
    client: FlaskClient, job_id: str, suffix: str, method: str, route: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        reply = client.open(route.format(job_id + suffix), method=method)
    assert reply.status_code == 404 and reply.get_json()["error"] == "no such job"
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("crafted", ["A" * 32, "g" * 32, "a" * 31, "a" * 33, "../" + "a" * 29])
def test_ids_not_of_a_job_ids_shape_are_404(client: FlaskClient, crafted: str) -> None:
    assert client.get(f"/v1/jobs/{crafted}").status_code == 404


def metrics_lines(client: FlaskClient) -> int:
    return len(client.get("/metrics").get_data(as_text=True).splitlines())


def test_random_methods_and_paths_leave_the_metrics_bounded(base_settings: Settings) -> None:
    client = create_app(base_settings.replace(key_prefix="t-labels")).test_client()
    rng = random.Random(7)
    for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "BREW"):
        client.open("/nowhere", method=method)
    client.open("/v1/jobs/" + "a" * 32, method="BREW")
    metrics_lines(client)  # the scrape counts itself from the next one on
    before = metrics_lines(client)
    for _ in range(1000):
        method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 12)))
        path = "/" + "/".join(
            "".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(1, 8)))
            for _ in range(rng.randint(1, 4))
        )
        client.open(path, method=method)
        client.open("/v1/jobs/" + "".join(rng.choices("0123456789abcdef", k=32)), method=method)
    # The same label sets as before the flood: only counter values moved.
    assert metrics_lines(client) == before
