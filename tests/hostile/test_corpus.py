"""The hostile corpus (tests/hostile/corpus.py) against the image checks and the running service."""

from __future__ import annotations

import io
import time
import tracemalloc

import pytest
from flask.testing import FlaskClient
from PIL import Image

from shared.errors import InvalidInput
from shared.images import check_image_bytes, open_image, prepare_image
from shared.settings import Settings
from tests.helpers import REFERENCE, b64, decode_image_field, jpeg_pixels, sample_image
from tests.hostile.corpus import ACCEPTED, Case, accepted_samples, cases, png_declaring
from tests.hostile.guard import outbound_guard

URL = "/v1/sd1.5-img2img"
SETTINGS = Settings()
CASES = cases()
CHEAP = {"num_inference_steps": 20, "strength": 0.1}  # two denoising steps
TERMINAL = ("succeeded", "failed", "canceled")
# Accepted samples that also run on the real worker (each costs a generation).
THROUGH_THE_WORKER = (
    "png_16bit_gray",
    "png_palette_transparency",
    "jpeg_cmyk",
    "jpeg_exif_rotated",
    "webp_animated",
)


def status_of(case: Case) -> int:
    try:
        decode_image_field(case.image, SETTINGS)
    except InvalidInput as exc:
        assert exc.field == "image" and exc.message.startswith("image: "), exc.message
        return exc.status_code
    return ACCEPTED


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_sample_gets_its_status(case: Case) -> None:
    with outbound_guard() as outbound:
        assert status_of(case) == case.status
    assert outbound.connects == []


@pytest.mark.parametrize(
    ("name", "data"), list(accepted_samples()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_accepted_sample_prepares_as_the_worker_does(name: str, data: bytes) -> None:
    image = prepare_image(open_image(data, SETTINGS), 512, 768)
    assert (image.mode, image.size) == ("RGB", (512, 768)), name


def test_a_pixel_bomb_is_refused_from_its_header() -> None:
    bomb = png_declaring(20000, 20000)  # 1.2 GB of RGB if it were decoded
    with pytest.raises(InvalidInput):
        check_image_bytes(png_declaring(8, 8) + b"", SETTINGS.replace(max_image_pixels=1))  # warm the imports
    tracemalloc.start()
    try:
        started = time.monotonic()
        with pytest.raises(InvalidInput) as refused:
            check_image_bytes(bomb, SETTINGS)
        took = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.status_code == 413
    assert "20000x20000" in refused.value.message
    assert peak < 1024 * 1024 and took < 0.5, (peak, took)


def test_the_service_survives_the_whole_corpus(client: FlaskClient) -> None:
    """Every refused sample and the oddest accepted ones through the real gateway and worker
    (the other accepted ones are prepared above as the worker would), then a normal request:
    the service answers it correctly."""
    accepted: dict[str, str] = {}
    wrong: list[str] = []
    with outbound_guard() as outbound:
        for case in CASES:
            if case.status == ACCEPTED and case.name not in THROUGH_THE_WORKER:
                continue
            body = {**REFERENCE, **CHEAP, "image": case.image}
            reply = client.post(URL, json=body, headers={"Prefer": "respond-async"})
            answer = reply.get_json()
            if reply.status_code != case.status or reply.mimetype != "application/json":
                wrong.append(f"{case.name}: {reply.status_code} {answer}")
            elif case.status == ACCEPTED:
                accepted[case.name] = answer["id"]
            elif answer.get("field") != "image":
                wrong.append(f"{case.name}: the error does not name the image field: {answer}")
    assert wrong == []
    assert outbound.blocked == []

    outcome: dict[str, str] = {}
    deadline = time.monotonic() + 240
    while len(outcome) < len(accepted) and time.monotonic() < deadline:
        for name, job_id in accepted.items():
            if name not in outcome:
                status = client.get(f"/v1/jobs/{job_id}").get_json()["status"]
                if status in TERMINAL:
                    outcome[name] = status
        time.sleep(0.25)
    assert sorted(accepted) == sorted(THROUGH_THE_WORKER)
    assert outcome == dict.fromkeys(accepted, "succeeded")

    reply = client.post(URL, json={**REFERENCE, **CHEAP, "image": b64(sample_image())})
    assert reply.status_code == 200, reply.get_data(as_text=True)
    picture = jpeg_pixels(reply.data)
    assert picture.size == (512, 512)
    assert isinstance(Image.open(io.BytesIO(reply.data)).getpixel((0, 0)), tuple)
