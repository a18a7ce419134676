"""The request body as the ASGI server delivers it: in chunks, without a length, cut short."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest
from litestar import Litestar, get
from litestar.testing import AsyncTestClient

from aiserver.api.problems import EXCEPTION_HANDLERS, PROBLEM_JSON, answer_cancelled
from aiserver.api.wiring import MAX_BODY_BYTES
from aiserver.core_db.errors import RETRY_AFTER_S, problem_type

Client = AsyncTestClient  # type: ignore[type-arg]


def _scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The scope of a POST to `path`, as the ASGI server gives it."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


def _answer(sent: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """The status and the JSON answer of the messages an app sent."""
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


async def _post(
    client: Client, path: str, messages: list[dict[str, Any]], headers: list[tuple[bytes, bytes]]
) -> tuple[int, dict[str, Any]]:
    """POST straight to the ASGI app, its body in `messages`; the status and the JSON answer."""
    pending = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await client.app(_scope(path, headers), receive, send)  # type: ignore[arg-type]
    return _answer(sent)


def _chunks(body: bytes, size: int) -> list[dict[str, Any]]:
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    return [
        {"type": "http.request", "body": part, "more_body": index < len(parts) - 1}
        for index, part in enumerate(parts)
    ]


async def test_a_body_in_chunks_without_a_length_is_read_whole(client: Client) -> None:
    body = json.dumps({"model": "gpt-test-000", "usage": {"input_tokens": 1000}}).encode()
    status, answer = await _post(client, "/v1/costs/calculate", _chunks(body, 7), [])
    assert status == 200, answer
    assert answer["total"] == "0.001"


async def test_chunks_past_the_limit_are_refused_without_a_length(client: Client) -> None:
    body = b'{"model": "' + b"x" * MAX_BODY_BYTES + b'"}'
    status, answer = await _post(client, "/v1/costs/calculate", _chunks(body, 64 * 1024), [])
    assert status == 413
    assert answer["detail"].startswith("the request body is too large")


async def test_a_declared_length_past_the_limit_is_refused_before_reading(client: Client) -> None:
    declared = [(b"content-length", str(MAX_BODY_BYTES + 1).encode())]
    status, answer = await _post(client, "/v1/costs/calculate", [], declared)
    assert status == 413
    assert answer["detail"].startswith("the request body is too large")


async def test_an_invalid_length_is_a_bad_request(client: Client) -> None:
    body = b'{"model": "gpt-test-000"}'
    status, answer = await _post(
        client, "/v1/costs/calculate", _chunks(body, 100), [(b"content-length", b"twelve")]
    )
    assert status == 400
    assert "Invalid content-length: 'twelve'" in answer["detail"]


async def test_a_client_gone_mid_body_is_not_priced(client: Client) -> None:
    body = json.dumps({"model": "gpt-test-000"}).encode()
    first = _chunks(body, 5)[:2]  # then the client disconnects
    status, answer = await _post(client, "/v1/costs/calculate/batch", first, [])
    assert status == 400  # the client's fault, logged as such (nobody is left to read it)
    assert answer["detail"] == (
        "the request body ended early: the client disconnected before sending all of it"
    )


# -- a request the server cancels (uvicorn, once its graceful-shutdown timeout has run out) ------


async def test_a_request_cancelled_before_its_answer_is_answered_503_with_retry_after(
    client: Client,
) -> None:
    body = json.dumps({"model": "gpt-test-000"}).encode()
    pending = _chunks(body, 5)[:1]
    waiting = asyncio.Event()  # the app waits for the rest of the body, which never comes
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        waiting.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = _scope("/v1/costs/calculate", [])
    request = asyncio.create_task(client.app(scope, receive, send))  # type: ignore[arg-type]
    await asyncio.wait_for(waiting.wait(), 30)
    request.cancel()
    await asyncio.wait_for(request, 30)  # answered: the cancellation ends there
    assert not request.cancelled()
    status, answer = _answer(sent)
    assert status == 503, answer
    headers = dict(sent[0]["headers"])
    assert headers[b"content-type"] == PROBLEM_JSON.encode()
    assert headers[b"retry-after"] == str(RETRY_AFTER_S).encode()
    assert answer["type"] == problem_type(503, "service-unavailable")
    assert answer["instance"] == "/v1/costs/calculate"


async def test_a_cancelled_request_whose_answer_has_started_is_left_to_the_server() -> None:
    started = asyncio.Event()

    async def answering(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        started.set()
        await asyncio.Event().wait()

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    app = answer_cancelled(answering)
    request = asyncio.create_task(app(_scope("/", []), _never, send))  # type: ignore[arg-type]
    await asyncio.wait_for(started.wait(), 30)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert [m["type"] for m in sent] == ["http.response.start"]


async def test_a_cancelled_error_that_is_no_cancellation_of_the_request_goes_on() -> None:
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise asyncio.CancelledError("from some other task's future")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    app = answer_cancelled(failing)
    with pytest.raises(asyncio.CancelledError, match="other task"):
        await app(_scope("/", []), _never, send)  # type: ignore[arg-type]
    assert sent == []


async def _never() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def test_a_transaction_the_database_rolled_back_is_a_503_to_send_again() -> None:
    """A deadlock that a route does not try again itself (a budget created while a zone change
    and a rollup rebuild wait on each other) was a 500 'internal error'; nothing was stored, and
    the remedy is to send it again."""

    @get("/deadlock", sync_to_thread=False)
    def deadlock() -> None:
        raise asyncpg.DeadlockDetectedError("deadlock detected")

    app = Litestar([deadlock], exception_handlers=EXCEPTION_HANDLERS)
    async with AsyncTestClient(app) as client:
        response = await client.get("/deadlock")
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(RETRY_AFTER_S)
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["type"] == problem_type(503, "service-unavailable")
    assert "nothing of it was stored: send it again" in response.json()["detail"]
