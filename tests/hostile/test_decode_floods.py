"""Decode floods against the gateway as deployed (gunicorn), measured from outside: the
gateway process's CPU time and its peak memory (``VmHWM``, reset before each flood).

Before the container walk and the decode gate, 16 cut 4096x4096 PNGs at once added 572 MB
to the gateway, and one 10 MB PNG of empty chunks cost 3.9 s of CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from PIL import Image

from deploy.local import GatewayProcess
from shared.keys import KeyStore, key_id_of
from shared.pricing import job_cost_milli
from shared.schema import parse_request
from shared.settings import Settings
from tests.helpers import REFERENCE, sample_image
from tests.hostile.corpus import b64, decode_floods, encode

URL = "/v1/sd1.5-img2img"
ASYNC = {"Prefer": "respond-async"}
FLOODS = {name: data for name, data, _ in decode_floods()}
MB = 1024 * 1024
Answers = list[requests.Response]


class Gateway:
    """A keyed gunicorn gateway on the unserved queue, and its one worker process."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.proc = GatewayProcess(settings, workdir)

    def __enter__(self) -> Gateway:
        self.proc.start()
        deadline = time.monotonic() + 30
        while not psutil.Process(self.proc.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.worker = psutil.Process(self.proc.pid).children()[0]
        requests.get(self.proc.url + "/healthz", timeout=10)
        return self

    def __exit__(self, *_: object) -> None:
        self.proc.stop()

    def key(self) -> str:
        secret, _ = KeyStore(self.settings).create(f"flood-{time.monotonic_ns()}", 10**9)
        return secret

    def measured(self, flood: Callable[[], Answers]) -> tuple[Answers, float, int]:
        """The answers of ``flood``, the gateway's CPU seconds and its peak memory growth."""
        Path(f"/proc/{self.worker.pid}/clear_refs").write_text("5")  # VmHWM back to VmRSS
        before_rss = self.worker.memory_info().rss
        before_cpu = sum(self.worker.cpu_times()[:2])
        answers = flood()
        cpu = sum(self.worker.cpu_times()[:2]) - before_cpu
        return answers, cpu, self._peak() - before_rss

    def _peak(self) -> int:
        for line in Path(f"/proc/{self.worker.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def post(self, image: bytes, key: str) -> requests.Response:
        body = {**REFERENCE, "image": b64(image)}
        return requests.post(self.proc.url + URL, json=body, headers={**ASYNC, "x-api-key": key}, timeout=60)

    def post_all(self, images: list[bytes], keys: list[str]) -> list[requests.Response]:
        def post(pair: tuple[bytes, str]) -> requests.Response:
            image, key = pair
            return self.post(image, key)

        with ThreadPoolExecutor(len(images)) as pool:
            return list(pool.map(post, zip(images, keys, strict=True)))


@pytest.fixture(scope="module")
def gateway(unserved_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    settings = unserved_settings.replace(auth_enabled=True, key_prefix="t-floods", max_decodes_per_key=1)
    with Gateway(settings, tmp_path_factory.mktemp("floods")) as running:
        yield running


def test_sixteen_cut_4096_pngs_at_once_are_400_in_little_memory(gateway: Gateway) -> None:
    keys = [gateway.key() for _ in range(16)]
    for name in ("png_4096x4096_truncated_at_the_end", "png_4096x4096_data_cut_in_a_whole_file"):
        answers, cpu, grew = gateway.measured(lambda: gateway.post_all([FLOODS[name]] * 16, keys))  # noqa: B023
        assert [a.status_code for a in answers] == [400] * 16, (name, [a.text for a in answers])
        assert all(a.json()["field"] == "image" for a in answers)
        print(f"{name}: 16 at once, gateway CPU {cpu:.2f} s, peak memory +{grew / MB:.1f} MB")
        assert grew < 96 * MB, (name, grew / MB)  # was 572 MB
        assert cpu < 3.0, (name, cpu)


@pytest.mark.parametrize(
    "name",
    [
        "png_870k_empty_chunks",
        "png_870k_empty_idat_chunks",
        "jpeg_2_6m_comment_markers",
        "jpeg_2_6m_comment_markers_after_the_scan",
        "jpeg_10mb_of_fill_bytes",
    ],
)
def test_a_10_mb_container_flood_costs_a_fraction_of_a_second(gateway: Gateway, name: str) -> None:
    answers, cpu, _ = gateway.measured(lambda: gateway.post_all([FLOODS[name]], [gateway.key()]))
    print(f"{name}: gateway CPU {cpu:.2f} s")
    assert answers[0].status_code == 400, answers[0].text
    assert "image" in answers[0].json()["error"]
    # Reading and parsing the 14 MB body is most of it; the walk stops after 4096 chunks.
    assert cpu < 1.0, cpu  # was 3.9 s


def test_one_keys_decodes_wait_their_turn_and_others_go_on(gateway: Gateway) -> None:
    """MAX_DECODES_PER_KEY=1: a key's 64 large images at once are checked one at a time; those
    still waiting after 5 s are 429 with Retry-After (their jobs taken back), and another key
    is not held up."""
    flooder, other = gateway.key(), gateway.key()
    big = encode(Image.new("RGB", (4096, 4096), (9, 8, 7)), "PNG")  # 60 KB; about 0.1 s to check
    with ThreadPoolExecutor(1) as pool:
        flood = pool.submit(gateway.post_all, [big] * 64, [flooder] * 64)
        time.sleep(0.2)
        started = time.monotonic()
        reply = gateway.post(sample_image((64, 48)), other)
        other_took = time.monotonic() - started
        answers = flood.result()
    assert reply.status_code == 202, reply.text
    assert other_took < 1.0
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) == {202, 429}, statuses
    limited = [a for a in answers if a.status_code == 429]
    assert all(int(a.headers["Retry-After"]) >= 1 for a in limited)
    assert all("at once" in a.json()["error"] for a in limited)
    # The refused ones were taken back: the key paid for the accepted jobs only.
    keys = KeyStore(gateway.settings)
    accepted = statuses.count(202)
    charged = 10**9 - keys.balance(key_id_of(flooder) or "")
    params = parse_request({**REFERENCE, "image": b64(big)}, gateway.settings).params
    assert charged == accepted * job_cost_milli(params, gateway.settings)
