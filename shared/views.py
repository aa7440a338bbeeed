"""Typed views: frozen dataclasses that build a JSON body and state its JSON Schema.

A view's fields are the body's properties, in order; :meth:`View.to_json` builds the body
and :meth:`View.json_schema` describes it, both from the same declarations, so the OpenAPI
document cannot drift from what the code sends. Field types map to JSON Schema:

* ``str``, ``int``, ``float``, ``bool``; ``X | None``: nullable (always present);
* ``tuple[X, ...]`` or ``list[X]``: an array of X; ``dict[str, X]``: an object of X
  (``dict[str, Any]``: of anything);
* ``Literal["a", "b"]`` and ``enum.Enum`` subclasses: a string enum;
* another view: a ``$ref`` to its schema (:func:`components` collects them);
* ``X | Omitted`` with the default ``OMIT``: left out of the body while it holds ``OMIT``,
  so not required (fields that appear only in some answers, e.g. with API keys on).

``Annotated[X, Doc("...")]`` describes a field; ``Annotated[X, Ref("Name")]`` stands for a
schema the document defines elsewhere (a dataclass value is sent as its fields).
The class docstring is the schema's description: write it for clients.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import (
    Annotated,
    Any,
    ClassVar,
    Final,
    Literal,
    Union,
    final,
    get_args,
    get_origin,
    get_type_hints,
)

Schema = dict[str, Any]

_SCALARS: Final[dict[type, str]] = {bool: "boolean", int: "integer", float: "number", str: "string"}


@final
class Omitted:
    """The type of :data:`OMIT`: a field left out of the body."""

    _instance: ClassVar[Omitted | None] = None

    def __new__(cls) -> Omitted:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "OMIT"


OMIT: Final = Omitted()


@dataclass(frozen=True)
class Doc:
    """A field's description in the schema."""

    text: str


@dataclass(frozen=True)
class Ref:
    """A field whose schema is the component ``name``, defined outside the views."""

    name: str


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


@dataclass(frozen=True)
class View:
    """Base of every typed view; subclasses are frozen dataclasses."""

    # The name of the schema in ``#/components/schemas``; the class name when empty.
    SCHEMA_NAME: ClassVar[str] = ""

    @classmethod
    def schema_name(cls) -> str:
        return cls.SCHEMA_NAME or cls.__name__

    def to_json(self) -> dict[str, Any]:
        """The JSON body: every field but those holding ``OMIT``, in declaration order."""
        return {
            item.name: _plain(getattr(self, item.name))
            for item in dataclasses.fields(self)
            if getattr(self, item.name) is not OMIT
        }

    @classmethod
    def json_schema(cls) -> Schema:
        """The JSON Schema of :meth:`to_json`'s bodies; nested views are ``$ref``s."""
        hints = get_type_hints(cls, include_extras=True)
        properties: Schema = {}
        required: list[str] = []
        for item in dataclasses.fields(cls):
            schema, omittable = _field_schema(hints[item.name], f"{cls.__name__}.{item.name}")
            properties[item.name] = schema
            if not omittable:
                required.append(item.name)
        description = inspect.getdoc(cls) or ""
        if not description or description.startswith(f"{cls.__name__}("):  # dataclass's own
            raise TypeError(f"{cls.__name__}: describe the body in the class docstring")
        return {"type": "object", "description": description, "required": required, "properties": properties}

    @classmethod
    def nested_views(cls) -> Iterator[type[View]]:
        """The views this one's fields hold, directly."""
        hints = get_type_hints(cls)
        for item in dataclasses.fields(cls):
            yield from _views_in(hints[item.name])


def components(views: Iterable[type[View]]) -> dict[str, Schema]:
    """The schemas of ``views`` and every view they hold, by schema name."""
    found: dict[str, type[View]] = {}
    pending = list(views)
    while pending:
        view = pending.pop()
        known = found.setdefault(view.schema_name(), view)
        if known is not view:
            raise ValueError(f"two views are named {view.schema_name()}: {known} and {view}")
        pending.extend(nested for nested in view.nested_views() if nested.schema_name() not in found)
    return {name: found[name].json_schema() for name in sorted(found)}


def _plain(value: Any) -> Any:
    if isinstance(value, View):
        return value.to_json()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _field_schema(hint: Any, where: str) -> tuple[Schema, bool]:
    """A field's schema, and whether the field may be left out of the body."""
    described: str | None = None
    component: str | None = None
    if get_origin(hint) is Annotated:
        hint, *extras = get_args(hint)
        for extra in extras:
            if isinstance(extra, Doc):
                described = extra.text
            elif isinstance(extra, Ref):
                component = extra.name
    members = list(get_args(hint)) if _is_union(hint) else [hint]
    omittable = Omitted in members
    nullable = type(None) in members
    rest = [member for member in members if member not in (Omitted, type(None))]
    if len(rest) != 1:
        raise TypeError(f"{where}: unsupported union {hint!r}")
    schema = ref(component) if component is not None else _type_schema(rest[0], where)
    if nullable:
        schema = _nullable(schema, where)
    if described is not None:
        schema = {**schema, "description": described}
    return schema, omittable


def _type_schema(hint: Any, where: str) -> Schema:
    origin = get_origin(hint)
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if isinstance(hint, type) and issubclass(hint, View):
        return ref(hint.schema_name())
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum([member.value for member in hint], where)
    if origin is Literal:
        return _enum(list(get_args(hint)), where)
    if origin is dict:
        key, value = get_args(hint)
        if key is not str:
            raise TypeError(f"{where}: only dict[str, X] is supported, not {hint!r}")
        if value is Any:
            return {"type": "object"}
        return {"type": "object", "additionalProperties": _type_schema(value, where)}
    if origin in (list, tuple):
        args = get_args(hint)
        if origin is tuple and (len(args) != 2 or args[1] is not Ellipsis):
            raise TypeError(f"{where}: only tuple[X, ...] is supported, not {hint!r}")
        return {"type": "array", "items": _type_schema(args[0], where)}
    raise TypeError(f"{where}: no JSON Schema for {hint!r}")


def _enum(values: list[Any], where: str) -> Schema:
    if not values or not all(isinstance(value, str) for value in values):
        raise TypeError(f"{where}: enums and literals must be strings, not {values!r}")
    if len(values) == 1:
        return {"type": "string", "const": values[0]}
    return {"type": "string", "enum": values}


def _nullable(schema: Schema, where: str) -> Schema:
    kind = schema.get("type")
    if not isinstance(kind, str) or "const" in schema:
        raise TypeError(f"{where}: only scalars, arrays and enums may be nullable")
    nullable = {**schema, "type": [kind, "null"]}
    if "enum" in schema:
        nullable["enum"] = [*schema["enum"], None]
    return nullable


def _is_union(hint: Any) -> bool:
    return get_origin(hint) is Union or isinstance(hint, types.UnionType)


def _views_in(hint: Any) -> Iterator[type[View]]:
    if isinstance(hint, type) and issubclass(hint, View):
        yield hint
        return
    for arg in get_args(hint):
        yield from _views_in(arg)
