"""The clients people already have, unmodified, against a running farm: the AUTOMATIC1111
web UI's Python client (``webuiapi``) and OpenAI's SDK (``openai``)."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests
import webuiapi
from PIL import Image

from deploy.local import GatewayProcess, WorkerProcess
from shared.keys import KeyStore
from shared.settings import Settings
from shared.store import JobStore
from tests.helpers import sample_image

PROMPT = "a lighthouse at dusk, oil painting"


def picture() -> Image.Image:
    return Image.open(io.BytesIO(sample_image()))


@pytest.fixture(scope="module")
def keyed(
    settings: Settings, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Settings]]:
    """A gateway with keys on in front of the main farm's worker; yields its URL, a key with
    credits and its settings."""
    keyed_settings = settings.replace(auth_enabled=True)
    secret, _ = KeyStore(keyed_settings).create("clients", 1_000_000)
    proc = GatewayProcess(keyed_settings, tmp_path_factory.mktemp("keyed-clients"))
    proc.start()
    yield proc.url, secret, keyed_settings
    proc.stop()


def web_ui(url: str, **auth: str) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(baseurl=f"{url}/sdapi/v1", sampler="Euler a", steps=20, **auth)


# -- AUTOMATIC1111 ---------------------------------------------------------------------------


def test_webuiapi_two_samples_with_a_fixed_seed_come_back_the_same(gateway: str, settings: Settings) -> None:
    api = web_ui(gateway)
    first = api.img2img(images=[picture()], prompt=PROMPT, seed=1234, batch_size=2, denoising_strength=0.5)
    assert len(first.images) == 2 and all(image.size == (512, 512) for image in first.images)
    assert first.info["all_seeds"] == [1234, 1235] and first.info["seed"] == 1234
    assert first.info["sampler_name"] == "Euler a" and first.info["sd_model_name"] == "tiny"
    assert first.info["denoising_strength"] == 0.5 and first.info["batch_size"] == 2
    assert first.parameters["prompt"] == PROMPT and first.parameters["init_images"] is None

    again = api.img2img(images=[picture()], prompt=PROMPT, seed=1234, batch_size=2, denoising_strength=0.5)
    assert [image.tobytes() for image in again.images] == [image.tobytes() for image in first.images]

    # The generation is a job like any other.
    job = JobStore(settings).jobs.get(first.info["job_id"])
    assert job is not None and job.seeds == (1234, 1235) and job.params.scheduler == "Euler a"
    assert job.params.strength == 0.5 and job.params.samples == 2


def test_webuiapi_random_seed_batches_and_samplers(gateway: str) -> None:
    api = web_ui(gateway)
    result = api.img2img(
        images=[picture()], prompt=PROMPT, seed=-1, batch_size=1, n_iter=2, sampler_name="PLMS", eta=0.0
    )
    seeds = result.info["all_seeds"]
    assert len(result.images) == 2 and seeds[1] == seeds[0] + 1 and seeds[0] >= 0
    assert result.info["sampler_name"] == "PLMS" and result.info["n_iter"] == 2
    assert (
        "Sampler: PLMS" in result.info["infotexts"][0] and f"Seed: {seeds[1]}" in result.info["infotexts"][1]
    )
    karras = api.img2img(images=[picture()], prompt=PROMPT, seed=5, sampler_name="DPM2", scheduler="karras")
    assert karras.info["sampler_name"] == "DPM2 Karras" and karras.info["scheduler"] == "karras"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"restore_faces": True}, "restore_faces"),
        ({"mask_image": Image.new("L", (512, 512), 255)}, "mask"),
        ({"sampler_name": "DPM++ SDE"}, "sampler_name"),
        ({"sampler_name": "DDIM"}, "eta"),  # the client sends eta 1; the farm's DDIM runs 0
        ({"sampler_name": "DPM++ 2M", "scheduler": "karras"}, "scheduler"),
        ({"styles": ["anime"]}, "styles"),
        ({"subseed_strength": 0.3}, "subseed_strength"),
        ({"tiling": True}, "tiling"),
        ({"resize_mode": 1}, "resize_mode"),
        ({"script_name": "x/y/z plot"}, "script_name"),
        ({"override_settings": {"CLIP_stop_at_last_layers": 2}}, "override_settings"),
        ({"inpainting_fill": 1}, "inpainting_fill"),
        ({"batch_size": 3, "n_iter": 2}, "batch_size"),
        ({"steps": 5}, "steps"),
        ({"width": 640}, "width"),
        ({"denoising_strength": 0.0}, "denoising_strength"),
    ],
)
def test_webuiapi_fields_the_farm_cannot_honour_are_a_400_naming_them(
    gateway: str, change: dict[str, object], field: str
) -> None:
    with pytest.raises(RuntimeError) as refused:
        web_ui(gateway).img2img(images=[picture()], prompt=PROMPT, **change)
    status, text = refused.value.args
    assert status == 400, text
    assert json.loads(text)["field"] == field


def test_two_init_images_are_refused(gateway: str) -> None:
    with pytest.raises(RuntimeError) as refused:
        web_ui(gateway).img2img(images=[picture(), picture()], prompt=PROMPT)
    assert refused.value.args[0] == 400 and json.loads(refused.value.args[1])["field"] == "init_images"


def test_webuiapi_reads_what_it_asks_around_a_generation(gateway: str) -> None:
    api = web_ui(gateway)
    samplers = {sampler["name"]: sampler["aliases"] for sampler in api.get_samplers()}
    assert samplers["PLMS"] == ["PNDM"] and samplers["DPM++ 2M"] == ["DPM Multi"] and len(samplers) == 14
    assert [scheduler["name"] for scheduler in api.get_schedulers()] == ["automatic", "karras"]
    assert api.get_sd_models()[0]["model_name"] == "tiny"
    assert api.get_options()["sd_model_checkpoint"] == "tiny"
    assert api.get_scripts() == {"txt2img": [], "img2img": []}
    assert api.get_cmd_flags()["api"] is True
    assert api.get_loras() == [] and api.get_upscalers() == [] and api.get_embeddings()["loaded"] == {}
    api.img2img(images=[picture()], prompt=PROMPT, seed=3)
    progress = api.get_progress()
    assert progress["progress"] == 1.0 and len(progress["state"]["job"]) == 32
    assert requests.post(f"{gateway}/sdapi/v1/options", json={"sd_model_checkpoint": "tiny"}, timeout=10).ok
    other = requests.post(f"{gateway}/sdapi/v1/options", json={"sd_model_checkpoint": "other"}, timeout=10)
    assert other.status_code == 400 and other.json()["field"] == "sd_model_checkpoint"


def test_webuiapi_basic_auth_takes_the_key_as_its_password(keyed: tuple[str, str, Settings]) -> None:
    url, secret, _ = keyed
    result = web_ui(url, username="anyone", password=secret).img2img(
        images=[picture()], prompt=PROMPT, seed=9
    )
    assert result.info["all_seeds"] == [9]
    with pytest.raises(RuntimeError) as refused:
        web_ui(url, username="anyone", password="wrong").img2img(images=[picture()], prompt=PROMPT)
    assert refused.value.args[0] == 401
    answer = requests.get(f"{url}/sdapi/v1/samplers", timeout=10)
    assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Basic ")


# -- OpenAI ------------------------------------------------------------------------------------


def openai_client(url: str, key: str = "unused", retries: int = 2) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=retries, timeout=120)


def edit(client: openai.OpenAI, **fields: object) -> openai.types.ImagesResponse:
    return client.images.edit(image=("in.png", sample_image(), "image/png"), prompt=PROMPT, **fields)  # type: ignore[arg-type]


def decoded(response: openai.types.ImagesResponse) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(item.b64_json or ""))) for item in response.data or []]


def test_openai_two_samples_with_a_fixed_seed_come_back_the_same(gateway: str) -> None:
    client = openai_client(gateway)
    first = edit(client, n=2, size="512x512", model="sd1.5", extra_body={"seed": 77, "strength": 0.5})
    images = decoded(first)
    assert len(images) == 2 and all(image.format == "JPEG" and image.size == (512, 512) for image in images)
    assert first.output_format == "jpeg" and first.size == "512x512" and first.created > 0
    raw = client.images.with_raw_response.edit(
        image=("in.png", sample_image(), "image/png"),
        prompt=PROMPT,
        n=2,
        extra_body={"seed": 77, "strength": 0.5},
    )
    again = raw.parse()
    assert [i.b64_json for i in again.data or []] == [i.b64_json for i in first.data or []]
    job = requests.get(f"{gateway}/v1/jobs/{raw.headers['x-job-id']}", timeout=10).json()
    assert job["seeds"] == [77, 78] and job["parameters"]["strength"] == 0.5


def test_openai_urls_and_sizes(gateway: str) -> None:
    response = edit(openai_client(gateway), size="768x512", response_format="url", extra_body={"seed": 1})
    (item,) = response.data or []
    assert item.url is not None and "/v1/jobs/" in item.url and item.b64_json is None
    image = Image.open(io.BytesIO(requests.get(item.url, timeout=10).content))
    assert image.size == (768, 512)


@pytest.mark.parametrize(
    ("fields", "param", "status"),
    [
        ({"n": 5}, "n", 400),
        ({"size": "1024x1024"}, "size", 400),
        ({"background": "transparent"}, "background", 400),
        ({"output_format": "gif"}, "output_format", 400),
        ({"mask": ("mask.png", sample_image(), "image/png")}, "mask", 400),
        ({"extra_body": {"num_inference_steps": 5}}, "num_inference_steps", 400),
        ({"extra_body": {"scheduler": "Magic"}}, "scheduler", 400),
        ({"extra_body": {"colour": "blue"}}, "colour", 400),
    ],
)
def test_openai_bad_fields_are_400s_naming_the_param(
    gateway: str, fields: dict[str, object], param: str, status: int
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        edit(openai_client(gateway, retries=0), **fields)
    assert refused.value.status_code == status
    body = refused.value.body
    assert isinstance(body, dict) and body["param"] == param and body["type"] == "invalid_request_error"


def test_openai_several_images_and_bad_images(gateway: str) -> None:
    client = openai_client(gateway, retries=0)
    two = [("a.png", sample_image(), "image/png"), ("b.png", sample_image(), "image/png")]
    with pytest.raises(openai.BadRequestError) as several:
        client.images.edit(image=two, prompt=PROMPT)  # type: ignore[arg-type]
    assert several.value.body["param"] == "image"  # type: ignore[index]
    with pytest.raises(openai.APIStatusError) as unsupported:
        client.images.edit(image=("a.gif", b"GIF89a" + b"\0" * 64, "image/gif"), prompt=PROMPT)
    assert unsupported.value.status_code == 415 and unsupported.value.body["param"] == "image"  # type: ignore[index]


def test_openai_keys_are_bearer_tokens(keyed: tuple[str, str, Settings]) -> None:
    url, secret, _ = keyed
    assert len(decoded(edit(openai_client(url, secret), extra_body={"seed": 4}))) == 1
    with pytest.raises(openai.AuthenticationError) as refused:
        edit(openai_client(url, "wrong", retries=0))
    assert refused.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    assert refused.value.response.headers["WWW-Authenticate"].startswith("Bearer ")


def test_openai_generation_failure_is_not_retried(
    base_settings: Settings, tmp_path: Path, faulty_farm: object
) -> None:
    """The faulty farm's worker fails prompts with [fail]: the SDK gets one 500 and stops."""
    settings = base_settings.replace(queue_name="img2img-faulty", key_prefix="t-faulty")
    store = JobStore(settings)
    gateway = GatewayProcess(settings, tmp_path)
    gateway.start()
    try:
        before = store.counters.all().get("jobs_queued", 0)
        with pytest.raises(openai.InternalServerError) as failed:
            client = openai_client(gateway.url, retries=2)
            client.images.edit(image=("in.png", sample_image(), "image/png"), prompt="a lighthouse [fail]")
        assert failed.value.response.headers["x-should-retry"] == "false"
        assert failed.value.body["code"] == "generation_failed"  # type: ignore[index]
        assert store.counters.all().get("jobs_queued", 0) - before == 1  # one job, not three
    finally:
        gateway.stop()


def test_requests_are_counted_by_protocol(gateway: str) -> None:
    requests.get(f"{gateway}/sdapi/v1/samplers", timeout=10)
    requests.post(f"{gateway}/v1/images/edits", timeout=10)
    text = requests.get(f"{gateway}/metrics", timeout=10).text
    counted = set(re.findall(r'^img2img_protocol_requests_total\{[^}]*protocol="(\w+)"', text, re.M))
    assert {"a1111", "openai"} <= counted
