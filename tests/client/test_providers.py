"""Usage events from providers' responses: the response bodies of the providers' public
documentation (the ones tests/costs/test_usage_formats.py reads), as plain dicts and as SDK
objects, become events with the right usage format, model and key; recorded through a real API,
each costs exactly what `POST /v1/costs/calculate` says for that usage format."""

from __future__ import annotations

import re
import uuid
from typing import Any

import openai.types.chat
import openai.types.responses
import pytest

from aiserver.client import Client, event_from_response
from aiserver.client.providers import detect_format

from ..costs.test_usage_formats import (
    ANTHROPIC_1H_USAGE,
    ANTHROPIC_MESSAGE,
    BEDROCK_MIXED_TTL_USAGE,
    GEMINI_CACHED_USAGE,
    GEMINI_THINKING_MULTIMODAL_USAGE,
    OPENAI_CHAT_COMPLETION,
    OPENAI_RESPONSE_REASONING,
)
from .conftest import Ledger, Tenant, api_events

BEDROCK_MODEL = "anthropic.claude-sonnet-4-5-20250929-v1:0"


def gemini_response(usage: dict[str, Any]) -> dict[str, Any]:
    """A GenerateContentResponse (https://ai.google.dev/api/generate-content#response-body)
    around a documented usageMetadata."""
    return {
        "candidates": [{"content": {"parts": [{"text": "..."}], "role": "model"},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": usage,
        "modelVersion": "gemini-2.5-flash",
        "responseId": "mDNNaeq0KbWo1dkPuvHEiAg",
    }  # fmt: skip


def bedrock_response(usage: dict[str, Any]) -> dict[str, Any]:
    """A Converse response as boto3 returns it
    (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html)."""
    return {
        "ResponseMetadata": {"RequestId": "6b3b1b58-0f3e-4b8a-9c43-6b2f0c1d2e3f",
                             "HTTPStatusCode": 200},
        "output": {"message": {"role": "assistant", "content": [{"text": "..."}]}},
        "stopReason": "end_turn",
        "usage": usage,
        "metrics": {"latencyMs": 1840},
    }  # fmt: skip


def snake(value: Any) -> Any:
    """Gemini's JSON as its Python SDK names it (snake_case)."""
    if isinstance(value, dict):
        return {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): snake(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snake(v) for v in value]
    return value


class ToDict:
    """An SDK object that gives its dict through `to_dict()` (google-generativeai's way)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body

    def to_dict(self) -> dict[str, Any]:
        return self._body


# -- reading responses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "kind", "model", "key"),
    [
        (OPENAI_CHAT_COMPLETION, "openai.chat", "gpt-5.4",
         "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT"),
        (OPENAI_RESPONSE_REASONING, "openai.responses", "o1-2024-12-17",
         "resp_67ccd7eca01881908ff0b5146584e408072912b2993db808"),
        (ANTHROPIC_MESSAGE, "anthropic", "claude-opus-4-6", "msg_013Zva2CMHLNnXjNJJKqJ2EF"),
        (gemini_response(GEMINI_CACHED_USAGE), "gemini", "gemini-2.5-flash",
         "mDNNaeq0KbWo1dkPuvHEiAg"),
        (bedrock_response(BEDROCK_MIXED_TTL_USAGE), "bedrock.converse", BEDROCK_MODEL,
         "6b3b1b58-0f3e-4b8a-9c43-6b2f0c1d2e3f"),
    ],
    ids=["openai.chat", "openai.responses", "anthropic", "gemini", "bedrock.converse"],
)  # fmt: skip
def test_a_documented_response_becomes_its_event(
    response: dict[str, Any], kind: str, model: str, key: str
) -> None:
    event = event_from_response(
        response, model=BEDROCK_MODEL if kind == "bedrock.converse" else None, tags={"a": "b"}
    )
    assert detect_format(response) == kind
    assert (event.usage_format, event.model, event.id, event.tags) == (kind, model, key, {"a": "b"})
    usage = response["usageMetadata"] if kind == "gemini" else response["usage"]
    assert event.usage == {k: v for k, v in usage.items() if v is not None}
    assert event.service_tier is None  # OpenAI's "default", Anthropic's "standard": ours


def test_sdk_objects_read_as_their_json() -> None:
    chat = openai.types.chat.ChatCompletion.model_validate(OPENAI_CHAT_COMPLETION)
    response = openai.types.responses.Response.model_validate(OPENAI_RESPONSE_REASONING)
    from_chat = event_from_response(chat)
    assert (from_chat.usage_format, from_chat.model) == ("openai.chat", "gpt-5.4")
    assert from_chat.usage["prompt_tokens"] == 19
    assert from_chat.usage["completion_tokens"] == 10
    from_response = event_from_response(response)
    assert (from_response.usage_format, from_response.model) == (
        "openai.responses",
        "o1-2024-12-17",
    )
    assert from_response.usage["output_tokens_details"] == {"reasoning_tokens": 832}


def test_gemini_in_its_python_sdks_snake_case_reads_as_its_rest_json() -> None:
    rest = event_from_response(gemini_response(GEMINI_THINKING_MULTIMODAL_USAGE))
    sdk = event_from_response(ToDict(snake(gemini_response(GEMINI_THINKING_MULTIMODAL_USAGE))))
    assert sdk.usage == rest.usage == GEMINI_THINKING_MULTIMODAL_USAGE
    assert (sdk.model, sdk.id) == (rest.model, rest.id)


def test_what_cannot_be_read_says_why() -> None:
    with pytest.raises(ValueError, match="no usage"):
        event_from_response({"id": "x", "model": "gpt-4o"})
    with pytest.raises(ValueError, match="names no model"):
        event_from_response(bedrock_response(BEDROCK_MIXED_TTL_USAGE))
    with pytest.raises(ValueError, match="usage_format"):
        event_from_response({"model": "m", "usage": {"input_tokens": 1, "output_tokens": 2}})
    with pytest.raises(TypeError, match="not a provider response"):
        event_from_response(42)
    anthropic = event_from_response({"model": "claude-sonnet-4-5", "usage": ANTHROPIC_1H_USAGE})
    assert anthropic.usage_format == "anthropic"  # told by its cache fields
    flex = event_from_response({**OPENAI_CHAT_COMPLETION, "service_tier": "flex"})
    assert flex.service_tier == "flex"


# -- end to end: recorded at the price of its usage format ----------------------------------------


async def test_each_format_records_at_the_cost_calculate_gives(
    ledger: Ledger, tenant: Tenant
) -> None:
    responses = [
        OPENAI_CHAT_COMPLETION,
        OPENAI_RESPONSE_REASONING,
        ANTHROPIC_MESSAGE,
        gemini_response(GEMINI_THINKING_MULTIMODAL_USAGE),
        bedrock_response(BEDROCK_MIXED_TTL_USAGE),
    ]
    run = uuid.uuid4().hex[:8]
    with Client(ledger.api.base_url, tenant.key) as client:
        for response in responses:
            event = event_from_response(response, model=None if "model" in response or
                                        "modelVersion" in response else BEDROCK_MODEL)  # fmt: skip
            event.id = f"{run}-{event.id}"
            recorded = client.record(event)
            again = client.record(event)
            cost = client.calculate(event.model, event.usage, usage_format=event.usage_format)
            assert recorded.status == "recorded", recorded
            assert recorded.pricing_status == "priced"
            assert recorded.total
            assert recorded.total == cost.total, event.usage_format
            assert (again.status, again.total) == ("duplicate", recorded.total)
    stored = {k.partition("-")[2]: e for k, e in (await api_events(ledger.api, tenant)).items()}
    # Anthropic's input_tokens leaves the cache out: 2095 + 2051 read + 2051 written
    assert stored["msg_013Zva2CMHLNnXjNJJKqJ2EF"]["usage"] == {
        "input_tokens": 6197, "cache_read_tokens": 2051, "cache_write_tokens": 2051,
        "output_tokens": 503,
    }  # fmt: skip
    # Gemini's thoughts are outside candidatesTokenCount: 300 + 700 output tokens
    gemini = stored["mDNNaeq0KbWo1dkPuvHEiAg"]["usage"]
    assert (gemini["output_tokens"], gemini["reasoning_tokens"]) == (1000, 700)
    assert stored["6b3b1b58-0f3e-4b8a-9c43-6b2f0c1d2e3f"]["usage"]["input_tokens"] == 3394
