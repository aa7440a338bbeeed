"""The client protocols the gateway speaks, told apart by path.

Errors are worded in the protocol's own shape (:mod:`api.errors`), 401s name the scheme its
clients send (Basic for the web UI API, Bearer elsewhere) and ``/metrics`` counts requests
by protocol.
"""

from __future__ import annotations

import enum
from typing import Final


class Protocol(enum.StrEnum):
    SEGMIND = "segmind"  # /v1 (the native API) and /v2
    A1111 = "a1111"  # the AUTOMATIC1111 web UI API: /sdapi/v1
    OPENAI = "openai"  # OpenAI's Images API: /v1/images
    NONE = "none"  # health, readiness, metrics, the document, unknown paths


A1111_PREFIX: Final = "/sdapi/v1"
OPENAI_PREFIX: Final = "/v1/images"
# Paths under these need an API key when keys are on.
KEYED_PREFIXES: Final = ("/v1/", "/v2/", "/sdapi/")


def protocol_of(path: str) -> Protocol:
    if path.startswith(OPENAI_PREFIX + "/"):
        return Protocol.OPENAI
    if path.startswith(A1111_PREFIX + "/"):
        return Protocol.A1111
    if path.startswith(("/v1/", "/v2/")):
        return Protocol.SEGMIND
    return Protocol.NONE


def keyed(path: str) -> bool:
    """Whether ``path`` needs an API key (when keys are on)."""
    return path.startswith(KEYED_PREFIXES)
