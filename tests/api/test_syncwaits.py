"""The bounds on synchronous waits per key and per job, and their answers."""

from __future__ import annotations

import io
from contextlib import ExitStack

from api.app import create_app
from api.context import service_of
from api.syncwaits import SyncWaits
from shared.settings import Settings
from tests.helpers import REFERENCE, b64, sample_image

URL = "/v1/sd1.5-img2img"


def test_a_key_holds_at_most_its_waits_and_gets_them_back() -> None:
    waits = SyncWaits(per_key=2, per_job=10)
    with ExitStack() as stack:
        assert stack.enter_context(waits.for_key("k1"))
        assert stack.enter_context(waits.for_key("k1"))
        with waits.for_key("k1") as third:
            assert not third
        with waits.for_key("k2") as other, waits.for_key(None) as anonymous:
            assert other and anonymous
    with waits.for_key("k1") as again:
        assert again


def test_a_job_holds_at_most_its_waits() -> None:
    waits = SyncWaits(per_key=100, per_job=3)
    with ExitStack() as stack:
        for _ in range(3):
            assert stack.enter_context(waits.for_job("j1"))
        with waits.for_job("j1") as fourth, waits.for_job("j2") as other:
            assert not fourth and other
    with waits.for_job("j1") as again:
        assert again


def test_a_wait_that_raises_gives_its_place_back() -> None:
    waits = SyncWaits(per_key=1, per_job=1)
    try:
        with waits.for_key("k"), waits.for_job("j"):
            raise TimeoutError
    except TimeoutError:
        pass
    with waits.for_key("k") as key, waits.for_job("j") as job:
        assert key and job


def test_the_refusal_names_the_bounds_and_the_job() -> None:
    refusal = SyncWaits(per_key=7, per_job=3).refusal("abc")
    assert refusal.status_code == 429 and refusal.retry_after >= 1
    assert "7 per key" in refusal.message and "3 per job" in refusal.message
    assert "GET /v1/jobs/abc" in refusal.message
    assert "job" not in SyncWaits(1, 1).refusal().message.split("per job")[1]


def test_each_protocol_answers_a_full_key_its_own_way(base_settings: Settings) -> None:
    """With the key's one wait taken: plain Segmind v1, the web UI and OpenAI are 429 before
    anything is accepted; a ``Prefer`` client gets its job (202); async submits are untouched."""
    settings = base_settings.replace(
        queue_name="img2img-unserved-waits", key_prefix="t-waits", max_sync_waits_per_key=1
    )
    app = create_app(settings)
    client = app.test_client()
    image = sample_image((64, 48))
    with service_of(app).sync_waits.for_key(None):  # keys off: every request is the same owner
        plain = client.post(URL, json={**REFERENCE, "image": b64(image)})
        web_ui = client.post("/sdapi/v1/img2img", json={"init_images": [b64(image)], "prompt": "a boat"})
        form = {"prompt": "a boat", "image": (io.BytesIO(image), "in.png")}
        openai = client.post("/v1/images/edits", data=form, content_type="multipart/form-data")
        for reply in (plain, web_ui, openai):
            assert reply.status_code == 429, reply.get_data(as_text=True)
            assert int(reply.headers["Retry-After"]) >= 1
            assert "synchronous waits" in reply.get_data(as_text=True)
        assert "x-job-id" not in plain.headers  # refused before the submit
        waiting = client.post(URL, json={**REFERENCE, "image": b64(image)}, headers={"Prefer": "wait=5"})
        assert waiting.status_code == 202 and waiting.headers["x-job-id"]
        queued = client.post(
            URL, json={**REFERENCE, "image": b64(image)}, headers={"Prefer": "respond-async"}
        )
        assert queued.status_code == 202
