"""CPU-heavy work kept off the gateway's event loop.

Under gevent (the gateway's gunicorn worker) every request of a process shares one thread: a
100 ms image decode would hold every other request, health checks included, for 100 ms.
:func:`offloaded` runs such work in gevent's pool of native threads, where zlib and Pillow
release the GIL, while the loop goes on serving; without gevent (the test client, a plain
WSGI server) it simply calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import gevent
from gevent import monkey

T = TypeVar("T")


def offloaded(work: Callable[..., T], *args: object) -> T:
    """``work(*args)``, in a native thread when this process runs under gevent."""
    if monkey.is_module_patched("threading"):
        result: T = gevent.get_hub().threadpool.apply(work, args)
        return result
    return work(*args)
