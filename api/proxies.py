"""Forwarded headers, believed only from the proxies named in ``TRUSTED_PROXIES``.

A reverse proxy in front of the gateway says how the client reached it: the scheme
(``X-Forwarded-Proto``) and the host (``X-Forwarded-Host``). From anyone else those headers
are a lie waiting to be echoed into job and image URLs, so :class:`ForwardedHeaders` applies
them only when the connection comes from a trusted address (an IP or a network, e.g.
``10.0.0.0/8``) and removes them otherwise. gunicorn is given the same list
(``--forwarded-allow-ips``), so it too honours ``X-Forwarded-Proto`` from those addresses only.

Absolute URLs are built from ``PUBLIC_URL`` when it is set, and then no header of the
request appears in them; without it, from the request's (trusted) host. A production
gateway refuses to start without ``PUBLIC_URL`` (:func:`check_public_url`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

from shared.settings import Settings, SettingsError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_PROTO = "HTTP_X_FORWARDED_PROTO"
_HOST = "HTTP_X_FORWARDED_HOST"
_OTHERS = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PORT", "HTTP_X_FORWARDED_PREFIX")
_UNTRUSTED = (_PROTO, _HOST, *_OTHERS)


def trusted_networks(value: str) -> tuple[Network, ...]:
    """The networks of a ``TRUSTED_PROXIES`` value: comma-separated IPs or CIDR networks."""
    parts = [part.strip() for part in value.split(",") if part.strip()]
    try:
        return tuple(ipaddress.ip_network(part, strict=False) for part in parts)
    except ValueError as exc:
        raise SettingsError(f"TRUSTED_PROXIES: {exc}") from exc


def check_public_url(settings: Settings) -> None:
    """A production gateway builds its URLs from ``PUBLIC_URL``, never from a request."""
    if settings.environment == "production" and not settings.public_url:
        raise SettingsError(
            "PUBLIC_URL is required when ENVIRONMENT=production: absolute URLs must not come from Host"
        )


class ForwardedHeaders:
    """WSGI middleware: apply forwarded headers from trusted proxies, drop everyone else's."""

    def __init__(self, app: WsgiApp, trusted: tuple[Network, ...]) -> None:
        self._app = app
        self._trusted = trusted

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self._trusts(environ.get("REMOTE_ADDR", "")):
            # The nearest proxy appends last: its value is the one to believe.
            if proto := _last(environ.get(_PROTO)):
                environ["wsgi.url_scheme"] = "https" if proto.lower() == "https" else "http"
            if host := _last(environ.get(_HOST)):
                environ["HTTP_HOST"] = host
        else:
            for name in _UNTRUSTED:
                environ.pop(name, None)
        return self._app(environ, start_response)

    def _trusts(self, address: str) -> bool:
        if not self._trusted:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)


def _last(value: str | None) -> str:
    return value.rsplit(",", 1)[-1].strip() if value else ""
