"""The upstream document: LiteLLM's `model_prices_and_context_window.json` format.

The body is decoded straight to `Decimal` (msgspec `float_hook`), never through float, and in
one spelling per value (`canonical_number`): `3.0e-06` and `0.000003` decode alike, so hashes of
the sorted JSON compare prices by value. `read_document` decodes and hashes the whole document
(a refresh stops there when the hash is the last applied one); `parse_source` then sorts every
top-level entry into one of:

- a **model**: an object with `litellm_provider`, priced by its `*cost*` fields;
- an **alias**: an object holding only `alias_of` (e.g. `claude-opus-latest`);
- a **document**: an entry that is about the file, not a model (`sample_spec` documents the
  fields with placeholder strings; `fallback_generalizations` holds routing rules);
- **skipped**: an entry that is malformed (negative or non-numeric price, unknown shape). It is
  reported, and the model's previous version stays current.

A body that is not a JSON object, or has no model at all, is rejected whole (`SourceRejected`).
"""

from __future__ import annotations

import decimal
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any, Final

import msgspec

from aiserver.costs.errors import SourceRejected

#: The name of the one upstream source (`ai_cost_metadata.source`, `ai_model_costs.source`).
DEFAULT_SOURCE: Final = "litellm"

#: Entries that describe the file rather than a model.
DOCUMENT_KEYS: Final = frozenset({"sample_spec", "fallback_generalizations"})


class UnreadableNumber(str):
    """A JSON number the catalog cannot hold (its exponent is out of range), kept as its text.

    The entry that holds one is skipped; it never reaches the database.
    """

    __slots__ = ()


def _encode_other(value: Any, seen: list[UnreadableNumber] | None = None) -> Any:
    """msgspec's enc_hook: an unreadable number is written back as the number it was (and
    noted in `seen`); nothing else that msgspec cannot encode is expected."""
    if isinstance(value, UnreadableNumber):
        if seen is not None:
            seen.append(value)
        return msgspec.Raw(value.encode())
    raise NotImplementedError(f"cannot encode {type(value).__name__} as JSON")


_decoder: Final = msgspec.json.Decoder(float_hook=Decimal)
_encoder: Final = msgspec.json.Encoder(
    decimal_format="number", order="sorted", enc_hook=_encode_other
)


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
    encoded: bytes  # the entry as stored: sorted JSON, numbers in canonical spelling

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


# NUMERIC's range in PostgreSQL, which stores every entry (JSONB) and typed price: up to 131,072
# digits before the decimal point and 16,383 after it. A number outside it cannot be stored.
_MAX_ADJUSTED: Final = 131_071
_MIN_EXPONENT: Final = -16_383
# Normalizing with this context never rounds and never overflows: it only drops trailing zeros.
_NORMALIZE: Final = decimal.Context(
    prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN
)
_ZERO: Final = Decimal(0)
#: The longest provider name a call can give (`POST /v1/costs/calculate`, `POST /v1/usage`),
#: and the longest entry name it can reach: its model name (256 at most) after its provider
#: (`provider/model`). An entry named longer is priced for no call, and a long enough name
#: overflowed the catalog's index (the write of the whole catalog failed).
MAX_PROVIDER_NAME: Final = 128
MAX_MODEL_NAME: Final = MAX_PROVIDER_NAME + 1 + 256
#: The largest context limit stored (`max_input_tokens`, `max_output_tokens`: BIGINT columns).
_MAX_TOKEN_LIMIT: Final = 2**63 - 1
_ONE: Final = Decimal(1)


def canonical_number(text: str) -> Decimal | UnreadableNumber:
    """A JSON number as an exact `Decimal` spelled one way per value (a msgspec `float_hook`).

    `3.0e-06`, `3e-06` and `0.0000030` all become `Decimal("0.000003")`, and a whole number
    written with a fraction or exponent (`10.0`, `1e1`) becomes `Decimal("10")`, which encodes
    like the integer `10`. So the sorted JSON encoding of a decoded entry is the same for the
    same values however they were spelled, and its hash compares prices by value.
    """
    try:
        value = Decimal(text).normalize(_NORMALIZE)
    except ArithmeticError:  # an exponent beyond even Decimal's range
        return UnreadableNumber(text)
    if not value:
        return _ZERO  # 0.0, 0e5 and -0.0 are the integer 0
    adjusted = value.adjusted()
    if adjusted >= 0:
        if adjusted <= 40 and value == value.to_integral_value():
            return value.quantize(_ONE, context=_NORMALIZE)
        if adjusted > _MAX_ADJUSTED:
            return UnreadableNumber(text)
    if adjusted < _MIN_EXPONENT + 400 or len(text) > 300:
        # Rare: only here can the last digit lie past NUMERIC's 16,383 fractional digits
        # (otherwise it would take more digits than the text has to get there).
        exponent = value.as_tuple().exponent
        assert isinstance(exponent, int), "a JSON number is finite"
        if exponent < _MIN_EXPONENT:
            return UnreadableNumber(text)
    return value


_canonical_decoder: Final = msgspec.json.Decoder(float_hook=canonical_number)


def _digest(encoded: bytes) -> str:
    return hashlib.sha256(encoded).hexdigest()


def canonical_digest(data: bytes | str) -> str:
    """A hash of a JSON text by value: the sha256 of its sorted encoding, read back through
    `canonical_number` (see `entry_hash`)."""
    return _digest(encode_json(_canonical_decoder.decode(data)))


def entry_hash(entry: Mapping[str, Any]) -> str:
    """A hash of the entry that compares prices by value, not by spelling.

    It hashes the sorted JSON encoding of the entry read back through `canonical_number`, so
    `Decimal("3.0E-6")`, `Decimal("0.000003")` and, for whole numbers, `10` and `Decimal("10.0")`
    hash alike. `parse_source` decodes with `canonical_number` in the first place and hashes the
    encoding it keeps for storage.
    """
    return canonical_digest(encode_json(entry))


def _unreadable_in(value: Any) -> UnreadableNumber | None:
    """The first unreadable number inside a decoded value, if any (only run when one was seen)."""
    if isinstance(value, UnreadableNumber):
        return value
    children = value.values() if isinstance(value, dict) else value if type(value) is list else ()
    for child in children:
        found = _unreadable_in(child)
        if found is not None:
            return found
    return None


_STRUCTURED_PRICES: Final = frozenset({"tiered_pricing", "off_peak_pricing"})

# The prices a calculation can use exactly: below 10^100, and with no digit past the 400th
# decimal place. Costs are computed with 1,000 significant digits and refused rather than
# rounded (`pricing.exact`); within these bounds a cost of up to 10^15 units, and a sum of such
# costs, has at most about 520 digits. A price NUMERIC holds beyond them (1e-16383 beside 3e-06)
# would make every call of its model fail, so the entry is skipped like one with a bad price.
_PRICE_MAX_ADJUSTED: Final = 99
_PRICE_MIN_EXPONENT: Final = -400


def _beyond_exact(price: Decimal | int) -> str | None:
    """Why a finite price lies outside what a calculation can use exactly, or None.

    A JSON integer is a price as much as a decimal is: `10**1200` fails every call of its model
    as `1E+1200` or `1000...0.0` would, so it is asked about too.
    """
    number = Decimal(price)  # exact, whatever the context's precision
    if number.adjusted() > _PRICE_MAX_ADJUSTED:
        return f"{number:.3E} is not below 1E+{_PRICE_MAX_ADJUSTED + 1}"
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int), "only finite prices are asked about"
    if exponent < _PRICE_MIN_EXPONENT:
        return f"{-exponent} decimal places, more than {-_PRICE_MIN_EXPONENT}"
    return None


def has_nonnegative_leaves(name: str) -> bool:
    """Whether an entry's top-level field holds prices that must be numbers >= 0 for the entry
    to be stored: every leaf of a `*cost*` field, and under `tiered_pricing` and
    `off_peak_pricing` the leaves whose own key names a cost (see `_price_leaves`).

    The guardrail's question, narrower than `pricing.is_price_field`: a multiplier or a billing
    unit bears on price too, but is no amount of money that a negative value would corrupt.
    """
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


def _prices_sound(node: Any, all_leaves: bool, key: str) -> bool:
    """True when every price under a structured field (see `_price_leaves`) is a number >= 0.

    The quick yes of `entry_problem`: it builds no paths, which only a problem needs.
    """
    kind = type(node)
    if kind is dict:
        return all(_prices_sound(value, all_leaves, name) for name, value in node.items())
    if kind is list:
        return all(_prices_sound(value, all_leaves, key) for value in node)
    if not all_leaves and "cost" not in key:
        return True  # not a price: `range`, `windows`, `weekday_timezone`, ...
    if kind is int or (kind is Decimal and node.is_finite()):
        return bool(node >= 0) and _beyond_exact(node) is None
    return False


def entry_problem(entry: Mapping[str, Any]) -> str | None:
    """Why a model entry can't be stored, or None when it is sound."""
    provider = entry.get("litellm_provider")
    if not isinstance(provider, str) or not provider:
        return "unknown shape: litellm_provider is missing or not a string"
    if len(provider) > MAX_PROVIDER_NAME:
        return (
            f"unknown shape: litellm_provider of {len(provider):,} characters; a call names a "
            f"provider in {MAX_PROVIDER_NAME} at most"
        )
    for name, value in entry.items():
        if not has_nonnegative_leaves(name):
            continue
        kind = type(value)
        if kind is Decimal or kind is int:  # the common case: one plain price
            if value < 0:
                return f"negative price at {name}: {value}"
            if kind is Decimal and not value.is_finite():
                return f"non-finite price at {name}: {value}"
            if (why := _beyond_exact(value)) is not None:
                return f"price at {name} cannot be priced exactly: {why}"
            continue
        if _prices_sound(value, "cost" in name, name):
            continue
        for path, leaf in _price_leaves(name, value):  # find what is wrong, and where
            if isinstance(leaf, UnreadableNumber):
                return f"unreadable number {leaf[:40]!r} at {path}: outside the range of NUMERIC"
            if isinstance(leaf, bool) or not isinstance(leaf, int | Decimal):
                return f"non-numeric price at {path}: {leaf!r}"
            if leaf < 0:
                return f"negative price at {path}: {leaf}"
            if isinstance(leaf, Decimal) and not leaf.is_finite():
                return f"non-finite price at {path}: {leaf}"
            if (why := _beyond_exact(leaf)) is not None:
                return f"price at {path} cannot be priced exactly: {why}"
    for name in ("max_input_tokens", "max_output_tokens"):
        value = entry.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | Decimal)):
            return f"unknown shape: {name} is not a number: {value!r}"
        if (limit := token_limit(entry, name)) is not None and abs(limit) > _MAX_TOKEN_LIMIT:
            # stored as a BIGINT: beyond it, the write of the whole catalog failed
            return f"unknown shape: {name} is out of range: {value}"
    if (negative := _negative_leaf(entry)) is not None:
        # the catalog's CHECK refuses a negative number anywhere in an entry (a limit of -1):
        # stored, it failed the write of the whole catalog
        path, value = negative
        return f"negative number at {path}: {value}"
    return None


def _negative_leaf(entry: Mapping[str, Any]) -> tuple[str, Any] | None:
    """The first negative number anywhere in `entry`, with its path (walked without recursion:
    a value may be nested as deep as the decoder allows). The paths are made only for an entry
    that has one: made for every value, they took a third of the parse."""
    waiting: list[Any] = list(entry.values())
    while waiting:
        value = waiting.pop()
        kind = type(value)
        if kind is dict:
            waiting.extend(value.values())
        elif kind is list:
            waiting.extend(value)
        elif (kind is int or kind is Decimal) and value < 0:  # (a bool's type is bool)
            return _negative_path(entry)
    return None


def _negative_path(entry: Mapping[str, Any]) -> tuple[str, Any] | None:
    """`_negative_leaf`'s answer, with the path of the value it found."""
    waiting: list[tuple[str, Any]] = [(str(k), v) for k, v in entry.items()]
    while waiting:
        path, value = waiting.pop()
        if isinstance(value, dict):
            waiting.extend((f"{path}.{k}", v) for k, v in value.items())
        elif isinstance(value, list):
            waiting.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, int | Decimal) and not isinstance(value, bool) and value < 0:
            return path, value
    return None


def token_limit(entry: Mapping[str, Any], name: str) -> int | None:
    """A context limit as an integer, when the entry gives a whole number."""
    value = entry.get(name)
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return None
    return int(value) if value == int(value) else None


@dataclass(frozen=True, slots=True)
class SourceDocument:
    """An upstream body decoded, before its entries are sorted (see `parse_source`).

    `content_hash` identifies the document by value: it hashes the sorted JSON encoding of the
    decoded document, whose numbers `canonical_number` spelled one way. The same prices spelled
    differently, in another key order or with other whitespace give the same hash, and parsing
    the same document always gives the same catalog, so a refresh that finds the hash of the
    document it applied last can stop there.
    """

    entries: dict[str, Any]
    content_hash: str
    has_unreadable: bool  # some number could not be read (see UnreadableNumber)
    may_hold_nul: bool = True  # False: no string of it holds a NUL (its encoding has no \u0000)


def read_document(body: bytes) -> SourceDocument:
    """Decode an upstream body. Raises `SourceRejected` when it is not a JSON object."""
    if not body.strip():
        raise SourceRejected("empty body")
    try:  # JSON is UTF-8 (RFC 8259): checked here, whatever a decoder would call it
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceRejected(f"not JSON: invalid UTF-8 at byte {exc.start}") from None
    try:
        document = _canonical_decoder.decode(body)
    except msgspec.DecodeError as exc:
        # what the body is, not what it says: the reason is shown without a credential
        # (GET /v1/catalog), and the upstream (or a redirect) may have answered with a secret
        kind = "looks like HTML or XML" if body.lstrip()[:1] == b"<" else "is other text"
        raise SourceRejected(f"not JSON ({exc}); the body ({len(body):,} bytes) {kind}") from None
    except UnicodeDecodeError as exc:  # an escape that names no character (a lone \ud800)
        raise SourceRejected(f"not JSON: {exc.reason}") from None
    except RecursionError:
        raise SourceRejected("not JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise SourceRejected(
            f"wrong shape: expected a JSON object of models, got {type(document).__name__}"
        )
    # The encoding for the content hash meets every unreadable number, in msgspec's enc_hook.
    unreadable: list[UnreadableNumber] = []
    encoder = msgspec.json.Encoder(
        decimal_format="number", order="sorted", enc_hook=partial(_encode_other, seen=unreadable)
    )
    encoded = encoder.encode(document)
    return SourceDocument(
        entries=document,
        content_hash=_digest(encoded),
        has_unreadable=bool(unreadable),
        # JSON writes a NUL only as \u0000: without one, no entry needs to be walked for it
        may_hold_nul=b"\\u0000" in encoded,
    )


def _has_nul(value: Any) -> bool:
    """Whether a decoded JSON value holds a NUL character, in a string or an object's key
    (walked without recursion: a value may be nested as deep as the decoder allows)."""
    waiting = [value]
    while waiting:
        item = waiting.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            waiting.extend(item.keys())
            waiting.extend(item.values())
        elif isinstance(item, list):
            waiting.extend(item)
    return False


def parse_source(body: bytes | SourceDocument) -> ParsedSource:
    """Decode (unless given a `read_document` result) and sort an upstream body.

    Raises `SourceRejected` when it is unusable whole.
    """
    document = body if isinstance(body, SourceDocument) else read_document(body)
    models: dict[str, ModelEntry] = {}
    aliases: dict[str, str] = {}
    documents: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for key, entry in document.entries.items():
        if document.may_hold_nul and (_has_nul(key) or _has_nul(entry)):
            # JSON may spell it (\u0000); PostgreSQL's text and jsonb cannot hold it, and one
            # such entry failed the write of the whole catalog. Named as JSON spells it.
            skipped[key.replace("\x00", "\\u0000")] = (
                "unknown shape: a NUL character (\\u0000), which the catalog cannot store"
            )
            continue
        if len(key) > MAX_MODEL_NAME:
            skipped[key] = (
                f"unknown shape: a name of {len(key):,} characters; a call names an entry in "
                f"{MAX_MODEL_NAME} at most"
            )
            continue
        if key in DOCUMENT_KEYS:
            documents[key] = entry
            continue
        if not isinstance(entry, dict):
            skipped[key] = f"unknown shape: expected an object, got {type(entry).__name__}"
            continue
        if len(entry) == 1 and "alias_of" in entry:
            target = entry["alias_of"]
            if isinstance(target, str) and target and target != key:
                aliases[key] = target
            else:
                skipped[key] = f"unknown shape: alias_of must name another entry, got {target!r}"
            continue
        problem = entry_problem(entry)
        if problem is None and document.has_unreadable:
            number = _unreadable_in(entry)
            if number is not None:
                problem = f"unreadable number {number[:40]!r}: outside the range of NUMERIC"
        if problem is not None:
            skipped[key] = problem
            continue
        encoded = encode_json(entry)
        models[key] = ModelEntry(
            key=key,
            provider=entry["litellm_provider"],
            entry=entry,
            entry_hash=_digest(encoded),
            encoded=encoded,
        )
    if not models:
        raise SourceRejected(
            "wrong shape: no model entries (objects with litellm_provider) in the document"
        )
    for alias, target in list(aliases.items()):
        if target not in models:
            skipped[alias] = f"alias_of names an entry that is not a model: {target!r}"
            del aliases[alias]
    return ParsedSource(
        models=models,
        aliases=aliases,
        documents=documents,
        skipped=skipped,
        content_hash=document.content_hash,
    )
