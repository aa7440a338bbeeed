"""Request limits: body size (413 JSON), JSON nesting, prompt length, unknown fields."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import pytest
import requests
from flask import Flask

from shared.settings import Settings
from tests.helpers import REFERENCE, b64, sample_image

URL = "/v1/sd1.5-img2img"
ASYNC = {"Prefer": "respond-async"}
THIRTY_MB = 30 * 1024 * 1024


@pytest.fixture(scope="module")
def unserved_app(unserved_settings: Settings) -> Flask:
    from api.app import create_app

    return create_app(unserved_settings)


@pytest.fixture(scope="module")
def body() -> dict[str, object]:
    return {**REFERENCE, "image": b64(sample_image((64, 48)))}


def thirty_mb_json() -> bytes:
    return json.dumps({**REFERENCE, "image": "A" * THIRTY_MB}).encode()


@pytest.mark.parametrize("path", [URL, "/v2/sd1.5-img2img"])
def test_a_30_mb_body_is_413_json(unserved_app: Flask, path: str) -> None:
    reply = unserved_app.test_client().post(path, data=thirty_mb_json(), content_type="application/json")
    assert reply.status_code == 413
    assert reply.get_json() == {"error": "request body is too large"}


def test_a_30_mb_body_is_413_json_over_http(unserved_gateway: str) -> None:
    """gunicorn answers from the Content-Length, before reading the body."""
    reply = requests.post(
        unserved_gateway + URL,
        data=thirty_mb_json(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert reply.status_code == 413
    assert reply.json() == {"error": "request body is too large"}


def test_a_30_mb_chunked_body_is_413_json_over_http(unserved_gateway: str) -> None:
    """Without a Content-Length the limit applies while reading."""
    parts = urlsplit(unserved_gateway)
    head = (
        f"POST {URL} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    chunk = b"A" * (1024 * 1024)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        prefix = b'{"image": "'
        sock.sendall(head + b"%x\r\n%s\r\n" % (len(prefix), prefix))
        try:
            for _ in range(30):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway stopped reading once over the limit, as it should
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"413", answer[:300]
    assert b'"request body is too large"' in rest


def test_a_malformed_chunked_body_is_400_over_http(unserved_gateway: str) -> None:
    parts = urlsplit(unserved_gateway)
    request = (
        f"POST {URL} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nnot-a-chunk-size\r\n{}\r\n0\r\n\r\n"
    ).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    assert answer.split(b"\r\n", 1)[0].split()[1] == b"400", answer[:300]


def test_deeply_nested_json_is_400(unserved_app: Flask) -> None:
    raw = b"[" * 100_000 + b"]" * 100_000
    reply = unserved_app.test_client().post(URL, data=raw, content_type="application/json")
    assert reply.status_code == 400
    assert reply.get_json()["field"] == "body"


def test_unknown_fields_are_ignored(unserved_app: Flask, body: dict[str, object]) -> None:
    extra = {**body, "unknown": {"nested": [1, 2, 3]}, "enable_safety_checker": True}
    reply = unserved_app.test_client().post(URL, json=extra, headers=ASYNC)
    assert reply.status_code == 202, reply.get_json()
    assert "unknown" not in reply.get_json()["parameters"]


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("prompt", json.dumps("x" * 2001)),
        ("prompt", '"\\ud800 a lone surrogate"'),
        ("negative_prompt", json.dumps("n" * 2001)),
        ("samples", "1" + "0" * 5000),
        ("guidance_scale", "NaN"),
        ("strength", "1e999"),
        ("seed", str(2**64)),
    ],
    ids=["long_prompt", "lone_surrogate", "long_negative", "huge_integer", "nan", "infinity", "seed_2_64"],
)
def test_hostile_field_values_are_400(
    unserved_app: Flask, body: dict[str, object], field: str, raw: str
) -> None:
    text = json.dumps(body)[:-1] + f', "{field}": {raw}}}'
    reply = unserved_app.test_client().post(URL, data=text, content_type="application/json", headers=ASYNC)
    assert reply.status_code == 400, reply.get_json()
