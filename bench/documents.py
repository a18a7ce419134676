"""Upstream documents for the refresh benchmarks, all derived from the bundled snapshot.

- `respelled`: the same prices with every decimal written differently (`2.5E-6` -> `2.50E-6`),
  keys sorted and no indentation: other bytes, same catalog.
- `changed`: a given fraction of the models with a new input price.
- `scaled`: the models copied n times under new names (`gpt-4o`, `gpt-4o-x1`, ...).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from aiserver.costs.refresh import snapshot_bytes
from aiserver.costs.source import DOCUMENT_KEYS, decode_json

_encoder = msgspec.json.Encoder(decimal_format="number")
_sorted_encoder = msgspec.json.Encoder(decimal_format="number", order="sorted")


def snapshot() -> bytes:
    return snapshot_bytes()


def _is_model(key: str, entry: Any) -> bool:
    return key not in DOCUMENT_KEYS and isinstance(entry, dict) and "litellm_provider" in entry


def _respell(value: Any) -> Any:
    if isinstance(value, Decimal):
        text = format(value, "E")  # 2.5E-6
        mantissa, _, exponent = text.partition("E")
        mantissa += "0" if "." in mantissa else ".0"  # 2.50E-6, 3.0E-7: same value
        return msgspec.Raw(f"{mantissa}E{exponent}".encode())
    if isinstance(value, dict):
        return {k: _respell(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_respell(v) for v in value]
    return value


def respelled(body: bytes) -> bytes:
    return _sorted_encoder.encode(_respell(decode_json(body)))


def changed(body: bytes, fraction: float = 0.05, *, salt: int = 1) -> tuple[bytes, int]:
    """`body` with `fraction` of its models repriced (input price x 1.1, or a new request fee);
    returns the body and how many models changed."""
    document = decode_json(body)
    step = round(1 / fraction)
    count = 0
    for index, (key, entry) in enumerate(document.items()):
        if not _is_model(key, entry) or index % step != salt % step:
            continue
        price = entry.get("input_cost_per_token")
        if isinstance(price, Decimal | int) and price:
            entry["input_cost_per_token"] = Decimal(price) * Decimal("1.1")
        else:
            entry["input_cost_per_request"] = Decimal("0.0001") * (salt + 1)
        count += 1
    return _encoder.encode(document), count


def scaled(body: bytes, factor: int) -> tuple[bytes, int]:
    """The snapshot with every model entry present `factor` times; returns body and models."""
    document = decode_json(body)
    if factor == 1:
        models = sum(1 for k, v in document.items() if _is_model(k, v))
        return body, models
    out: dict[str, Any] = {}
    models = 0
    for key, entry in document.items():
        out[key] = entry
        if _is_model(key, entry):
            models += factor
            for copy in range(1, factor):
                out[f"{key}-x{copy}"] = entry
    return _encoder.encode(out), models
