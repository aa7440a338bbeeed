"""schemathesis against the running gateway's own ``/openapi.json``: no 5xx, every answer documented.

The gateway runs under gunicorn in front of a queue no worker reads, with a short
``SYNC_WAIT_SECONDS``, so accepted requests answer 202 quickly. Examples, coverage and
fuzzing phases run, in positive and negative modes, bounded in examples per operation.
"""

from __future__ import annotations

import json
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.openapi import COMMITTED, build_document
from shared.settings import Settings

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


# What a gateway with these settings publishes; the running one must serve exactly this
# (checked below), so the cases come from the gateway's own /openapi.json. Keys are off in
# the suite, so the document has no key requirement.
# No worker reads this gateway's queue, so two 5xx are the right answers here: "not ready"
# (503), and the 504 of the protocols whose answer is the result, once SYNC_WAIT_SECONDS pass.
UNSERVED_5XX = {"/readyz": 503, "/sdapi/v1/img2img": 504, "/v1/images/edits": 504}
FUZZED = Settings(auth_enabled=False, sync_wait_seconds=0.3)
schema = schemathesis.openapi.from_dict(build_document(FUZZED))
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], database="none")
schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])


def test_the_gateway_serves_the_fuzzed_document(unserved_gateway: str, unserved_settings: Settings) -> None:
    served = requests.get(f"{unserved_gateway}/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.headers["Content-Type"] == "application/json"
    assert served.json() == build_document(FUZZED) == build_document(unserved_settings)


@schema.parametrize()
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_and_every_answer_matches_the_document(
    case: schemathesis.Case[Any], unserved_gateway: str
) -> None:
    checks = CHECKS
    if case.operation.path in UNSERVED_5XX:
        checks = [check for check in CHECKS if check is not not_a_server_error]
    response = case.call_and_validate(base_url=unserved_gateway, checks=checks, timeout=15)
    assert response.status_code < 500 or response.status_code == UNSERVED_5XX.get(case.operation.path)


def test_the_documented_example_is_accepted(unserved_gateway: str) -> None:
    """So the fuzzing above reaches the accepting path too, not only refusals."""
    operation = json.loads(COMMITTED.read_text(encoding="utf-8"))["paths"]["/v1/sd1.5-img2img"]["post"]
    example = operation["requestBody"]["content"]["application/json"]["example"]
    reply = requests.post(f"{unserved_gateway}/v1/sd1.5-img2img", json=example, timeout=30)
    assert reply.status_code == 202, reply.text
    assert reply.json()["status"] == "queued"
