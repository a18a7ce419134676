"""OpenTelemetry GenAI spans read as usage events (docs/otlp.md has the tables and the why).

A span is a model call when it carries a GenAI token count (`gen_ai.usage.input_tokens` or
`output_tokens`, or the older `prompt_tokens` / `completion_tokens`), a model
(`gen_ai.response.model`, else `gen_ai.request.model`), and is not an agent's, a workflow's or a
tool's span (`gen_ai.operation.name` `invoke_agent`, `create_agent`, `invoke_workflow`,
`execute_tool`): those sum the calls made inside them, which are spans of their own. Every other
span is ignored, and counted by why.

Each count of ours is read from the first of its attributes the span has (`COUNTS`). The GenAI
conventions count cache reads and writes inside `gen_ai.usage.input_tokens` and reasoning inside
`gen_ai.usage.output_tokens`, as our usage does; the one instrumentation known to report
Anthropic's and Bedrock's own input count instead (OpenLIT, which leaves the cache out) has the
cache added back (`_EXCLUDES_CACHE`).

The event's key is `otel-<trace id>-<span id>` (hex), its `occurred_at` the span's end, its
provider the convention's provider name (`gen_ai.provider.name`, else `gen_ai.system`) as the
catalog names it, its tags `service` (the resource's `service.name`) and the attributes that
OTLP_TAG_ATTRIBUTES names. A span that cannot be an event (a count that is not a whole number of
tokens, a missing end time or id, a model name too long) is an error that names its attribute.

Everything here is pure: no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import msgspec
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from aiserver.core_db.errors import AiserverError, validation_field
from aiserver.costs.pricing.usage import MAX_QUANTITY
from aiserver.ledger.errors import InvalidEvent
from aiserver.ledger.usage.events import MAX_TAG_VALUE, UsageEventIn

#: Each count of ours, from the first of these attributes a span has: the conventions' current
#: name first, then the names instrumentations used before it or beside it.
COUNTS: Final[Mapping[str, tuple[str, ...]]] = {
    "input_tokens": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"),
    "output_tokens": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"),
    "cache_read_tokens": (
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
        "gen_ai.usage.details.cache_read_tokens",
        "gen_ai.usage.prompt_tokens_details.cached_tokens",
    ),
    "cache_write_tokens": (
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
        "gen_ai.usage.details.cache_write_tokens",
        "gen_ai.usage.prompt_tokens_details.cache_creation_tokens",
    ),
    "reasoning_tokens": (
        "gen_ai.usage.reasoning.output_tokens",
        "gen_ai.usage.reasoning_tokens",
        "gen_ai.usage.completion_tokens_details.reasoning_tokens",
        "gen_ai.usage.details.reasoning_tokens",
        "llm.usage.reasoning_tokens",
    ),
}
#: The counts whose presence makes a span a model call's.
TOTALS: Final = (*COUNTS["input_tokens"], *COUNTS["output_tokens"])

MODEL_ATTRIBUTES: Final = ("gen_ai.response.model", "gen_ai.request.model")
PROVIDER_ATTRIBUTES: Final = ("gen_ai.provider.name", "gen_ai.system")
OPERATION: Final = "gen_ai.operation.name"
#: Operations that are not one model call: they sum the calls inside them.
AGGREGATES: Final = frozenset({"invoke_agent", "create_agent", "invoke_workflow", "execute_tool"})
SERVICE_TAG: Final = "service"

#: The conventions' provider names (current and older, and the spellings instrumentations use,
#: compared without case) as the catalog names the provider. A name not listed is left out: the
#: model name alone finds its price.
PROVIDERS: Final[Mapping[str, str]] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "aws.bedrock": "bedrock",
    "bedrock": "bedrock",
    "azure.ai.openai": "azure",
    "az.ai.openai": "azure",
    "azure.ai.inference": "azure_ai",
    "az.ai.inference": "azure_ai",
    "cohere": "cohere",
    "deepseek": "deepseek",
    "gcp.gemini": "gemini",
    "gemini": "gemini",
    "gcp.vertex_ai": "vertex_ai",
    "vertex_ai": "vertex_ai",
    "vertexai": "vertex_ai",
    "groq": "groq",
    "ibm.watsonx.ai": "watsonx",
    "watsonx": "watsonx",
    "mistral_ai": "mistral",
    "mistralai": "mistral",
    "perplexity": "perplexity",
    "x_ai": "xai",
    "xai": "xai",
    "ollama": "ollama",
}

#: (instrumentation, provider) pairs whose `gen_ai.usage.input_tokens` is the provider's own
#: count, without the cache reads and writes: OpenLIT sets Anthropic's `input_tokens` and
#: Bedrock's `inputTokens` as they are.
_EXCLUDES_CACHE: Final = frozenset({("openlit", "anthropic"), ("openlit", "bedrock")})

IgnoredReason = Literal["no_usage", "no_model", "aggregate"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: The attributes read that are not named gen_ai.*.
_OTHER_NAMES: Final = frozenset(
    key for keys in COUNTS.values() for key in keys if not key.startswith("gen_ai.")
)
#: The resource attributes read besides the tag attributes.
_RESOURCE_KEYS: Final = frozenset({"service.name", "telemetry.sdk.name"})


@dataclass(slots=True)
class SpanReading:
    """What a request's spans are: the events of its model calls (or the error of each that
    cannot be one), with the name of each span; and how many spans were ignored, by why."""

    items: list[UsageEventIn | AiserverError] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # "span <span id> of trace <trace id>"
    ignored: Counter[IgnoredReason] = field(default_factory=Counter)

    @property
    def spans(self) -> int:
        return len(self.items) + sum(self.ignored.values())


def read_spans(
    request: ExportTraceServiceRequest, tag_attributes: tuple[tuple[str, str], ...] = ()
) -> SpanReading:
    """The request's spans as usage events. `tag_attributes`: (attribute, tag) pairs."""
    reading = SpanReading()
    wanted = {attribute for attribute, _ in tag_attributes}
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes, wanted | _RESOURCE_KEYS)
        service = _tag_value(resource.get("service.name"))
        sdk = _text(resource.get("telemetry.sdk.name")) or ""
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            openlit = scope.startswith("openlit") or sdk == "openlit"
            for span in scope_spans.spans:
                attributes = _attributes(span.attributes, wanted)
                why = _ignored(attributes)
                if why is not None:
                    reading.ignored[why] += 1
                    continue
                name = f"span {span.span_id.hex()} of trace {span.trace_id.hex()}"
                try:
                    tags = _tags(attributes, resource, service, tag_attributes)
                    item: UsageEventIn | AiserverError = _event(
                        span, attributes, tags, openlit=openlit
                    )
                except AiserverError as exc:
                    item = exc
                reading.items.append(item)
                reading.names.append(name)
    return reading


def _attributes(pairs: Iterable[KeyValue], wanted: set[str]) -> dict[str, AnyValue]:
    """The GenAI attributes and the `wanted` ones (the first of a key repeated wins)."""
    found: dict[str, AnyValue] = {}
    for pair in pairs:
        key = pair.key
        if (key.startswith("gen_ai.") or key in wanted or key in _OTHER_NAMES) and key not in found:
            found[key] = pair.value
    return found


def _ignored(attributes: Mapping[str, AnyValue]) -> IgnoredReason | None:
    if not any(_given(attributes.get(key)) for key in TOTALS):
        return "no_usage"
    if _text(attributes.get(OPERATION)) in AGGREGATES:
        return "aggregate"
    if not any(_text(attributes.get(key)) for key in MODEL_ATTRIBUTES):
        return "no_model"
    return None


def _given(value: AnyValue | None) -> bool:
    return value is not None and value.WhichOneof("value") is not None


def _text(value: AnyValue | None) -> str | None:
    """A string attribute's value (None when absent, empty or of another type)."""
    if value is None or value.WhichOneof("value") != "string_value":
        return None
    return value.string_value or None


def _event(
    span: Any, attributes: Mapping[str, AnyValue], tags: dict[str, str], *, openlit: bool
) -> UsageEventIn:
    trace_id, span_id = bytes(span.trace_id), bytes(span.span_id)
    if len(trace_id) != 16 or not any(trace_id):
        raise InvalidEvent("the span's trace id is not 16 bytes, or is all zero", ["trace_id"])
    if len(span_id) != 8 or not any(span_id):
        raise InvalidEvent("the span's id is not 8 bytes, or is all zero", ["span_id"])
    model_attribute, model = _model(attributes)
    raw_provider = next(
        (text for key in PROVIDER_ATTRIBUTES if (text := _text(attributes.get(key)))), None
    )
    provider = PROVIDERS.get(raw_provider.lower()) if raw_provider else None
    usage = {
        ours: count
        for ours, keys in COUNTS.items()
        if (count := _first_count(attributes, keys)) is not None
    }
    if openlit and ("openlit", provider) in _EXCLUDES_CACHE:
        usage["input_tokens"] = (
            usage.get("input_tokens", 0)
            + usage.get("cache_read_tokens", 0)
            + usage.get("cache_write_tokens", 0)
        )
    event = {
        "id": f"otel-{trace_id.hex()}-{span_id.hex()}",
        "model": model,
        "provider": provider,
        "usage": usage,
        "occurred_at": _end_of(span),
        "tags": tags,
    }
    try:
        return msgspec.convert(event, UsageEventIn)
    except msgspec.ValidationError as exc:
        text, where = validation_field(str(exc))
        attribute = {"model": model_attribute}.get(where, where)
        raise InvalidEvent(f"{attribute or 'the span'}: {text}", [attribute]) from None


def _model(attributes: Mapping[str, AnyValue]) -> tuple[str, str]:
    """(the attribute it came from, the model)."""
    for key in MODEL_ATTRIBUTES:
        value = attributes.get(key)
        if value is not None and value.WhichOneof("value") not in (None, "string_value"):
            raise InvalidEvent(f"{key} must be a string", [key])
        text = _text(value)
        if text:
            return key, text
    raise AssertionError("unreachable: a span without a model is ignored before")


def _first_count(attributes: Mapping[str, AnyValue], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = attributes.get(key)
        if _given(value):
            return _count(key, value)  # type: ignore[arg-type]  # _given: not None
    return None


def _count(key: str, value: AnyValue) -> int:
    """A token count: a whole number from 0 to MAX_QUANTITY, as an int (a double that is whole,
    or a string of digits, as some SDKs send them)."""
    kind = value.WhichOneof("value")
    count: int | None = None
    if kind == "int_value":
        count = value.int_value
    elif kind == "double_value" and value.double_value.is_integer():
        count = int(value.double_value)
    elif kind == "string_value" and value.string_value.strip().isdecimal():
        try:
            count = int(value.string_value)
        except ValueError:  # more digits than int() reads (sys.get_int_max_str_digits())
            count = None
    if count is None or not 0 <= count <= MAX_QUANTITY:
        shown = _shown(value)
        raise InvalidEvent(
            f"{key} must be a whole number of tokens from 0 to {MAX_QUANTITY}, not {shown:.60}",
            [key],
        )
    return count


def _shown(value: AnyValue) -> str:
    """An attribute value as an error message shows it."""
    kind = value.WhichOneof("value")
    return repr(getattr(value, kind)) if kind else "(empty)"


def _end_of(span: Any) -> datetime:
    nanos = span.end_time_unix_nano
    if not nanos:
        raise InvalidEvent("the span has no end time (end_time_unix_nano)", ["end_time_unix_nano"])
    try:
        return _EPOCH + timedelta(microseconds=nanos // 1000)
    except OverflowError:
        raise InvalidEvent(
            f"the span's end time ({nanos} ns) is out of range", ["end_time_unix_nano"]
        ) from None


def _tags(
    attributes: Mapping[str, AnyValue],
    resource: Mapping[str, AnyValue],
    service: str | None,
    tag_attributes: tuple[tuple[str, str], ...],
) -> dict[str, str]:
    tags: dict[str, str] = {}
    if service is not None:
        tags[SERVICE_TAG] = service
    for attribute, tag in tag_attributes:
        if tag in tags:
            continue
        found = attributes.get(attribute)
        value = _tag_value(found if found is not None else resource.get(attribute))
        if value is not None:
            tags[tag] = value
    return tags


def _tag_value(value: AnyValue | None) -> str | None:
    """A scalar attribute as a tag's value (cut to MAX_TAG_VALUE characters); None for an
    empty one, a list, a map or bytes."""
    if value is None:
        return None
    kind = value.WhichOneof("value")
    if kind == "string_value":
        text = value.string_value
    elif kind == "bool_value":
        text = "true" if value.bool_value else "false"
    elif kind == "int_value":
        text = str(value.int_value)
    elif kind == "double_value":
        text = repr(value.double_value)
    else:
        return None
    return text[:MAX_TAG_VALUE] or None
