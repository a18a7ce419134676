"""The upstream document: LiteLLM's `model_prices_and_context_window.json` format.

The body is decoded straight to `Decimal` (msgspec `float_hook`), never through float. The parse
sorts every top-level entry into one of:

- a **model**: an object with `litellm_provider`, priced by its `*cost*` fields;
- an **alias**: an object holding only `alias_of` (e.g. `claude-opus-latest`);
- a **document**: an entry that is about the file, not a model (`sample_spec` documents the
  fields with placeholder strings; `fallback_generalizations` holds routing rules);
- **skipped**: an entry that is malformed (negative or non-numeric price, unknown shape). It is
  reported, and the model's previous version stays current.

A body that is not a JSON object, or has no model at all, is rejected whole (`SourceRejected`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import msgspec

#: Entries that describe the file rather than a model.
DOCUMENT_KEYS: Final = frozenset({"sample_spec", "fallback_generalizations"})

_decoder: Final = msgspec.json.Decoder(float_hook=Decimal)
_encoder: Final = msgspec.json.Encoder(decimal_format="number", order="sorted")


class SourceRejected(ValueError):
    """The whole upstream body is unusable; the current catalog must stay as it is."""


def decode_json(data: bytes | str) -> Any:
    """Decode JSON with every non-integer number as an exact `Decimal`."""
    return _decoder.decode(data)


def encode_json(value: Any) -> bytes:
    """Encode JSON with `Decimal` as JSON numbers (exact) and keys sorted."""
    return _encoder.encode(value)


@dataclass(frozen=True, slots=True)
class ModelEntry:
    key: str
    provider: str
    entry: Mapping[str, Any]
    entry_hash: str

    @property
    def mode(self) -> str | None:
        mode = self.entry.get("mode")
        return mode if isinstance(mode, str) else None


@dataclass(frozen=True, slots=True)
class ParsedSource:
    models: dict[str, ModelEntry]
    aliases: dict[str, str]
    documents: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)
    content_hash: str = ""


def _canonical(value: Any) -> Any:
    """The value with numbers normalized, so that 3.0e-06, 3e-06 and 0.000003 are equal.

    Numbers become tagged strings ("#0.000003"), so a price never equals a string of the same
    digits. Dispatch is on the exact type: this runs for every field of every entry.
    """
    kind = type(value)
    if kind is Decimal:
        return f"#{value.normalize():f}"
    if kind is int:
        return f"#{value}"
    if kind is dict:
        return {k: _canonical(v) for k, v in value.items()}
    if kind is list:
        return [_canonical(v) for v in value]
    if kind is str or kind is bool or value is None:
        return value
    raise TypeError(f"unexpected JSON value {value!r}")


def entry_hash(entry: Mapping[str, Any]) -> str:
    """A hash of the entry that compares prices by value, not by spelling."""
    return hashlib.sha256(encode_json(_canonical(entry))).hexdigest()


_STRUCTURED_PRICES: Final = frozenset({"tiered_pricing", "off_peak_pricing"})


def is_price_field(name: str) -> bool:
    return "cost" in name or name in _STRUCTURED_PRICES


def _price_leaves(name: str, value: Any) -> Iterator[tuple[str, Any]]:
    """Every price under a top-level field, with its path.

    Under a `*cost*` field every leaf is a price (`search_context_cost_per_query.{size}`). Under
    `tiered_pricing` and `off_peak_pricing` only leaves whose own key names a cost are prices; the
    rest (`range`, `windows`, `weekday_timezone`, ...) describe when the prices apply.
    """
    all_leaves = "cost" in name

    def walk(node: Any, path: str, key: str) -> Iterator[tuple[str, Any]]:
        if isinstance(node, Mapping):
            for k, v in node.items():
                yield from walk(v, f"{path}.{k}", k)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, f"{path}[{i}]", key)
        elif all_leaves or "cost" in key:
            yield path, node

    yield from walk(value, name, name)


def entry_problem(entry: Mapping[str, Any]) -> str | None:
    """Why a model entry can't be stored, or None when it is sound."""
    provider = entry.get("litellm_provider")
    if not isinstance(provider, str) or not provider:
        return "unknown shape: litellm_provider is missing or not a string"
    for name, value in entry.items():
        if "cost" not in name and name not in _STRUCTURED_PRICES:
            continue
        kind = type(value)
        if kind is Decimal or kind is int:  # the common case: one plain price
            if value < 0:
                return f"negative price at {name}: {value}"
            if kind is Decimal and not value.is_finite():
                return f"non-finite price at {name}: {value}"
            continue
        for path, leaf in _price_leaves(name, value):
            if isinstance(leaf, bool) or not isinstance(leaf, int | Decimal):
                return f"non-numeric price at {path}: {leaf!r}"
            if leaf < 0:
                return f"negative price at {path}: {leaf}"
            if isinstance(leaf, Decimal) and not leaf.is_finite():
                return f"non-finite price at {path}: {leaf}"
    for name in ("max_input_tokens", "max_output_tokens"):
        value = entry.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | Decimal)):
            return f"unknown shape: {name} is not a number: {value!r}"
    return None


def token_limit(entry: Mapping[str, Any], name: str) -> int | None:
    """A context limit as an integer, when the entry gives a whole number."""
    value = entry.get(name)
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return None
    return int(value) if value == int(value) else None


def parse_source(body: bytes) -> ParsedSource:
    """Decode and sort an upstream body. Raises `SourceRejected` when it is unusable whole."""
    if not body.strip():
        raise SourceRejected("empty body")
    try:
        document = decode_json(body)
    except msgspec.DecodeError as exc:
        snippet = body[:60].decode("utf-8", "replace").strip()
        raise SourceRejected(f"not JSON ({exc}); the body starts with {snippet!r}") from None
    if not isinstance(document, dict):
        raise SourceRejected(
            f"wrong shape: expected a JSON object of models, got {type(document).__name__}"
        )
    models: dict[str, ModelEntry] = {}
    aliases: dict[str, str] = {}
    documents: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for key, entry in document.items():
        if key in DOCUMENT_KEYS:
            documents[key] = entry
            continue
        if not isinstance(entry, dict):
            skipped[key] = f"unknown shape: expected an object, got {type(entry).__name__}"
            continue
        if set(entry) == {"alias_of"}:
            target = entry["alias_of"]
            if isinstance(target, str) and target and target != key:
                aliases[key] = target
            else:
                skipped[key] = f"unknown shape: alias_of must name another entry, got {target!r}"
            continue
        problem = entry_problem(entry)
        if problem is not None:
            skipped[key] = problem
            continue
        models[key] = ModelEntry(
            key=key, provider=entry["litellm_provider"], entry=entry, entry_hash=entry_hash(entry)
        )
    if not models:
        raise SourceRejected(
            "wrong shape: no model entries (objects with litellm_provider) in the document"
        )
    for alias, target in list(aliases.items()):
        if target not in models:
            skipped[alias] = f"alias_of names an entry that is not a model: {target!r}"
            del aliases[alias]
    content = hashlib.sha256()
    for key in sorted(models):
        content.update(key.encode())
        content.update(models[key].entry_hash.encode())
    for alias in sorted(aliases):
        content.update(f"{alias}->{aliases[alias]}".encode())
    content.update(entry_hash(documents).encode())
    content.update(entry_hash(skipped).encode())
    return ParsedSource(
        models=models,
        aliases=aliases,
        documents=documents,
        skipped=skipped,
        content_hash=content.hexdigest(),
    )
