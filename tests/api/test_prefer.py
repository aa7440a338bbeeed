from __future__ import annotations

from api.prefer import Preferences, parse_prefer


def test_parses_wait_and_respond_async() -> None:
    assert parse_prefer("") == Preferences()
    assert parse_prefer("wait=5") == Preferences(wait=5.0)
    assert parse_prefer("respond-async, wait=10") == Preferences(respond_async=True, wait=10.0)
    assert parse_prefer('wait="2.5"') == Preferences(wait=2.5)
    assert parse_prefer("wait=soon, handling=lenient") == Preferences()
    assert parse_prefer("wait=-3") == Preferences(wait=0.0)
