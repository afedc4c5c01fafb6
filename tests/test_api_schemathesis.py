"""Property-based fuzzing of the API from its own OpenAPI schema: no generated input may cause a 500,
and every response must match the documented schema and status codes.

Driven directly through Hypothesis (one bounded run per operation) rather than schemathesis' pytest
plugin, whose lazy-fixture support does not work with this pytest version.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from autopack.api import create_app

EXAMPLES_PER_OPERATION = 25
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


def test_generated_requests_never_fail_the_server(db_url: str) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(url=db_url))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11
    for operation in operations:
        has_inputs = any(len(group) for group in (operation.body, operation.query, operation.path_parameters))
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_inputs else (GenerationMode.POSITIVE,)
        for mode in modes:

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(checks=CHECKS)

            check()
