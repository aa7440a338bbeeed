"""Idempotency keys and clients that go away: over real HTTP to the gunicorn gateway."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import requests

from api.service import JobService
from shared.errors import Unauthorized
from shared.keys import KeyStore
from shared.schema import parse_request
from shared.settings import Settings
from shared.store import JobStore, Submitted
from tests.helpers import no_message_left, reference_body, sample_image

URL = "/v1/sd1.5-img2img"


def pipeline_calls(settings: Settings) -> int:
    return JobStore(settings).counters.all().get("pipeline_calls", 0)


def wait_finished(gateway: str, job_id: str, timeout: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(f"{gateway}/v1/jobs/{job_id}", timeout=10).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return dict(job)
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def test_ten_concurrent_submits_with_one_key_make_one_job(gateway: str, settings: Settings) -> None:
    key = uuid.uuid4().hex
    body = reference_body(seed=4242)
    before = pipeline_calls(settings)

    def post(_: int) -> requests.Response:
        return requests.post(
            f"{gateway}{URL}",
            json=body,
            headers={"Idempotency-Key": key, "Prefer": "respond-async"},
            timeout=60,
        )

    with ThreadPoolExecutor(max_workers=10) as pool:
        replies = list(pool.map(post, range(10)))
    assert [r.status_code for r in replies] == [202] * 10
    ids = {r.json()["id"] for r in replies}
    assert len(ids) == 1
    job_id = ids.pop()
    job = wait_finished(gateway, job_id)
    assert job["status"] == "succeeded"
    no_message_left(settings, job_id)  # so no late run can come
    assert pipeline_calls(settings) == before + 1

    again = requests.post(f"{gateway}{URL}", json=body, headers={"Idempotency-Key": key}, timeout=60)
    assert again.status_code == 200
    assert again.headers["x-job-id"] == job["id"]
    assert pipeline_calls(settings) == before + 1


def test_same_key_with_another_body_is_422(gateway: str) -> None:
    key = uuid.uuid4().hex
    first = requests.post(
        f"{gateway}{URL}",
        json=reference_body(),
        headers={"Idempotency-Key": key, "Prefer": "respond-async"},
        timeout=60,
    )
    assert first.status_code == 202
    other = requests.post(
        f"{gateway}{URL}", json=reference_body(prompt="another"), headers={"Idempotency-Key": key}, timeout=60
    )
    assert other.status_code == 422
    assert "Idempotency-Key" in other.json()["error"]
    wait_finished(gateway, first.json()["id"])


def test_client_that_drops_mid_wait_still_gets_its_job(gateway: str, settings: Settings) -> None:
    key = uuid.uuid4().hex
    body = reference_body(num_inference_steps=100, strength=1.0, img_width=768, img_height=768)
    before = pipeline_calls(settings)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{gateway}{URL}", json=body, headers={"Idempotency-Key": key}, timeout=(5, 1.0))
    reply = requests.post(
        f"{gateway}{URL}", json=body, headers={"Idempotency-Key": key, "Prefer": "respond-async"}, timeout=60
    )
    assert reply.status_code in (200, 202)
    job_id = reply.headers["x-job-id"]
    job = wait_finished(gateway, job_id)
    assert job["status"] == "succeeded"
    outputs = job["outputs"]
    assert isinstance(outputs, list)
    assert requests.get(outputs[0], timeout=10).status_code == 200
    no_message_left(settings, job_id)
    assert pipeline_calls(settings) == before + 1


class FlakyStore(JobStore):
    """Redis times out on the next submit: after its script ran (``recorded``), or before."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.fail_next: str | None = None
        submit = self.jobs.submit

        def flaky_submit(*args: Any, **kwargs: Any) -> Submitted:
            failing, self.fail_next = self.fail_next, None
            if failing == "before":
                raise redis.TimeoutError("Timeout reading from socket")
            submitted = submit(*args, **kwargs)
            if failing == "recorded":
                raise redis.TimeoutError("Timeout reading from socket")
            return submitted

        self.jobs.submit = flaky_submit  # type: ignore[method-assign]


@pytest.fixture()
def flaky(settings: Settings) -> tuple[JobService, FlakyStore, str]:
    tagged = settings.replace(
        auth_enabled=True, queue_name="img2img-unserved", key_prefix=f"t-idem-{uuid.uuid4().hex[:8]}"
    )
    store = FlakyStore(tagged)
    _, record = KeyStore(tagged).create("idem", 10_000_000)
    service = JobService(tagged, store=store)
    service.storage.ensure_bucket()
    return service, store, record.id


def test_an_ambiguous_submit_is_not_charged_twice(flaky: tuple[JobService, FlakyStore, str]) -> None:
    """Redis times out after the submit script ran: the job exists, charged. The client's
    retry with its key gets that job; it is not recorded or charged a second time."""
    service, store, owner = flaky
    params = parse_request(reference_body(), service.settings).params
    keys = KeyStore(service.settings)
    before = keys.balance(owner)
    store.fail_next = "recorded"
    with pytest.raises(redis.TimeoutError):
        service.submit(params, sample_image(), idempotency_key="retry-me", owner=owner)
    charged = before - keys.balance(owner)
    assert charged > 0
    job = service.submit(params, sample_image(), idempotency_key="retry-me", owner=owner)
    assert before - keys.balance(owner) == charged  # once
    assert store.jobs.get(job.id) is not None and store.jobs.stale_queued(0) == [job.id]  # the only job


def test_a_key_bound_to_a_job_never_recorded_is_taken_over(
    flaky: tuple[JobService, FlakyStore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis times out before the submit script ran: nothing was recorded, the key stays bound
    to a job that will never exist, and a retry takes the key over for a job of its own."""
    monkeypatch.setattr("api.service._CLAIM_WAIT_SECONDS", 0.2)
    service, store, owner = flaky
    params = parse_request(reference_body(), service.settings).params
    store.fail_next = "before"
    with pytest.raises(redis.TimeoutError):
        service.submit(params, sample_image(), idempotency_key="lost", owner=owner)
    assert store.jobs.stale_queued(0) == []
    job = service.submit(params, sample_image(), idempotency_key="lost", owner=owner)
    again = service.submit(params, sample_image(), idempotency_key="lost", owner=owner)
    assert again.id == job.id and store.jobs.stale_queued(0) == [job.id]


def test_a_key_revoked_after_its_check_is_401_not_406(settings: Settings) -> None:
    keyed = settings.replace(auth_enabled=True, queue_name="img2img-unserved")
    keys = KeyStore(keyed)
    _, record = keys.create("revoked-mid-request", 10_000_000)
    keys.revoke(record.id)  # between the gateway's key check and the submit script
    params = parse_request(reference_body(), keyed).params
    with pytest.raises(Unauthorized):
        JobService(keyed).submit(params, sample_image(), owner=record.id)
