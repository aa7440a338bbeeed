"""The rules of shared/fetch.py on their own: addresses, numeric hosts, the allow-list, URL form.

No connection is made here: resolution is answered by the test, and ``addresses()`` only
resolves and checks.
"""

from __future__ import annotations

import ipaddress
import time

import pytest

from shared.fetch import (
    AllowList,
    ImageFetcher,
    ImageFetchFailed,
    ImageURLRefused,
    ip_literal,
    parse_target,
    refusal_reason,
)
from shared.settings import Settings, SettingsError

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("100.64.0.1", "not globally reachable"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "private"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::1", "loopback (embedded in an IPv6 address)"),
        ("2002:a00:1::1", "private (embedded in an IPv6 address)"),
        ("2001:db8::1", "private"),
        ("::7f00:1", "reserved"),
        (PUBLIC_V4, None),
        (PUBLIC_V6, None),
        ("::ffff:" + PUBLIC_V4, None),
    ],
)
def test_which_addresses_are_refused(address: str, reason: str | None) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7F000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("3232235777", "192.168.1.1"),
        ("::ffff:7f00:1", "::ffff:127.0.0.1"),
        ("images.example", None),
        ("deadbeef", None),
    ],
)
def test_numeric_hosts_in_every_notation(host: str, address: str | None) -> None:
    assert ip_literal(host) == (ipaddress.ip_address(address) if address else None)


def test_a_numeric_host_that_is_no_address_never_reaches_dns() -> None:
    with pytest.raises(ImageURLRefused):
        ip_literal("999999999999")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://host/a.png", "http and https"),
        ("HTTPX://host/a.png", "http and https"),
        ("http://user:pw@host/a.png", "credentials"),
        ("http://host\\@127.0.0.1/", "credentials"),
        ("http:///a.png", "no valid host"),
        ("http://host:0/a.png", "port 0"),
        ("http://host:70000/a.png", "malformed"),
        ("http://[::1/a.png", "malformed"),
        ("http://host/a b.png", "whitespace"),
        ("http://host/\x00", "whitespace"),
        ("http://ho$t/a.png", "no valid host"),
        ("http://host/" + "a" * 5000, "longer than"),
    ],
)
def test_malformed_urls(url: str, words: str) -> None:
    with pytest.raises(ImageURLRefused) as refused:
        parse_target(url)
    assert words in refused.value.message


def test_a_url_taken_apart() -> None:
    target = parse_target("HTTPS://Images.Example./a/b.png?size=1#frag")
    assert (target.scheme, target.host, target.port, target.path) == (
        "https",
        "images.example",
        443,
        "/a/b.png?size=1",
    )
    assert parse_target("http://[::1]:8080").path == "/"
    assert parse_target("http://bücher.example/").host == "xn--bcher-kva.example"


def test_the_allow_list_syntax() -> None:
    allow = AllowList.parse(
        "images.internal, *.cdn.internal:8443 127.0.0.1:9000,[::1]:9001,10.0.0.0/8,fd00::/8"
    )
    loopback, v6_loopback = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")
    assert allow.permits_name("images.internal", 80) and allow.permits_name("images.internal", 1234)
    assert allow.permits_name("a.b.cdn.internal", 8443) and not allow.permits_name("a.cdn.internal", 443)
    assert not allow.permits_name("cdn.internal", 8443)
    assert allow.permits_address(loopback, 9000) and not allow.permits_address(loopback, 9001)
    assert allow.permits_address(v6_loopback, 9001) and not allow.permits_address(v6_loopback, 9000)
    assert allow.permits_address(ipaddress.ip_address("::ffff:127.0.0.1"), 9000)
    assert allow.permits_address(ipaddress.ip_address("10.9.8.7"), 1)
    assert allow.permits_address(ipaddress.ip_address("fd12::1"), 1)
    assert not allow.permits_address(ipaddress.ip_address("192.168.0.1"), 9000)
    assert AllowList.parse("").rules == ()


@pytest.mark.parametrize(
    "entry", ["10.0.0.0/33", "host:port", "host:0", "[::1]x", "*.", "ho$t", "http://host"]
)
def test_a_bad_allow_list_entry_stops_the_gateway_at_start(entry: str) -> None:
    with pytest.raises(SettingsError):
        ImageFetcher(Settings(image_url_allow=entry))


def fetcher(answers: list[str], **changes: object) -> ImageFetcher:
    return ImageFetcher(Settings(**changes), resolver=lambda host, port, timeout: answers)  # type: ignore[arg-type]


def addresses(f: ImageFetcher, url: str) -> list[str]:
    return [str(a) for a in f.addresses(parse_target(url), time.monotonic() + 5)]


def test_every_resolved_address_must_pass() -> None:
    assert addresses(fetcher([PUBLIC_V4, PUBLIC_V6]), "http://img.example/") == [PUBLIC_V4, PUBLIC_V6]
    with pytest.raises(ImageURLRefused) as refused:
        addresses(fetcher([PUBLIC_V4, "10.0.0.7"]), "http://img.example/")
    assert "private" in refused.value.message
    with pytest.raises(ImageURLRefused):
        addresses(fetcher(["::ffff:127.0.0.1"]), "http://img.example/")
    with pytest.raises(ImageURLRefused):
        addresses(fetcher([]), "http://img.example/")


def test_allowed_names_and_networks() -> None:
    by_name = fetcher(["10.0.0.7"], image_url_allow="img.internal")
    assert addresses(by_name, "http://img.internal/") == ["10.0.0.7"]
    with pytest.raises(ImageURLRefused):
        addresses(by_name, "http://other.internal/")
    by_port = fetcher(["127.0.0.1"], image_url_allow="127.0.0.1:8080")
    assert addresses(by_port, "http://img.test:8080/") == ["127.0.0.1"]
    with pytest.raises(ImageURLRefused):
        addresses(by_port, "http://img.test:8081/")


def test_public_hosts_can_be_switched_off() -> None:
    strict = fetcher([PUBLIC_V4], image_url_public=False, image_url_allow="img.internal")
    with pytest.raises(ImageURLRefused) as refused:
        addresses(strict, "http://img.example/")
    assert "allow-list" in refused.value.message
    assert addresses(strict, "http://img.internal/") == [PUBLIC_V4]


def test_resolution_that_takes_too_long_is_a_timeout() -> None:
    def slow(host: str, port: int, timeout: float) -> list[str]:
        raise TimeoutError

    f = ImageFetcher(Settings(), resolver=slow)
    with pytest.raises(ImageFetchFailed) as failed:
        f.addresses(parse_target("http://img.example/"), time.monotonic() + 1)
    assert failed.value.status_code == 422


def test_settings_refuse_nonsense_timeouts() -> None:
    with pytest.raises(SettingsError):
        Settings().replace(image_url_timeout=0)
    with pytest.raises(SettingsError):
        Settings().replace(image_url_max_redirects=-1)
