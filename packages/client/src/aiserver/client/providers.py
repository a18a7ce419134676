"""Usage events from providers' responses, without importing any provider's SDK.

`event_from_response(response)` takes an OpenAI chat completion, an OpenAI response (Responses
API), an Anthropic message, a Gemini `GenerateContentResponse` or a Bedrock Converse response:
the SDK's object (anything with `model_dump()` or `to_dict()`) or the plain dict of its JSON
body. It finds which one it is by its shape (or by `usage_format=`), and returns an `Event`
whose `usage` is the provider's own usage object and whose `usage_format` names it: the server
reads it with the provider's own definitions (docs/usage-formats.md). The model is the one the
response names (Bedrock's does not: pass `model=`), and the idempotency key is the response's
own id, so reporting the same response twice records it once.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Optional

from aiserver.client.models import Event

OPENAI_CHAT = "openai.chat"
OPENAI_RESPONSES = "openai.responses"
ANTHROPIC = "anthropic"
GEMINI = "gemini"
BEDROCK_CONVERSE = "bedrock.converse"
FORMATS = (OPENAI_CHAT, OPENAI_RESPONSES, ANTHROPIC, GEMINI, BEDROCK_CONVERSE)

#: A service tier a response names that is one of ours (OpenAI's "default" is our standard).
_TIERS = {
    "default": None,
    "standard": None,
    "flex": "flex",
    "priority": "priority",
    "batch": "batch",
}
_ANTHROPIC_KEYS = ("cache_read_input_tokens", "cache_creation_input_tokens", "cache_creation")


def as_dict(response: Any) -> dict[str, Any]:
    """The response as a dict: a mapping as it is, an SDK object through `model_dump()` (by
    alias, as its JSON is spelled) or `to_dict()`."""
    if isinstance(response, Mapping):
        return dict(response)
    dump = getattr(response, "model_dump", None)
    if callable(dump):
        try:
            body = dump(by_alias=True)
        except TypeError:
            body = dump()
    elif callable(getattr(response, "to_dict", None)):
        body = response.to_dict()
    else:
        raise TypeError(
            f"not a provider response: {type(response).__name__} is no mapping and has no "
            "model_dump() or to_dict()"
        )
    if not isinstance(body, Mapping):
        raise TypeError(f"{type(response).__name__} did not give a mapping")
    return dict(body)


def detect_format(body: Mapping[str, Any]) -> str:
    """Which provider's response `body` is, by its shape."""
    if "usageMetadata" in body or "usage_metadata" in body:
        return GEMINI
    usage = body.get("usage")
    if not isinstance(usage, Mapping):
        raise ValueError(
            "the response has no usage object (usage, or usageMetadata for Gemini); "
            "a streamed response reports it in its last chunk or event"
        )
    if "prompt_tokens" in usage:
        return OPENAI_CHAT
    if "inputTokens" in usage:
        return BEDROCK_CONVERSE
    if body.get("type") == "message" or any(key in usage for key in _ANTHROPIC_KEYS):
        return ANTHROPIC
    if body.get("object") == "response" or "input_tokens_details" in usage:
        return OPENAI_RESPONSES
    raise ValueError(
        "cannot tell whose response this is (an Anthropic message or an OpenAI response?): "
        f"pass usage_format= one of {', '.join(FORMATS)}"
    )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _clean(value: Any, *, camel: bool = False) -> Any:
    """`value` without None members (null counts are 0 anyway); Gemini's snake_case names
    (its Python SDK's) as its REST JSON spells them; enums as their values."""
    if isinstance(value, Mapping):
        return {
            (_camel(str(k)) if camel else str(k)): _clean(v, camel=camel)
            for k, v in value.items()
            if v is not None
        }
    if isinstance(value, (list, tuple)):
        return [_clean(item, camel=camel) for item in value]
    if isinstance(value, enum.Enum):  # an SDK's enum (Gemini's modality): its JSON value
        return value.value
    return value


def _first(body: Mapping[str, Any], *names: str) -> Optional[str]:
    for name in names:
        value = body.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def event_from_response(
    response: Any,
    *,
    usage_format: Optional[str] = None,
    model: Optional[str] = None,
    id: Optional[str] = None,  # the event's field
    provider: Optional[str] = None,
    tags: Optional[Mapping[str, str]] = None,
    occurred_at: Optional[datetime] = None,
    service_tier: Optional[str] = None,
    reservation_id: Optional[str] = None,
) -> Event:
    """The usage event of one provider response (see the module's docstring). Arguments
    given win over what the response says."""
    body = as_dict(response)
    kind = usage_format or detect_format(body)
    if kind not in FORMATS:
        raise ValueError(f"usage_format {kind!r} is none of {', '.join(FORMATS)}")
    if kind == GEMINI:
        raw = body.get("usageMetadata", body.get("usage_metadata"))
        usage = _clean(raw, camel=True)
        model = model or _first(body, "modelVersion", "model_version")
        key = _first(body, "responseId", "response_id")
    else:
        usage = _clean(body.get("usage"))
        model = model or _first(body, "model")
        key = _first(body, "id")
        if kind == BEDROCK_CONVERSE:
            meta = body.get("ResponseMetadata")
            key = _first(meta, "RequestId") if isinstance(meta, Mapping) else None
    if not isinstance(usage, dict):
        raise ValueError(f"the {kind} response has no usage object")
    if not model:
        raise ValueError(f"the {kind} response names no model: pass model=...")
    tier = service_tier
    if tier is None:
        named = body.get("service_tier") if kind != ANTHROPIC else usage.get("service_tier")
        tier = _TIERS.get(named) if isinstance(named, str) else None
    return Event(
        id=id or key,
        model=model,
        provider=provider,
        usage=usage,
        usage_format=kind,
        service_tier=tier,
        occurred_at=occurred_at,
        tags=dict(tags or {}),
        reservation_id=reservation_id,
    )
