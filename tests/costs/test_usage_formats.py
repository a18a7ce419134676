"""Provider usage formats: each provider's documented usage objects, read as our Usage.

The bodies below are data copied from the providers' public documentation (the URL is beside
each); where a provider documents only the usage object, the test uses that. Every expected
Usage is worked out by hand from the provider's definition (docs/usage-formats.md), never by the
code under test. Where no document shows a count, a body is made from the documented field
definitions and says so.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient

from aiserver.api.app import create_app
from aiserver.costs.calculator import CostRequest
from aiserver.costs.errors import UsageError
from aiserver.costs.pricing import Usage, validate_usage
from aiserver.costs.pricing.usage import COUNT_FIELDS, usage_is_valid
from aiserver.costs.refresh import Outcome, refresh_catalog
from aiserver.costs.usage_formats import FORMATS, USAGE_FORMATS, Less, Listed, read_usage

from ..conftest import Settings, replace_settings
from ..support.catalog import document, model_entry
from ..support.processes import run_module
from ..support.upstream import Upstream

Client = AsyncTestClient  # type: ignore[type-arg]
PROBLEM = "urn:aiserver:problem:"

# -- OpenAI Chat Completions -----------------------------------------------------------------

# https://platform.openai.com/docs/api-reference/chat/create (the "Default" example's response)
OPENAI_CHAT_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-5.4",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello! How can I assist you today?",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 19,
        "completion_tokens": 10,
        "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
}

# https://platform.openai.com/docs/guides/prompt-caching ("Requests": the usage of a chat
# completion whose prompt was partly read from the cache)
OPENAI_CHAT_CACHED_USAGE: dict[str, Any] = {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": {"cached_tokens": 1920},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}

# OpenAI's reference shows audio counts only as 0. This gpt-4o-audio-preview response (audio out)
# is as a public API documentation page shows it: https://302ai-jp.apifox.cn/225241593e0
OPENAI_CHAT_AUDIO: dict[str, Any] = {
    "id": "chatcmpl-Cx5qf8QgUbf1yIHPdZ08WFEFxrVza",
    "object": "chat.completion",
    "created": 1768199869,
    "model": "gpt-4o-audio-preview",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "audio": {
                    "id": "audio_696496be735481908601f407fca4eb21",
                    "data": "",
                    "expires_at": 1768203470,
                    "transcript": "Hello! How can I assist you today?",
                },
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 8,
        "completion_tokens": 54,
        "total_tokens": 62,
        "prompt_tokens_details": {
            "cached_tokens": 0,
            "audio_tokens": 0,
            "text_tokens": 8,
            "image_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 37,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
            "text_tokens": 17,
        },
    },
    "system_fingerprint": "fp_a1c804aea4",
}

# -- OpenAI Responses ------------------------------------------------------------------------

# https://platform.openai.com/docs/api-reference/responses/create (the "Reasoning" example)
OPENAI_RESPONSE_REASONING: dict[str, Any] = {
    "id": "resp_67ccd7eca01881908ff0b5146584e408072912b2993db808",
    "object": "response",
    "created_at": 1741477868,
    "status": "completed",
    "completed_at": 1741477869,
    "error": None,
    "incomplete_details": None,
    "instructions": None,
    "max_output_tokens": None,
    "model": "o1-2024-12-17",
    "output": [
        {
            "type": "message",
            "id": "msg_67ccd7f7b5848190a6f3e95d809f6b44072912b2993db808",
            "status": "completed",
            "role": "assistant",
            "content": [
                {
                    "type": "output_text",
                    "text": "The classic tongue twister...",
                    "annotations": [],
                }
            ],
        }
    ],
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": {"effort": "high", "summary": None},
    "store": True,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
    "truncation": "disabled",
    "usage": {
        "input_tokens": 81,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 1035,
        "output_tokens_details": {"reasoning_tokens": 832},
        "total_tokens": 1116,
    },
    "user": None,
    "metadata": {},
}

# https://platform.openai.com/docs/guides/reasoning ("Managing the context window")
OPENAI_REASONING_GUIDE_USAGE: dict[str, Any] = {
    "input_tokens": 75,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 1186,
    "output_tokens_details": {"reasoning_tokens": 1024},
    "total_tokens": 1261,
}

# https://platform.openai.com/docs/api-reference/batch/object: a batch's usage, which has the
# shape of a response's (cached input tokens and reasoning tokens)
OPENAI_BATCH_USAGE: dict[str, Any] = {
    "input_tokens": 1500,
    "input_tokens_details": {"cached_tokens": 1024},
    "output_tokens": 500,
    "output_tokens_details": {"reasoning_tokens": 300},
    "total_tokens": 2000,
}

# -- Anthropic -------------------------------------------------------------------------------

# https://platform.claude.com/docs/en/api/messages (Create a Message: the example response)
ANTHROPIC_MESSAGE: dict[str, Any] = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "container": {"id": "id", "expires_at": "2019-12-27T18:11:19.117Z"},
    "content": [
        {
            "citations": [
                {
                    "cited_text": "cited_text",
                    "document_index": 0,
                    "document_title": "document_title",
                    "end_char_index": 0,
                    "file_id": "file_id",
                    "start_char_index": 0,
                    "type": "char_location",
                }
            ],
            "text": "Hi! My name is Claude.",
            "type": "text",
        }
    ],
    "model": "claude-opus-4-6",
    "role": "assistant",
    "stop_details": {"category": "cyber", "explanation": "explanation", "type": "refusal"},
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "type": "message",
    "usage": {
        "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0},
        "cache_creation_input_tokens": 2051,
        "cache_read_input_tokens": 2051,
        "inference_geo": "inference_geo",
        "input_tokens": 2095,
        "output_tokens": 503,
        "output_tokens_details": {"thinking_tokens": 0},
        "server_tool_use": {"web_fetch_requests": 2, "web_search_requests": 0},
        "service_tier": "standard",
    },
}

# https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching ("Large context caching
# example": the usage of the first call, which writes the book to the cache, and of the second,
# which reads it)
ANTHROPIC_CACHE_WRITE_USAGE: dict[str, Any] = {
    "cache_creation_input_tokens": 188086,
    "cache_read_input_tokens": 0,
    "input_tokens": 21,
    "output_tokens": 393,
}
ANTHROPIC_CACHE_READ_USAGE: dict[str, Any] = {
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 188086,
    "input_tokens": 21,
    "output_tokens": 393,
}

# https://platform.claude.com/docs/en/build-with-claude/prompt-caching ("1-hour cache
# duration"). The page says that "cache_creation_input_tokens field equals the sum of the values
# in the cache_creation object", and its own example does not: 456 + 100 is 556, not 248.
ANTHROPIC_1H_DOCUMENTED: dict[str, Any] = {
    "usage": {
        "input_tokens": 2048,
        "cache_read_input_tokens": 1800,
        "cache_creation_input_tokens": 248,
        "output_tokens": 503,
        "cache_creation": {"ephemeral_5m_input_tokens": 456, "ephemeral_1h_input_tokens": 100},
    }
}
# The same example with cache_creation_input_tokens the sum of its breakdown, as the page says
ANTHROPIC_1H_USAGE: dict[str, Any] = {
    **ANTHROPIC_1H_DOCUMENTED["usage"],
    "cache_creation_input_tokens": 556,
}

# https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/web-search-tool (the example
# response's usage; its content blocks are left out here)
ANTHROPIC_WEB_SEARCH_USAGE: dict[str, Any] = {
    "input_tokens": 6039,
    "output_tokens": 931,
    "server_tool_use": {"web_search_requests": 1},
}

# Made from the documented fields (no page shows thinking tokens other than 0):
# output_tokens_details.thinking_tokens is "Always ≤ output_tokens"
ANTHROPIC_THINKING_USAGE: dict[str, Any] = {
    "input_tokens": 50,
    "output_tokens": 1200,
    "output_tokens_details": {"thinking_tokens": 1000},
}

# -- Gemini ----------------------------------------------------------------------------------

# https://ai.google.dev/gemini-api/docs/caching (the usage_metadata printed after a request that
# uses a cache; the Python SDK prints the REST fields in snake_case, written here as REST does)
GEMINI_CACHED_USAGE: dict[str, Any] = {
    "promptTokenCount": 696219,
    "cachedContentTokenCount": 696190,
    "candidatesTokenCount": 214,
    "totalTokenCount": 696433,
}

# Made from the documented fields of UsageMetadata (https://ai.google.dev/api/generate-content):
# thoughts, a tool-use prompt, and the prompt, the cache and the answer by modality. The totals
# agree with each other: the prompt details add up to promptTokenCount (400 + 500 + 258 + 42 =
# 1200), the cache details to cachedContentTokenCount (300 + 400 + 258 + 42 = 1000), and
# totalTokenCount = 1200 + 300 + 50 + 700.
GEMINI_THINKING_MULTIMODAL_USAGE: dict[str, Any] = {
    "promptTokenCount": 1200,
    "cachedContentTokenCount": 1000,
    "candidatesTokenCount": 300,
    "toolUsePromptTokenCount": 50,
    "thoughtsTokenCount": 700,
    "totalTokenCount": 2250,
    "promptTokensDetails": [
        {"modality": "TEXT", "tokenCount": 400},
        {"modality": "AUDIO", "tokenCount": 500},
        {"modality": "IMAGE", "tokenCount": 258},
        {"modality": "VIDEO", "tokenCount": 42},
    ],
    "cacheTokensDetails": [
        {"modality": "TEXT", "tokenCount": 300},
        {"modality": "AUDIO", "tokenCount": 400},
        {"modality": "IMAGE", "tokenCount": 258},
        {"modality": "VIDEO", "tokenCount": 42},
    ],
    "toolUsePromptTokensDetails": [{"modality": "TEXT", "tokenCount": 50}],
    "candidatesTokensDetails": [
        {"modality": "TEXT", "tokenCount": 100},
        {"modality": "AUDIO", "tokenCount": 200},
    ],
    "trafficType": "ON_DEMAND",
}

# -- Bedrock Converse ------------------------------------------------------------------------

# Made from TokenUsage's documented fields
# (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_TokenUsage.html), with
# the cacheDetails of AWS's mixed-TTL example (https://github.com/aws-samples/
# amazon-bedrock-samples/blob/main/introduction-to-bedrock/prompt-caching/converse_api/
# notebooks/04_mixed_ttl_caching.ipynb); totalTokens is inputTokens + cacheWriteInputTokens +
# outputTokens, 24 + 3370 + 300.
BEDROCK_MIXED_TTL_USAGE: dict[str, Any] = {
    "inputTokens": 24,
    "outputTokens": 300,
    "totalTokens": 3694,
    "cacheReadInputTokens": 0,
    "cacheWriteInputTokens": 3370,
    "cacheDetails": [{"ttl": "1h", "inputTokens": 1547}, {"ttl": "5m", "inputTokens": 1823}],
}
# The second call of AWS's prompt-caching post (https://aws.amazon.com/blogs/machine-learning/
# effectively-use-prompt-caching-on-amazon-bedrock/: input 10, cache read 37209, output 324)
# as a Converse TokenUsage spells it
BEDROCK_CACHE_READ_USAGE: dict[str, Any] = {
    "inputTokens": 10,
    "outputTokens": 324,
    "totalTokens": 37543,
    "cacheReadInputTokens": 37209,
    "cacheWriteInputTokens": 0,
}


def usage(**counts: int) -> Usage:
    return Usage(**counts)  # type: ignore[arg-type]


# -- every format against its documented bodies ----------------------------------------------


@pytest.mark.parametrize(
    ("raw", "usage_format", "expected"),
    [
        pytest.param(
            OPENAI_CHAT_COMPLETION["usage"],
            "openai.chat",
            usage(input_tokens=19, output_tokens=10),
            id="openai.chat-create",
        ),
        pytest.param(
            OPENAI_CHAT_CACHED_USAGE,
            "openai.chat",
            usage(input_tokens=2006, output_tokens=300, cache_read_tokens=1920),
            id="openai.chat-cached",
        ),
        pytest.param(
            OPENAI_CHAT_AUDIO["usage"],
            "openai.chat",
            usage(input_tokens=8, output_tokens=54, output_audio_tokens=37),
            id="openai.chat-audio-out",
        ),
        pytest.param(
            OPENAI_RESPONSE_REASONING["usage"],
            "openai.responses",
            usage(input_tokens=81, output_tokens=1035, reasoning_tokens=832),
            id="openai.responses-reasoning",
        ),
        pytest.param(
            OPENAI_REASONING_GUIDE_USAGE,
            "openai.responses",
            usage(input_tokens=75, output_tokens=1186, reasoning_tokens=1024),
            id="openai.responses-reasoning-guide",
        ),
        pytest.param(
            OPENAI_BATCH_USAGE,
            "openai.responses",
            usage(
                input_tokens=1500, output_tokens=500, cache_read_tokens=1024, reasoning_tokens=300
            ),
            id="openai.responses-cached",
        ),
        # input_tokens excludes the cache: 2095 + 2051 read + 2051 written = 6197
        pytest.param(
            ANTHROPIC_MESSAGE["usage"],
            "anthropic",
            usage(
                input_tokens=6197,
                output_tokens=503,
                cache_read_tokens=2051,
                cache_write_tokens=2051,
            ),
            id="anthropic-message",
        ),
        pytest.param(
            ANTHROPIC_CACHE_WRITE_USAGE,
            "anthropic",
            usage(input_tokens=188107, output_tokens=393, cache_write_tokens=188086),
            id="anthropic-cache-write",
        ),
        pytest.param(
            ANTHROPIC_CACHE_READ_USAGE,
            "anthropic",
            usage(input_tokens=188107, output_tokens=393, cache_read_tokens=188086),
            id="anthropic-cache-read",
        ),
        # 2048 + 1800 read + 556 written (456 for 5 minutes, 100 for 1 hour) = 4404
        pytest.param(
            ANTHROPIC_1H_USAGE,
            "anthropic",
            usage(
                input_tokens=4404,
                output_tokens=503,
                cache_read_tokens=1800,
                cache_write_tokens=556,
                cache_write_1h_tokens=100,
            ),
            id="anthropic-5m-and-1h-writes",
        ),
        pytest.param(
            ANTHROPIC_WEB_SEARCH_USAGE,
            "anthropic",
            usage(input_tokens=6039, output_tokens=931, web_searches=1),
            id="anthropic-web-search",
        ),
        pytest.param(
            ANTHROPIC_THINKING_USAGE,
            "anthropic",
            usage(input_tokens=50, output_tokens=1200, reasoning_tokens=1000),
            id="anthropic-thinking",
        ),
        pytest.param(
            GEMINI_CACHED_USAGE,
            "gemini",
            usage(input_tokens=696219, output_tokens=214, cache_read_tokens=696190),
            id="gemini-cached",
        ),
        # input: 1200 prompt + 50 tool-use prompt; output: 300 candidates + 700 thoughts. The
        # 42 video tokens were all read from the cache: cache reads, and no uncached video.
        pytest.param(
            GEMINI_THINKING_MULTIMODAL_USAGE,
            "gemini",
            usage(
                input_tokens=1250,
                output_tokens=1000,
                cache_read_tokens=1000,
                reasoning_tokens=700,
                input_audio_tokens=500,
                input_image_tokens=258,
                cache_read_audio_tokens=400,
                cache_read_image_tokens=258,
                output_audio_tokens=200,
            ),
            id="gemini-thoughts-tools-modalities",
        ),
        # protocol-buffer JSON leaves zero counts out
        pytest.param(
            {"promptTokenCount": 8, "totalTokenCount": 8},
            "gemini",
            usage(input_tokens=8),
            id="gemini-zeros-left-out",
        ),
        # input: 24 + 3370 written (1547 for 1 hour, 1823 for 5 minutes)
        pytest.param(
            BEDROCK_MIXED_TTL_USAGE,
            "bedrock.converse",
            usage(
                input_tokens=3394,
                output_tokens=300,
                cache_write_tokens=3370,
                cache_write_1h_tokens=1547,
            ),
            id="bedrock.converse-mixed-ttl",
        ),
        pytest.param(
            BEDROCK_CACHE_READ_USAGE,
            "bedrock.converse",
            usage(input_tokens=37219, output_tokens=324, cache_read_tokens=37209),
            id="bedrock.converse-cache-read",
        ),
        pytest.param(
            {"inputTokens": 30, "outputTokens": 628, "totalTokens": 658},
            "bedrock.converse",
            usage(input_tokens=30, output_tokens=628),
            id="bedrock.converse-no-cache",
        ),
    ],
)
def test_a_documented_usage_reads_as_ours(
    raw: dict[str, Any], usage_format: str, expected: Usage
) -> None:
    assert read_usage(raw, usage_format) == expected


def test_fields_a_provider_adds_are_ignored() -> None:
    raw = {**OPENAI_CHAT_CACHED_USAGE, "billing": {"tier": 3}, "prompt_tokens_details": {
        "cached_tokens": 1920, "some_new_tokens": 5}}  # fmt: skip
    assert read_usage(raw, "openai.chat") == read_usage(OPENAI_CHAT_CACHED_USAGE, "openai.chat")
    # an entry of a modality we do not know is text, like TEXT and DOCUMENT
    gemini = {"promptTokenCount": 10, "promptTokensDetails": [{"modality": "HOLOGRAM"}]}
    assert read_usage(gemini, "gemini") == usage(input_tokens=10)


def test_null_counts_and_details_are_zero() -> None:
    raw = {
        "prompt_tokens": 5,
        "completion_tokens": 1,
        "prompt_tokens_details": None,
        "completion_tokens_details": {"reasoning_tokens": None},
    }
    assert read_usage(raw, "openai.chat") == usage(input_tokens=5, output_tokens=1)
    anthropic = {"input_tokens": 3, "output_tokens": 2, "cache_creation": None}
    assert read_usage(anthropic, "anthropic") == usage(input_tokens=3, output_tokens=2)


# -- errors name the provider's fields -------------------------------------------------------


def _refused(raw: Any, usage_format: str | None) -> UsageError:
    with pytest.raises(UsageError) as caught:
        read_usage(raw, usage_format)
    return caught.value


@pytest.mark.parametrize("value", [-5, 1.5, 3.0, "12", True, None, [1], 10**15 + 1])
def test_a_count_that_is_not_a_whole_number_from_0_is_refused(value: Any) -> None:
    raw = {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {}}
    raw["prompt_tokens_details"]["cached_tokens"] = value
    if value is None:  # null is a count left out
        assert read_usage(raw, "openai.chat") == usage(input_tokens=10, output_tokens=1)
        return
    error = _refused(raw, "openai.chat")
    assert error.fields == ("usage.prompt_tokens_details.cached_tokens",)
    assert str(error) == (
        "usage.prompt_tokens_details.cached_tokens must be a whole number from 0 to "
        f"1000000000000000, not {value!r}"
    )


def test_a_part_larger_than_its_total_names_the_providers_fields() -> None:
    raw = {"prompt_tokens": 1000, "completion_tokens": 1, "prompt_tokens_details": {
        "cached_tokens": 2000}}  # fmt: skip
    error = _refused(raw, "openai.chat")
    assert error.fields == ("usage.prompt_tokens_details.cached_tokens", "usage.prompt_tokens")
    assert str(error) == (
        "cache_read_tokens (2000) is larger than input_tokens (1000); from the openai.chat "
        "usage: cache_read_tokens (2000) = usage.prompt_tokens_details.cached_tokens; "
        "input_tokens (1000) = usage.prompt_tokens"
    )
    reasoning = {"input_tokens": 5, "output_tokens": 10, "output_tokens_details": {
        "reasoning_tokens": 11}}  # fmt: skip
    assert _refused(reasoning, "openai.responses").fields == (
        "usage.output_tokens_details.reasoning_tokens",
        "usage.output_tokens",
    )
    # only the fields the object holds are named: no toolUsePrompt* here
    gemini = {
        "promptTokenCount": 10,
        "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 20}],
    }
    error = _refused(gemini, "gemini")
    assert error.fields == ("usage.promptTokensDetails", "usage.promptTokenCount")
    assert str(error) == (
        "input_audio_tokens (20) is larger than input_tokens (10); from the gemini usage: "
        "input_audio_tokens (20) = usage.promptTokensDetails[modality=AUDIO].tokenCount + "
        "usage.toolUsePromptTokensDetails[modality=AUDIO].tokenCount; input_tokens (10) = "
        "usage.promptTokenCount + usage.toolUsePromptTokenCount"
    )


def test_anthropics_documented_1h_example_contradicts_itself_and_is_refused() -> None:
    error = _refused(ANTHROPIC_1H_DOCUMENTED["usage"], "anthropic")
    assert str(error) == (
        "usage.cache_creation.ephemeral_5m_input_tokens + "
        "usage.cache_creation.ephemeral_1h_input_tokens (556) is larger than "
        "usage.cache_creation_input_tokens (248)"
    )
    assert error.fields == (
        "usage.cache_creation.ephemeral_5m_input_tokens",
        "usage.cache_creation.ephemeral_1h_input_tokens",
        "usage.cache_creation_input_tokens",
    )


def test_bedrock_totals_that_disagree_are_refused() -> None:
    # inputTokens taken as the whole prompt (cache included) would make totalTokens 10 + 324
    raw = {**BEDROCK_CACHE_READ_USAGE, "totalTokens": 334}
    error = _refused(raw, "bedrock.converse")
    assert str(error) == (
        "usage.inputTokens + usage.cacheReadInputTokens + usage.cacheWriteInputTokens + "
        "usage.outputTokens (37543) is not usage.totalTokens (334)"
    )
    assert error.fields[-1] == "usage.totalTokens"
    more_1h = {**BEDROCK_MIXED_TTL_USAGE, "cacheWriteInputTokens": 1500, "totalTokens": 1824}
    assert _refused(more_1h, "bedrock.converse").fields == (
        "usage.cacheDetails",
        "usage.cacheWriteInputTokens",
    )


def test_gemini_cached_video_beyond_the_prompts_video_is_refused() -> None:
    raw = {
        "promptTokenCount": 100,
        "cachedContentTokenCount": 50,
        "promptTokensDetails": [{"modality": "VIDEO", "tokenCount": 10}],
        "cacheTokensDetails": [{"modality": "VIDEO", "tokenCount": 50}],
    }
    error = _refused(raw, "gemini")
    assert error.fields == ("usage.promptTokensDetails", "usage.cacheTokensDetails")
    assert str(error).startswith(
        "the gemini usage takes more tokens away than it counts: input_video_tokens (-40) ="
    )


def test_gemini_cached_content_beyond_the_prompt_is_refused() -> None:
    """cachedContentTokenCount is "the cached part of the prompt", and promptTokenCount
    "includes the number of tokens in the cached content": more cached tokens than the prompt
    is a part larger than its total. The tool-use prompt, outside the prompt, gave it room: the
    body was read, and 20 of its tool-use tokens priced as cache reads."""
    raw = {"promptTokenCount": 100, "toolUsePromptTokenCount": 50, "cachedContentTokenCount": 120,
           "candidatesTokenCount": 5}  # fmt: skip
    error = _refused(raw, "gemini")
    assert error.fields == ("usage.cachedContentTokenCount", "usage.promptTokenCount")
    assert str(error) == (
        "usage.cachedContentTokenCount (120) is larger than usage.promptTokenCount (100)"
    )
    assert read_usage({**raw, "cachedContentTokenCount": 100}, "gemini").cache_read_tokens == 100


@pytest.mark.parametrize(
    ("raw", "usage_format", "fields", "message"),
    [
        ([1], "gemini", ("usage",), "usage must be the gemini usage object, a JSON object"),
        (
            {"completion_tokens": 1},
            "openai.chat",
            ("usage.prompt_tokens",),
            "the openai.chat usage object has no usage.prompt_tokens",
        ),
        (
            {"prompt_tokens": 1, "completion_tokens": 1, "prompt_tokens_details": "none"},
            "openai.chat",
            ("usage.prompt_tokens_details",),
            "usage.prompt_tokens_details must be a JSON object",
        ),
        (
            {"promptTokenCount": 1, "promptTokensDetails": {"modality": "AUDIO"}},
            "gemini",
            ("usage.promptTokensDetails",),
            "usage.promptTokensDetails must be a list",
        ),
        (
            {"promptTokenCount": 1, "promptTokensDetails": ["AUDIO"]},
            "gemini",
            ("usage.promptTokensDetails[0]",),
            "usage.promptTokensDetails[0] must be a JSON object",
        ),
        (
            {"promptTokenCount": 9, "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": 1}, {"modality": "AUDIO", "tokenCount": -1}]},
            "gemini",
            ("usage.promptTokensDetails[1].tokenCount",),
            "usage.promptTokensDetails[1].tokenCount must be a whole number from 0 to "
            "1000000000000000, not -1",
        ),
        (
            {"inputTokens": 1, "outputTokens": 1, "cacheDetails": [{"ttl": "1h",
                                                                   "inputTokens": "2"}]},
            "bedrock.converse",
            ("usage.cacheDetails[0].inputTokens",),
            "usage.cacheDetails[0].inputTokens must be a whole number from 0 to "
            "1000000000000000, not '2'",
        ),
        (
            {"input_tokens": 1},
            "openai.image",
            ("usage_format",),
            "unknown usage_format 'openai.image'; use one of openai.chat, openai.responses, "
            "anthropic, gemini, bedrock.converse",
        ),
    ],
)  # fmt: skip
def test_odd_input_is_a_usage_error_naming_its_path(
    raw: Any, usage_format: str, fields: tuple[str, ...], message: str
) -> None:
    error = _refused(raw, usage_format)
    assert (error.fields, str(error)) == (fields, message)
    assert error.problem()["type"] == PROBLEM + "invalid-usage"
    assert error.problem()["status"] == 422


def _keys() -> list[str]:
    """Every key the formats read, so that generated objects reach each branch of the mappings."""
    keys = {"AUDIO", "IMAGE", "VIDEO", "1h", "5m"}
    for fmt in FORMATS.values():
        terms = [term for terms in fmt.counts.values() for term in terms]
        terms += [term for bound in fmt.bounds for term in (bound.total, *bound.parts)]
        for term in terms:
            source = term.source if isinstance(term, Less) else term
            keys.update(source.path.split("."))
            if isinstance(source, Listed):
                keys.update((source.key, source.amount))
    return sorted(keys)


KEYS = _keys()
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-5, max_value=10**16)
    | st.floats(allow_nan=False)
    | st.sampled_from(KEYS),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=3), inner, max_size=6)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(raw=JSON, usage_format=st.sampled_from(USAGE_FORMATS))
def test_any_json_reads_as_a_valid_usage_or_a_usage_error(raw: Any, usage_format: str) -> None:
    """Whatever JSON a client sends as a provider's usage, the answer is a Usage that prices as
    it is or a UsageError naming fields under `usage`: never another exception (a 500)."""
    fields: tuple[str, ...] = ("usage",)
    try:
        validate_usage(read_usage(raw, usage_format))
    except UsageError as error:
        fields = error.fields
    assert fields
    assert all(field == "usage" or field.startswith("usage.") for field in fields)


COUNT = st.one_of(
    st.integers(min_value=0, max_value=3000),
    st.integers(min_value=-3, max_value=10**16),
    st.sampled_from([True, 1.0, None]),
)


@settings(max_examples=500, deadline=None)
@given(
    counts=st.dictionaries(st.sampled_from(COUNT_FIELDS), COUNT, max_size=8),
    max_results=st.none() | st.integers(min_value=-1, max_value=10**16),
    size=st.sampled_from(["low", "medium", "high", "huge"]),
)
def test_the_fast_check_of_a_usage_agrees_with_validate_usage(
    counts: dict[str, Any], max_results: int | None, size: str
) -> None:
    """read_usage answers most usages with usage_is_valid and calls validate_usage only to say
    what is wrong: the two must agree on every usage."""
    candidate = Usage(**counts, max_results=max_results, search_context_size=size)  # type: ignore[arg-type]
    try:
        validate_usage(candidate)
    except UsageError:
        valid = False
    else:
        valid = True
    assert usage_is_valid(candidate) is valid


# -- our own usage object, as the endpoint reads it ------------------------------------------


def test_our_own_usage_is_converted_and_validated() -> None:
    assert read_usage({"input_tokens": 5, "reasoning_tokens": 0}, None) == usage(input_tokens=5)
    ours = usage(input_tokens=7)
    assert read_usage(ours, None) is ours
    with pytest.raises(msgspec.ValidationError) as unknown:
        read_usage({"input_tokenz": 1}, None)
    assert str(unknown.value) == "Object contains unknown field `input_tokenz` - at `$.usage`"
    with pytest.raises(msgspec.ValidationError) as typed:
        read_usage({"input_tokens": "5"}, None)
    assert str(typed.value) == "Expected `int`, got `str` - at `$.usage.input_tokens`"
    with pytest.raises(msgspec.ValidationError) as shape:
        read_usage([], None)
    assert str(shape.value) == "Expected `object`, got `array` - at `$.usage`"
    error = _refused({"input_tokens": 1, "cache_read_tokens": 2}, None)
    assert error.fields == ("cache_read_tokens", "input_tokens")


def test_a_cost_request_keeps_a_providers_usage_until_it_is_priced() -> None:
    body = {"model": "gpt-4o", "usage": OPENAI_CHAT_CACHED_USAGE, "usage_format": "openai.chat"}
    request = msgspec.json.decode(json.dumps(body), type=CostRequest)
    assert (request.usage, request.usage_format) == (OPENAI_CHAT_CACHED_USAGE, "openai.chat")
    # ours is a Usage once the request is built, decoded or not
    own = msgspec.json.decode(b'{"model": "m", "usage": {"input_tokens": 3}}', type=CostRequest)
    assert own.usage == usage(input_tokens=3)
    assert CostRequest(model="m", usage={"output_tokens": 4}).usage == usage(output_tokens=4)
    assert CostRequest(model="m").usage == Usage()
    with pytest.raises(
        msgspec.ValidationError, match=r"Invalid enum value 'openai' - at `\$.usage_format`"
    ):
        msgspec.json.decode(b'{"model": "m", "usage_format": "openai"}', type=CostRequest)
    with pytest.raises(msgspec.ValidationError, match=r"got `str` - at `\$.usage.output_tokens`"):
        msgspec.json.decode(b'{"model": "m", "usage": {"output_tokens": "4"}}', type=CostRequest)


# -- end to end: the API prices a provider's usage -------------------------------------------

SEARCH = {f"search_context_size_{size}": 0.01 for size in ("low", "medium", "high")}
CLAUDE_PRICES: dict[str, Any] = {
    "input_cost_per_token": "3e-06",
    "output_cost_per_token": "1.5e-05",
    "cache_read_input_token_cost": "3e-07",
    "cache_creation_input_token_cost": "3.75e-06",
    "cache_creation_input_token_cost_above_1hr": "6e-06",
    "search_context_cost_per_query": SEARCH,
}


def _catalog() -> bytes:
    return document(
        {
            "gpt-4o": model_entry(
                0,
                input_cost_per_token="2.5e-06",
                output_cost_per_token="1e-05",
                cache_read_input_token_cost="1.25e-06",
            ),
            "o3": model_entry(1, input_cost_per_token="2e-06", output_cost_per_token="8e-06"),
            "claude-sonnet-4-5": model_entry(0, provider="anthropic", **CLAUDE_PRICES),
            "gemini-2.5-flash": model_entry(
                0,
                provider="gemini",
                input_cost_per_token="3e-07",
                output_cost_per_token="2.5e-06",
                cache_read_input_token_cost="7.5e-08",
                input_cost_per_audio_token="1e-06",
            ),
            "anthropic.claude-sonnet-4-5-20250929-v1:0": model_entry(
                0, provider="bedrock_converse", **CLAUDE_PRICES
            ),
        }
    )


@pytest.fixture
async def client(settings: Settings, upstream: Upstream) -> AsyncIterator[Client]:
    cfg = replace_settings(
        settings,
        model_cost_source_url=upstream.url,
        catalog_poll_interval_seconds=0.2,
        model_cost_fetch_retries=0,
    )
    upstream.serve(_catalog())
    assert (await refresh_catalog(cfg.core, cfg.costs, trigger="test")).outcome is Outcome.APPLIED
    async with AsyncTestClient(app=create_app(cfg)) as test_client:
        yield test_client


def _components(answer: dict[str, Any]) -> list[tuple[str, int, str, str]]:
    return [(c["name"], c["quantity"], c["unit_price"], c["cost"]) for c in answer["components"]]


async def _price(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/v1/costs/calculate", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_one_format_per_provider_prices_end_to_end(client: Client) -> None:
    # OpenAI: 86 uncached prompt tokens, 1920 read from the cache, 300 out
    openai = await _price(
        client,
        {"model": "gpt-4o", "usage_format": "openai.chat", "usage": OPENAI_CHAT_CACHED_USAGE},
    )
    assert _components(openai) == [
        ("input", 86, "0.0000025", "0.000215"),
        ("cache_read", 1920, "0.00000125", "0.0024"),
        ("output", 300, "0.00001", "0.003"),
    ]
    assert (openai["total"], openai["unpriced"], openai["notes"]) == ("0.005615", [], [])

    # Anthropic: 2048 uncached, 1800 read, 456 written for 5 minutes and 100 for 1 hour
    anthropic = await _price(
        client,
        {"model": "claude-sonnet-4-5", "usage_format": "anthropic", "usage": ANTHROPIC_1H_USAGE},
    )
    assert _components(anthropic) == [
        ("input", 2048, "0.000003", "0.006144"),
        ("cache_read", 1800, "0.0000003", "0.00054"),
        ("cache_write", 456, "0.00000375", "0.00171"),
        ("cache_write_1h", 100, "0.000006", "0.0006"),
        ("output", 503, "0.000015", "0.007545"),
    ]
    assert anthropic["total"] == "0.016539"

    # Gemini: 29 uncached prompt tokens, 696190 read from the cache, 214 out
    gemini = await _price(
        client,
        {
            "model": "gemini/gemini-2.5-flash",
            "usage_format": "gemini",
            "usage": GEMINI_CACHED_USAGE,
        },
    )
    assert _components(gemini) == [
        ("input", 29, "0.0000003", "0.0000087"),
        ("cache_read", 696190, "0.000000075", "0.05221425"),
        ("output", 214, "0.0000025", "0.000535"),
    ]
    assert gemini["total"] == "0.05275795"

    # Bedrock Converse: 24 uncached, 1823 written for 5 minutes and 1547 for 1 hour, 300 out
    bedrock = await _price(
        client,
        {
            "model": "anthropic.claude-sonnet-4-5-20250929-v1:0",
            "usage_format": "bedrock.converse",
            "usage": BEDROCK_MIXED_TTL_USAGE,
        },
    )
    assert _components(bedrock) == [
        ("input", 24, "0.000003", "0.000072"),
        ("cache_write", 1823, "0.00000375", "0.00683625"),
        ("cache_write_1h", 1547, "0.000006", "0.009282"),
        ("output", 300, "0.000015", "0.0045"),
    ]
    assert (bedrock["model"], bedrock["total"]) == (
        "anthropic.claude-sonnet-4-5-20250929-v1:0",
        "0.02069025",
    )


async def test_a_batch_reads_each_items_format_and_isolates_its_errors(client: Client) -> None:
    response = await client.post(
        "/v1/costs/calculate/batch",
        json={
            "requests": [
                # 6039 in, 931 out and one web search at $0.01
                {
                    "model": "claude-sonnet-4-5",
                    "usage_format": "anthropic",
                    "usage": ANTHROPIC_WEB_SEARCH_USAGE,
                },
                # 75 in, 1186 out of which 1024 reasoning, at the output price
                {
                    "model": "o3",
                    "usage_format": "openai.responses",
                    "usage": OPENAI_REASONING_GUIDE_USAGE,
                },
                {
                    "model": "claude-sonnet-4-5",
                    "usage_format": "anthropic",
                    "usage": ANTHROPIC_1H_DOCUMENTED["usage"],
                },
                {"model": "gpt-4o", "usage": {"input_tokens": 1000}},
            ]
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["succeeded"], body["failed"]) == (3, 1)
    search, reasoning, refused, ours = body["results"]
    assert _components(search["result"]) == [
        ("input", 6039, "0.000003", "0.018117"),
        ("output", 931, "0.000015", "0.013965"),
        ("web_searches", 1, "0.01", "0.01"),
    ]
    assert search["result"]["total"] == "0.042082"
    assert _components(reasoning["result"]) == [
        ("input", 75, "0.000002", "0.00015"),
        ("output", 162, "0.000008", "0.001296"),
        ("reasoning", 1024, "0.000008", "0.008192"),
    ]
    assert reasoning["result"]["total"] == "0.009638"
    assert reasoning["result"]["notes"] == ["no reasoning price; output price used"]
    assert refused["error"]["type"] == PROBLEM + "invalid-usage"
    assert refused["error"]["fields"] == [
        "usage.cache_creation.ephemeral_5m_input_tokens",
        "usage.cache_creation.ephemeral_1h_input_tokens",
        "usage.cache_creation_input_tokens",
    ]
    assert ours["result"]["total"] == "0.0025"


async def test_the_api_answers_a_providers_odd_usage_with_a_problem(client: Client) -> None:
    response = await client.post(
        "/v1/costs/calculate",
        json={"model": "gpt-4o", "usage_format": "openai.chat", "usage": {"completion_tokens": 3}},
    )
    assert response.status_code == 422
    problem = response.json()
    assert (problem["type"], problem["fields"]) == (
        PROBLEM + "invalid-usage",
        ["usage.prompt_tokens"],
    )
    assert problem["detail"] == "the openai.chat usage object has no usage.prompt_tokens"
    unknown = await client.post(
        "/v1/costs/calculate", json={"model": "gpt-4o", "usage_format": "openai", "usage": {}}
    )
    assert unknown.status_code == 422
    assert unknown.json()["type"] == PROBLEM + "invalid-request"
    assert unknown.json()["errors"][0]["field"] == "usage_format"


async def test_a_malformed_usage_of_ours_in_a_batch_names_its_item(client: Client) -> None:
    """Ours is read when the request is decoded: a batch item of the wrong shape fails the
    batch, as before, and the field names the item."""
    response = await client.post(
        "/v1/costs/calculate/batch",
        json={
            "requests": [{"model": "gpt-4o"}, {"model": "gpt-4o", "usage": {"input_tokens": "x"}}]
        },
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == PROBLEM + "invalid-request"
    assert problem["errors"] == [
        {
            "field": "requests[1].usage.input_tokens",
            "source": "body",
            "message": "Expected `int`, got `str`",
        }
    ]
    unknown = await client.post(
        "/v1/costs/calculate/batch", json={"requests": [{"model": "gpt-4o", "temperature": 1}]}
    )
    assert unknown.json()["errors"][0]["field"] == "requests[0]"
    assert "unknown field `temperature`" in unknown.json()["detail"]


async def test_the_openapi_schema_describes_both_kinds_of_usage(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    request = schema["components"]["schemas"]["CostRequest"]["properties"]
    assert request["usage"]["anyOf"] == [{"$ref": "#/components/schemas/Usage"}, {}]
    assert "usage_format" in request["usage"]["description"]
    assert request["usage_format"]["enum"] == [*USAGE_FORMATS, None]
    assert "usage" in request["usage_format"]["description"]
    assert "cache_read_tokens" in schema["components"]["schemas"]["Usage"]["properties"]
    batch = schema["components"]["schemas"]["BatchRequest"]["properties"]["requests"]
    assert batch["items"]["anyOf"][0] == {"$ref": "#/components/schemas/CostRequest"}


# -- the command line ------------------------------------------------------------------------


async def test_calc_prices_a_providers_usage_given_as_json(
    seeded_subprocess_env: dict[str, str], tmp_path: Any
) -> None:
    env = seeded_subprocess_env
    usage_json = json.dumps(OPENAI_CHAT_CACHED_USAGE)
    code, out, err = await run_module(
        "aiserver.costs.cli", env, "calc", "gpt-4o", "--usage-format", "openai.chat",
        "--usage", usage_json, "--json",
    )  # fmt: skip
    assert (code, err) == (0, "")
    # the bundled snapshot's gpt-4o: 2.5e-06 in, 1.25e-06 read from the cache, 1e-05 out
    assert json.loads(out)["total"] == "0.005615"
    code, out, err = await run_module(
        "aiserver.costs.cli", env, "calc", "gpt-4o", "--usage", '{"input_tokens": 1000}'
    )
    assert code == 0
    assert "total:    0.0025 USD" in out
    code, _, err = await run_module(
        "aiserver.costs.cli", env, "calc", "gpt-4o", "--usage-format", "gemini"
    )
    assert (code, err.strip()) == (2, "aiserver-costs calc: --usage-format needs --usage")
    code, _, err = await run_module(
        "aiserver.costs.cli", env, "calc", "gpt-4o", "--usage", "{}", "--input-tokens", "1"
    )
    assert (code, err.strip()) == (2, "aiserver-costs calc: give --usage or the counts, not both")
    code, out, _ = await run_module(
        "aiserver.costs.cli", env, "calc", "gpt-4o", "--usage-format", "openai.chat",
        "--usage", '{"prompt_tokens": -1, "completion_tokens": 0}', "--json",
    )  # fmt: skip
    assert code == 1
    assert json.loads(out)["error"]["fields"] == ["usage.prompt_tokens"]

    lines = [
        {"model": "gpt-4o", "usage_format": "openai.chat", "usage": OPENAI_CHAT_CACHED_USAGE},
        {"model": "gpt-4o", "usage_format": "openai.chat", "usage": {"prompt_tokens": 1}},
    ]
    batch = tmp_path / "usage.jsonl"
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, out, _ = await run_module("aiserver.costs.cli", env, "calc", "--batch", str(batch))
    assert code == 3  # a line failed (the second)
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["total"] == "0.005615"
    assert second["line"] == 2
    assert second["error"]["fields"] == ["usage.completion_tokens"]


async def test_calc_help_names_every_usage_format(subprocess_env: dict[str, str]) -> None:
    code, out, _ = await run_module("aiserver.costs.cli", subprocess_env, "calc", "--help")
    assert code == 0
    text = " ".join(out.split())
    for name in USAGE_FORMATS:
        assert name in text
