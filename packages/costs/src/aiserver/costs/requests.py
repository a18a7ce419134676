"""Reading a cost request one way wherever it comes from: the body of
`POST /v1/costs/calculate`, an item of the batch endpoint, a line of `aiserver-costs calc --batch`
(and its `--usage`). Strict, as docs/costs.md describes the request.

Light to import (msgspec alone): the command line's `--help` imports no pricing.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from aiserver.costs.calculator import CostRequest

#: JSON text to Python values, as the API decodes a request body (msgspec, no hooks: a number
#: is an int or a float there too).
_json_values = msgspec.json.Decoder()


def request_json(text: bytes | str) -> Any:
    """The JSON of a request as Python values: a `--batch` line, `--usage`, as the API decodes a
    body. What the decoder cannot read whole is a `msgspec.DecodeError` (400 `malformed-json`):
    a number beyond a double too, which msgspec reports as a ValidationError (it would read as a
    field of the wrong type), and JSON nested deeper than the decoder goes. Text that is not
    UTF-8 is a UnicodeDecodeError, malformed as well (`_problem`)."""
    try:
        return _json_values.decode(text)
    except msgspec.ValidationError as exc:  # no type was asked for: only a number out of range
        raise msgspec.DecodeError(str(exc)) from None
    except RecursionError:
        raise msgspec.DecodeError("JSON is malformed: nested too deeply") from None


def read_cost_request(value: Any) -> CostRequest:
    """A cost request from its decoded JSON, read one way wherever it comes from: the body of
    `POST /v1/costs/calculate`, an item of the batch endpoint, a line of
    `calc --batch`. Strict, as docs/costs.md describes the request: no value is coerced into
    another type, so `at` is an RFC 3339 string (or null), never a Unix time given as a number
    or as digits, and a count is a JSON integer. A `msgspec.ValidationError` names the field
    (422 `invalid-request`)."""
    return msgspec.convert(value, _cost_request())


@functools.cache
def _cost_request() -> type[CostRequest]:
    """The request's type, imported on first use (`--help` imports no pricing) and once: an
    import statement per line would cost as much as the conversion."""
    from aiserver.costs.calculator import CostRequest

    return CostRequest


def decode_cost_request(text: bytes) -> CostRequest:
    """A cost request from its JSON text: `request_json`, then `read_cost_request`."""
    return read_cost_request(request_json(text))
