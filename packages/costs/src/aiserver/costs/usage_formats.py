"""A provider's own usage object, read as ours: the usage formats of a cost request or an event.

A cost request (and a usage event) may give the usage object a provider answered with, and name
it in ``usage_format``; :func:`read_usage` reads it as our :class:`Usage` (docs/usage-formats.md
has each provider's definitions, quoted, and an example request per format). Our semantics:
``input_tokens`` counts every prompt token, cache reads and writes included, and
``output_tokens`` every generated token, reasoning included; the other token counts are parts
of them (see :class:`Usage`). Where a provider reports a part outside its total, the mapping adds
it back.

Each format is a table (:class:`Format`): every count of ours is the sum of the provider's
counts named in its row, with the provider's checks beside it. A provider count is a whole
number from 0 to :data:`MAX_QUANTITY`; a missing or null one is 0, except the totals a format
requires. Fields a provider adds are ignored, but the object itself must be a JSON object. A
count that is wrong, or a part the provider reports larger than its total, is a
:class:`UsageError` (422 ``invalid-usage``) whose ``fields`` are the provider's paths from the
request (``usage.prompt_tokens_details.cached_tokens``).

Everything here is pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, NamedTuple, get_args

import msgspec

from aiserver.costs.errors import UsageError
from aiserver.costs.pricing.usage import MAX_QUANTITY, Usage, usage_is_valid, validate_usage

UsageFormat = Literal["openai.chat", "openai.responses", "anthropic", "gemini", "bedrock.converse"]
USAGE_FORMATS: Final[tuple[UsageFormat, ...]] = get_args(UsageFormat)

#: Where the usage object is in a cost request or an event: every path an error names starts here.
ROOT: Final = "usage"


#: The lists a read has summed already: (path, key, amount) -> the sums by value of the key.
Sums = dict[tuple[str, str, str], dict[Any, int]]


class Count(NamedTuple):
    """The count at ``path`` (keys joined by dots) of the provider's object."""

    path: str

    def read(self, raw: Mapping[str, Any], sums: Sums) -> int:
        return _count(_at(raw, self.path), self.path)

    def given(self, raw: Mapping[str, Any]) -> bool:
        """Whether the object holds this count (not missing, not null)."""
        return _at(raw, self.path) is not None

    def named(self) -> str:
        """The field an error names."""
        return f"{ROOT}.{self.path}"

    def spelled(self) -> str:
        """The count as a message writes it."""
        return self.named()


class Listed(NamedTuple):
    """The sum of ``amount`` over the entries of the list at ``path`` whose ``key`` is ``value``
    (Gemini's ``[{"modality": "AUDIO", "tokenCount": 12}]``, Bedrock's ``cacheDetails``)."""

    path: str
    key: str
    value: str
    amount: str

    def read(self, raw: Mapping[str, Any], sums: Sums) -> int:
        summed = sums.get((self.path, self.key, self.amount))
        if summed is None:
            summed = sums[self.path, self.key, self.amount] = self._sums(raw)
        return summed.get(self.value, 0)

    def _sums(self, raw: Mapping[str, Any]) -> dict[Any, int]:
        """The list's amounts summed by the value of the key, every entry checked."""
        entries = _at(raw, self.path)
        if entries is None:
            return {}
        if type(entries) is not list:
            raise UsageError(f"{self.named()} must be a list", (self.named(),))
        summed: dict[Any, int] = {}
        for index, entry in enumerate(entries):
            if type(entry) is not dict:
                where = f"{ROOT}.{self.path}[{index}]"
                raise UsageError(f"{where} must be a JSON object", (where,))
            value = entry.get(self.key)
            if type(value) is str:  # a value of another type is no value this reads
                amount = entry.get(self.amount)
                if type(amount) is not int or not 0 <= amount <= MAX_QUANTITY:
                    amount = _count(amount, f"{self.path}[{index}].{self.amount}")
                summed[value] = summed.get(value, 0) + amount
        return summed

    def given(self, raw: Mapping[str, Any]) -> bool:
        return _at(raw, self.path) is not None

    def named(self) -> str:
        return f"{ROOT}.{self.path}"

    def spelled(self) -> str:
        return f"{ROOT}.{self.path}[{self.key}={self.value}].{self.amount}"


class Less(NamedTuple):
    """A count taken away: the tokens that ``source`` counts are not in this count of ours."""

    source: Count | Listed

    def read(self, raw: Mapping[str, Any], sums: Sums) -> int:
        return -self.source.read(raw, sums)

    def given(self, raw: Mapping[str, Any]) -> bool:
        return self.source.given(raw)

    def named(self) -> str:
        return self.source.named()

    def spelled(self) -> str:
        return self.source.spelled()


Source = Count | Listed | Less


class Bound(NamedTuple):
    """A check of the provider's own counts: the ``parts`` add up to at most ``total`` (or, when
    ``exact``, to exactly ``total``, if the object holds it)."""

    total: Count
    parts: tuple[Count | Listed, ...]
    exact: bool = False


class Format(NamedTuple):
    """How one provider's usage object reads as ours."""

    name: UsageFormat
    #: Each count of ours, as the sum of the provider's counts (a count left out is 0).
    counts: Mapping[str, tuple[Source, ...]]
    #: The provider's totals that must be present: without them the object is not this format.
    required: tuple[str, ...]
    #: The provider's own checks, made before the mapping.
    bounds: tuple[Bound, ...] = ()
    #: What the table cannot say: a reading that depends on several of the provider's counts at
    #: once, made on our counts after the table and before validation.
    refine: Callable[[Mapping[str, Any], dict[str, int]], None] | None = None


def _at(raw: Mapping[str, Any], path: str) -> Any:
    """The value at ``path`` of the object, None when any key on the way is missing or null."""
    value: Any = raw
    walked = ROOT
    for key in path.split("."):
        if value is None:
            return None
        if type(value) is not dict:
            raise UsageError(f"{walked} must be a JSON object", (walked,))
        value = value.get(key)
        walked = f"{walked}.{key}"
    return value


def _count(value: Any, path: str) -> int:
    """A provider's count: a whole number from 0 to MAX_QUANTITY; null (or missing) is 0."""
    if value is None:
        return 0
    if type(value) is not int or not 0 <= value <= MAX_QUANTITY:
        field = f"{ROOT}.{path}"
        raise UsageError(
            f"{field} must be a whole number from 0 to {MAX_QUANTITY}, not {value!r:.60}", (field,)
        )
    return value


def _modalities(path: str, *modality: str) -> tuple[Listed, ...]:
    """Gemini's ModalityTokenCount list at ``path``: its entries of these modalities."""
    return tuple(Listed(path, "modality", name, "tokenCount") for name in modality)


#: The modality counts of ours whose cache reads our usage can name: each with the part of it
#: read from the cache, or None where a cache read of that modality is a cache read only
#: (:class:`Usage` has no count of cached video).
_CACHED_MODALITY: Final[Mapping[str, str | None]] = {
    "input_audio_tokens": "cache_read_audio_tokens",
    "input_image_tokens": "cache_read_image_tokens",
    "input_video_tokens": None,
}


def _split_unsplit_cache(counts: dict[str, int], prompt: int, in_prompt: Mapping[str, int]) -> None:
    """Cache reads the provider reports without their modality, where the counts prove that
    some of them are of one modality. ``prompt`` is the count of the prompt the cache reads lie
    in, and ``in_prompt`` the count of each modality of ours (``input_audio_tokens``) in it:
    Gemini's cache is part of ``promptTokenCount``, not of its tool-use prompt, whose tokens
    are no room for cached ones.

    The provider's modality counts (OpenAI's ``prompt_tokens_details.image_tokens``, Gemini's
    ``promptTokensDetails``) count a modality's tokens wherever they came from, the cache
    included, and the cache reads do not say their modality: they are read as text as far as
    the counts allow. When the cache reads and the modality add up to more than the prompt, the
    excess is tokens both read from the cache and of that modality (the fewest the counts
    allow); read as text, the rest of the prompt would be negative and the usage refused. Which
    modality they are is certain only when one modality is reported and no cache writes are
    (writes may be of a modality too): only then is the excess placed; otherwise the usage stays
    a part larger than its total, and is refused.
    """
    reported = [name for name, count in in_prompt.items() if count]
    if len(reported) != 1 or counts.get("cache_write_tokens", 0):
        return
    (modality,) = reported
    cached = counts.get("cache_read_tokens", 0)
    excess = cached + in_prompt[modality] - prompt
    if excess <= 0 or excess > min(cached, in_prompt[modality]):
        return
    part = _CACHED_MODALITY[modality]
    if part is None:
        counts[modality] -= excess  # read from the cache: a cache read only
    else:
        counts[part] = counts.get(part, 0) + excess


def _refine_openai_chat(raw: Mapping[str, Any], counts: dict[str, int]) -> None:
    _split_unsplit_cache(
        counts,
        counts["input_tokens"],
        {name: counts[name] for name in ("input_audio_tokens", "input_image_tokens")},
    )


#: Gemini's modalities, as our counts of the input name them.
_GEMINI_MODALITIES: Final = {
    "input_audio_tokens": "AUDIO",
    "input_image_tokens": "IMAGE",
    "input_video_tokens": "VIDEO",
}


def _refine_gemini(raw: Mapping[str, Any], counts: dict[str, int]) -> None:
    """Thoughts already counted in ``candidatesTokenCount``, and cache reads without
    ``cacheTokensDetails``.

    ``totalTokenCount`` is "the sum of prompt_token_count, candidates_token_count,
    tool_use_prompt_token_count, and thoughts_token_count". Some answers of the Gemini API
    (early 2025) counted the thoughts inside ``candidatesTokenCount`` instead; their
    ``totalTokenCount`` is the prompt, the tool-use prompt and the candidates alone, and adding
    the thoughts again would bill them twice. LiteLLM reads such a body the same way
    (``is_candidate_token_count_inclusive``). Only a total that is a count says so, and only of
    thoughts that fit in the candidates; otherwise the definition holds.
    """
    thoughts = counts["reasoning_tokens"]
    candidates = counts["output_tokens"] - thoughts
    total = _at(raw, "totalTokenCount")
    if (
        0 < thoughts <= candidates
        and type(total) is int
        and total == counts["input_tokens"] + candidates
    ):
        counts["output_tokens"] = candidates
    if _at(raw, "cacheTokensDetails") is None:  # the cache is part of the prompt alone
        sums: Sums = {}
        in_prompt = {
            name: sum(part.read(raw, sums) for part in _modalities("promptTokensDetails", kind))
            for name, kind in _GEMINI_MODALITIES.items()
        }
        _split_unsplit_cache(
            counts, _count(_at(raw, "promptTokenCount"), "promptTokenCount"), in_prompt
        )


OPENAI_CHAT: Final = Format(
    "openai.chat",
    counts={
        "input_tokens": (Count("prompt_tokens"),),
        "output_tokens": (Count("completion_tokens"),),
        "cache_read_tokens": (Count("prompt_tokens_details.cached_tokens"),),
        "cache_write_tokens": (Count("prompt_tokens_details.cache_write_tokens"),),
        "input_audio_tokens": (Count("prompt_tokens_details.audio_tokens"),),
        "input_image_tokens": (Count("prompt_tokens_details.image_tokens"),),
        "reasoning_tokens": (Count("completion_tokens_details.reasoning_tokens"),),
        "output_audio_tokens": (Count("completion_tokens_details.audio_tokens"),),
    },
    required=("prompt_tokens", "completion_tokens"),
    refine=_refine_openai_chat,
)
"""OpenAI Chat Completions, ``usage`` of a chat completion
(https://platform.openai.com/docs/api-reference/chat/object).

``prompt_tokens``: "Number of tokens in the prompt"; ``completion_tokens``: "Number of tokens in
the generated completion". ``prompt_tokens_details``: ``cached_tokens`` "Cached tokens present in
the prompt", ``cache_write_tokens`` "The unadjusted number of prompt tokens written to cache",
``audio_tokens`` "Audio input tokens present in the prompt", ``image_tokens`` "Image input
tokens present in the prompt". ``completion_tokens_details``: ``reasoning_tokens`` "Tokens
generated by the model for reasoning", ``audio_tokens`` "Audio input tokens generated by the
model". The details are parts of their totals, as ours are; the predicted-output counts are
"counted in the total completion tokens for purposes of billing" and priced as output text.
Cached tokens of a modality are placed where the counts prove them (:func:`_split_unsplit_cache`).
"""

OPENAI_RESPONSES: Final = Format(
    "openai.responses",
    counts={
        "input_tokens": (Count("input_tokens"),),
        "output_tokens": (Count("output_tokens"),),
        "cache_read_tokens": (Count("input_tokens_details.cached_tokens"),),
        "cache_write_tokens": (Count("input_tokens_details.cache_write_tokens"),),
        "reasoning_tokens": (Count("output_tokens_details.reasoning_tokens"),),
    },
    required=("input_tokens", "output_tokens"),
)
"""OpenAI Responses, ``usage`` of a response
(https://platform.openai.com/docs/api-reference/responses/object).

``input_tokens``: "The number of input tokens"; ``input_tokens_details.cached_tokens``: "The
number of tokens that were retrieved from the cache"; ``input_tokens_details.cache_write_tokens``:
"The number of input tokens that were written to the cache"; ``output_tokens``: "The number of
output tokens"; ``output_tokens_details.reasoning_tokens``: "The number of reasoning tokens".
The details are parts of their totals, as ours are.
"""

ANTHROPIC: Final = Format(
    "anthropic",
    counts={
        "input_tokens": (
            Count("input_tokens"),
            Count("cache_read_input_tokens"),
            Count("cache_creation_input_tokens"),
        ),
        "output_tokens": (Count("output_tokens"),),
        "cache_read_tokens": (Count("cache_read_input_tokens"),),
        "cache_write_tokens": (Count("cache_creation_input_tokens"),),
        "cache_write_1h_tokens": (Count("cache_creation.ephemeral_1h_input_tokens"),),
        "reasoning_tokens": (Count("output_tokens_details.thinking_tokens"),),
        "web_searches": (Count("server_tool_use.web_search_requests"),),
    },
    required=("input_tokens", "output_tokens"),
    bounds=(
        Bound(
            Count("cache_creation_input_tokens"),
            (
                Count("cache_creation.ephemeral_5m_input_tokens"),
                Count("cache_creation.ephemeral_1h_input_tokens"),
            ),
        ),
    ),
)
"""Anthropic Messages, ``usage`` of a message
(https://docs.anthropic.com/en/api/messages, and prompt caching:
https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching).

``input_tokens`` is "Number of input tokens which were not read from or used to create a cache
(that is, tokens after the last cache breakpoint)", and "total_input_tokens =
cache_read_input_tokens + cache_creation_input_tokens + input_tokens": the mapping adds the cache
reads and writes back. ``cache_read_input_tokens``: "Number of tokens retrieved from the cache for
this request"; ``cache_creation_input_tokens``: "Number of tokens written to the cache when
creating a new entry", which "equals the sum of the values in the ``cache_creation`` object"
(``ephemeral_5m_input_tokens``, ``ephemeral_1h_input_tokens``: "The number of input tokens used
to create the 1 hour cache entry"). Writes the breakdown does not cover are 5-minute writes, the
default TTL. ``output_tokens_details.thinking_tokens``: "Number of output tokens the model
generated as internal reasoning ... Always ≤ ``output_tokens``".
``server_tool_use.web_search_requests``: "The number of web search tool requests".
"""

GEMINI: Final = Format(
    "gemini",
    counts={
        "input_tokens": (Count("promptTokenCount"), Count("toolUsePromptTokenCount")),
        "output_tokens": (Count("candidatesTokenCount"), Count("thoughtsTokenCount")),
        "cache_read_tokens": (Count("cachedContentTokenCount"),),
        "reasoning_tokens": (Count("thoughtsTokenCount"),),
        "input_audio_tokens": _modalities("promptTokensDetails", "AUDIO")
        + _modalities("toolUsePromptTokensDetails", "AUDIO"),
        "input_image_tokens": _modalities("promptTokensDetails", "IMAGE")
        + _modalities("toolUsePromptTokensDetails", "IMAGE"),
        # Usage has no count of cached video: video read from cache is a cache read only.
        "input_video_tokens": _modalities("promptTokensDetails", "VIDEO")
        + _modalities("toolUsePromptTokensDetails", "VIDEO")
        + tuple(Less(part) for part in _modalities("cacheTokensDetails", "VIDEO")),
        "cache_read_audio_tokens": _modalities("cacheTokensDetails", "AUDIO"),
        "cache_read_image_tokens": _modalities("cacheTokensDetails", "IMAGE"),
        "output_audio_tokens": _modalities("candidatesTokensDetails", "AUDIO"),
        "output_image_tokens": _modalities("candidatesTokensDetails", "IMAGE"),
        "output_video_tokens": _modalities("candidatesTokensDetails", "VIDEO"),
    },
    required=("promptTokenCount",),
    # the cached content is part of the prompt; the tool-use prompt is no room for it
    bounds=(Bound(Count("promptTokenCount"), (Count("cachedContentTokenCount"),)),),
    refine=_refine_gemini,
)
"""Gemini, ``usageMetadata`` of a GenerateContentResponse
(https://ai.google.dev/api/generate-content#UsageMetadata).

``promptTokenCount``: "Number of tokens in the prompt. When cachedContent is set, this is still
the total effective prompt size meaning this includes the number of tokens in the cached
content"; ``cachedContentTokenCount``: "Number of tokens in the cached part of the prompt (the
cached content)". ``toolUsePromptTokenCount``: "Number of tokens present in tool-use prompt(s)",
and ``thoughtsTokenCount``: "Number of tokens of thoughts for thinking models" are outside
``promptTokenCount`` and ``candidatesTokenCount`` ("Total number of tokens across all the
generated response candidates"): ``totalTokenCount`` is "the sum of prompt_token_count,
candidates_token_count, tool_use_prompt_token_count, and thoughts_token_count"
(https://cloud.google.com/vertex-ai/generative-ai/docs/reference/rest/v1/GenerateContentResponse),
so the mapping adds tool-use prompts to the input and thoughts to the output.
``promptTokensDetails``, ``toolUsePromptTokensDetails``, ``cacheTokensDetails`` and
``candidatesTokensDetails`` are lists of ``{"modality", "tokenCount"}``; AUDIO, IMAGE and VIDEO
are parts of their totals, TEXT and DOCUMENT are text. A zero count may be left out (JSON of a
protocol buffer omits defaults), so a missing one is 0. :func:`_refine_gemini` reads thoughts
that ``totalTokenCount`` puts inside the candidates, and cache reads without their modalities.
"""

BEDROCK_CONVERSE: Final = Format(
    "bedrock.converse",
    counts={
        "input_tokens": (
            Count("inputTokens"),
            Count("cacheReadInputTokens"),
            Count("cacheWriteInputTokens"),
        ),
        "output_tokens": (Count("outputTokens"),),
        "cache_read_tokens": (Count("cacheReadInputTokens"),),
        "cache_write_tokens": (Count("cacheWriteInputTokens"),),
        "cache_write_1h_tokens": (Listed("cacheDetails", "ttl", "1h", "inputTokens"),),
    },
    required=("inputTokens", "outputTokens"),
    bounds=(
        Bound(
            Count("cacheWriteInputTokens"),
            (
                Listed("cacheDetails", "ttl", "1h", "inputTokens"),
                Listed("cacheDetails", "ttl", "5m", "inputTokens"),
            ),
        ),
        Bound(
            Count("totalTokens"),
            (
                Count("inputTokens"),
                Count("cacheReadInputTokens"),
                Count("cacheWriteInputTokens"),
                Count("outputTokens"),
            ),
            exact=True,
        ),
    ),
)
"""Amazon Bedrock Converse, ``usage`` of a Converse response: a TokenUsage
(https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_TokenUsage.html).

``inputTokens``: "The number of tokens sent in the request to the model"; ``outputTokens``: "The
number of tokens that the model generated for the request"; ``totalTokens``: "The total of input
tokens and tokens generated by the model"; ``cacheReadInputTokens``: "The number of input tokens
read from the cache for the request"; ``cacheWriteInputTokens``: "The number of input tokens
written to the cache for the request"; ``cacheDetails``: "Detailed breakdown of cache writes by
TTL", entries of ``ttl`` (``5m`` or ``1h``) and ``inputTokens``, "Number of tokens written to
cache with this TTL". Bedrock reports the cache reads and writes beside ``inputTokens``, not in
it: the total of the input is ``totalTokens - outputTokens``, which is ``inputTokens +
cacheReadInputTokens + cacheWriteInputTokens`` (the "Any tokens not read from or written to
cache" that the prompt-caching guide bills at the input rate are ``inputTokens``). A body whose
``totalTokens`` says otherwise is refused rather than guessed at.
"""

FORMATS: Final[Mapping[str, Format]] = {
    fmt.name: fmt for fmt in (OPENAI_CHAT, OPENAI_RESPONSES, ANTHROPIC, GEMINI, BEDROCK_CONVERSE)
}
if tuple(FORMATS) != USAGE_FORMATS:
    raise ValueError("FORMATS and UsageFormat name different formats")
_WRONG_FIELDS: Final = {
    name for fmt in FORMATS.values() for name in fmt.counts if name not in Usage.__struct_fields__
}
if _WRONG_FIELDS:
    raise ValueError(f"usage formats fill fields Usage does not have: {sorted(_WRONG_FIELDS)}")


def read_usage(usage: Any, usage_format: str | None) -> Usage:
    """Our :class:`Usage`, valid for pricing, from a usage object: ours (``usage_format`` None)
    or a provider's (one of :data:`USAGE_FORMATS`).

    Ours is a :class:`Usage` or an object decoded from JSON, converted as a cost request's
    ``usage`` is (:func:`convert_usage`): an unknown field or a value of the wrong type is a
    ``msgspec.ValidationError`` whose path starts at ``$.usage``. A provider's is read by its
    :class:`Format`. Counts that cannot be priced are a :class:`UsageError` naming the fields:
    ours, or the provider's paths (``usage.prompt_tokens_details.cached_tokens``).
    """
    if usage_format is None:
        own = convert_usage(usage)
        if not usage_is_valid(own):
            validate_usage(own)
        return own
    fmt = FORMATS.get(usage_format)
    if fmt is None:
        raise UsageError(
            f"unknown usage_format {usage_format!r:.60}; use one of {', '.join(USAGE_FORMATS)}",
            ("usage_format",),
        )
    if type(usage) is not dict:
        raise UsageError(f"{ROOT} must be the {fmt.name} usage object, a JSON object", (ROOT,))
    return _read(fmt, usage)


def convert_usage(usage: Any) -> Usage:
    """Our own usage object as a :class:`Usage`, decoded as the ``usage`` field of a request is
    (not validated: a quote does that). A ``msgspec.ValidationError`` names the path from the
    request, ``$.usage.input_tokens``, as it would if msgspec had decoded the field itself."""
    if type(usage) is Usage:
        return usage
    try:
        return msgspec.convert(usage, Usage)
    except msgspec.ValidationError as exc:
        raise located(exc, f".{ROOT}") from None


def located(error: msgspec.ValidationError, at: str) -> msgspec.ValidationError:
    """The error of a value decoded apart, with the path msgspec would give it had it decoded
    the value where it is nested: ``at`` (``.usage``, ``.requests[3]``), then the error's own
    path (msgspec writes "... - at `$.input_tokens`", and nothing for the value itself)."""
    message, found, path = str(error).partition(" - at `$")
    return msgspec.ValidationError(f"{message} - at `${at}{path if found else '`'}")


def _read(fmt: Format, raw: dict[str, Any]) -> Usage:
    for path in fmt.required:
        if _at(raw, path) is None:
            field = f"{ROOT}.{path}"
            raise UsageError(f"the {fmt.name} usage object has no {field}", (field,))
    sums: Sums = {}
    for bound in fmt.bounds:
        _check(bound, raw, sums)
    counts: dict[str, Any] = {}
    for name, terms in fmt.counts.items():
        count = 0
        for term in terms:
            count += term.read(raw, sums)
        counts[name] = count
    if fmt.refine is not None:
        fmt.refine(raw, counts)
    negative = [name for name, count in counts.items() if count < 0]
    if negative:  # a count that takes some away: it takes away more than it has
        raise UsageError(
            f"the {fmt.name} usage takes more tokens away than it counts: "
            + _spelled(fmt, negative, counts),
            _fields(fmt, negative, raw),
        )
    usage = Usage(**counts)
    if usage_is_valid(usage):
        return usage
    try:
        validate_usage(usage)
    except UsageError as exc:
        raise UsageError(
            f"{exc}; from the {fmt.name} usage: {_spelled(fmt, exc.fields, counts)}",
            _fields(fmt, exc.fields, raw),
        ) from None
    return usage


def _check(bound: Bound, raw: Mapping[str, Any], sums: Sums) -> None:
    if bound.exact and _at(raw, bound.total.path) is None:
        return  # an optional total that is not there says nothing
    total = bound.total.read(raw, sums)
    parts = sum(part.read(raw, sums) for part in bound.parts)
    if parts > total or (bound.exact and parts != total):
        spelled = " + ".join(part.spelled() for part in bound.parts)
        relation = "is not" if bound.exact else "is larger than"
        raise UsageError(
            f"{spelled} ({parts}) {relation} {bound.total.spelled()} ({total})",
            tuple(dict.fromkeys(part.named() for part in (*bound.parts, bound.total))),
        )


def _fields(
    fmt: Format, names: tuple[str, ...] | list[str], raw: Mapping[str, Any]
) -> tuple[str, ...]:
    """The fields of the provider's object behind these counts of ours, each once, in order."""
    terms = [term for name in names for term in fmt.counts.get(name, ()) if term.given(raw)]
    return tuple(dict.fromkeys(term.named() for term in terms))


def _spelled(fmt: Format, names: tuple[str, ...] | list[str], counts: Mapping[str, int]) -> str:
    """How the provider's fields make these counts of ours:
    ``cache_read_tokens (2000) = usage.prompt_tokens_details.cached_tokens``."""
    spelled = []
    for name in names:
        terms = fmt.counts.get(name, ())
        written = "".join(
            (" - " if type(term) is Less else " + " if index else "") + term.spelled()
            for index, term in enumerate(terms)
        )
        spelled.append(f"{name} ({counts.get(name, 0)}) = {written or 0}")
    return "; ".join(spelled)
