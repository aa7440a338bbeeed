"""A tripwire for tests that hand the service URLs naming other people's networks.

While :func:`outbound_guard` is active, every ``socket.connect`` and ``socket.getaddrinfo``
in this process is recorded (audit hooks, PEP 578), and a connect to anything but
loopback is blocked before a packet leaves. So even a broken address check cannot make
the suite send traffic to 169.254.169.254 or 10.x, and the test can still see that the
service tried.
"""

from __future__ import annotations

import ipaddress
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outbound:
    """What the process tried while the guard was on."""

    connects: list[tuple[str, int]] = field(default_factory=list)
    blocked: list[tuple[str, int]] = field(default_factory=list)
    lookups: list[str] = field(default_factory=list)

    def connects_to(self, port: int) -> list[tuple[str, int]]:
        return [c for c in self.connects if c[1] == port]


_lock = threading.Lock()
_active: list[Outbound] = []
_installed = False


def _loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _active or event not in ("socket.connect", "socket.getaddrinfo"):
        return
    if event == "socket.getaddrinfo":
        with _lock:
            for record in _active:
                record.lookups.append(str(args[0]))
        return
    address = args[1]
    if not isinstance(address, tuple):
        return  # a Unix socket
    target = (str(address[0]), int(address[1]))
    allowed = _loopback(target[0])
    with _lock:
        for record in _active:
            record.connects.append(target)
            if not allowed:
                record.blocked.append(target)
    if not allowed:
        raise PermissionError(f"test guard: connect to {target} blocked")


@contextmanager
def outbound_guard() -> Iterator[Outbound]:
    global _installed
    with _lock:
        if not _installed:
            sys.addaudithook(_hook)
            _installed = True
        record = Outbound()
        _active.append(record)
    try:
        yield record
    finally:
        with _lock:
            _active.remove(record)
