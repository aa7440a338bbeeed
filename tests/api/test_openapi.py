"""The OpenAPI document: committed copy current, every route and field in it, served as built."""

from __future__ import annotations

import json
import re

import pytest
from flask import Flask
from openapi_spec_validator import validate

from api.context import service_of
from api.openapi import COMMITTED, build_document, document_json, main
from api.routetable import ROUTES
from shared.schema import fields
from shared.settings import Settings

METHODS = {"get", "post", "put", "patch", "delete"}


def test_the_committed_copy_is_current() -> None:
    committed = COMMITTED.read_text(encoding="utf-8")
    assert committed == document_json(Settings()), "api/openapi.json is stale: run `make openapi`"
    assert main(["--check"]) == 0


def test_the_document_is_valid_openapi_3_1() -> None:
    document = build_document(Settings())
    assert document["openapi"].startswith("3.1")
    validate(document)


@pytest.fixture(scope="module")
def gateway_app(base_settings: Settings) -> Flask:
    from api.app import create_app

    return create_app(base_settings.replace(key_prefix="t-openapi", allowed_sizes=(512, 640, 768)))


def flask_operations(app: Flask) -> set[tuple[str, str]]:
    operations = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                operations.add((method, path))
    return operations


def test_every_route_is_in_the_table_and_nothing_else(gateway_app: Flask) -> None:
    documented = {(operation.method, operation.path) for operation in ROUTES}
    assert len(documented) == len(ROUTES), "an operation is listed twice"
    served = flask_operations(gateway_app)
    assert served - documented == set(), "routes missing from api/routetable.py ROUTES"
    assert documented - served == set(), "ROUTES names operations the gateway does not serve"


def test_every_body_field_with_its_default_range_and_enum() -> None:
    settings = Settings()
    document = build_document(settings)
    body = document["components"]["schemas"]["Img2ImgRequest"]
    specs = fields(settings)
    assert set(body["properties"]) == {spec.name for spec in specs}
    assert body["required"] == [spec.name for spec in specs if spec.required]
    assert body["additionalProperties"] is True  # unknown fields are ignored
    for spec in specs:
        schema = body["properties"][spec.name]
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert spec.kind in kinds and ("null" in kinds) != spec.required, spec.name
        if spec.default is not None:
            assert schema["default"] == spec.default, spec.name
        if spec.enum is not None:
            assert [v for v in schema["enum"] if v is not None] == list(spec.enum), spec.name
        if spec.kind in ("integer", "number"):
            assert (schema.get("minimum"), schema.get("maximum")) == (spec.minimum, spec.maximum), spec.name
        elif spec.maximum is not None:
            assert schema["maxLength"] == spec.maximum, spec.name


def test_every_operation_documents_its_errors() -> None:
    document = build_document(Settings())
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            statuses = set(operation["responses"])
            assert {"404", "405", "500"} <= statuses, (method, path)
            for status, reply in operation["responses"].items():
                if status.startswith(("4", "5")) and "content" in reply:
                    schema = reply["content"]["application/json"]["schema"]["$ref"]
                    assert schema.rsplit("/", 1)[1] in ("Error", "OpenAIError", "V2Status", "Readiness"), (
                        method,
                        path,
                        status,
                    )
            if method == "post" and "requestBody" in operation:
                assert {"400", "413", "415", "422", "503"} <= statuses, (method, path)


def test_the_served_document_follows_the_running_settings(gateway_app: Flask) -> None:
    reply = gateway_app.test_client().get("/openapi.json")
    assert reply.status_code == 200
    assert reply.mimetype == "application/json"
    served = reply.get_json()
    width = served["components"]["schemas"]["Img2ImgRequest"]["properties"]["img_width"]
    assert width["enum"] == [512, 640, 768, None]
    assert served == json.loads(document_json(service_of(gateway_app).settings))


def test_the_key_requirement_follows_auth_enabled() -> None:
    keyed = build_document(Settings())["paths"]
    open_ = build_document(Settings(auth_enabled=False))["paths"]
    assert keyed["/v1/sd1.5-img2img"]["post"]["security"] == [{"ApiKey": []}, {"Bearer": []}, {"Basic": []}]
    assert "security" not in keyed["/healthz"]["get"]
    assert all("security" not in op for item in open_.values() for op in item.values())
