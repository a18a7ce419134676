"""The LiteLLM callback with a real `litellm` (its `mock_response`: no provider is called)
against a real API process: each successful call, sync or async, is recorded once with
LiteLLM's call id, the model, the usage and the metadata as tags, at the cost the server gives
that usage. LiteLLM's usage for an Anthropic message with cache reads and writes costs what the
message's own usage costs."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import litellm
import pytest
from litellm.llms.anthropic.chat.transformation import AnthropicConfig
from litellm.proxy.types_utils.utils import get_instance_fn

import aiserver.client.litellm as integration
from aiserver.client import Client, RecorderSettings
from aiserver.client.litellm import AiserverCallback, usage_of

from ..costs.test_usage_formats import ANTHROPIC_MESSAGE
from ..reliability.harness import eventually
from .conftest import Ledger, Tenant, api_events, new_tenant, run_app, stored_keys

MESSAGES = [{"role": "user", "content": "Hello"}]
QUICK = RecorderSettings(batch_size=100, flush_interval=0.05)


@dataclass
class Registered:
    callback: AiserverCallback
    tenant: Tenant  # the project its key reports to

    def queued(self) -> int:
        return self.callback.client.stats().queued

    async def delivered(self, before: int, count: int) -> None:
        """Until LiteLLM has run the callback `count` more times than `before` (it may do so
        on a thread of its own after the call returns) and the recorder delivered it all."""

        async def queued() -> bool:
            return self.queued() >= before + count

        await eventually(queued, timeout=60)
        assert await asyncio.to_thread(self.callback.client.flush, 60)


def _unregister() -> None:
    # LiteLLM copies litellm.callbacks into lists of its own on the first call
    for name in ("callbacks", "success_callback", "_async_success_callback",
                 "failure_callback", "_async_failure_callback", "input_callback"):  # fmt: skip
        callbacks = getattr(litellm, name, None)
        if isinstance(callbacks, list):
            callbacks[:] = [c for c in callbacks if not isinstance(c, AiserverCallback)]


@pytest.fixture(scope="module")
async def registered(ledger: Ledger) -> AsyncIterator[Registered]:
    """The callback, registered with LiteLLM as an application does, once for the module."""
    tenant = await new_tenant(ledger.api, ledger.url, prefix="litellm")
    client = Client(ledger.api.base_url, tenant.key, recorder=QUICK)
    made = AiserverCallback(client, tags={"service": "chat"})
    litellm.callbacks = [made]
    try:
        yield Registered(made, tenant)
    finally:
        _unregister()
        await asyncio.to_thread(client.close)


async def test_a_completion_is_recorded_with_its_call_id_usage_and_tags(
    ledger: Ledger, registered: Registered
) -> None:
    tenant, before = registered.tenant, registered.queued()
    metadata = {"feature": "summarize", "attempt": 2, "bad key!": "x", "long": "y" * 300}
    response = await asyncio.to_thread(
        litellm.completion, model="gpt-4o", messages=MESSAGES, mock_response="Hi there",
        metadata=metadata,
    )  # fmt: skip
    await registered.delivered(before, 1)
    call_id = response._hidden_params["litellm_call_id"]
    event = (await api_events(ledger.api, tenant))[call_id]
    usage = {"input_tokens": response.usage.prompt_tokens,
             "output_tokens": response.usage.completion_tokens}  # fmt: skip
    assert event["usage"] == usage
    assert (event["model"], event["provider"], event["matched_model"]) == (
        "gpt-4o",
        "openai",
        "gpt-4o",
    )
    # strings only, valid keys only, cut to 256 characters; the callback's own tags first
    assert event["tags"] == {"service": "chat", "feature": "summarize", "long": "y" * 256}
    # gpt-4o in the bundled catalog: 2.5e-06 an input token, 1e-05 an output token
    input_cost = usage["input_tokens"] * Decimal("2.5e-06")
    expected = input_cost + usage["output_tokens"] * Decimal("1e-05")
    assert Decimal(event["total"]) == expected > 0
    with Client(ledger.api.base_url, tenant.key) as client:
        assert client.calculate("gpt-4o", usage).total == expected
    assert datetime.fromisoformat(event["occurred_at"]) <= datetime.fromisoformat(
        event["received_at"]
    )
    assert registered.callback.client.stats().rejected == 0


async def test_async_completions_are_each_recorded_once(
    ledger: Ledger, registered: Registered
) -> None:
    before = registered.queued()
    responses = await asyncio.gather(*(
        litellm.acompletion(model="gpt-4o-mini", messages=MESSAGES, mock_response=f"answer {i}")
        for i in range(5)
    ))  # fmt: skip
    await registered.delivered(before, 5)
    ids = {r._hidden_params["litellm_call_id"] for r in responses}
    assert len(ids) == 5
    stored = await stored_keys(ledger.url, registered.tenant.id)
    assert {key: stored.get(key) for key in ids} == dict.fromkeys(ids, 1)
    assert registered.queued() == before + 5  # one event per call, none twice


#: An application that makes one `acompletion` and ends: LiteLLM runs the success callbacks of
#: an async call in a logging worker of its own, which the exit drains in an exit hook of its
#: own. Imported first, as docs/client.md shows, LiteLLM's hook runs after the client's.
ACOMPLETION_THEN_EXIT = textwrap.dedent(
    """
    import asyncio, sys
    import litellm
    from aiserver.client import Client
    from aiserver.client.litellm import AiserverCallback

    url, key = sys.argv[1:]
    litellm.callbacks = [AiserverCallback(Client(url, key))]

    async def main():
        response = await litellm.acompletion(
            model="gpt-4o", messages=[{"role": "user", "content": "Hello"}], mock_response="Hi"
        )
        print(response._hidden_params["litellm_call_id"], flush=True)

    asyncio.run(main())
    """
)


async def test_an_async_completion_just_before_the_exit_is_recorded(
    ledger: Ledger, tmp_path: Path
) -> None:
    # Before, its event came after the client's exit hook had closed the recorders: 0 rows in
    # 3 runs of 3, and no log line (a new recorder's daemon thread died with the interpreter).
    tenant = await new_tenant(ledger.api, ledger.url, prefix="litellm-exit")
    out, err = await run_app(tmp_path, ACOMPLETION_THEN_EXIT, ledger.api.base_url, tenant.key)
    call_id = out.decode().strip()
    assert await stored_keys(ledger.url, tenant.id) == {call_id: 1}, err.decode()[-2000:]


async def test_streamed_completions_are_recorded_once_each(
    ledger: Ledger, registered: Registered
) -> None:
    before = registered.queued()

    def stream() -> str:
        chunks = list(litellm.completion(model="gpt-4o", messages=MESSAGES,
                                         mock_response="one two three", stream=True))  # fmt: skip
        return str(chunks[0].id)

    async def astream() -> str:
        chunks = [c async for c in await litellm.acompletion(
            model="gpt-4o", messages=MESSAGES, mock_response="four five", stream=True)]  # fmt: skip
        return str(chunks[0].id)

    # the project's events from the module's other tests are not these calls'
    earlier = set(await api_events(ledger.api, registered.tenant))
    await asyncio.to_thread(stream)
    await astream()
    await registered.delivered(before, 2)
    events = await api_events(ledger.api, registered.tenant)
    new = [event for key, event in events.items() if key not in earlier]
    assert len(new) == 2, new
    for event in new:
        assert event["model"] == "gpt-4o"
        assert event["usage"]["input_tokens"] > 0
        assert event["usage"]["output_tokens"] > 0
    assert registered.queued() == before + 2  # one event per streamed call


def anthropic_response() -> litellm.ModelResponse:
    """What LiteLLM answers for the Anthropic Messages API's documented example: its own
    reading of that message's usage (cache reads and writes added to prompt_tokens)."""
    usage = AnthropicConfig().calculate_usage(ANTHROPIC_MESSAGE["usage"], None)
    return litellm.ModelResponse(
        id=ANTHROPIC_MESSAGE["id"], model="claude-opus-4-6", usage=usage,
        choices=[{"index": 0, "finish_reason": "stop",
                  "message": {"role": "assistant", "content": "Hi! My name is Claude."}}],
    )  # fmt: skip


def test_litellms_anthropic_usage_reads_as_the_messages_own() -> None:
    # Anthropic's input_tokens 2095 leave out the 2051 tokens read and the 2051 written
    assert usage_of(anthropic_response().usage) == {
        "input_tokens": 6197, "output_tokens": 503, "cache_read_tokens": 2051,
        "cache_write_tokens": 2051,
    }  # fmt: skip


async def test_an_anthropic_call_with_cache_costs_what_its_message_costs(
    ledger: Ledger, registered: Registered
) -> None:
    tenant, before = registered.tenant, registered.queued()
    response = await litellm.acompletion(
        model="anthropic/claude-opus-4-6", messages=MESSAGES, mock_response=anthropic_response()
    )
    await registered.delivered(before, 1)
    event = (await api_events(ledger.api, tenant))[response._hidden_params["litellm_call_id"]]
    with Client(ledger.api.base_url, tenant.key) as client:
        own = client.calculate(
            "claude-opus-4-6", ANTHROPIC_MESSAGE["usage"], usage_format="anthropic"
        )
    assert (event["model"], event["provider"]) == ("claude-opus-4-6", "anthropic")
    assert event["usage"]["cache_write_tokens"] == 2051
    # claude-opus-4-6 in the bundled catalog: 2095 uncached at 5e-06, 2051 cache reads at
    # 5e-07, 2051 cache writes at 6.25e-06, 503 out at 2.5e-05:
    # 0.010475 + 0.0010255 + 0.01281875 + 0.012575
    assert Decimal(event["total"]) == own.total == Decimal("0.03689425")


# -- the LiteLLM proxy ----------------------------------------------------------------------------


def proxy_metadata() -> dict[str, Any]:
    """The metadata the LiteLLM proxy gives the call it makes for a request: who called (its
    virtual key, team, user), the request's own `metadata` (requester_metadata), and its own
    keys, which are not tags."""
    return {
        "user_api_key_hash": "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b",
        "user_api_key_alias": "search-backend",
        "user_api_key_team_alias": "search",
        "user_api_key_user_id": "u-42",
        "requester_metadata": {"feature": "rerank", "trace": 7},
        "endpoint": "http://0.0.0.0:4000/chat/completions",
        "headers": {"content-type": "application/json"},
    }


async def test_a_proxy_call_is_tagged_with_who_made_it(
    ledger: Ledger, registered: Registered
) -> None:
    tenant, before = registered.tenant, registered.queued()
    response = await litellm.acompletion(
        model="gpt-4o", messages=MESSAGES, mock_response="ok", metadata=proxy_metadata()
    )
    await registered.delivered(before, 1)
    event = (await api_events(ledger.api, tenant))[response._hidden_params["litellm_call_id"]]
    assert event["tags"] == {
        "service": "chat", "litellm.key_alias": "search-backend", "litellm.team": "search",
        "litellm.user": "u-42", "feature": "rerank",
    }  # fmt: skip


def test_the_proxy_config_names_a_callback_made_from_the_environment(
    ledger: Ledger, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AISERVER_URL", ledger.api.base_url)
    monkeypatch.setenv("AISERVER_API_KEY", tenant.key)
    monkeypatch.setattr(integration, "_proxy_callback", None)
    made = get_instance_fn("aiserver.client.litellm.proxy_callback")  # as the proxy loads it
    assert isinstance(made, AiserverCallback)
    assert get_instance_fn("aiserver.client.litellm.proxy_callback") is made
    assert made.client.base_url == ledger.api.base_url
    made.client.close()
    with pytest.raises(AttributeError):
        integration.no_such_name  # noqa: B018


def test_a_cache_hit_or_a_response_without_usage_is_not_reported(
    registered: Registered,
) -> None:
    callback = registered.callback
    response = litellm.ModelResponse(
        model="gpt-4o", usage={"prompt_tokens": 5, "completion_tokens": 1}
    )
    assert callback.event({"cache_hit": True, "model": "gpt-4o"}, response, None) is None
    assert callback.event({"model": "gpt-4o"}, litellm.EmbeddingResponse(), None) is None
    assert callback.event({"model": "gpt-4o"}, response, None) is not None


def test_text_that_utf8_cannot_carry_is_no_tag_and_never_raises_into_litellm(
    registered: Registered, caplog: pytest.LogCaptureFixture
) -> None:
    # A lone surrogate is valid JSON (a proxy request's `metadata`), which json.loads gives as
    # such; encoding the event raised UnicodeEncodeError into LiteLLM.
    callback = registered.callback
    response = litellm.ModelResponse(
        model="gpt-4o", usage={"prompt_tokens": 5, "completion_tokens": 1}
    )
    metadata = {"team": "search\ud800", "feature": "rerank"}
    kwargs = {"model": "gpt-4o", "litellm_params": {"metadata": metadata}}
    event = callback.event(kwargs, response, None)
    assert event is not None
    assert event.tags == {"service": "chat", "feature": "rerank"}  # the surrogate's left out
    before = registered.queued()
    callback.log_success_event({**kwargs, "model": "gpt-4o\ud800"}, response, None, None)
    assert registered.queued() == before  # the model's name cannot be sent: logged, not queued
    assert "the LiteLLM call's usage event could not be queued" in caplog.text


def test_metadata_keys_given_as_one_string_keep_that_key(registered: Registered) -> None:
    """`metadata_keys="team"` keeps the metadata's `team`, as `["team"]` does. Before, the
    string was taken as its characters ({"t", "e", "a", "m"}): every metadata tag was left
    out, unsaid."""
    response = litellm.ModelResponse(
        model="gpt-4o", usage={"prompt_tokens": 5, "completion_tokens": 1}
    )
    kwargs = {"model": "gpt-4o", "litellm_params": {"metadata": {"team": "search", "x": "y"}}}
    for keys in ("team", ["team"]):
        callback = AiserverCallback(registered.callback.client, metadata_keys=keys)
        event = callback.event(kwargs, response, None)
        assert event is not None
        assert event.tags == {"team": "search"}, keys
