"""The OpenAPI document: each route declares, on itself, the problems it may answer."""

from __future__ import annotations

import json
import re
from typing import Any, Final

from litestar.testing import AsyncTestClient

from aiserver.api.query import only_query

Client = AsyncTestClient  # type: ignore[type-arg]

PROBLEM = "application/problem+json"


def _problem_statuses(operation: dict[str, Any]) -> set[int]:
    return {
        int(status)
        for status, response in operation["responses"].items()
        if PROBLEM in response.get("content", {})
    }


async def test_every_operation_declares_its_problems_as_problem_details(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    operations = {
        (method.upper(), path): operation
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    }
    assert _problem_statuses(operations[("POST", "/v1/costs/calculate")]) == {
        400, 404, 413, 422, 503,
    }  # fmt: skip
    assert _problem_statuses(operations[("GET", "/v1/models/{model}")]) == {400, 404, 422, 503}
    assert _problem_statuses(operations[("POST", "/v1/documents")]) == {
        400, 401, 403, 413, 415, 422, 429, 503,
    }  # fmt: skip
    assert _problem_statuses(operations[("GET", "/v1/documents/{document_id}")]) == {
        400, 401, 404, 429, 503,
    }  # fmt: skip
    assert _problem_statuses(operations[("GET", "/ready")]) == {503}
    assert _problem_statuses(operations[("GET", "/health")]) == set()
    for (method, path), operation in operations.items():
        statuses = _problem_statuses(operation)
        if path != "/health":
            assert 503 in statuses, f"{method} {path} declares no 503 problem"
        for status in statuses:
            body = operation["responses"][str(status)]["content"][PROBLEM]["schema"]
            assert body == {"$ref": "#/components/schemas/ProblemDetails"}, (method, path, status)
        # Litestar's own 400 body, which this API never sends, is not left in the document
        plain = operation["responses"].get("400", {}).get("content", {})
        if path == "/v1/otlp/v1/traces":  # OTLP's failures: a google.rpc.Status, JSON for JSON
            assert "google.rpc.Status" in plain["application/json"]["schema"]["description"]
        else:
            assert "application/json" not in plain, f"{method} {path}"
    # the request bodies decode through Litestar's public path and still show their schemas
    for path, name in (("", "CostRequest"), ("/batch", "BatchRequest")):
        body = operations[("POST", f"/v1/costs/calculate{path}")]["requestBody"]
        assert body["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{name}"
        }


async def test_the_usage_export_declares_the_media_types_it_streams(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    answer = schema["paths"]["/v1/usage/export"]["get"]["responses"]["200"]
    assert answer["content"] == {
        "application/x-ndjson": {"schema": {"type": "string"}},
        "text/csv": {"schema": {"type": "string"}},
    }
    assert "CSV, JSON lines or FOCUS CSV" in answer["description"]


def _operations(schema: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    }


def _ref(response: dict[str, Any]) -> Any:
    return response["content"]["application/json"]["schema"]


#: /v1 routes without the query guard: the costs calculator (the hot path, whose body is all it
#: reads), the documents (multipart) and OTLP (its own protocol's answers).
UNGUARDED: Final = frozenset({
    ("POST", "/v1/costs/calculate"), ("POST", "/v1/costs/calculate/batch"),
    ("POST", "/v1/documents"), ("GET", "/v1/documents/{document_id}"),
    ("GET", "/v1/documents/{document_id}/pdf"),
    ("GET", "/v1/documents/{document_id}/pages/{page_file}"),
    ("POST", "/v1/otlp/v1/traces"),
})  # fmt: skip


async def test_every_route_refuses_an_undeclared_query_and_says_so(client: Client) -> None:
    """A route with the query guard (`only_query`) may answer 422, and declares it; every /v1
    route has the guard, but UNGUARDED."""
    operations = _operations((await client.get("/schema/openapi.json")).json())
    guarded = set()
    for route in client.app.routes:
        for handler in getattr(route, "route_handlers", ()):
            guards = [g for layer in handler.ownership_layers for g in layer.guards or ()]
            if any(g.__qualname__ == only_query.__qualname__ + ".<locals>.guard" for g in guards):
                path = re.sub(r":[a-z]+}", "}", route.path)
                guarded |= {(method, path) for method in handler.http_methods}
    for method, path in sorted(guarded):
        assert 422 in _problem_statuses(operations[(method, path)]), f"{method} {path}"
    v1 = {(method, path) for method, path in operations if path.startswith("/v1/")}
    assert v1 - guarded == UNGUARDED


async def test_every_route_that_authenticates_declares_429(client: Client) -> None:
    """A client address that failed to authenticate too often is refused (`aiserver.api.auth`)
    on every route that takes a credential."""
    operations = _operations((await client.get("/schema/openapi.json")).json())
    authenticating = [key for key, op in operations.items() if "401" in op["responses"]]
    assert len(authenticating) > 20
    for method, path in authenticating:
        assert "429" in operations[(method, path)]["responses"], f"{method} {path}"
    assert 429 in _problem_statuses(operations[("GET", "/v1/budgets")])
    assert "429" not in operations[("POST", "/v1/costs/calculate")]["responses"]


async def test_the_answers_a_route_makes_itself_are_declared(client: Client) -> None:
    operations = _operations((await client.get("/schema/openapi.json")).json())
    usage = operations[("POST", "/v1/usage")]["responses"]
    assert _ref(usage["201"]) == {"$ref": "#/components/schemas/EventResult"}
    refs = [{"$ref": f"#/components/schemas/{name}"} for name in ("IngestReport", "EventResult")]
    assert _ref(usage["200"]) == {"oneOf": refs}  # a batch's report, or a duplicate event
    reserve = operations[("POST", "/v1/budgets/reserve")]["responses"]
    for status in ("200", "201"):  # a repeat with the reservation_id, a new one
        assert _ref(reserve[status]) == {"$ref": "#/components/schemas/ReservationOut"}, status
    assert 422 in _problem_statuses(operations[("GET", "/v1/usage/reprice/{run_id}")])


async def test_the_windows_parameters_say_what_is_required_and_accepted(client: Client) -> None:
    """The spend and the export refuse to go without `from` and `to`; the events' listing takes
    them optionally. None is a `date-time`: a date, or a time without an offset, is taken too."""
    operations = _operations((await client.get("/schema/openapi.json")).json())
    for path, required in (("/v1/spend", True), ("/v1/usage/export", True),
                           ("/v1/usage/events", False)):  # fmt: skip
        parameters = {p["name"]: p for p in operations[("GET", path)]["parameters"]}
        for name in ("from", "to"):
            assert parameters[name]["required"] is required, (path, name)
            assert "format" not in json.dumps(parameters[name]["schema"]), (path, name)
            if required:
                assert parameters[name]["schema"]["type"] == "string", (path, name)


async def test_an_open_union_is_any_of_so_the_readme_s_request_validates(client: Client) -> None:
    """`usage` is a Usage or, with `usage_format`, the provider's object (any value): as
    `oneOf: [Usage, {}]` a Usage matched both and failed, so a JSON Schema validator refused the
    README's own cost request (a helper's fuzzing). No `oneOf` holds an open member now."""
    document = (await client.get("/schema/openapi.json")).json()
    found: list[str] = []

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            if any(option == {} for option in node.get("oneOf", ())):
                found.append(path)
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(document, "")
    assert found == []
    usage = document["components"]["schemas"]["CostRequest"]["properties"]["usage"]
    assert {"$ref": "#/components/schemas/Usage"} in usage["anyOf"]
    assert {} in usage["anyOf"]


#: The bodies the server reads strictly: a field it does not know is a 422.
STRICT_BODIES: Final = ("BatchRequest", "BudgetChange", "BudgetIn", "CostRequest", "KeyIn",
                        "OverrideIn", "ProjectChange", "ProjectIn", "RefreshRequest",
                        "RepriceRequest", "ReserveIn", "Usage")  # fmt: skip


async def test_a_body_the_server_reads_strictly_has_no_other_properties(client: Client) -> None:
    """The document allowed any other field in these bodies, which the server refuses with a
    422 (a helper's fuzzing): a client generated from it, or a validator, now refuses them too.
    An answer's schema stays open (a later release may add fields)."""
    schemas = (await client.get("/schema/openapi.json")).json()["components"]["schemas"]
    closed = sorted(n for n, s in schemas.items() if s.get("additionalProperties") is False)
    assert closed == sorted(STRICT_BODIES)
    # a budget's change names the fields it refuses, and says so (they read as changeable)
    change = schemas["BudgetChange"]["properties"]
    for name in ("tags", "model", "period"):
        assert change[name]["description"].startswith("refused (422): stays as"), name
    # and the server does refuse another field
    made = await client.post("/v1/costs/calculate", json={"model": "gpt-4o", "colour": "red"})
    assert made.status_code == 422, made.text
