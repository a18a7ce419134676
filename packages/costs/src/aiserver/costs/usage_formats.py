"""PLACEHOLDER until the formats branch lands: our own usage only."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from aiserver.costs.errors import UsageError
from aiserver.costs.pricing import Usage

UsageFormat = Literal["openai.chat", "openai.responses", "anthropic", "gemini", "bedrock.converse"]


def read_usage(usage: Any, usage_format: UsageFormat | None) -> Usage:
    if isinstance(usage, Usage):
        return usage
    try:
        return msgspec.convert(usage, Usage)
    except msgspec.ValidationError as exc:
        raise UsageError(str(exc), ("usage",)) from None
