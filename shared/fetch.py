"""Fetching an input image by URL without letting the URL reach the operator's own network.
This module is long because it is one security boundary, read as a whole: the URL rules,
the address checks and the connection pinned to the address that was checked.

The rules, applied to the URL the client sent and again to every redirect hop:

1. ``http`` and ``https`` only; no credentials in the URL; at most ``MAX_URL_CHARS`` characters.
2. The host is resolved once. Every address it resolves to must be public: loopback,
   private, link-local (169.254.0.0/16, the cloud metadata address), multicast, reserved,
   unspecified and other non-global addresses are refused, as are IPv4-mapped, 6to4 and
   Teredo IPv6 addresses that embed one. Numeric hosts in any notation inet_aton accepts
   (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``) are read as the address they
   name, without a DNS query.
3. ``IMAGE_URL_ALLOW`` names hosts or networks that are fetched even so (see
   :class:`AllowList`); ``IMAGE_URL_PUBLIC=false`` fetches from nothing else.
4. The connection goes to an address that was checked: there is no second DNS lookup, so an
   answer that changes between check and connect (DNS rebinding) changes nothing. The
   ``Host`` header, the TLS SNI name and the certificate check use the URL's host.
5. Connect timeout per address, one total deadline for everything (resolution, every hop,
   every read), the body streamed with a byte cap (``MAX_IMAGE_BYTES``), at most
   ``IMAGE_URL_MAX_REDIRECTS`` redirects.

Errors name the ``image`` field: 400 for a URL that is refused, 422 for a fetch that fails
(unreachable, timed out, an HTTP error from the image server), 413 for a body over the cap.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from shared.errors import InvalidInput, PayloadTooLarge
from shared.schema import MAX_URL_CHARS
from shared.settings import Settings, SettingsError

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int, float], Sequence[str]]
"""``(host, port, timeout) -> addresses``: how a host name becomes IP addresses."""

FIELD = "image"
USER_AGENT = "img2img-farm-image-fetch/1"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f]")
_NUMERIC_HOST = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}", re.IGNORECASE)
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]{0,251}[a-z0-9_])?")


class ImageURLRefused(InvalidInput):
    """The URL is malformed, of another scheme, or leads somewhere the service does not fetch from."""

    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(FIELD, message)


class ImageFetchFailed(InvalidInput):
    """The URL was acceptable but the image could not be fetched (unreachable, timeout, HTTP error)."""

    status_code = 422

    def __init__(self, message: str) -> None:
        super().__init__(FIELD, message)


# -- addresses ---------------------------------------------------------------------------


def refusal_reason(address: IPAddress) -> str | None:
    """Why the service does not connect to ``address`` on its own; ``None`` for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return refusal_reason(address.ipv4_mapped)
        embedded = [address.sixtofour] if address.sixtofour is not None else []
        if address.teredo is not None:
            embedded.extend(address.teredo)
        for inner in embedded:
            reason = refusal_reason(inner)
            if reason is not None:
                return f"{reason} (embedded in an IPv6 address)"
    checks = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (isinstance(address, ipaddress.IPv6Address) and address.is_site_local, "site-local"),
        (not address.is_global, "not globally reachable"),
    )
    for refused, reason in checks:
        if refused:
            return reason
    return None


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` names when it is numeric (any inet_aton notation), else ``None``.

    Raises :class:`ImageURLRefused` for a numeric host that is no address at all, so such a
    host never reaches DNS.
    """
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            raise ImageURLRefused("the URL's host is not a valid IP address") from None
    return None


# -- the allow-list ----------------------------------------------------------------------


@dataclass(frozen=True)
class AllowRule:
    """One entry of ``IMAGE_URL_ALLOW``: a host name (``*.`` for subdomains) or a network, and a port."""

    name: str | None = None
    network: IPNetwork | None = None
    port: int | None = None

    def permits_name(self, host: str, port: int) -> bool:
        if self.name is None or self.port not in (None, port):
            return False
        if self.name.startswith("*."):
            return host.endswith(self.name[1:])
        return host == self.name

    def permits_address(self, address: IPAddress, port: int) -> bool:
        if self.network is None or self.port not in (None, port):
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.version == self.network.version and address in self.network


@dataclass(frozen=True)
class AllowList:
    """Hosts and networks fetched from although their addresses are not public.

    ``IMAGE_URL_ALLOW`` is a comma-separated list of entries:

    - ``images.internal`` (any port) or ``images.internal:8080``: a URL naming this host;
      ``*.internal`` names every subdomain. The host's addresses are not checked.
    - ``10.1.2.3``, ``10.1.2.3:8080``, ``::1``, ``[::1]:8080``: this address (and port).
    - ``10.0.0.0/8``, ``fd00::/8``: every address in this network, any port.
    """

    rules: tuple[AllowRule, ...] = ()

    @classmethod
    def parse(cls, text: str) -> AllowList:
        rules = tuple(_parse_rule(entry) for entry in re.split(r"[,\s]+", text.strip()) if entry)
        return cls(rules)

    def permits_name(self, host: str, port: int) -> bool:
        return any(rule.permits_name(host, port) for rule in self.rules)

    def permits_address(self, address: IPAddress, port: int) -> bool:
        return any(rule.permits_address(address, port) for rule in self.rules)


def _parse_rule(entry: str) -> AllowRule:
    try:
        if "/" in entry:
            return AllowRule(network=ipaddress.ip_network(entry, strict=False))
        host, port = entry, None
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            port = _parse_port(rest[1:]) if rest.startswith(":") else None
            if rest and port is None:
                raise ValueError(entry)
        elif entry.count(":") == 1:
            host, _, raw_port = entry.partition(":")
            port = _parse_port(raw_port)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            name = host.lower().rstrip(".")
            if not _HOST_NAME.fullmatch(name.removeprefix("*.")):
                raise
            return AllowRule(name=name, port=port)
        return AllowRule(network=ipaddress.ip_network(address), port=port)
    except ValueError as exc:
        raise SettingsError(f"IMAGE_URL_ALLOW: cannot read {entry!r}") from exc


def _parse_port(raw: str) -> int:
    port = int(raw)
    if not 0 < port < 65536:
        raise ValueError(raw)
    return port


# -- URLs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One hop's URL, taken apart and checked for form (not yet for where it leads)."""

    url: str
    scheme: str
    host: str  # lower case, ASCII (IDNA), no brackets, no trailing dot
    port: int
    path: str  # path and query, never empty


def parse_target(url: str) -> Target:
    if len(url) > MAX_URL_CHARS:
        raise ImageURLRefused(f"URL is longer than {MAX_URL_CHARS} characters")
    if _FORBIDDEN_CHARS.search(url):
        raise ImageURLRefused("URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ImageURLRefused("URL is malformed (host or port)") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ImageURLRefused("only http and https URLs are fetched")
    if "@" in parts.netloc:
        raise ImageURLRefused("URL must not contain credentials")
    host = (parts.hostname or "").rstrip(".")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ImageURLRefused("URL host is not a valid host name") from exc
    if not host or (":" not in host and not _HOST_NAME.fullmatch(host)):
        raise ImageURLRefused("URL has no valid host")
    if port == 0:
        raise ImageURLRefused("URL port 0 is not a port")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(url, scheme, host, port or (443 if scheme == "https" else 80), path)


# -- fetching ----------------------------------------------------------------------------


class ImageFetcher:
    """Fetches image URLs under the rules above. One per gateway; thread-safe."""

    def __init__(self, settings: Settings, resolver: Resolver | None = None) -> None:
        self.allow = AllowList.parse(settings.image_url_allow)
        self._enabled = settings.image_url_enabled
        self._public = settings.image_url_public
        self._max_bytes = settings.max_image_bytes
        self._connect_timeout = settings.image_url_connect_timeout
        self._total_timeout = settings.image_url_timeout
        self._max_redirects = settings.image_url_max_redirects
        self._resolve = resolver or system_resolve
        self._tls = ssl.create_default_context()

    def fetch(self, url: str) -> bytes:
        """The body of ``url`` (following redirects), at most ``MAX_IMAGE_BYTES`` long."""
        if not self._enabled:
            raise ImageURLRefused("image URLs are not accepted here; send the image as base64")
        started = time.monotonic()
        deadline = started + self._total_timeout
        for _hop in range(self._max_redirects + 1):
            target = parse_target(url)
            addresses = self.addresses(target, deadline)
            outcome = self._get(target, addresses, deadline)
            if isinstance(outcome, bytes):
                log.info(
                    "image fetched from %s: %d bytes in %.2fs",
                    target.host,
                    len(outcome),
                    time.monotonic() - started,
                )
                return outcome
            log.info("image URL on %s redirects", target.host)
            url = outcome
        raise ImageURLRefused(f"more than {self._max_redirects} redirects")

    def addresses(self, target: Target, deadline: float) -> list[IPAddress]:
        """Resolve ``target``'s host once and check every address; the connection uses these."""
        literal = ip_literal(target.host)
        if literal is not None:
            addresses = [literal]
        else:
            addresses = self._lookup(target, deadline)
        if literal is None and self.allow.permits_name(target.host, target.port):
            return addresses
        for address in addresses:
            if self.allow.permits_address(address, target.port):
                continue
            reason = refusal_reason(address)
            if reason is not None:
                log.info("image URL refused: %s resolves to %s (%s)", target.host, address, reason)
                raise ImageURLRefused(f"URL host resolves to a non-public address ({reason})")
            if not self._public:
                raise ImageURLRefused("URL host is not on this service's allow-list")
        return addresses

    def _lookup(self, target: Target, deadline: float) -> list[IPAddress]:
        remaining = deadline - time.monotonic()
        try:
            answers = self._resolve(target.host, target.port, max(remaining, 0.0))
        except TimeoutError as exc:
            raise ImageFetchFailed(
                f"resolving the URL's host took longer than {self._total_timeout:g}s"
            ) from exc
        except (OSError, UnicodeError) as exc:
            raise ImageURLRefused("URL host name does not resolve") from exc
        addresses: list[IPAddress] = []
        for answer in answers:
            try:
                address = ipaddress.ip_address(answer)
            except ValueError:
                continue
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise ImageURLRefused("URL host name does not resolve")
        return addresses

    def _get(self, target: Target, addresses: Sequence[IPAddress], deadline: float) -> bytes | str:
        """One request: the body, or the next URL when the answer is a redirect."""
        tls = self._tls if target.scheme == "https" else None
        conn = PinnedConnection(target, addresses, self._connect_timeout, deadline, tls)
        try:
            conn.request("GET", target.path, headers=_REQUEST_HEADERS)
            response = conn.getresponse()
            if response.status in _REDIRECTS:
                location = (response.getheader("Location") or "").strip()
                if not location:
                    raise ImageFetchFailed(f"the image server sent HTTP {response.status} without a Location")
                return urljoin(target.url, location)
            if response.status != 200:
                raise ImageFetchFailed(f"the image server answered HTTP {response.status}")
            return self._read_body(response)
        except TimeoutError as exc:
            raise ImageFetchFailed(f"fetching the URL took longer than {self._total_timeout:g}s") from exc
        except ssl.SSLError as exc:
            log.info("image URL on %s: TLS failed: %s", target.host, exc)
            raise ImageFetchFailed("TLS with the image server failed (certificate or handshake)") from exc
        except (OSError, http.client.HTTPException) as exc:
            log.info("image URL on %s: %s: %s", target.host, type(exc).__name__, exc)
            raise ImageFetchFailed(
                "the image server closed the connection or sent a malformed answer"
            ) from exc
        finally:
            conn.close()

    def _read_body(self, response: http.client.HTTPResponse) -> bytes:
        cap = self._max_bytes
        declared = (response.getheader("Content-Length") or "").strip()
        if declared.isdigit() and int(declared) > cap:
            raise PayloadTooLarge(FIELD, f"the image at the URL is {declared} bytes, over {cap}")
        body = bytearray()
        while True:
            chunk = response.read(min(_CHUNK, cap + 1 - len(body)))
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > cap:
                raise PayloadTooLarge(FIELD, f"the image at the URL is over {cap} bytes")


_REQUEST_HEADERS = {
    "User-Agent": USER_AGENT,
    "Accept": "image/jpeg, image/png, image/webp",
    "Accept-Encoding": "identity",
    "Connection": "close",
}


class PinnedConnection(http.client.HTTPConnection):
    """HTTP or HTTPS to addresses checked beforehand, never to a fresh DNS answer.

    ``Host``, the SNI name and the certificate check use the URL's host; the socket goes to
    the first of ``addresses`` that accepts within the connect timeout. Every later wait
    (TLS handshake, send, each read) ends at ``deadline``.
    """

    def __init__(
        self,
        target: Target,
        addresses: Sequence[IPAddress],
        connect_timeout: float,
        deadline: float,
        tls: ssl.SSLContext | None,
    ) -> None:
        super().__init__(target.host, target.port, timeout=connect_timeout)
        self.default_port = 443 if tls is not None else 80
        self._addresses = tuple(addresses)
        self._connect_timeout = connect_timeout
        self._deadline = deadline
        self._tls = tls
        self._response: http.client.HTTPResponse | None = None

    def getresponse(self) -> http.client.HTTPResponse:
        self._response = super().getresponse()
        return self._response

    def close(self) -> None:
        """Close the socket and the last response (whose reader may hold the socket open)."""
        super().close()
        response, self._response = getattr(self, "_response", None), None
        if response is not None:
            response.close()

    def connect(self) -> None:
        sock = self._open_socket()
        try:
            if self._tls is not None:
                sock.settimeout(_remaining(self._deadline))
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock = DeadlineSocket(sock, self._deadline)

    def _open_socket(self) -> socket.socket:
        for address in self._addresses:
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(min(self._connect_timeout, _remaining(self._deadline)))
                sock.connect((str(address), self.port))
            except OSError as exc:
                sock.close()
                if isinstance(exc, TimeoutError) and time.monotonic() >= self._deadline:
                    raise
                log.info("image URL: cannot connect to %s port %d: %s", address, self.port, exc)
                continue
            return sock
        raise ImageFetchFailed("could not connect to the image server")


class DeadlineSocket:
    """The part of a socket ``http.client`` uses, with every wait cut at one deadline.

    Each send and receive gets the time left as its timeout, so a server that drips one
    byte at a time (into the headers or the body) cannot stretch the fetch past the deadline.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._readers = 0
        self._closed = False

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(_remaining(self._deadline))
        self._sock.sendall(data)

    def recv_into(self, buffer: memoryview | bytearray, nbytes: int = 0) -> int:
        self._sock.settimeout(_remaining(self._deadline))
        return self._sock.recv_into(buffer, nbytes)

    def makefile(self, mode: str = "rb") -> io.BufferedReader:
        self._readers += 1
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:
        """Like a socket's: the descriptor stays open until every reader is closed too
        (``http.client`` closes the connection first when the server says ``Connection: close``)."""
        self._closed = True
        if self._readers == 0:
            self._sock.close()

    def release(self) -> None:
        self._readers -= 1
        if self._closed and self._readers == 0:
            self._sock.close()


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: DeadlineSocket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        return self._sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self._sock.release()
        super().close()


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the fetch deadline passed")
    return remaining


def system_resolve(host: str, port: int, timeout: float) -> list[str]:
    """The system resolver's addresses for ``host``, waiting at most ``timeout`` seconds.

    ``getaddrinfo`` cannot be interrupted, so it runs on a daemon thread that is left to
    finish on its own when the answer comes too late.
    """
    answers: list[str] = []
    failure: list[BaseException] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
            answers.extend(str(info[4][0]) for info in infos)
        except (OSError, UnicodeError) as exc:
            failure.append(exc)

    thread = threading.Thread(target=lookup, name="image-url-resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"resolving {host} took longer than {timeout:g}s")
    if failure:
        raise failure[0]
    return answers
