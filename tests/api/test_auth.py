"""API keys, credits and rate limits, with real Redis and a real worker."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from flask import Flask

from api.admin import run as admin
from deploy.local import GatewayProcess, WorkerProcess
from shared.keys import KeyStore
from shared.pricing import format_credits, job_cost_milli
from shared.schema import parse_request
from shared.settings import Settings
from shared.store import ClaimOutcome, JobStore
from tests.helpers import input_copy, reference_body

URL = "/v1/sd1.5-img2img"
ASYNC = {"Prefer": "respond-async"}


@pytest.fixture(scope="module")
def keyed_settings(settings: Settings) -> Settings:
    """The main farm (queue, key prefix, worker) with keys on."""
    return settings.replace(auth_enabled=True, rate_limit_per_minute=1000)


@pytest.fixture(scope="module")
def keyed(keyed_settings: Settings, worker: WorkerProcess) -> Flask:
    from api.app import create_app

    return create_app(keyed_settings)


def new_key(settings: Settings, credits_milli: int = 10_000_000, rate_limit: int = 0) -> tuple[str, str]:
    key, record = KeyStore(settings).create(f"test-{time.monotonic_ns()}", credits_milli, rate_limit)
    return key, record.id


def cost_of(settings: Settings, **changes: Any) -> int:
    return job_cost_milli(parse_request(reference_body(**changes), settings).params, settings)


def test_missing_wrong_and_revoked_keys_are_401(keyed: Flask, keyed_settings: Settings) -> None:
    client = keyed.test_client()
    key, key_id = new_key(keyed_settings)
    for headers in (
        {},
        {"x-api-key": "i2i_00000000_nope"},
        {"x-api-key": key[:-1] + "x"},
        {"x-api-key": "junk"},
    ):
        reply = client.post(URL, json=reference_body(), headers=headers)
        assert reply.status_code == 401
        assert "API key" in reply.get_json()["error"]
        assert client.get("/v1/jobs/whatever", headers=headers).status_code == 401
        assert client.get("/v2/requests/whatever/status", headers=headers).status_code == 401
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/jobs/nope", headers={"x-api-key": key}).status_code == 404
    out = io.StringIO()
    assert admin(["revoke", key_id], KeyStore(keyed_settings), out) == 0
    assert client.get("/v1/jobs/nope", headers={"x-api-key": key}).status_code == 401


def test_the_stored_form_of_a_key_is_not_the_key(keyed_settings: Settings) -> None:
    out = io.StringIO()
    assert admin(["create", "--name", "stored", "--credits", "5"], KeyStore(keyed_settings), out) == 0
    key = out.getvalue().splitlines()[1]
    key_id = key.split("_")[1]
    stored = KeyStore(keyed_settings).stored_form(key_id)
    assert key not in "".join(stored.values())
    assert key.split("_", 2)[2] not in "".join(stored.values())
    listing = io.StringIO()
    admin(["list"], KeyStore(keyed_settings), listing)
    assert key_id in listing.getvalue() and key not in listing.getvalue()
    assert "5.000" in listing.getvalue()


def test_success_reports_cost_and_remaining_credits(keyed: Flask, keyed_settings: Settings) -> None:
    cost = cost_of(keyed_settings)
    key, _ = new_key(keyed_settings, credits_milli=cost * 3)
    reply = keyed.test_client().post(URL, json=reference_body(), headers={"x-api-key": key})
    assert reply.status_code == 200
    assert reply.headers["x-cost"] == format_credits(cost)
    assert reply.headers["x-remaining-credits"] == format_credits(cost * 2)
    job = keyed.test_client().get(f"/v1/jobs/{reply.headers['x-job-id']}", headers={"x-api-key": key})
    assert job.headers["x-remaining-credits"] == format_credits(cost * 2)
    assert job.get_json()["cost"] == format_credits(cost)


def test_price_follows_samples_steps_and_size(keyed_settings: Settings) -> None:
    base = cost_of(keyed_settings, samples=1, num_inference_steps=20, strength=1.0)
    assert cost_of(keyed_settings, samples=2, num_inference_steps=20, strength=1.0) == 2 * base
    assert cost_of(keyed_settings, samples=1, num_inference_steps=40, strength=1.0) == 2 * base
    assert cost_of(keyed_settings, samples=1, num_inference_steps=40, strength=0.5) == base
    assert cost_of(
        keyed_settings, img_width=768, img_height=768, num_inference_steps=20, strength=1.0
    ) == round(2.25 * base)


@pytest.fixture(scope="module")
def keyed_gateway(
    keyed_settings: Settings, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    proc = GatewayProcess(keyed_settings, tmp_path_factory.mktemp("keyed"), workers=2)
    proc.start()
    yield proc.url
    proc.stop()


def test_hundred_concurrent_submits_with_credit_for_ten(keyed_gateway: str, keyed_settings: Settings) -> None:
    cost = cost_of(keyed_settings)
    key, key_id = new_key(keyed_settings, credits_milli=cost * 10)
    keys = KeyStore(keyed_settings)
    lowest = [cost * 10]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            lowest[0] = min(lowest[0], keys.balance(key_id))

    watcher = threading.Thread(target=watch)
    watcher.start()

    def post(_: int) -> requests.Response:
        return requests.post(
            f"{keyed_gateway}{URL}", json=reference_body(), headers={"x-api-key": key, **ASYNC}, timeout=60
        )

    with ThreadPoolExecutor(max_workers=50) as pool:
        replies = list(pool.map(post, range(100)))
    stop.set()
    watcher.join()
    codes = sorted(r.status_code for r in replies)
    assert codes.count(202) == 10 and codes.count(406) == 90, codes
    refused = next(r for r in replies if r.status_code == 406).json()
    assert refused["balance"] == format_credits(0) and refused["cost"] == format_credits(cost)
    assert keys.balance(key_id) == 0
    assert lowest[0] >= 0
    accepted = [r.json()["id"] for r in replies if r.status_code == 202]
    store = JobStore(keyed_settings)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not all(store.jobs.get(j).status.terminal for j in accepted):  # type: ignore[union-attr]
        time.sleep(0.1)
    assert keys.balance(key_id) == 0  # all ten ran and were paid for


def test_failed_job_is_refunded_once_even_if_the_failure_is_handled_twice(keyed_settings: Settings) -> None:
    from api.service import JobService

    cost = cost_of(keyed_settings)
    _, key_id = new_key(keyed_settings, credits_milli=cost)
    unserved = keyed_settings.replace(queue_name="img2img-unserved")
    service = JobService(unserved)
    params = parse_request(reference_body(), unserved).params
    from tests.helpers import sample_image

    job = service.submit(params, sample_image(), owner=key_id)
    keys = KeyStore(keyed_settings)
    assert keys.balance(key_id) == 0
    store = JobStore(keyed_settings)
    assert store.jobs.fail_queued(job.id, "the job was not started")
    assert not store.jobs.fail_queued(job.id, "the job was not started, again")
    assert store.jobs.claim(job.id, "w", 30, 3).outcome is ClaimOutcome.FAILED  # and no refund again
    assert keys.balance(key_id) == cost
    stored = store.jobs.get(job.id)
    assert stored is not None and stored.refunded


def test_an_image_that_does_not_decode_takes_its_job_back(
    keyed_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full decode runs once the job is queued: a truncated image fails it, refunded,
    and the client gets the image's 400; S3 never gets the input."""
    import api.service
    from api.service import JobService
    from shared.errors import InvalidInput, NotFound
    from shared.jobs import JobStatus, input_key
    from tests.helpers import sample_image

    cost = cost_of(keyed_settings)
    _, key_id = new_key(keyed_settings, credits_milli=cost)
    service = JobService(keyed_settings.replace(queue_name="img2img-unserved"))
    params = parse_request(reference_body(), keyed_settings).params
    monkeypatch.setattr(api.service, "new_job_id", lambda: "truncated-input")
    data = sample_image(fmt="JPEG")
    with pytest.raises(InvalidInput) as refused:
        service.submit(params, data[: len(data) // 2], owner=key_id)
    assert refused.value.field == "image" and refused.value.status_code == 400
    job = JobStore(keyed_settings).jobs.get("truncated-input")
    assert job is not None and job.status is JobStatus.FAILED and job.refunded
    assert job.error == refused.value.message
    assert KeyStore(keyed_settings).balance(key_id) == cost
    assert input_copy(keyed_settings, "truncated-input") is None
    with pytest.raises(NotFound):
        service.storage.get(input_key("truncated-input"))


def test_job_failing_in_the_worker_is_refunded(faulty_farm: Flask, base_settings: Settings) -> None:
    from api.app import create_app

    faulty_settings = base_settings.replace(
        queue_name="img2img-faulty", key_prefix="t-faulty", auth_enabled=True
    )
    app = create_app(faulty_settings)
    cost = cost_of(faulty_settings)
    key, _ = new_key(faulty_settings, credits_milli=cost)
    reply = app.test_client().post(URL, json=reference_body(prompt="x [fail]"), headers={"x-api-key": key})
    assert reply.status_code == 500
    assert reply.headers["x-remaining-credits"] == format_credits(cost)


def test_canceled_queued_job_is_refunded(keyed_settings: Settings) -> None:
    from api.app import create_app

    app = create_app(keyed_settings.replace(queue_name="img2img-unserved"))
    cost = cost_of(keyed_settings)
    key, key_id = new_key(keyed_settings, credits_milli=cost)
    client = app.test_client()
    job_id = client.post(URL, json=reference_body(), headers={"x-api-key": key, **ASYNC}).get_json()["id"]
    assert KeyStore(keyed_settings).balance(key_id) == 0
    reply = client.post(f"/v1/jobs/{job_id}/cancel", headers={"x-api-key": key})
    assert reply.status_code == 200
    assert reply.headers["x-remaining-credits"] == format_credits(cost)
    assert reply.get_json()["refunded"] is True


def test_rate_limit_per_key(keyed: Flask, keyed_settings: Settings) -> None:
    client = keyed.test_client()
    limited, limited_id = new_key(keyed_settings, rate_limit=5)
    other, _ = new_key(keyed_settings, rate_limit=5)
    for _ in range(5):  # a refused body still counts: the key was checked
        assert client.post(URL, json={}, headers={"x-api-key": limited}).status_code == 400
    blocked = client.post(URL, json={}, headers={"x-api-key": limited})
    assert blocked.status_code == 429
    assert 1 <= int(blocked.headers["Retry-After"]) <= 61
    assert "5 requests per minute" in blocked.get_json()["error"]
    assert client.post(URL, json={}, headers={"x-api-key": other}).status_code == 400
    out = io.StringIO()
    admin(["set-rate-limit", limited_id, "100"], KeyStore(keyed_settings), out)
    assert client.post(URL, json={}, headers={"x-api-key": limited}).status_code == 400


def test_a_client_polling_five_times_a_second_for_a_minute_can_still_submit(
    keyed_settings: Settings, worker: WorkerProcess
) -> None:
    """Reads count in their own window: 300 polls (a minute at 5 a second, all in one window
    here) leave the key's 2 submits a minute untouched; reads beyond their own limit are 429."""
    from api.app import create_app

    client = create_app(keyed_settings.replace(read_rate_limit_per_minute=300)).test_client()
    key, _ = new_key(keyed_settings, rate_limit=2)
    headers = {"x-api-key": key}
    job = client.post(URL, json=reference_body(), headers={**headers, **ASYNC})
    assert job.status_code == 202, job.get_data(as_text=True)
    for _ in range(300):
        assert client.get(f"/v1/jobs/{job.get_json()['id']}", headers=headers).status_code == 200
    polled_out = client.get(f"/v1/jobs/{job.get_json()['id']}", headers=headers)
    assert polled_out.status_code == 429
    assert "300 reads per minute" in polled_out.get_json()["error"]
    assert 1 <= int(polled_out.headers["Retry-After"]) <= 61
    second = client.post(URL, json=reference_body(), headers={**headers, **ASYNC})
    assert second.status_code == 202, second.get_data(as_text=True)
    assert client.post(URL, json=reference_body(), headers={**headers, **ASYNC}).status_code == 429


def test_wrong_secrets_do_not_use_up_a_keys_rate_limit(keyed: Flask, keyed_settings: Settings) -> None:
    client = keyed.test_client()
    key, key_id = new_key(keyed_settings, rate_limit=2)
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    for _ in range(5):
        assert client.post(URL, json={}, headers={"x-api-key": forged}).status_code == 401
    for _ in range(2):
        assert client.post(URL, json={}, headers={"x-api-key": key}).status_code == 400
    assert client.post(URL, json={}, headers={"x-api-key": key}).status_code == 429
    keys = KeyStore(keyed_settings)
    admission = keys.admit(key)
    assert admission is not None and admission.key.id == key_id and admission.count == 4
    assert keys.admit(forged) is None
    assert keys.authenticate(key) is not None  # checks without counting
    again = keys.admit(key)
    assert again is not None and again.count == 5


def test_queue_full_is_503_and_charges_nothing(keyed_settings: Settings) -> None:
    from api.app import create_app

    full = keyed_settings.replace(queue_name="img2img-full", key_prefix="t-full", max_queue_depth=2)
    app = create_app(full)
    client = app.test_client()
    key, key_id = new_key(full)
    keys = KeyStore(full)
    for _ in range(2):
        assert client.post(URL, json=reference_body(), headers={"x-api-key": key, **ASYNC}).status_code == 202
    before = keys.balance(key_id)
    reply = client.post(URL, json=reference_body(), headers={"x-api-key": key, **ASYNC})
    assert reply.status_code == 503
    assert int(reply.headers["Retry-After"]) > 0
    assert keys.balance(key_id) == before


def test_a_key_cannot_see_or_touch_another_keys_job(keyed: Flask, keyed_settings: Settings) -> None:
    client = keyed.test_client()
    key_a, _ = new_key(keyed_settings)
    key_b, _ = new_key(keyed_settings)
    reply = client.post(URL, json=reference_body(), headers={"x-api-key": key_a})
    assert reply.status_code == 200
    job_id = reply.headers["x-job-id"]
    as_b = {"x-api-key": key_b}
    assert client.get(f"/v1/jobs/{job_id}", headers=as_b).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/images/0", headers=as_b).status_code == 404
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=as_b).status_code == 404
    assert client.get(f"/v2/requests/{job_id}", headers=as_b).status_code == 404
    assert client.get(f"/v2/requests/{job_id}/status", headers=as_b).status_code == 404
    as_a = {"x-api-key": key_a}
    assert client.get(f"/v1/jobs/{job_id}", headers=as_a).status_code == 200
    assert client.get(f"/v1/jobs/{job_id}/images/0", headers=as_a).status_code == 200
