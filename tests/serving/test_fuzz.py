"""Fuzzing the real service from its own OpenAPI spec (``/docs.json``) with a key that has
every scope: no input is a 5xx, and every answer conforms to the spec (a declared status,
content type and body schema).

Schemathesis generates bodies, path parameters and query strings for every operation of
the spec, valid ones (positive mode) and invalid ones (negative mode). Bounded:
``MAX_EXAMPLES`` examples per operation and mode, no shrinking, derandomised (the same
cases every run). Set ``NEXTBEST_FUZZ_EXAMPLES`` to fuzz longer by hand.

(Schemathesis' lazy ``from_fixture`` loader fails under pytest 9 (it reads the removed
``Node._nodeid``), so the spec is loaded inside the test and each operation's strategy is
run with Hypothesis directly.)
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import requests
import schemathesis
from api_key import HEADERS
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.integration

# Per operation and mode; ~20 operations x 2 modes. See the README for the measured cost.
MAX_EXAMPLES = int(os.environ.get("NEXTBEST_FUZZ_EXAMPLES", "100"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# Operations that act on the whole service rather than on their input: a few cases show
# they answer to spec; hundreds would only reload models or wait on the workers' board.
FEW = {("POST", "/models/reload"): 3}


def _failures(operation, mode: GenerationMode, base_url: str, session: requests.Session,
              sent: Counter) -> list[str]:
    """Run the generated cases of one operation; describe every failed check."""
    failures: list[str] = []
    examples = FEW.get((operation.method.upper(), operation.path), MAX_EXAMPLES)

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = case.call(base_url=base_url, session=session, headers=HEADERS, timeout=30)
        sent[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=HEADERS)
        except FailureGroup as group:
            broken = "; ".join(sorted({failure.title for failure in group.exceptions}))
            failures.append(f"{case.method} {case.formatted_path} body={case.body!r:.200} "
                            f"query={case.query!r} -> {response.status_code} ({broken}): "
                            f"{response.text[:300]}")

    try:
        run()
    except Unsatisfiable:  # negative mode on an operation without inputs: nothing to break
        assert mode is GenerationMode.NEGATIVE, f"no cases for {operation.label}"
    return failures


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_answer_is_below_500_and_conforms_to_the_spec(server, mode: GenerationMode
                                                           ) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/docs.json", timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, "the spec lost operations"
    sent: Counter = Counter()
    with requests.Session() as session:
        failures = [f for op in operations
                    for f in _failures(op, mode, server.url, session, sent)]
    print(f"{mode.value}: {sum(sent.values())} requests, by status {dict(sorted(sent.items()))}")
    assert not failures, "\n".join(failures[:10]) + "\n" + server.log_tail(30)
    # The key really opened every route: no answer refused it.
    assert sent[401] == sent[403] == 0
    assert sum(sent.values()) >= len(operations) * min(MAX_EXAMPLES, 20)
