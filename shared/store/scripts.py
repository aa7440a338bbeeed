"""Redis scripts in ``.lua`` files, called with their keys and arguments by name.

Each script starts with a header that names what it takes, in order; a trailing ``...``
marks a list that takes the rest::

    -- keys: job events running
    -- args: attempt ttl images...
    -- include: refund

The loader turns the header into a prologue, so the body reads ``K.job``, ``A.attempt`` and
``A.images`` (a table of the rest) instead of positions, and inlines the functions of each
``include`` (``lua/lib/<name>.lua``). The caller passes dicts: a missing or unknown name is a
``TypeError`` here, never a misplaced argument in Redis.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

LUA = Path(__file__).with_name("lua")

_HEADER = re.compile(r"^--\s*(keys|args|include):(.*)$")


@dataclass(frozen=True)
class Signature:
    """The names a script takes, in order; the last may take the rest (``name...``)."""

    keys: tuple[str, ...]
    args: tuple[str, ...]

    @staticmethod
    def rest(names: Sequence[str]) -> str | None:
        return names[-1].removesuffix("...") if names and names[-1].endswith("...") else None

    def prologue(self) -> str:
        return "\n".join((_table("K", "KEYS", self.keys), _table("A", "ARGV", self.args)))


def _table(local: str, source: str, names: Sequence[str]) -> str:
    fixed = [n for n in names if not n.endswith("...")]
    fields = [f"{name} = {source}[{i + 1}]" for i, name in enumerate(fixed)]
    rest = Signature.rest(names)
    if rest is not None:
        fields.append(f"{rest} = {{unpack({source}, {len(fixed) + 1})}}")
    return f"local {local} = {{{', '.join(fields)}}}"


@functools.cache
def load(name: str) -> tuple[Signature, str]:
    """The signature and full source (prologue, includes, body) of ``lua/<name>.lua``."""
    text = (LUA / f"{name}.lua").read_text()
    found: dict[str, list[str]] = {"keys": [], "args": [], "include": []}
    for line in text.splitlines():
        match = _HEADER.match(line.strip())
        if match:
            found[match.group(1)] += match.group(2).split()
    signature = Signature(tuple(found["keys"]), tuple(found["args"]))
    libraries = [(LUA / "lib" / f"{lib}.lua").read_text() for lib in found["include"]]
    return signature, "\n".join([signature.prologue(), *libraries, text])


class Script:
    """One script on one client: ``script(keys={...}, args={...})``."""

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.name = name
        self.signature, source = load(name)
        self._script = client.register_script(source)

    def __call__(self, keys: Mapping[str, str | Sequence[str]], args: Mapping[str, Any]) -> Any:
        return self._script(
            keys=_ordered(self.name, "keys", self.signature.keys, keys),
            args=_ordered(self.name, "args", self.signature.args, args),
        )


def _ordered(script: str, kind: str, names: Sequence[str], given: Mapping[str, Any]) -> list[Any]:
    """``given`` in the order of ``names``, the rest-list (if any) spread at the end."""
    rest = Signature.rest(names)
    fixed = [name for name in names if not name.endswith("...")]
    expected = {*fixed, *([rest] if rest else [])}
    if set(given) != expected:
        missing, unknown = sorted(expected - set(given)), sorted(set(given) - expected)
        raise TypeError(f"script {script}: {kind} missing {missing}, unknown {unknown}")
    return [*(given[name] for name in fixed), *(given[rest] if rest else ())]
