"""The operator page: off without OPS_TOKEN, behind it otherwise, and it shows the farm."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from shared.settings import Settings
from tests.helpers import reference_body

TOKEN = "operator-secret"


def test_off_without_a_token(client: FlaskClient) -> None:
    assert client.get("/ops").status_code == 404
    assert client.get("/ops/data", headers={"Authorization": "Bearer x"}).status_code == 404


def test_queues_workers_jobs_counters_and_failures(base_settings: Settings, faulty_farm: Flask) -> None:
    settings = base_settings.replace(queue_name="img2img-faulty", key_prefix="t-faulty", ops_token=TOKEN)
    client = create_app(settings).test_client()
    failed = client.post("/v1/sd1.5-img2img", json=reference_body(prompt="a castle [fail]"))
    assert failed.status_code == 500
    job_id = failed.get_json()["job_id"]

    page = client.get("/ops")
    assert page.status_code == 200 and page.mimetype == "text/html" and b"/static/ops.js" in page.data
    page.close()
    assert client.get("/ops/data").status_code == 401
    assert client.get("/ops/data", headers={"Authorization": "Bearer wrong"}).status_code == 401
    data = client.get("/ops/data", headers={"Authorization": f"Bearer {TOKEN}"}).get_json()
    assert data["queues"] == [{"name": "img2img-faulty", "depth": 0}]
    assert len(data["workers"]) >= 1 and all(worker["age_seconds"] < 10 for worker in data["workers"])
    assert data["jobs"]["failed"] >= 1 and data["jobs"]["queued"] >= 1
    latest = data["failures"][0]
    assert latest["id"] == job_id and "the GPU caught fire" in latest["error"]
    assert data["counters"]["jobs_failed"] >= 1 and isinstance(data["uploads_pending"], int)
