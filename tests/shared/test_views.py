"""Typed views: the body and the schema come from the same declarations."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pytest

from shared.jobs import Job, JobStatus
from shared.jobview import JobView, job_document
from shared.schema import parse_request
from shared.settings import Settings
from shared.views import OMIT, Doc, Omitted, View, components
from tests.helpers import reference_body


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Inner(View):
    """An inner body."""

    n: int


@dataclass(frozen=True)
class Outer(View):
    """An outer body."""

    name: Annotated[str, Doc("Its name.")]
    colour: Colour
    kind: Literal["a", "b"]
    ratio: float | None
    inners: tuple[Inner, ...]
    inner: Inner
    extra: bool | Omitted = OMIT


def test_the_body_follows_the_fields_and_leaves_out_omitted_ones() -> None:
    outer = Outer("x", Colour.RED, "a", None, (Inner(1), Inner(2)), Inner(3))
    assert outer.to_json() == {
        "name": "x",
        "colour": "red",
        "kind": "a",
        "ratio": None,
        "inners": [{"n": 1}, {"n": 2}],
        "inner": {"n": 3},
    }
    assert Outer("x", Colour.BLUE, "b", 0.5, (), Inner(0), extra=False).to_json()["extra"] is False


def test_the_schema_follows_the_fields() -> None:
    schema = Outer.json_schema()
    assert schema["description"] == "An outer body."
    assert schema["required"] == ["name", "colour", "kind", "ratio", "inners", "inner"]
    properties = schema["properties"]
    assert properties["name"] == {"type": "string", "description": "Its name."}
    assert properties["colour"] == {"type": "string", "enum": ["red", "blue"]}
    assert properties["kind"] == {"type": "string", "enum": ["a", "b"]}
    assert properties["ratio"] == {"type": ["number", "null"]}
    assert properties["inners"] == {"type": "array", "items": {"$ref": "#/components/schemas/Inner"}}
    assert properties["extra"] == {"type": "boolean"}
    assert set(components([Outer])) == {"Outer", "Inner"}


def test_objects_of_values_and_free_form_objects() -> None:
    @dataclass(frozen=True)
    class Counts(View):
        """Counts by name, and anything else."""

        counts: dict[str, int]
        extra: dict[str, Any]

    properties = Counts.json_schema()["properties"]
    assert properties["counts"] == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert properties["extra"] == {"type": "object"}
    body = Counts({"a": 1}, {"nested": {"k": [1, 2]}, "colour": Colour.RED}).to_json()
    assert body == {"counts": {"a": 1}, "extra": {"nested": {"k": [1, 2]}, "colour": "red"}}


def test_what_has_no_schema_is_refused() -> None:
    @dataclass(frozen=True)
    class Mapping(View):
        """A body with a field no schema describes."""

        values: set[int]

    @dataclass(frozen=True)
    class KeyedByNumber(View):
        """JSON object keys are strings."""

        values: dict[int, str]

    @dataclass(frozen=True)
    class Undescribed(View):
        n: int

    with pytest.raises(TypeError, match="no JSON Schema"):
        Mapping.json_schema()
    with pytest.raises(TypeError, match=r"only dict\[str, X\]"):
        KeyedByNumber.json_schema()
    with pytest.raises(TypeError, match="docstring"):
        Undescribed.json_schema()


@pytest.mark.parametrize("owner", ["", "key1"])
def test_the_job_document_names_exactly_the_schema_properties(owner: str) -> None:
    params = parse_request(reference_body(), Settings()).params
    job = Job(
        id="j", status=JobStatus.RUNNING, params=params, created_at=1.0, owner=owner, cancel_requested=True
    )
    body = job_document(job, "http://gateway")
    schema = JobView.json_schema()
    assert set(schema["required"]) <= set(body) <= set(schema["properties"])
    assert ("cost" in body) == ("refunded" in body) == bool(owner)
    assert body["cancel_requested"] is True
    assert body["parameters"] == params.to_dict()
