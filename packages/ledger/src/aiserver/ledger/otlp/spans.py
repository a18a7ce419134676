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
tokens, a missing end time or id, no usable model name) is an error that names its attribute. An
attribute the event can do without (a tag's, the provider's, a response model that the request
model can stand in for) whose value is unusable is left out, and the span keeps a note that says
so (`SpanReading.notes`): a model call is never lost for a cosmetic attribute. An attribute given
twice with different values is unusable too (OTLP wants keys unique; which one is meant cannot be
told): a count so given rejects the span.

Everything here is pure: no I/O.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import msgspec
import msgspec.inspect
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from aiserver.core_db.errors import AiserverError, validation_field
from aiserver.costs.pricing.usage import MAX_QUANTITY
from aiserver.ledger.errors import InvalidEvent, TooManyEvents
from aiserver.ledger.text import has_control
from aiserver.ledger.usage.events import MAX_TAG_VALUE, MAX_TAGS, ModelName, UsageEventIn

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
#: The longest model name an event takes (`UsageEventIn.model`: 256 characters).
MAX_MODEL: Final[int] = msgspec.inspect.type_info(ModelName).max_length  # type: ignore[attr-defined]

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
_EMPTY_TEXT: Final = AnyValue(string_value="")
#: The attributes read that are not named gen_ai.*.
_OTHER_NAMES: Final = frozenset(
    key for keys in COUNTS.values() for key in keys if not key.startswith("gen_ai.")
)
#: The resource attributes read besides the tag attributes.
_RESOURCE_KEYS: Final = frozenset({"service.name", "telemetry.sdk.name"})
#: Why a value given more than once cannot be read.
_TWICE: Final = "is given twice with different values"
#: The attribute values that are not scalars, as notes and errors name them.
_KINDS: Final = {"array_value": "a list", "kvlist_value": "a map", "bytes_value": "bytes"}


@dataclass(slots=True)
class SpanReading:
    """What a request's spans are: the events of its model calls (or the error of each that
    cannot be one), with the name of each span; and how many spans were ignored, by why."""

    items: list[UsageEventIn | AiserverError] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # "span <span id> of trace <trace id>"
    #: Of each item, the attributes left out of its event as unusable, and why
    #: ("service.name holds a control character: left out of the tags").
    notes: list[tuple[str, ...]] = field(default_factory=list)
    ignored: Counter[IgnoredReason] = field(default_factory=Counter)

    @property
    def spans(self) -> int:
        return len(self.items) + sum(self.ignored.values())


def read_spans(
    request: ExportTraceServiceRequest,
    tag_attributes: tuple[tuple[str, str], ...] = (),
    *,
    most: int | None = None,
) -> SpanReading:
    """The request's spans as usage events. `tag_attributes`: (attribute, tag) pairs.
    `TooManyEvents` (413) as soon as there are more than `most` model calls: the spans after
    are not read (a 64 MiB body holds some 600,000 of them, read in half a minute)."""
    reading = SpanReading()
    wanted = {attribute for attribute, _ in tag_attributes}
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes, wanted | _RESOURCE_KEYS)
        service, service_note = _service(resource)
        sdk = _text(resource.values.get("telemetry.sdk.name")) or ""
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            openlit = scope.startswith("openlit") or sdk == "openlit"
            for span in scope_spans.spans:
                attributes = _attributes(span.attributes, wanted)
                why = _ignored(attributes)
                if why is not None:
                    reading.ignored[why] += 1
                    continue
                if most is not None and len(reading.items) == most:
                    raise TooManyEvents(
                        f"more than {most} model-call spans in one request: export smaller batches"
                    )
                name = f"span {span.span_id.hex()} of trace {span.trace_id.hex()}"
                notes = [service_note] if service_note else []
                try:
                    tags = _tags(attributes, resource, service, tag_attributes, notes)
                    item: UsageEventIn | AiserverError = _event(
                        span, attributes, tags, notes, openlit=openlit
                    )
                except AiserverError as exc:
                    item = exc
                reading.items.append(item)
                reading.names.append(name)
                reading.notes.append(tuple(notes))
    return reading


@dataclass(slots=True)
class _Attributes:
    """The attributes of a span or a resource that are read, and the keys among them given more
    than once with different values (`values` holds the first of those)."""

    values: dict[str, AnyValue]
    twice: set[str]


class _Unusable(Exception):
    """An attribute's value that cannot be read; the text says why, after the attribute's name
    ("must be a string, not 7")."""


def _attributes(pairs: Iterable[KeyValue], wanted: set[str]) -> _Attributes:
    """The GenAI attributes and the `wanted` ones."""
    found: dict[str, AnyValue] = {}
    twice: set[str] = set()
    for pair in pairs:
        key = pair.key
        if key.startswith("gen_ai.") or key in wanted or key in _OTHER_NAMES:
            if key not in found:
                found[key] = pair.value
            elif pair.value != found[key] and not _alike_operations(key, pair.value, found[key]):
                twice.add(key)
    return _Attributes(found, twice)


def _alike_operations(key: str, one: AnyValue, other: AnyValue) -> bool:
    """Whether two values of the operation's name say the same of the span: both that it sums
    the calls made inside it (`AGGREGATES`), or both that it is one call. Only that is read of
    the name, so two such values are one, as a value given twice is."""
    return key == OPERATION and (_text(one) in AGGREGATES) == (_text(other) in AGGREGATES)


def _ignored(attributes: _Attributes) -> IgnoredReason | None:
    """Why the span is no model call; None when it is one. An attribute given twice with
    different values is given, whatever the first of its values (it is unusable, not absent)."""
    values, twice = attributes.values, attributes.twice
    if not any(key in twice or _given(values.get(key)) for key in TOTALS):
        return "no_usage"
    if OPERATION not in twice and _text(values.get(OPERATION)) in AGGREGATES:
        return "aggregate"  # given twice, one call and one sum: `_event` rejects it
    if not any(key in twice or _stated(values.get(key)) for key in MODEL_ATTRIBUTES):
        return "no_model"
    return None


def _given(value: AnyValue | None) -> bool:
    return value is not None and value.WhichOneof("value") is not None


def _stated(value: AnyValue | None) -> bool:
    """Whether an attribute says something: given, and not an empty string (as absent)."""
    return _given(value) and value != _EMPTY_TEXT


def _text(value: AnyValue | None) -> str | None:
    """A string attribute's value (None when absent, empty or of another type)."""
    if value is None or value.WhichOneof("value") != "string_value":
        return None
    return value.string_value or None


def _event(
    span: Any, attributes: _Attributes, tags: dict[str, str], notes: list[str], *, openlit: bool
) -> UsageEventIn:
    """The span's event; what it leaves out is noted in `notes`."""
    trace_id, span_id = bytes(span.trace_id), bytes(span.span_id)
    if len(trace_id) != 16 or not any(trace_id):
        raise InvalidEvent("the span's trace id is not 16 bytes, or is all zero", ["trace_id"])
    if len(span_id) != 8 or not any(span_id):
        raise InvalidEvent("the span's id is not 8 bytes, or is all zero", ["span_id"])
    if OPERATION in attributes.twice:  # read as one call, an agent's sum would count twice
        raise InvalidEvent(
            f"{OPERATION} {_TWICE}: whether the span is one model call or sums the calls made "
            "inside it cannot be told",
            [OPERATION],
        )
    model_attribute, model = _model(attributes, notes)
    raw_provider = _provider(attributes, notes)
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


def _model(attributes: _Attributes, notes: list[str]) -> tuple[str, str]:
    """(the attribute it came from, the model): the first usable of MODEL_ATTRIBUTES, an
    unusable one before it noted; none usable is an error naming the unusable ones."""
    unusable: list[tuple[str, str]] = []
    for key in MODEL_ATTRIBUTES:
        try:
            model = _model_of(attributes, key)
        except _Unusable as exc:
            unusable.append((key, str(exc)))
            continue
        if model is not None:
            notes.extend(f"{other} {why}: {key} stands in" for other, why in unusable)
            return key, model
    if not unusable:
        raise AssertionError("unreachable: a span without a model is ignored before")
    raise InvalidEvent(
        " and ".join(f"{key} {why}" for key, why in unusable), [key for key, _ in unusable]
    )


def _model_of(attributes: _Attributes, key: str) -> str | None:
    """The model an attribute names; None when it is absent or empty; `_Unusable` when it is
    no model name (as `POST /v1/usage` takes one)."""
    if key in attributes.twice:
        raise _Unusable(_TWICE)
    value = attributes.values.get(key)
    if value is None or not _stated(value):
        return None
    text = _text(value)
    if text is None:
        raise _Unusable(f"must be a string, not {_shown(value):.60}")
    if len(text) > MAX_MODEL:
        raise _Unusable(f"must be at most {MAX_MODEL} characters, not {len(text)}")
    if not text.strip():
        raise _Unusable("must not be blank")
    if has_control(text):
        raise _Unusable("must not hold a control character")
    return text


def _provider(attributes: _Attributes, notes: list[str]) -> str | None:
    """The first string of PROVIDER_ATTRIBUTES; one of another type, or given twice, noted."""
    for key in PROVIDER_ATTRIBUTES:
        value = attributes.values.get(key)
        if key in attributes.twice:
            notes.append(f"{key} {_TWICE}: left out")
        elif value is None or not _stated(value):
            continue
        elif (text := _text(value)) is None:
            notes.append(f"{key} must be a string, not {_shown(value):.60}: left out")
        else:
            return text
    return None


def _first_count(attributes: _Attributes, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        if key in attributes.twice:  # whatever its first value: an empty one is not absent
            raise InvalidEvent(f"{key} {_TWICE}", [key])
        value = attributes.values.get(key)
        if _given(value):
            return _count(key, value)  # type: ignore[arg-type]  # _given: not None
    return None


#: A count sent as a string: ASCII digits (str.isdecimal and int() take any script's).
_ASCII_DIGITS: Final = re.compile(r"[0-9]+")


def _count(key: str, value: AnyValue) -> int:
    """A token count: a whole number from 0 to MAX_QUANTITY, as an int (a double that is whole,
    or a string of digits, as some SDKs send them)."""
    kind = value.WhichOneof("value")
    count: int | None = None
    if kind == "int_value":
        count = value.int_value
    elif kind == "double_value" and value.double_value.is_integer():
        count = int(value.double_value)
    elif kind == "string_value" and _ASCII_DIGITS.fullmatch(value.string_value.strip()):
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
    """An attribute value as an error message shows it (a list, a map or bytes by its kind)."""
    kind = value.WhichOneof("value")
    if kind in _KINDS:
        return _KINDS[kind]
    return repr(getattr(value, kind)) if kind else "(empty)"


def _end_of(span: Any) -> datetime:
    nanos = span.end_time_unix_nano
    if not nanos:
        raise InvalidEvent("the span has no end time (end_time_unix_nano)", ["end_time_unix_nano"])
    try:
        # to the microsecond, half up, as a time in a JSON body is read (msgspec): a call's
        # month is the same however it was reported (23:59:59.9999995 is the next second)
        return _EPOCH + timedelta(microseconds=(nanos + 500) // 1000)
    except OverflowError:
        raise InvalidEvent(
            f"the span's end time ({nanos} ns) is out of range", ["end_time_unix_nano"]
        ) from None


def _service(resource: _Attributes) -> tuple[str | None, str]:
    """The tag `service` of a resource's spans, and the note when its value is unusable."""
    try:
        return _tag_value(resource, "service.name"), ""
    except _Unusable as exc:
        return None, f"service.name {exc}: left out of the tags"


def _tags(
    attributes: _Attributes,
    resource: _Attributes,
    service: str | None,
    tag_attributes: tuple[tuple[str, str], ...],
    notes: list[str],
) -> dict[str, str]:
    """The event's tags; an attribute whose value is unusable is noted and left out, as is one
    past MAX_TAGS."""
    tags: dict[str, str] = {}
    if service is not None:
        tags[SERVICE_TAG] = service
    for attribute, tag in tag_attributes:
        if tag in tags:
            continue
        try:
            value = _tag_value(
                attributes if attribute in attributes.values else resource, attribute
            )
        except _Unusable as exc:
            notes.append(f"{attribute} {exc}: left out of the tags")
            continue
        if value is None:
            continue
        if len(tags) == MAX_TAGS:
            notes.append(f"{attribute}: left out of the tags, an event has at most {MAX_TAGS}")
            continue
        tags[tag] = value
    return tags


def _tag_value(attributes: _Attributes, key: str) -> str | None:
    """A scalar attribute as a tag's value (cut to MAX_TAG_VALUE characters); None when it is
    absent or empty; `_Unusable` for a list, a map or bytes, a value given twice, or text with
    a control character (which no tag holds)."""
    if key in attributes.twice:
        raise _Unusable(_TWICE)
    value = attributes.values.get(key)
    kind = value.WhichOneof("value") if value is not None else None
    if value is None or kind is None:
        return None
    if kind == "string_value":
        text = value.string_value
    elif kind == "bool_value":
        text = "true" if value.bool_value else "false"
    elif kind == "int_value":
        text = str(value.int_value)
    elif kind == "double_value":
        text = repr(value.double_value)
    else:
        raise _Unusable(f"is {_KINDS[kind]}, not a string, number or boolean")
    text = text[:MAX_TAG_VALUE]
    if has_control(text):
        raise _Unusable("holds a control character")
    return text or None
