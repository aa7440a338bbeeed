"""Image URLs: only public hosts (or the allow-list), every hop checked, time and bytes capped.

The allowed image host is a loopback server permitted by a port-specific rule
(``127.0.0.1:PORT``); the recording servers on other loopback ports are not permitted, and
must never see a request. The outbound guard blocks any connect off this machine.
"""

from __future__ import annotations

import io
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from PIL import Image

from deploy.local import WorkerProcess, free_port
from shared.fetch import ImageFetcher
from shared.settings import Settings
from tests.helpers import REFERENCE, jpeg_pixels, sample_image
from tests.hostile import servers
from tests.hostile.guard import outbound_guard
from tests.hostile.servers import LoopbackServer

URL = "/v1/sd1.5-img2img"
TIMEOUT = 2.0
CAP = 1_000_000
ASYNC = {"Prefer": "respond-async"}
CHEAP = {"num_inference_steps": 20, "strength": 0.1}  # two denoising steps
PNG = sample_image((64, 48))
GIF = Image.new("RGB", (8, 8))


def _gif() -> bytes:
    buffer = io.BytesIO()
    GIF.save(buffer, format="GIF")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def hosts() -> Iterator[dict[str, LoopbackServer]]:
    image_host = LoopbackServer("127.0.0.1")
    recorder = LoopbackServer("127.0.0.1", {"/image.png": servers.body(PNG)})
    recorder6 = LoopbackServer("::1", {"/image.png": servers.body(PNG)})
    image_host.routes.update(
        {
            "/ok.png": servers.body(PNG),
            "/moved": servers.redirect("/ok.png", 301),
            "/loop": servers.redirect("/loop"),
            "/drip-body": servers.drip_body(),
            "/drip-headers": servers.drip_headers(),
            "/endless": servers.endless(),
            "/too-long": servers.declared_too_long(50 * CAP),
            "/hang-up": servers.hang_up,
            "/image.gif": servers.body(_gif(), "image/gif"),
            "/page.html": servers.body(b"<html>hello</html>", "text/html"),
        }
    )
    with servers.serving(image_host, recorder, recorder6):
        yield {"image": image_host, "recorder": recorder, "recorder6": recorder6}


def allowing(settings: Settings, host: LoopbackServer, **changes: Any) -> Settings:
    return settings.replace(
        image_url_allow=f"127.0.0.1:{host.port}",
        image_url_timeout=TIMEOUT,
        image_url_connect_timeout=1.0,
        max_image_bytes=CAP,
        **changes,
    )


@pytest.fixture(scope="module")
def url_app(unserved_settings: Settings, hosts: dict[str, LoopbackServer]) -> Flask:
    from api.app import create_app

    return create_app(allowing(unserved_settings, hosts["image"]))


def post(app: Flask, image: str) -> tuple[int, dict[str, Any]]:
    reply = app.test_client().post(URL, json={**REFERENCE, "image": image}, headers=ASYNC)
    return reply.status_code, reply.get_json()


def refused_urls(hosts: dict[str, LoopbackServer]) -> list[str]:
    """URLs naming loopback, private, link-local and unspecified addresses in many spellings."""
    r, r6 = hosts["recorder"].port, hosts["recorder6"].port
    return [
        f"http://127.0.0.1:{r}/image.png",
        f"https://127.0.0.1:{r}/image.png",
        f"http://[::1]:{r6}/image.png",
        f"http://[::ffff:127.0.0.1]:{r}/image.png",
        f"http://[::ffff:7f00:1]:{r}/image.png",
        f"http://2130706433:{r}/image.png",
        f"http://0x7f000001:{r}/image.png",
        f"http://0177.0.0.1:{r}/image.png",
        f"http://127.1:{r}/image.png",
        f"http://localhost:{r}/image.png",
        f"http://LocalHost.:{r}/image.png",
        f"http://0.0.0.0:{r}/image.png",
        f"http://[::]:{r6}/image.png",
        f"http://127.0.0.2:{r}/image.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://10.0.0.1/image.png",
        "http://172.31.255.255/image.png",
        "http://192.168.0.1/image.png",
        "http://[::ffff:192.168.0.1]/image.png",
        "http://[fd00::1]/image.png",
        "http://224.0.0.251/image.png",
    ]


def test_urls_naming_our_own_networks_are_refused_unseen(
    url_app: Flask, hosts: dict[str, LoopbackServer]
) -> None:
    urls = refused_urls(hosts)
    with outbound_guard() as outbound:
        answers = {url: post(url_app, url) for url in urls}
    for url, (status, body) in answers.items():
        assert status == 400, (url, body)
        assert body["field"] == "image" and body["error"].startswith("image:"), body
    assert hosts["recorder"].seen == [] and hosts["recorder6"].seen == []
    assert outbound.blocked == []
    recorder_ports = {hosts["recorder"].port, hosts["recorder6"].port, 80}
    assert [c for c in outbound.connects if c[1] in recorder_ports] == []


def test_an_allowed_host_that_redirects_to_our_own_networks(
    url_app: Flask, hosts: dict[str, LoopbackServer]
) -> None:
    image_host = hosts["image"]
    urls = refused_urls(hosts)
    for i, target in enumerate(urls):
        image_host.routes[f"/to/{i}"] = servers.redirect(target)
    before = len(image_host.seen)
    with outbound_guard() as outbound:
        answers = [post(url_app, image_host.url(f"/to/{i}")) for i in range(len(urls))]
    for target, (status, body) in zip(urls, answers, strict=True):
        assert status == 400, (target, body)
        assert body["field"] == "image"
    assert len(image_host.seen) - before == len(urls)  # the first hop was fetched ...
    assert hosts["recorder"].seen == [] and hosts["recorder6"].seen == []  # ... the second never
    assert outbound.blocked == []


def test_the_allowed_host_is_fetched(url_app: Flask, hosts: dict[str, LoopbackServer]) -> None:
    for path in ("/ok.png", "/moved"):
        status, body = post(url_app, hosts["image"].url(path))
        assert status == 202, body
        assert body["status"] == "queued"


def test_redirects_are_followed_a_few_times_only(url_app: Flask, hosts: dict[str, LoopbackServer]) -> None:
    image_host = hosts["image"]
    before = len([s for s in image_host.seen if s.path == "/loop"])
    status, body = post(url_app, image_host.url("/loop"))
    assert status == 400 and "redirects" in body["error"], body
    assert len([s for s in image_host.seen if s.path == "/loop"]) - before == 4  # the URL and 3 redirects


@pytest.mark.parametrize("path", ["/drip-body", "/drip-headers"])
def test_a_server_that_drips_one_byte_a_second_is_cut_at_the_timeout(
    url_app: Flask, hosts: dict[str, LoopbackServer], path: str
) -> None:
    started = time.monotonic()
    status, body = post(url_app, hosts["image"].url(path))
    took = time.monotonic() - started
    assert status == 422, body
    assert "longer than 2s" in body["error"]
    assert TIMEOUT - 0.2 <= took < TIMEOUT + 1.5


def test_an_endless_body_is_cut_at_the_cap_with_bounded_memory(
    url_app: Flask, hosts: dict[str, LoopbackServer]
) -> None:
    post(url_app, hosts["image"].url("/endless"))  # once untraced: lazy imports are not the fetch
    tracemalloc.start()
    try:
        started = time.monotonic()
        status, body = post(url_app, hosts["image"].url("/endless"))
        took = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 413, body
    assert body["field"] == "image" and str(CAP) in body["error"]
    assert took < TIMEOUT
    assert peak < 4 * CAP, f"peak {peak} bytes while fetching with a cap of {CAP}"


def test_a_declared_length_over_the_cap_is_refused_before_reading(
    url_app: Flask, hosts: dict[str, LoopbackServer]
) -> None:
    started = time.monotonic()
    status, body = post(url_app, hosts["image"].url("/too-long"))
    assert status == 413, body
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/missing.png", 422, "HTTP 404"),
        ("/hang-up", 422, "closed the connection"),
        ("/image.gif", 415, "GIF"),
        ("/page.html", 415, "HTML"),
    ],
)
def test_what_the_image_host_answers_is_checked(
    url_app: Flask, hosts: dict[str, LoopbackServer], path: str, status: int, words: str
) -> None:
    got, body = post(url_app, hosts["image"].url(path))
    assert got == status, body
    assert words in body["error"]


def test_tls_to_a_plain_http_server_fails_cleanly(url_app: Flask, hosts: dict[str, LoopbackServer]) -> None:
    got, body = post(url_app, f"https://{hosts['image'].netloc}/ok.png")
    assert got == 422, body
    assert "TLS" in body["error"]


def test_an_unreachable_allowed_port(unserved_settings: Settings, hosts: dict[str, LoopbackServer]) -> None:
    from api.app import create_app

    port = free_port()  # nothing listens there
    app = create_app(unserved_settings.replace(image_url_allow=f"127.0.0.1:{port}"))
    got, body = post(app, f"http://127.0.0.1:{port}/image.png")
    assert got == 422, body
    assert "could not connect" in body["error"]


def test_url_input_can_be_switched_off(unserved_settings: Settings, hosts: dict[str, LoopbackServer]) -> None:
    from api.app import create_app

    app = create_app(allowing(unserved_settings, hosts["image"], image_url_enabled=False))
    before = len(hosts["image"].seen)
    got, body = post(app, hosts["image"].url("/ok.png"))
    assert got == 400 and "not accepted" in body["error"], body
    assert len(hosts["image"].seen) == before


def test_the_connection_goes_to_the_address_that_was_checked(
    unserved_settings: Settings, hosts: dict[str, LoopbackServer]
) -> None:
    """A name is resolved once; the socket goes to that answer, Host and all name the URL's host."""
    calls: list[str] = []

    def resolver(host: str, port: int, timeout: float) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["169.254.169.254"]

    image_host = hosts["image"]
    fetcher = ImageFetcher(allowing(unserved_settings, image_host), resolver=resolver)
    with outbound_guard() as outbound:
        data = fetcher.fetch(f"http://img.rebind.test:{image_host.port}/ok.png")
    assert data == PNG
    assert calls == ["img.rebind.test"]
    assert image_host.seen[-1].host == f"img.rebind.test:{image_host.port}"
    assert "img.rebind.test" not in outbound.lookups  # the system resolver was never asked
    assert outbound.connects_to(image_host.port) == [("127.0.0.1", image_host.port)]


def test_an_image_by_url_is_generated_end_to_end(
    settings: Settings, worker: WorkerProcess, hosts: dict[str, LoopbackServer]
) -> None:
    from api.app import create_app

    app = create_app(allowing(settings, hosts["image"]))
    body = {**REFERENCE, **CHEAP, "image": hosts["image"].url("/ok.png")}
    reply = app.test_client().post(URL, json=body)
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert jpeg_pixels(reply.data).size == (512, 512)
