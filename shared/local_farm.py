"""Where a farm started by ``make run`` can be reached: a small file under ``var/`` that it
writes once it is up and removes when it stops, so ``python -m api.admin`` reaches its Redis
(on a port chosen at start) with no flags."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Final

from shared.settings import Settings

FARM_FILE: Final = Path("var") / "local-farm.json"


def write_farm_file(path: Path, settings: Settings, gateway_url: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    env = settings.to_env()
    where = {"gateway_url": gateway_url, "redis_url": env["REDIS_URL"], "key_prefix": env["KEY_PREFIX"]}
    path.write_text(json.dumps(where, indent=2) + "\n")
    return path


def settings_for_tools(path: Path = FARM_FILE) -> Settings:
    """The environment's settings; while a local farm runs and ``REDIS_URL`` is not set, its
    Redis and key prefix."""
    settings = Settings.from_env()
    if os.environ.get("REDIS_URL") or not path.exists():
        return settings
    where = json.loads(path.read_text())
    return settings.replace(redis_url=where["redis_url"], key_prefix=where["key_prefix"])
