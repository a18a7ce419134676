"""Scenario 5 (generated part): schemathesis against the OpenAPI schema of a real `aiserver-api`.

For every operation in /schema/openapi.json, schemathesis generates valid and invalid requests
(hypothesis, a modest number of examples each) and sends them to the running process with an
admin token. Every answer must pass schemathesis's checks (all but one, see NOT_CHECKED): no
5xx, the status code, content type, headers and body conform to the schema, invalid data is
rejected, auth is not ignored. Then the process must have logged nothing at error level.
"""

from __future__ import annotations

import traceback
from typing import Any, Final

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from .conftest import Served
from .harness import ADMIN_TOKEN, errors_logged

pytestmark = pytest.mark.slow

EXAMPLES: Final = 12  # per operation and generation mode: about a minute on a busy machine
ADMIN: Final = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
#: "Schema-valid data is accepted" does not hold, on purpose: the schema Litestar generates does
#: not carry every rule the API enforces (a cursor must be one it returned; request bodies forbid
#: unknown fields; an override names at least one price; an upload needs a file), so such a
#: request is rightly a 4xx problem. Every other check runs.
NOT_CHECKED: Final = [positive_data_acceptance]


def _fuzz(operation: Any, mode: GenerationMode, base_url: str) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same examples every run: a failure is reproducible
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        case.call_and_validate(
            base_url=base_url, headers=ADMIN, timeout=30, excluded_checks=NOT_CHECKED
        )

    run()


def _requests_served(served: Served) -> int:
    return sum(1 for e in served.api.events() if e.get("event") == "request")


async def test_every_operation_answers_conforming_responses_and_never_5xx(
    served: Served, record_property: Any
) -> None:
    served_before = _requests_served(served)
    schema = schemathesis.openapi.from_url(f"{served.api.base_url}/schema/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode, served.api.base_url)
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to negate: no parameters
            except (Exception, BaseExceptionGroup) as exc:  # one must not hide the others
                failures.append(
                    f"{operation.label} ({mode.value}): "
                    + "".join(traceback.format_exception_only(exc))[:3000]
                )
    record_property("operations", operations)
    record_property("requests", _requests_served(served) - served_before)
    assert operations >= 14
    assert failures == [], "\n\n".join(failures)
    assert errors_logged(served.api.log) == []
