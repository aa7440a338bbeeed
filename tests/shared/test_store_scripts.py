"""The store's Redis scripts: every script file declares what it takes, every call passes it
by name, and every key name has one owner."""

from __future__ import annotations

import re

import pytest
import redis

from shared.store.scripts import LUA, Script, load
from tests.conftest import ROOT

SCRIPTS = sorted(path.stem for path in LUA.glob("*.lua"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_declares_its_keys_and_arguments(name: str) -> None:
    signature, source = load(name)
    assert signature.keys, f"{name} takes no keys"
    body = (LUA / f"{name}.lua").read_text()
    assert not re.search(r"\b(KEYS|ARGV)\[", body), f"{name} reads a position, not a name"
    for used in set(re.findall(r"\bK\.(\w+)", body)):
        assert used in {k.removesuffix("...") for k in signature.keys}, f"{name}: K.{used} is not declared"
    for used in set(re.findall(r"\bA\.(\w+)", body)):
        assert used in {a.removesuffix("...") for a in signature.args}, f"{name}: A.{used} is not declared"
    assert source.startswith("local K = {")


def test_every_script_file_is_called_and_every_call_has_a_file() -> None:
    called = set()
    for path in (ROOT / "shared").rglob("*.py"):
        called |= set(re.findall(r"Script\([^,]+, \"(\w+)\"\)", path.read_text()))
    assert called == set(SCRIPTS)


def test_a_call_with_a_missing_or_unknown_name_is_refused_before_redis() -> None:
    script = Script(redis.Redis(), "progress")  # never connects: refused before
    keys = {"job": "j", "running": "r"}
    args = {"step": 1, "total": 2, "attempt": 1, "lease_seconds": 3, "id": "j"}
    with pytest.raises(TypeError, match="missing \\['id'\\]"):
        script(keys=keys, args={k: v for k, v in args.items() if k != "id"})
    with pytest.raises(TypeError, match="unknown \\['jobs'\\]"):
        script(keys={**keys, "jobs": "x"}, args=args)


def test_variadic_names_take_the_rest_in_order() -> None:
    from shared.store.scripts import _ordered

    names = ("job", "results...")
    assert _ordered("s", "keys", names, {"job": "j", "results": ["r0", "r1"]}) == ["j", "r0", "r1"]
    signature, source = load("succeed")
    assert signature.keys[-1] == "results..." and "results = {unpack(KEYS, 6)}" in source


def test_key_names_are_built_only_by_their_owner() -> None:
    """Every module but the key owner gets Redis key names from :class:`RedisKeys`."""
    owner = ROOT / "shared" / "store" / "keys.py"
    offenders = []
    for package in ("api", "worker", "shared", "deploy"):
        for path in (ROOT / package).rglob("*.py"):
            if path == owner:
                continue
            text = path.read_text()
            if re.search(r"\.key_prefix\b", text) and "RedisKeys(" not in text:
                offenders.append(str(path.relative_to(ROOT)))
            if re.search(r"f\"\{[^}]*prefix\}:", text):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
