"""What a newcomer's first malformed usage event is answered: the problem names the field to fix.

`POST /v1/usage` (and each line of `aiserver-ledger import`) read an event with `decode_event`;
its problem's `fields` is what a client shows next to the input. An unknown field is named;
so must a missing required one be."""

from __future__ import annotations

import pytest

from aiserver.ledger.errors import InvalidEvent
from aiserver.ledger.usage.bodies import decode_event


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"model": "gpt-4o", "usage": {"input_tokens": 1}}', "id"),
        (b'{"id": "req-1", "usage": {"input_tokens": 1}}', "model"),
        (b'{"id": "r", "model": "gpt-4o", "usage": {"input_tokens": 1}, "colour": 1}', "colour"),
    ],
)
def test_the_problem_of_an_event_names_the_field_to_fix(body: bytes, field: str) -> None:
    with pytest.raises(InvalidEvent) as raised:
        decode_event(body)
    problem = raised.value.problem()
    assert field in problem["detail"]
    assert problem["fields"] == [field]
