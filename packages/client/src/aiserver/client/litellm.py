"""A LiteLLM callback that reports every successful LiteLLM call to aiserver.

    import litellm
    from aiserver.client.litellm import AiserverCallback

    litellm.callbacks = [AiserverCallback()]  # AISERVER_URL, AISERVER_API_KEY

On the LiteLLM proxy, name the ready-made instance in its config (it is made on first use,
from the same environment variables):

    litellm_settings:
      callbacks: ["aiserver.client.litellm.proxy_callback"]

Needs the extra: `pip install 'aiserver-client[litellm]'`. Each successful call (sync or async,
streamed or not) becomes one event, queued on the client's background recorder (the call never
waits for aiserver):

- `id`: LiteLLM's call id (`litellm_call_id`), so a call reported twice is recorded once;
- `model`, `provider`: the model LiteLLM called and its provider (`custom_llm_provider`);
- `usage`: LiteLLM's usage, which it gives in OpenAI's chat shape for every provider, read into
  ours: `prompt_tokens` is every prompt token (for Anthropic LiteLLM adds the cache reads and
  writes to it), `prompt_tokens_details.cached_tokens` the cache reads,
  `prompt_tokens_details.cache_creation_tokens` (or `cache_creation_input_tokens`) the cache
  writes, `completion_tokens_details.reasoning_tokens` the reasoning, and so on;
- `occurred_at`: when the call ended;
- `tags`: the callback's own `tags`, then who called through the proxy (`litellm.key_alias`,
  `litellm.team`, `litellm.user`, `litellm.end_user`), then the call's metadata (the SDK's
  `metadata=`, the proxy request's `metadata`): entries whose key is a valid tag key and whose
  value is a string (cut to 256 characters), at most 20 tags in all; `metadata_keys` keeps only
  the keys it names.

A call answered from LiteLLM's cache (no provider call, no cost) and a response without usage
are not reported; `skipped` counts them.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, Optional

from litellm.integrations.custom_logger import CustomLogger  # type: ignore[import-not-found]

from aiserver.client.client import Client
from aiserver.client.models import Event
from aiserver.client.recorder import RecorderSettings

log = logging.getLogger("aiserver.client")

TAG_KEY = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")
MAX_TAGS = 20
MAX_TAG_VALUE = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: Our usage counts, from LiteLLM's usage: (ours, where LiteLLM keeps it) in the order tried.
_COUNTS: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    ("input_tokens", (("prompt_tokens",),)),
    ("output_tokens", (("completion_tokens",),)),
    ("cache_read_tokens", (("prompt_tokens_details", "cached_tokens"),
                           ("cache_read_input_tokens",))),
    ("cache_write_tokens", (("prompt_tokens_details", "cache_creation_tokens"),
                            ("cache_creation_input_tokens",))),
    ("cache_write_1h_tokens", (("prompt_tokens_details", "cache_creation_token_details",
                                "ephemeral_1h_input_tokens"),)),
    ("reasoning_tokens", (("completion_tokens_details", "reasoning_tokens"),)),
    ("input_audio_tokens", (("prompt_tokens_details", "audio_tokens"),)),
    ("input_image_tokens", (("prompt_tokens_details", "image_tokens"),)),
    ("output_audio_tokens", (("completion_tokens_details", "audio_tokens"),)),
    ("output_image_tokens", (("completion_tokens_details", "image_tokens"),)),
    ("web_searches", (("server_tool_use", "web_search_requests"),)),
)  # fmt: skip


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump()
    return getattr(value, "__dict__", None)


def _at(usage: Any, path: Iterable[str]) -> int:
    value = usage
    for name in path:
        plain = _plain(value)
        if not isinstance(plain, Mapping):
            return 0
        value = plain.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_of(usage: Any) -> dict[str, int]:
    """Our usage counts (the non-zero ones) from LiteLLM's usage object or dict."""
    counts: dict[str, int] = {}
    for ours, paths in _COUNTS:
        for path in paths:
            value = _at(usage, path)
            if value:
                counts[ours] = value
                break
    return counts


def _tag_value(value: Any) -> Optional[str]:
    """A metadata value as a tag's, or None: not a non-empty string, a control character, or
    a lone surrogate (`"\\ud800"` is valid JSON, which no UTF-8 body can carry)."""
    if not isinstance(value, str) or not value or _CONTROL.search(value):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value[:MAX_TAG_VALUE]


class AiserverCallback(CustomLogger):  # type: ignore[misc]  # litellm has no type hints
    """Reports each successful LiteLLM call through `client`'s background recorder (a new
    `Client` from the arguments, or from the environment, when none is given)."""

    def __init__(
        self,
        client: Optional[Client] = None,
        *,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        tags: Optional[Mapping[str, str]] = None,
        metadata_keys: Optional[Iterable[str]] = None,
        recorder: Optional[RecorderSettings] = None,
    ) -> None:
        super().__init__()
        self.client = client or Client(base_url, api_key, recorder=recorder)
        self.tags = dict(tags or {})
        if isinstance(metadata_keys, str):  # one key, not its characters
            metadata_keys = [metadata_keys]
        self.metadata_keys = None if metadata_keys is None else frozenset(metadata_keys)
        self.skipped = 0

    # LiteLLM calls one of these two per successful call (the async one for acompletion).
    def log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._report(kwargs, response_obj, end_time)

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._report(kwargs, response_obj, end_time)

    def _report(self, kwargs: dict[str, Any], response_obj: Any, end_time: Any) -> None:
        try:
            event = self.event(kwargs, response_obj, end_time)
        except Exception:  # a callback must never break the application's call
            log.exception("aiserver: the LiteLLM call could not be read as a usage event")
            return
        if event is None:
            self.skipped += 1
            return
        try:
            self.client.record_later(event)
        except Exception:  # one it cannot encode (a tag with a lone surrogate from JSON)
            log.exception("aiserver: the LiteLLM call's usage event could not be queued")

    def event(self, kwargs: Mapping[str, Any], response_obj: Any, end_time: Any) -> Optional[Event]:
        """The usage event of one LiteLLM call, or None when there is nothing to report."""
        logged = kwargs.get("standard_logging_object") or {}
        if logged.get("cache_hit") or kwargs.get("cache_hit"):
            return None
        response = kwargs.get("complete_streaming_response") or response_obj
        raw = getattr(response, "usage", None)
        if raw is None and isinstance(response, Mapping):
            raw = response.get("usage")
        usage = usage_of(raw) if raw is not None else {}
        if not usage:
            return None
        model = logged.get("model") or kwargs.get("model") or getattr(response, "model", None)
        if not isinstance(model, str) or not model:
            return None
        provider = logged.get("custom_llm_provider") or kwargs.get("custom_llm_provider")
        key = kwargs.get("litellm_call_id") or logged.get("litellm_call_id") or logged.get("id")
        return Event(
            id=str(key) if key else None,
            model=model,
            provider=provider if isinstance(provider, str) and provider else None,
            usage=dict(usage),
            occurred_at=self._ended(logged, end_time),
            tags=self._tags(kwargs, logged),
        )

    @staticmethod
    def _ended(logged: Mapping[str, Any], end_time: Any) -> Optional[datetime]:
        epoch = logged.get("endTime")
        if isinstance(epoch, (int, float)) and epoch > 0:
            return datetime.fromtimestamp(epoch, timezone.utc)
        if isinstance(end_time, datetime):  # LiteLLM's is naive local time
            return end_time.astimezone(timezone.utc)
        return None

    def _tags(self, kwargs: Mapping[str, Any], logged: Mapping[str, Any]) -> dict[str, str]:
        meta = logged.get("metadata") or {}
        identity = {
            "litellm.key_alias": meta.get("user_api_key_alias"),
            "litellm.team": meta.get("user_api_key_team_alias") or meta.get("user_api_key_team_id"),
            "litellm.user": meta.get("user_api_key_user_id"),
            "litellm.end_user": logged.get("end_user") or meta.get("user_api_key_end_user_id"),
        }
        through_proxy = meta.get("user_api_key_hash") is not None or meta.get("requester_metadata")
        if through_proxy:
            caller = meta.get("requester_metadata") or {}
        else:
            caller = (kwargs.get("litellm_params") or {}).get("metadata") or {}
        if self.metadata_keys is not None:
            caller = {k: v for k, v in caller.items() if k in self.metadata_keys}
        tags: dict[str, str] = {}
        for source in (self.tags, identity, caller):
            for name, raw in source.items():
                value = _tag_value(raw)
                if len(tags) >= MAX_TAGS:
                    return tags
                if value is not None and name not in tags and TAG_KEY.fullmatch(str(name)):
                    tags[str(name)] = value
        return tags


_proxy_callback: Optional[AiserverCallback] = None
_proxy_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    """`proxy_callback`: one `AiserverCallback` from the environment, made on first use (the
    LiteLLM proxy's config names it; nothing is made by importing this module)."""
    global _proxy_callback
    if name != "proxy_callback":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _proxy_lock:
        if _proxy_callback is None:
            _proxy_callback = AiserverCallback()
        return _proxy_callback
