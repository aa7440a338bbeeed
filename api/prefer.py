"""The ``Prefer`` request header (RFC 7240): ``respond-async`` and ``wait=N``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preferences:
    respond_async: bool = False
    wait: float | None = None


def parse_prefer(header: str) -> Preferences:
    """Read the preferences we honour; unknown or malformed ones are ignored, as the RFC says."""
    respond_async = False
    wait: float | None = None
    for item in header.split(","):
        token, _, value = item.strip().partition("=")
        token = token.strip().lower()
        if token == "respond-async":
            respond_async = True
        elif token == "wait":
            try:
                wait = max(0.0, float(value.strip().strip('"')))
            except ValueError:
                continue
    return Preferences(respond_async=respond_async, wait=wait)
