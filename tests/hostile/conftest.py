"""Fixtures of the hostile-input tests: a queue no worker reads, and a gunicorn gateway on it.

Accepted requests land on the unserved queue and answer 202 at once (``Prefer:
respond-async``) or after a short ``SYNC_WAIT_SECONDS``, so hostile traffic costs no
generation. Tests that need a generation use the ``client`` fixture (a real worker).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deploy.local import GatewayProcess
from shared.settings import Settings


@pytest.fixture(scope="session")
def unserved_settings(base_settings: Settings) -> Settings:
    return base_settings.replace(queue_name="img2img-hostile", key_prefix="t-hostile", sync_wait_seconds=0.3)


@pytest.fixture(scope="session")
def unserved_gateway(unserved_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gateway under gunicorn, as deployed, in front of the unserved queue."""
    proc = GatewayProcess(unserved_settings, tmp_path_factory.mktemp("hostile-gateway"))
    proc.start()
    yield proc.url
    proc.stop()
