"""The gateway never imports torch or diffusers."""

from __future__ import annotations

import subprocess
import sys


def test_gateway_does_not_import_torch() -> None:
    code = (
        "import sys; import api.app, api.routes, api.service; "
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
