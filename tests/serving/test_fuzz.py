"""Fuzzing the real service from its own OpenAPI spec (``/docs.json``): no input is a 5xx.

Schemathesis generates bodies, path parameters and query strings for every operation of
the spec, valid ones (positive mode) and invalid ones (negative mode); every response must
be below 500. Bounded: ``MAX_EXAMPLES`` examples per operation and mode, no shrinking.

(Schemathesis' lazy ``from_fixture`` loader fails under pytest 9 (it reads the removed
``Node._nodeid``), so the spec is loaded inside the test and each operation's strategy is
run with Hypothesis directly.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 15


def _server_errors(operation, mode: GenerationMode, base_url: str) -> list[str]:
    """Run ``MAX_EXAMPLES`` generated cases of one operation; describe every 5xx."""
    errors: list[str] = []

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = case.call(base_url=base_url, timeout=30)
        if response.status_code >= 500:
            errors.append(f"{case.method} {case.formatted_path} body={case.body!r} "
                          f"query={case.query!r} -> {response.status_code} "
                          f"{response.text[:200]}")

    try:
        run()
    except Unsatisfiable:  # negative mode on an operation without inputs: nothing to break
        assert mode is GenerationMode.NEGATIVE, f"no cases for {operation.label}"
    return errors


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_gives_a_server_error(server, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/docs.json", timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, "the spec lost operations"
    errors = [e for op in operations for e in _server_errors(op, mode, server.url)]
    assert not errors, "\n".join(errors[:10]) + "\n" + server.log_tail(30)
