"""What the runner prints once `/ready` answers 200: where things are, and requests to paste."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from dev.services import Service

#: A model of the bundled snapshot: 1000 input and 500 output tokens of gpt-4o cost 0.0075 USD.
EXAMPLE_COST_REQUEST: Final = {
    "model": "gpt-4o",
    "usage": {"input_tokens": 1000, "output_tokens": 500},
}


def cost_curl(api_url: str) -> str:
    body = json.dumps(EXAMPLE_COST_REQUEST)
    return f"curl -s {api_url}/v1/costs/calculate -H 'content-type: application/json' -d '{body}'"


def catalog_line(catalog: Mapping[str, Any] | None, *, taskrunner: bool) -> str:
    if catalog is None:
        return "status unknown (GET /v1/catalog failed)"
    text = f"{catalog.get('model_count', '?')} models, version {catalog.get('catalog_version')}"
    if catalog.get("last_success_at"):
        text += f", refreshed {catalog['last_success_at']}"
    else:
        text += ", from the snapshot bundled in aiserver-costs"
        text += (
            " (the task runner refreshes it when online; offline it keeps the snapshot)"
            if taskrunner
            else " (no refresh: --no-taskrunner)"
        )
    if catalog.get("last_error"):
        text += f"; last refresh error: {catalog['last_error']}"
    return text


def ready_lines(
    api_url: str,
    *,
    database: Service,
    redis: Service,
    catalog: Mapping[str, Any] | None,
    taskrunner: bool,
    demo_key: str,
    demo_key_file: str,
) -> list[str]:
    rows = [
        ("API", api_url),
        ("OpenAPI UI", f"{api_url}/schema   (Swagger UI: {api_url}/schema/swagger)"),
        ("dashboard", f"{api_url}/ui/   (sign in with the demo key below)"),
        ("PostgreSQL", database.describe()),
        ("Redis", redis.describe()),
        ("catalog", catalog_line(catalog, taskrunner=taskrunner)),
        ("demo", f"project demo; its key, of every scope (also in {demo_key_file}):"),
        ("", demo_key),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name:<{width}}  {value}" for name, value in rows]
    lines += [
        "",
        "Try:",
        f"  {cost_curl(api_url)}",
        f"  curl -s '{api_url}/v1/models?q=gpt-4o&limit=5'",
        f"  curl -s {api_url}/v1/catalog",
        f"  curl -s {api_url}/v1/projects/demo -H 'Authorization: Bearer {demo_key}'",
        f"  curl -s {api_url}/v1/projects/demo/keys -H 'Authorization: Bearer {demo_key}'",
        f"  {usage_curl(api_url, demo_key)}",
        "",
        "Ctrl-C stops everything.",
    ]
    return lines


def usage_curl(api_url: str, key: str) -> str:
    """Record one model call in the demo project (docs/usage.md); sent again, it is a duplicate."""
    event = (
        '{"id": "req-1", "model": "gpt-4o", "usage": {"input_tokens": 1000, "output_tokens": 500},'
        ' "tags": {"user": "u-42"}}'
    )
    return (
        f"curl -s {api_url}/v1/usage -H 'Authorization: Bearer {key}' "
        f"-H 'content-type: application/json' -d '{event}'"
    )
