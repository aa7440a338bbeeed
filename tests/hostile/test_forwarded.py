"""Absolute URLs never come from a hostile ``Host`` or forwarded header.

With ``PUBLIC_URL`` set, no header of the request appears in a URL; without it, the request's
host does, and ``X-Forwarded-Host``/``-Proto`` count only from ``TRUSTED_PROXIES``. A
production gateway does not start without ``PUBLIC_URL``.
"""

from __future__ import annotations

import pytest
import requests
from flask import Flask

from api.app import create_app
from shared.settings import Settings, SettingsError
from tests.helpers import REFERENCE, b64, sample_image

URL = "/v1/sd1.5-img2img"
V2 = "/v2/sd1.5-img2img"
ASYNC = {"Prefer": "respond-async"}
HOSTILE = {
    "Host": "evil.example",
    "X-Forwarded-Host": "evil-forwarded.example",
    "X-Forwarded-Proto": "https",
    "Forwarded": "host=evil-forwarded.example;proto=https",
}
BODY = {**REFERENCE, "image": b64(sample_image((64, 48)))}


def urls_of(app: Flask, remote: str = "192.0.2.7") -> str:
    """Everything a job's answers say about where it lives: v1 and v2 submits and polls."""
    client = app.test_client()
    environ = {"REMOTE_ADDR": remote}
    answers = [client.post(URL, json=BODY, headers={**ASYNC, **HOSTILE}, environ_base=environ)]
    answers.append(client.post(V2, json=BODY, headers=HOSTILE, environ_base=environ))
    assert [a.status_code for a in answers] == [202, 200], [a.get_data(as_text=True) for a in answers]
    v1_id, v2_id = answers[0].get_json()["id"], answers[1].get_json()["request_id"]
    for path in (f"/v1/jobs/{v1_id}", f"/v2/requests/{v2_id}/status", f"/v2/requests/{v2_id}"):
        answers.append(client.get(path, headers=HOSTILE, environ_base=environ))
        assert answers[-1].status_code == 200, answers[-1].get_data(as_text=True)
    return "\n".join(f"{a.headers}\n{a.get_data(as_text=True)}" for a in answers)


def test_with_public_url_no_request_header_reaches_a_url(unserved_settings: Settings) -> None:
    settings = unserved_settings.replace(public_url="https://img.example.com", trusted_proxies="0.0.0.0/0")
    text = urls_of(create_app(settings), remote="10.0.0.1")  # even from a trusted proxy
    assert "evil" not in text
    assert "https://img.example.com/v2/requests/" in text


def test_forwarded_headers_from_anyone_else_are_ignored(unserved_settings: Settings) -> None:
    text = urls_of(create_app(unserved_settings.replace(trusted_proxies="10.0.0.0/8")))
    assert "evil-forwarded" not in text and "https://" not in text
    assert "http://evil.example/v2/requests/" in text  # development without PUBLIC_URL: the Host


def test_forwarded_headers_from_a_trusted_proxy_count(unserved_settings: Settings) -> None:
    app = create_app(unserved_settings.replace(trusted_proxies="10.0.0.0/8, fd00::/8"))
    assert "https://evil-forwarded.example/v2/requests/" in urls_of(app, remote="10.1.2.3")
    assert "https://evil-forwarded.example/v2/requests/" in urls_of(app, remote="fd00::1")


def test_production_refuses_to_start_without_public_url(unserved_settings: Settings) -> None:
    with pytest.raises(SettingsError, match="PUBLIC_URL"):
        create_app(unserved_settings.replace(environment="production"))
    create_app(unserved_settings.replace(environment="production", public_url="https://img.example.com"))


@pytest.mark.parametrize(
    "value", ["img.example.com", "https://img.example.com/?x=1", "ftp://img.example.com"]
)
def test_a_public_url_must_be_a_plain_http_url(value: str) -> None:
    with pytest.raises(SettingsError, match="PUBLIC_URL"):
        Settings(public_url=value)


def test_trusted_proxies_must_be_addresses() -> None:
    with pytest.raises(SettingsError, match="TRUSTED_PROXIES"):
        Settings(trusted_proxies="10.0.0.0/8, proxy.internal")


def test_gunicorn_believes_no_forwarded_scheme_by_default(unserved_gateway: str) -> None:
    """gunicorn itself honours X-Forwarded-Proto from 127.0.0.1 unless told otherwise."""
    reply = requests.post(
        unserved_gateway + V2,
        json=BODY,
        headers={**ASYNC, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    assert "evil" not in reply.text and "https://" not in reply.text
    assert f"{unserved_gateway}/v2/requests/" in reply.text
