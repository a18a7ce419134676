"""The OpenAPI document: each route declares, on itself, the problems it may answer."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

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
    assert _problem_statuses(operations[("POST", "/v1/documents")]) == {400, 413, 415, 422, 503}
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
