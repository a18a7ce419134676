"""OpenTelemetry GenAI spans read as usage events (`aiserver.ledger.otlp.spans`).

Every span here is made by the OpenTelemetry SDK with the attributes each instrumentation sets
(names and values as their sources set them: docs/otlp.md), and encoded by the SDK's own OTLP
encoder; the expected usage is worked out by hand from our semantics (input counts the cache
reads and writes, output counts reasoning).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

from aiserver.core_db.errors import AiserverError
from aiserver.ledger.errors import InvalidEvent
from aiserver.ledger.otlp.spans import COUNTS, SpanReading, read_spans
from aiserver.ledger.usage.events import MAX_TAG_VALUE, MAX_TAGS, UsageEventIn

from ..support.otlp import OPENLLMETRY_ANTHROPIC, SpanSpec, Trace, event_key, finished_spans

END = datetime(2026, 11, 30, 9, 15, 42, 123456, tzinfo=UTC)


def message_of(trace: Trace) -> tuple[ExportTraceServiceRequest, list[str]]:
    spans = finished_spans(trace)
    return encode_spans(spans), [event_key(span) for span in spans]


def read(trace: Trace, tags: tuple[tuple[str, str], ...] = ()) -> tuple[SpanReading, list[str]]:
    message, keys = message_of(trace)
    return read_spans(message, tags), keys


def only_event(trace: Trace, tags: tuple[tuple[str, str], ...] = ()) -> UsageEventIn:
    reading, keys = read(trace, tags)
    (item,) = reading.items
    assert isinstance(item, UsageEventIn), item
    assert item.id == keys[0]
    return item


def with_attributes(
    message: ExportTraceServiceRequest, *pairs: tuple[str, AnyValue], resource: bool = False
) -> ExportTraceServiceRequest:
    """`message` with attributes added to its first span (or its resource) as an exporter may
    send them, also those the SDK does not make: a map, bytes, a key given twice."""
    first = message.resource_spans[0]
    target = first.resource if resource else first.scope_spans[0].spans[0]
    target.attributes.extend(KeyValue(key=key, value=value) for key, value in pairs)
    return message


def noted_event(
    message: ExportTraceServiceRequest, tags: tuple[tuple[str, str], ...] = ()
) -> tuple[UsageEventIn, tuple[str, ...]]:
    """The one span's event, and its notes."""
    reading = read_spans(message, tags)
    (item,) = reading.items
    assert isinstance(item, UsageEventIn), item
    (notes,) = reading.notes
    return item, notes


#: The span the tests of unusable attributes start from.
CHAT: dict[str, Any] = {
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.usage.input_tokens": 10,
    "gen_ai.usage.output_tokens": 5,
}


def test_the_conventions_attributes_of_an_openai_call_become_one_event() -> None:
    # opentelemetry-instrumentation-openai-v2 (with opentelemetry-util-genai): the totals are
    # OpenAI's, cache reads inside the prompt, reasoning inside the completion
    event = only_event(
        Trace(
            [
                SpanSpec(
                    {
                        "gen_ai.operation.name": "chat",
                        "gen_ai.provider.name": "openai",
                        "gen_ai.request.model": "gpt-4o",
                        "gen_ai.response.model": "gpt-4o-2024-08-06",
                        "gen_ai.usage.input_tokens": 2006,
                        "gen_ai.usage.output_tokens": 300,
                        "gen_ai.usage.cache_read.input_tokens": 1920,
                        "gen_ai.usage.reasoning.output_tokens": 128,
                        "server.address": "api.openai.com",
                    },
                    END,
                    name="chat gpt-4o",
                )
            ]
        )
    )
    assert event.model == "gpt-4o-2024-08-06"  # the model that answered
    assert event.provider == "openai"
    assert event.usage == {
        "input_tokens": 2006,
        "output_tokens": 300,
        "cache_read_tokens": 1920,
        "reasoning_tokens": 128,
    }
    assert event.usage_format is None
    assert event.occurred_at == END  # the span's end, to the microsecond
    assert event.tags == {"service": "search-api"}


def test_the_request_model_stands_in_when_no_response_model_is_given() -> None:
    event = only_event(
        Trace(
            [
                SpanSpec(
                    {
                        "gen_ai.request.model": "gpt-4o-mini",
                        "gen_ai.usage.input_tokens": 10,
                        "gen_ai.usage.output_tokens": 2,
                    },
                    END,
                )
            ]
        )
    )
    assert (event.model, event.provider) == ("gpt-4o-mini", None)


def test_openllmetry_anthropic_spans_in_the_current_and_the_older_names() -> None:
    # traceloop's Anthropic instrumentation adds the cache reads and writes to input_tokens
    # itself (as the conventions ask); gen_ai.system "Anthropic" is capitalized there
    current = {**OPENLLMETRY_ANTHROPIC, "llm.usage.total_tokens": 4907}
    older = {  # releases of 2024-2025: prompt/completion totals, cache counts without the dot
        "gen_ai.system": "Anthropic",
        "gen_ai.request.model": "claude-sonnet-4-5-20250929",
        "gen_ai.usage.prompt_tokens": 4404,
        "gen_ai.usage.completion_tokens": 503,
        "gen_ai.usage.cache_read_input_tokens": 1800,
        "gen_ai.usage.cache_creation_input_tokens": 556,
        "llm.usage.reasoning_tokens": 0,
    }
    trace = Trace(
        [SpanSpec(current, END), SpanSpec(older, END)],
        scope="opentelemetry.instrumentation.anthropic",
    )
    reading, _ = read(trace)
    expected = {
        "input_tokens": 4404,
        "output_tokens": 503,
        "cache_read_tokens": 1800,
        "cache_write_tokens": 556,
    }
    for item, reasoning in zip(reading.items, ({}, {"reasoning_tokens": 0}), strict=True):
        assert isinstance(item, UsageEventIn)
        assert (item.model, item.provider) == ("claude-sonnet-4-5-20250929", "anthropic")
        assert item.usage == {**expected, **reasoning}


@pytest.mark.parametrize("provider", ["anthropic", "aws.bedrock"])
def test_openlit_s_anthropic_and_bedrock_input_has_the_cache_added_back(provider: str) -> None:
    # OpenLIT sets the provider's own input count (Anthropic's input_tokens, Bedrock's
    # inputTokens: both leave the cache out) with the cache counts beside it
    event = only_event(
        Trace(
            [
                SpanSpec(
                    {
                        "gen_ai.system": provider,
                        "gen_ai.operation.name": "chat",
                        "gen_ai.request.model": "claude-sonnet-4-5-20250929",
                        "gen_ai.usage.input_tokens": 2048,
                        "gen_ai.usage.output_tokens": 503,
                        "gen_ai.usage.cache_read.input_tokens": 1800,
                        "gen_ai.usage.cache_creation.input_tokens": 556,
                        "gen_ai.usage.cost": 0.0123,
                    },
                    END,
                )
            ],
            resource={"service.name": "bot", "telemetry.sdk.name": "openlit"},
            scope="openlit.otel.tracing",
        )
    )
    assert event.usage["input_tokens"] == 2048 + 1800 + 556
    assert event.usage["cache_read_tokens"] == 1800
    assert event.usage["cache_write_tokens"] == 556
    assert event.provider == {"anthropic": "anthropic", "aws.bedrock": "bedrock"}[provider]


def test_openlit_s_openai_input_already_holds_the_cache() -> None:
    event = only_event(
        Trace(
            [
                SpanSpec(
                    {
                        "gen_ai.system": "openai",
                        "gen_ai.request.model": "gpt-4o",
                        "gen_ai.usage.input_tokens": 2006,
                        "gen_ai.usage.output_tokens": 300,
                        "gen_ai.usage.prompt_tokens_details.cached_tokens": 1920,
                        "gen_ai.usage.completion_tokens_details.reasoning_tokens": 64,
                    },
                    END,
                )
            ],
            scope="openlit.otel.tracing",
        )
    )
    assert event.usage == {
        "input_tokens": 2006,
        "output_tokens": 300,
        "cache_read_tokens": 1920,
        "reasoning_tokens": 64,
    }


def test_pydantic_ai_chat_spans_count_and_its_agent_run_spans_are_ignored() -> None:
    chat = {  # pydantic-ai's model request span (logfire), usage from RequestUsage
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "o3",
        "gen_ai.response.model": "o3-2025-04-16",
        "gen_ai.usage.input_tokens": 75,
        "gen_ai.usage.output_tokens": 1186,
        "gen_ai.usage.details.reasoning_tokens": 1024,
        "gen_ai.usage.details.cache_read_tokens": 0,
    }
    old_agent_run = {  # releases before gen_ai.aggregated_usage: the run's sums, no model
        "model_name": "o3",
        "agent_name": "agent",
        "gen_ai.usage.input_tokens": 75,
        "gen_ai.usage.output_tokens": 1186,
    }
    invoke_agent = {  # an agent span in the conventions: sums of the calls inside it
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.request.model": "o3",
        "gen_ai.usage.input_tokens": 75,
        "gen_ai.usage.output_tokens": 1186,
    }
    http = {"http.request.method": "POST", "url.full": "https://api.openai.com/v1/responses"}
    reading, keys = read(
        Trace(
            [
                SpanSpec(chat, END),
                SpanSpec(old_agent_run, END, name="agent run"),
                SpanSpec(invoke_agent, END, name="invoke_agent agent"),
                SpanSpec(http, END, name="POST"),
            ],
            scope="pydantic-ai",
        )
    )
    (item,) = reading.items
    assert isinstance(item, UsageEventIn)
    assert item.id == keys[0]
    assert (item.model, item.provider) == ("o3-2025-04-16", "openai")
    assert item.usage == {
        "input_tokens": 75,
        "output_tokens": 1186,
        "cache_read_tokens": 0,
        "reasoning_tokens": 1024,
    }
    assert dict(reading.ignored) == {"no_model": 1, "aggregate": 1, "no_usage": 1}
    assert reading.spans == 4


#: Every attribute a count is read from, and the count of ours it is (written out by hand from
#: docs/otlp.md, not taken from the code's table, so that a name mapped wrongly fails here).
COUNT_ATTRIBUTES = [
    ("gen_ai.usage.cache_read.input_tokens", "cache_read_tokens"),
    ("gen_ai.usage.cache_read_input_tokens", "cache_read_tokens"),
    ("gen_ai.usage.details.cache_read_tokens", "cache_read_tokens"),
    ("gen_ai.usage.prompt_tokens_details.cached_tokens", "cache_read_tokens"),
    ("gen_ai.usage.cache_creation.input_tokens", "cache_write_tokens"),
    ("gen_ai.usage.cache_creation_input_tokens", "cache_write_tokens"),
    ("gen_ai.usage.details.cache_write_tokens", "cache_write_tokens"),
    ("gen_ai.usage.prompt_tokens_details.cache_creation_tokens", "cache_write_tokens"),
    ("gen_ai.usage.reasoning.output_tokens", "reasoning_tokens"),
    ("gen_ai.usage.reasoning_tokens", "reasoning_tokens"),
    ("gen_ai.usage.completion_tokens_details.reasoning_tokens", "reasoning_tokens"),
    ("gen_ai.usage.details.reasoning_tokens", "reasoning_tokens"),
    ("llm.usage.reasoning_tokens", "reasoning_tokens"),
]
TOTAL_ATTRIBUTES = [
    ("gen_ai.usage.input_tokens", "input_tokens"),
    ("gen_ai.usage.prompt_tokens", "input_tokens"),
    ("gen_ai.usage.output_tokens", "output_tokens"),
    ("gen_ai.usage.completion_tokens", "output_tokens"),
]


def test_the_tables_here_name_every_attribute_the_reader_reads() -> None:
    read = {(attribute, ours) for ours, names in COUNTS.items() for attribute in names}
    assert read == set(COUNT_ATTRIBUTES) | set(TOTAL_ATTRIBUTES)


@pytest.mark.parametrize(
    ("attribute", "ours"), COUNT_ATTRIBUTES, ids=[a for a, _ in COUNT_ATTRIBUTES]
)
def test_each_cache_and_reasoning_attribute_alone_is_its_count(attribute: str, ours: str) -> None:
    # the attribute the only one of its count: the span's totals, and it
    event = only_event(
        Trace(
            [
                SpanSpec(
                    {
                        "gen_ai.request.model": "claude-sonnet-4-5",
                        "gen_ai.usage.input_tokens": 5000,
                        "gen_ai.usage.output_tokens": 3000,
                        attribute: 1234,
                    },
                    END,
                )
            ]
        )
    )
    assert event.usage == {"input_tokens": 5000, "output_tokens": 3000, ours: 1234}


@pytest.mark.parametrize(
    ("attribute", "ours"), TOTAL_ATTRIBUTES, ids=[a for a, _ in TOTAL_ATTRIBUTES]
)
def test_each_total_attribute_alone_is_its_count(attribute: str, ours: str) -> None:
    event = only_event(Trace([SpanSpec({"gen_ai.request.model": "m", attribute: 77}, END)]))
    assert event.usage == {ours: 77}


def test_the_older_fallback_names_yield_only_to_the_names_before_them() -> None:
    # the names OpenLLMetry, OpenLIT and pydantic-ai set beside or before the conventions' own
    # (docs/otlp.md): each is read only when no name before it in its list is on the span
    both_fallbacks = {
        "gen_ai.usage.details.cache_write_tokens": 300,
        "gen_ai.usage.prompt_tokens_details.cache_creation_tokens": 301,
        "gen_ai.usage.reasoning_tokens": 40,
        "gen_ai.usage.completion_tokens_details.reasoning_tokens": 41,
    }
    with_current = {
        **both_fallbacks,
        "gen_ai.usage.cache_creation.input_tokens": 500,
        "gen_ai.usage.reasoning.output_tokens": 60,
    }
    last_only = {
        "gen_ai.usage.prompt_tokens_details.cache_creation_tokens": 302,
        "gen_ai.usage.details.reasoning_tokens": 42,
    }
    base = {"gen_ai.request.model": "m", "gen_ai.usage.input_tokens": 2000,
            "gen_ai.usage.output_tokens": 1000}  # fmt: skip
    spans = [SpanSpec({**base, **more}, END) for more in (both_fallbacks, with_current, last_only)]
    reading, _ = read(Trace(spans))
    usages = [item.usage for item in reading.items if isinstance(item, UsageEventIn)]
    totals = {"input_tokens": 2000, "output_tokens": 1000}
    assert usages == [
        {**totals, "cache_write_tokens": 300, "reasoning_tokens": 40},
        {**totals, "cache_write_tokens": 500, "reasoning_tokens": 60},
        {**totals, "cache_write_tokens": 302, "reasoning_tokens": 42},
    ]


def test_openlit_s_anthropic_input_adds_back_a_cache_write_of_a_fallback_name() -> None:
    # the cache added back to OpenLIT's Anthropic input is the one read, whatever its name
    event = only_event(
        Trace(
            [
                SpanSpec(
                    {
                        "gen_ai.system": "anthropic",
                        "gen_ai.request.model": "claude-sonnet-4-5-20250929",
                        "gen_ai.usage.input_tokens": 100,
                        "gen_ai.usage.output_tokens": 20,
                        "gen_ai.usage.prompt_tokens_details.cache_creation_tokens": 900,
                    },
                    END,
                )
            ],
            scope="openlit.otel.tracing",
        )
    )
    assert event.usage == {"input_tokens": 1000, "output_tokens": 20, "cache_write_tokens": 900}


@pytest.mark.parametrize(
    ("given", "ours"),
    [
        ("openai", "openai"),
        ("anthropic", "anthropic"),
        ("aws.bedrock", "bedrock"),
        ("azure.ai.openai", "azure"),
        ("az.ai.inference", "azure_ai"),
        ("gcp.gemini", "gemini"),
        ("gcp.vertex_ai", "vertex_ai"),
        ("VertexAI", "vertex_ai"),
        ("mistral_ai", "mistral"),
        ("MistralAI", "mistral"),
        ("x_ai", "xai"),
        ("ibm.watsonx.ai", "watsonx"),
        ("gcp.gen_ai", None),  # "any Google endpoint": the model name decides
        ("my-own-gateway", None),
    ],
)
def test_provider_names_are_mapped_onto_the_catalog_s(given: str, ours: str | None) -> None:
    event = only_event(
        Trace(
            [
                SpanSpec(
                    {
                        "gen_ai.provider.name": given,
                        "gen_ai.system": "openai",  # the older name yields to the newer
                        "gen_ai.request.model": "m",
                        "gen_ai.usage.input_tokens": 1,
                    },
                    END,
                )
            ]
        )
    )
    assert event.provider == ours


def test_tags_come_from_service_name_and_the_configured_span_or_resource_attributes() -> None:
    event = only_event(
        Trace(
            [
                SpanSpec(
                    {
                        "gen_ai.request.model": "gpt-4o",
                        "gen_ai.usage.input_tokens": 1,
                        "user.id": "u-42",
                        "app.feature": "x" * 300,
                        "app.cached": True,
                        "app.attempt": 2,
                        "deployment.environment": "canary",  # the span's wins over the resource's
                        "app.list": ["a", "b"],  # not a scalar: no tag
                    },
                    END,
                )
            ],
            resource={"service.name": "search-api", "deployment.environment": "prod"},
        ),
        tags=(
            ("user.id", "user"),
            ("app.feature", "feature"),
            ("app.cached", "cached"),
            ("app.attempt", "attempt"),
            ("deployment.environment", "env"),
            ("app.list", "list"),
            ("absent.attribute", "absent"),
        ),
    )
    assert event.tags == {
        "service": "search-api",
        "user": "u-42",
        "feature": "x" * MAX_TAG_VALUE,
        "cached": "true",
        "attempt": "2",
        "env": "canary",
    }


def test_a_resource_attribute_becomes_a_tag_when_the_span_has_none() -> None:
    event = only_event(
        Trace(
            [SpanSpec({"gen_ai.request.model": "m", "gen_ai.usage.output_tokens": 3}, END)],
            resource={"service.name": "s", "deployment.environment": "prod"},
        ),
        tags=(("deployment.environment", "deployment.environment"),),
    )
    assert event.tags == {"service": "s", "deployment.environment": "prod"}
    assert event.usage == {"output_tokens": 3}


@pytest.mark.parametrize(
    ("attributes", "field", "detail"),
    [
        ({"gen_ai.usage.input_tokens": -5}, "gen_ai.usage.input_tokens", "not -5"),
        ({"gen_ai.usage.output_tokens": 2.5}, "gen_ai.usage.output_tokens", "not 2.5"),
        ({"gen_ai.usage.output_tokens": "many"}, "gen_ai.usage.output_tokens", "not 'many'"),
        (
            {"gen_ai.usage.cache_read.input_tokens": True},
            "gen_ai.usage.cache_read.input_tokens",
            "not True",
        ),
        # no usable model: the request model, with no response model to read first
        ({"gen_ai.request.model": "m" * 300}, "gen_ai.request.model", "at most 256 characters"),
        ({"gen_ai.request.model": 7}, "gen_ai.request.model", "must be a string, not 7"),
        ({"gen_ai.request.model": ["gpt-4o"]}, "gen_ai.request.model", "not a list"),
        ({"gen_ai.request.model": "  "}, "gen_ai.request.model", "must not be blank"),
        ({"gen_ai.request.model": "gpt-4o\x00"}, "gen_ai.request.model", "a control character"),
        (
            {"gen_ai.response.model": True, "gen_ai.request.model": ""},
            "gen_ai.response.model",
            "must be a string, not True",
        ),
    ],
)
def test_a_genai_span_that_cannot_be_an_event_is_an_error_naming_its_attribute(
    attributes: dict[str, Any], field: str, detail: str
) -> None:
    reading, _ = read(Trace([SpanSpec({**CHAT, **attributes}, END)]))
    (item,) = reading.items
    assert isinstance(item, InvalidEvent)
    assert item.fields == [field]
    assert field in str(item) or detail in str(item)
    assert detail in str(item)


def test_whole_doubles_and_digit_strings_are_counts_as_some_sdks_send_them() -> None:
    event = only_event(
        Trace(
            [
                SpanSpec(
                    {
                        "gen_ai.request.model": "m",
                        "gen_ai.usage.input_tokens": 120.0,
                        "gen_ai.usage.output_tokens": "7",
                    },
                    END,
                )
            ]
        )
    )
    assert event.usage == {"input_tokens": 120, "output_tokens": 7}


@pytest.mark.parametrize("text", ["\u0661\u0662\u0663", "\uff11\uff12", "1\u00b2", " 12 "])
def test_a_count_string_is_ascii_digits_only(text: str) -> None:
    """Python's isdecimal() and int() read digits of any script (Arabic-Indic, fullwidth):
    such a count was read as a number, where the docs say a string of digits. Digits of
    another script, or a superscript, reject the span; spaces around ASCII digits are read."""
    spec = SpanSpec({"gen_ai.request.model": "m", "gen_ai.usage.input_tokens": text}, END)
    message, _ = message_of(Trace([spec]))
    (item,) = read_spans(message).items
    if text == " 12 ":
        assert isinstance(item, UsageEventIn), item
        assert item.usage == {"input_tokens": 12}
    else:
        assert isinstance(item, InvalidEvent), item
        assert item.fields == ["gen_ai.usage.input_tokens"]


def test_a_span_without_an_end_time_or_with_a_bad_id_is_an_error() -> None:
    spec = SpanSpec({"gen_ai.request.model": "m", "gen_ai.usage.input_tokens": 1}, END)
    message, _ = message_of(Trace([spec, spec, spec]))
    spans = message.resource_spans[0].scope_spans[0].spans
    spans[0].end_time_unix_nano = 0
    spans[1].trace_id = b"\x01" * 8
    spans[2].span_id = b"\x00" * 8
    items = read_spans(message).items
    assert all(isinstance(item, AiserverError) for item in items)
    assert [item.fields for item in items] == [  # type: ignore[union-attr]
        ["end_time_unix_nano"],
        ["trace_id"],
        ["span_id"],
    ]


def test_spans_without_genai_usage_are_ignored_and_counted() -> None:
    reading, _ = read(
        Trace(
            [
                SpanSpec({"http.request.method": "GET"}, END, name="GET /"),
                SpanSpec({"gen_ai.request.model": "gpt-4o"}, END),  # no token count
                SpanSpec(
                    {"gen_ai.usage.cache_read.input_tokens": 5, "gen_ai.request.model": "m"}, END
                ),
            ]
        )
    )
    assert reading.items == []
    assert dict(reading.ignored) == {"no_usage": 3}
    assert reading.spans == 3


def test_a_span_with_neither_model_usable_is_an_error_naming_both() -> None:
    # a model attribute given but unusable is no "no_model" span: it is rejected, not ignored
    attributes = {**CHAT, "gen_ai.response.model": 7, "gen_ai.request.model": " "}
    reading, _ = read(Trace([SpanSpec(attributes, END)]))
    (item,) = reading.items
    assert isinstance(item, InvalidEvent)
    assert item.fields == ["gen_ai.response.model", "gen_ai.request.model"]
    assert str(item) == (
        "gen_ai.response.model must be a string, not 7 and gen_ai.request.model must not be blank"
    )
    assert dict(reading.ignored) == {}


@pytest.mark.parametrize(
    ("values", "why"),
    [
        ([AnyValue(int_value=7)], "must be a string, not 7"),
        ([AnyValue(bool_value=True)], "must be a string, not True"),
        ([AnyValue(double_value=4.0)], "must be a string, not 4.0"),
        (
            [AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="gpt-4o")]))],
            "must be a string, not a list",
        ),
        ([AnyValue(kvlist_value=KeyValueList())], "must be a string, not a map"),
        ([AnyValue(bytes_value=b"gpt-4o")], "must be a string, not bytes"),
        ([AnyValue(string_value="   ")], "must not be blank"),
        ([AnyValue(string_value="m" * 300)], "must be at most 256 characters, not 300"),
        ([AnyValue(string_value="gpt-4o\n")], "must not hold a control character"),
        (
            [AnyValue(string_value="gpt-4o"), AnyValue(string_value="gpt-4.1")],
            "is given twice with different values",
        ),
        ([AnyValue(string_value="")], None),  # an empty string is as absent: nothing to note
        ([AnyValue()], None),  # so is an empty value
    ],
)
def test_a_response_model_that_is_no_model_name_gives_way_to_the_request_model(
    values: list[AnyValue], why: str | None
) -> None:
    # the response model, when usable, is the one billed; when it is not, the request model
    # stands in, as it does when the response model is absent
    message, _ = message_of(Trace([SpanSpec({**CHAT, "gen_ai.request.model": "gpt-4o-mini"}, END)]))
    with_attributes(message, *(("gen_ai.response.model", value) for value in values))
    event, notes = noted_event(message)
    assert event.model == "gpt-4o-mini"
    assert event.usage == {"input_tokens": 10, "output_tokens": 5}
    assert notes == (
        (f"gen_ai.response.model {why}: gen_ai.request.model stands in",) if why else ()
    )


def test_a_response_model_given_twice_alike_is_read() -> None:
    message, _ = message_of(Trace([SpanSpec(CHAT, END)]))
    twice = ("gen_ai.response.model", AnyValue(string_value="gpt-4o-2024-08-06"))
    event, notes = noted_event(with_attributes(message, twice, twice))
    assert (event.model, notes) == ("gpt-4o-2024-08-06", ())


@pytest.mark.parametrize(
    "service", ["search-api\n", "search\x00api", "\x1b[31msearch-api", "search-api\t"]
)
def test_a_service_name_with_a_control_character_is_left_out_of_the_tags_with_a_note(
    service: str,
) -> None:
    # a model call that cost money is not lost for a cosmetic attribute: the span becomes its
    # event without the tag (no tag holds a control character), and says why
    message, _ = message_of(Trace([SpanSpec(CHAT, END)], resource={"service.name": service}))
    event, notes = noted_event(message, tags=(("deployment.environment", "env"),))
    assert event.tags == {}
    assert (event.model, event.usage) == ("gpt-4o", {"input_tokens": 10, "output_tokens": 5})
    assert notes == ("service.name holds a control character: left out of the tags",)


def test_a_control_character_past_the_cut_of_a_tag_value_is_cut_away_with_it() -> None:
    message, _ = message_of(
        Trace([SpanSpec(CHAT, END)], resource={"service.name": "s" * MAX_TAG_VALUE + "\n"})
    )
    event, notes = noted_event(message)
    assert (event.tags, notes) == ({"service": "s" * MAX_TAG_VALUE}, ())


def test_a_tag_attribute_that_cannot_be_a_tag_is_left_out_with_a_note() -> None:
    attributes = {**CHAT, "user.id": "u-42\r\n", "app.list": ["a", "b"], "app.ok": "fine"}
    message, _ = message_of(
        Trace(
            [SpanSpec(attributes, END)],
            resource={"service.name": "search-api", "deployment.environment": "prod\x00"},
        )
    )
    with_attributes(
        message,
        ("app.map", AnyValue(kvlist_value=KeyValueList())),
        ("app.bytes", AnyValue(bytes_value=b"\x01")),
        ("team", AnyValue(string_value="red")),
        ("team", AnyValue(string_value="blue")),
        ("app.same", AnyValue(int_value=3)),
        ("app.same", AnyValue(int_value=3)),
    )
    tags = (
        ("user.id", "user"),
        ("app.list", "list"),
        ("app.map", "map"),
        ("app.bytes", "bytes"),
        ("team", "team"),
        ("app.same", "same"),
        ("deployment.environment", "env"),
        ("app.ok", "ok"),
    )
    event, notes = noted_event(message, tags)
    assert event.tags == {"service": "search-api", "same": "3", "ok": "fine"}
    assert notes == (
        "user.id holds a control character: left out of the tags",
        "app.list is a list, not a string, number or boolean: left out of the tags",
        "app.map is a map, not a string, number or boolean: left out of the tags",
        "app.bytes is bytes, not a string, number or boolean: left out of the tags",
        "team is given twice with different values: left out of the tags",
        "deployment.environment holds a control character: left out of the tags",
    )


def test_tags_past_the_most_an_event_may_have_are_left_out_with_a_note() -> None:
    # `service` first, then in the order of OTLP_TAG_ATTRIBUTES; POST /v1/usage refuses more
    attributes = {**CHAT, **{f"app.t{n}": n for n in range(MAX_TAGS + 1)}}
    tags = tuple((f"app.t{n}", f"t{n}") for n in range(MAX_TAGS + 1))
    event, notes = noted_event(message_of(Trace([SpanSpec(attributes, END)]))[0], tags)
    assert event.tags == {"service": "search-api", **{f"t{n}": str(n) for n in range(19)}}
    assert notes == (
        f"app.t19: left out of the tags, an event has at most {MAX_TAGS}",
        f"app.t20: left out of the tags, an event has at most {MAX_TAGS}",
    )


def test_a_provider_attribute_that_is_not_a_string_is_left_out_with_a_note() -> None:
    message, _ = message_of(Trace([SpanSpec({**CHAT, "gen_ai.system": "anthropic"}, END)]))
    with_attributes(message, ("gen_ai.provider.name", AnyValue(int_value=3)))
    event, notes = noted_event(message)
    assert event.provider == "anthropic"  # the next name read
    assert notes == ("gen_ai.provider.name must be a string, not 3: left out",)


def test_a_count_given_twice_with_different_values_is_an_error_and_alike_is_read() -> None:
    # which of two counts was meant cannot be told: a count is never guessed
    message, _ = message_of(Trace([SpanSpec(CHAT, END), SpanSpec(CHAT, END)]))
    spans = message.resource_spans[0].scope_spans[0].spans
    spans[0].attributes.add(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=99_999))
    spans[1].attributes.add(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=10))
    reading = read_spans(message)
    twice, alike = reading.items
    assert isinstance(twice, InvalidEvent)
    assert twice.fields == ["gen_ai.usage.input_tokens"]
    assert str(twice) == "gen_ai.usage.input_tokens is given twice with different values"
    assert isinstance(alike, UsageEventIn)
    assert alike.usage == {"input_tokens": 10, "output_tokens": 5}


def test_a_span_s_end_is_rounded_to_the_microsecond_as_a_json_time_is() -> None:
    """OTLP times are nanoseconds; a JSON body's `occurred_at` finer than a microsecond is
    rounded half up (msgspec). A span's end was truncated, so a call ending at
    23:59:59.9999995 was November's over OTLP and December's over JSON."""
    late = datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC)
    message, _ = message_of(
        Trace([SpanSpec({"gen_ai.request.model": "m", "gen_ai.usage.input_tokens": 1}, late)] * 3)
    )
    spans = message.resource_spans[0].scope_spans[0].spans
    nanos = spans[0].end_time_unix_nano
    for span, extra in zip(spans, (499, 500, 501), strict=True):
        span.end_time_unix_nano = nanos + extra
    ends = [item.occurred_at for item in read_spans(message).items]  # type: ignore[union-attr]
    december = datetime(2026, 12, 1, tzinfo=UTC)
    assert ends == [late, december, december]
    as_json = msgspec.json.decode(b'"2026-11-30T23:59:59.9999995Z"', type=datetime)
    assert as_json == december


@pytest.mark.parametrize("first", [AnyValue(), AnyValue(string_value="")], ids=["unset", "empty"])
def test_an_attribute_given_twice_is_unusable_also_when_its_first_value_is_empty(
    first: AnyValue,
) -> None:
    """A count or a model given twice with different values is unusable, also when the first
    of them is empty: read as absent, it let the second go unread, so the span was recorded
    without its input count, or ignored (`no_usage`, `no_model`), never rejected."""
    model = ("gen_ai.request.model", AnyValue(string_value="gpt-4o"))
    given = [
        # the input count twice, beside an output count: recorded with no input before
        [model, ("gen_ai.usage.output_tokens", AnyValue(int_value=5)),
         ("gen_ai.usage.input_tokens", first),
         ("gen_ai.usage.input_tokens", AnyValue(int_value=5000))],
        # the only total, twice
        [model, ("gen_ai.usage.input_tokens", first),
         ("gen_ai.usage.input_tokens", AnyValue(int_value=5000))],
        # the only model, twice
        [("gen_ai.usage.input_tokens", AnyValue(int_value=10)),
         ("gen_ai.request.model", first), model],
    ]  # fmt: skip
    message, _ = message_of(Trace([SpanSpec({}, END)] * len(given)))
    spans = message.resource_spans[0].scope_spans[0].spans
    for span, pairs in zip(spans, given, strict=True):
        del span.attributes[:]
        span.attributes.extend(KeyValue(key=key, value=value) for key, value in pairs)
    reading = read_spans(message)
    assert dict(reading.ignored) == {}
    assert all(isinstance(item, InvalidEvent) for item in reading.items), reading.items
    why = "is given twice with different values"
    assert [(item.fields, str(item)) for item in reading.items] == [  # type: ignore[union-attr]
        (["gen_ai.usage.input_tokens"], f"gen_ai.usage.input_tokens {why}"),
        (["gen_ai.usage.input_tokens"], f"gen_ai.usage.input_tokens {why}"),
        (["gen_ai.request.model"], f"gen_ai.request.model {why}"),
    ]


def test_an_operation_given_twice_with_different_values_rejects_the_span() -> None:
    """`chat` then `invoke_agent`: the first was read, and an agent's span, which sums the calls
    made inside it, was recorded as a call of its own, counting them twice. Which one was meant
    cannot be told: the span is rejected, named in the answer, never counted silently."""
    counted = [("gen_ai.request.model", AnyValue(string_value="gpt-4o")),
               ("gen_ai.usage.input_tokens", AnyValue(int_value=10))]  # fmt: skip
    operations = [("chat", "invoke_agent"), ("invoke_agent", "chat"), ("chat", "chat")]
    message, _ = message_of(Trace([SpanSpec({}, END)] * len(operations)))
    spans = message.resource_spans[0].scope_spans[0].spans
    for span, names in zip(spans, operations, strict=True):
        del span.attributes[:]
        span.attributes.extend(KeyValue(key=key, value=value) for key, value in counted)
        span.attributes.extend(
            KeyValue(key="gen_ai.operation.name", value=AnyValue(string_value=name))
            for name in names
        )
    reading = read_spans(message)
    assert dict(reading.ignored) == {}
    first, second, same = reading.items
    for item in (first, second):
        assert isinstance(item, InvalidEvent), item
        assert item.fields == ["gen_ai.operation.name"]
        assert "is given twice with different values" in str(item)
    assert isinstance(same, UsageEventIn), same  # the same value twice is read


def test_an_agent_span_whose_operation_is_given_as_two_aggregates_is_ignored() -> None:
    """`invoke_agent` then `invoke_workflow`: whichever is meant, the span sums the calls made
    inside it, and is ignored as an aggregate as either value alone would be. Rejected
    before, the exporter was told (partial_success) that an agent span it sent correctly was
    refused as invalid."""
    counted = [("gen_ai.request.model", AnyValue(string_value="gpt-4o")),
               ("gen_ai.usage.input_tokens", AnyValue(int_value=10))]  # fmt: skip
    message, _ = message_of(Trace([SpanSpec({}, END)]))
    span = message.resource_spans[0].scope_spans[0].spans[0]
    del span.attributes[:]
    span.attributes.extend(KeyValue(key=key, value=value) for key, value in counted)
    span.attributes.extend(
        KeyValue(key="gen_ai.operation.name", value=AnyValue(string_value=name))
        for name in ("invoke_agent", "invoke_workflow")
    )
    reading = read_spans(message)
    assert reading.items == [], reading.items
    assert dict(reading.ignored) == {"aggregate": 1}
